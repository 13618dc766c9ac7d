#!/usr/bin/env bash
# The pincg demo, as root on a fresh Debian/Ubuntu machine: installs what it
# needs, builds, boots a Debian 6.12 kernel under QEMU, runs the agent with
# real io_uring pinning workloads in two cgroups, and prints the per-cgroup
# table and a metrics excerpt.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
tests/guest/install-deps.sh
cargo build --workspace --bins
exec tests/guest/run-guest.sh --series "${PINCG_KERNEL:-6.12}" --out target/guest/demo -- \
  "$PWD/target/debug/pincg-scenario" demo
