#!/usr/bin/env bash
# The whole pincg test suite on a fresh Debian/Ubuntu machine, as root:
# installs what it needs, builds, runs unit tests, host checks and the guest
# scenarios (each boots a Debian kernel under QEMU), then summarises.
#
# Env: PINCG_KERNEL (guest kernel series, default 6.12), PINCG_CACHE
# (kernel cache, default /var/cache/pincg).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

tests/guest/install-deps.sh
cargo build --workspace --bins
rm -f target/guest-results.txt

status=0
cargo test --workspace --lib --bins --tests -- --test-threads=2 || status=$?

echo
echo "=== short fuzz pass: limit file and config file parsers (cargo fuzz, ${PINCG_FUZZ_SECONDS:-20}s each) ==="
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
for target in limit_file config_file; do
  if (cd cgroup-spec && cargo fuzz run --sanitizer none "$target" -- -max_total_time="${PINCG_FUZZ_SECONDS:-20}" 2>&1 | tail -n 2); then
    echo "fuzz pass $target: no crash"
  else
    echo "fuzz pass $target: FAILED (crash artifacts in cgroup-spec/fuzz/artifacts/$target)"
    status=1
  fi
done

echo
echo "=== guest scenarios (kernel ${PINCG_KERNEL:-6.12}) ==="
if [[ -s target/guest-results.txt ]]; then
  cat target/guest-results.txt
  ran=$(wc -l < target/guest-results.txt)
  passed=$(grep -c ': passed in ' target/guest-results.txt || true)
  echo "guest scenarios run: $ran ($passed passed, $((ran - passed)) failed)"
else
  echo "guest scenarios run: 0 -- no guest scenario ran (see the test output above)"
  status=1
fi
exit "$status"
