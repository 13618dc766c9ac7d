#!/usr/bin/env bash
# The whole pincg test suite on a fresh Debian/Ubuntu machine, as root:
# installs what it needs, builds, runs unit tests, host checks and the guest
# scenarios (each boots a Debian kernel under QEMU), then summarises.
#
# Env: PINCG_KERNELS (the guest kernel series to run the guest scenarios
# on, one pass each, default "6.12 6.1 7": Debian stable's, trixie's and the
# newest; PINCG_KERNEL=S alone means
# PINCG_KERNELS=S), PINCG_CACHE (kernel cache, default /var/cache/pincg).
# The first pass runs every test, the others only the guest scenarios;
# scenarios pinned to a series (iommufd, the 7.x extras) run once.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

export PINCG_KERNELS=${PINCG_KERNELS:-${PINCG_KERNEL:-6.12 6.1 7}}
read -ra kernels <<<"$PINCG_KERNELS"
((${#kernels[@]})) || { echo "run-tests.sh: PINCG_KERNELS names no kernel series" >&2; exit 2; }

tests/guest/install-deps.sh
# The iommufd guest kernel is compiled from Debian's source the first time
# (12-17 minutes on 2 cores). It starts now, at the lowest priority, on
# what cargo and the guests leave idle (TCG guests keep about half of 2
# cores busy); the iommufd scenario waits for it under the build's own lock,
# not the guest lock, so the other scenarios go on meanwhile.
mkdir -p target
# setsid gives it a session (a process group to kill at exit), and so an
# autogroup of its own that the scheduler would weigh equally with this
# one (sched_autogroup_enabled): the build lowers its group's nice too.
setsid sh -c 'echo 19 > /proc/self/autogroup 2> /dev/null; exec nice -n 19 tests/guest/build-kernel.sh iommufd' \
  > target/iommufd-kernel.log 2>&1 &
kernel_build=$!
trap 'kill -- -"$kernel_build" 2> /dev/null || true' EXIT
cargo build --workspace --bins
# The upgrade scenario's builds B and C (BPF objects changed), in target/upgrade-builds.
target/debug/pincg-upgrade-builds
rm -f target/guest-results.txt target/skips.txt

status=0
echo
echo "=== house style: cargo fmt --check, cargo clippy -D warnings (rustfmt.toml), clang-format (.clang-format) ==="
clang-format --dry-run --Werror bpf/include/pincg.h bpf/src/bpf/*.[ch] \
  || { echo "clang-format: the BPF C is not formatted (run clang-format -i on it)"; status=1; }
if cargo fmt --version > /dev/null 2>&1 && cargo clippy --version > /dev/null 2>&1; then
  cargo fmt --all --check || { echo "cargo fmt --check: not formatted (run cargo fmt)"; status=1; }
  cargo clippy --workspace --all-targets -- -D warnings || { echo "cargo clippy: warnings"; status=1; }
else
  echo "house style: SKIPPED: this toolchain has no rustfmt or clippy component" | tee -a target/skips.txt
fi
for kernel in "${kernels[@]}"; do
  echo
  if [[ "$kernel" == "${kernels[0]}" ]]; then
    echo "=== every test, guest scenarios on kernel $kernel ==="
    PINCG_KERNEL=$kernel cargo test --workspace --lib --bins --tests -- --test-threads=2 || status=$?
  else
    echo "=== guest scenarios on kernel $kernel ==="
    PINCG_KERNEL=$kernel cargo test -p pincg-tests --test guest_scenarios -- --test-threads=2 || status=$?
  fi
done

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
echo "=== guest scenarios (kernels $PINCG_KERNELS) ==="
if [[ -s target/guest-results.txt ]]; then
  cat target/guest-results.txt
  # Per series: "<name> on <series>: passed (after 3.0s waiting for the
  # guest lock) in 12.3s" / "failed (...) (after ...) in" / "skipped (why)";
  # the seconds summed are the guests' own.
  awk -F': ' '{
      split($1, name, " on "); series = name[2]; verdict = $2; sub(/ .*/, "", verdict)
      n[series, verdict]++; seen[series] = 1
      if (match($0, / in [0-9.]+s$/)) secs[series] += substr($0, RSTART + 4, RLENGTH - 5)
    }
    END { for (s in seen) printf "kernel %s: %d passed, %d failed, %d skipped, %.0f s in guests\n",
                                 s, n[s, "passed"], n[s, "failed"], n[s, "skipped"], secs[s] }' \
    target/guest-results.txt | sort -V
  ran=$(grep -Ec ': (passed|failed)( |$)' target/guest-results.txt || true)
  passed=$(grep -c ': passed ' target/guest-results.txt || true)
  echo "guest scenarios run: $ran ($passed passed, $((ran - passed)) failed) on kernels $PINCG_KERNELS"
  for kernel in "${kernels[@]}"; do
    grep -qF " on $kernel: " target/guest-results.txt \
      || { echo "no guest scenario ran on kernel $kernel (see the test output above)"; status=1; }
  done
else
  echo "guest scenarios run: 0 -- no guest scenario ran (see the test output above)"
  status=1
fi

# Every skip with its reason: scenario steps that do not apply to a kernel,
# scenarios a pass leaves to another, host checks that do not apply here.
echo
if [[ -s target/skips.txt ]]; then
  echo "=== skipped: $(wc -l < target/skips.txt), each with its reason ==="
  cat target/skips.txt
else
  echo "=== skipped: none ==="
fi
exit "$status"
