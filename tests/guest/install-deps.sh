#!/usr/bin/env bash
# install-deps.sh: install every Debian package the QEMU guest harness and the
# project build need, on a fresh Debian 12 (bookworm) machine.
#
# Idempotent and fast on reruns: if dpkg-query reports every package as
# installed, apt-get is not run at all (no network, no lock).
#
# Usage: tests/guest/install-deps.sh [--kernel-build]
#   --kernel-build  also the packages build-kernel.sh needs to compile a guest
#                   kernel from Debian's linux-source package (compiler,
#                   bison/flex, libelf/libssl headers, pahole for BTF, ...)
# Env:   PINCG_EXTRA_DEPS  optional extra package names (space separated)
set -euo pipefail

KBUILD=0
case "${1:-}" in
  "") ;;
  --kernel-build) KBUILD=1 ;;
  *) echo "install-deps.sh: usage: install-deps.sh [--kernel-build]" >&2; exit 2 ;;
esac

PKGS=(
  # guest harness (seabios: the BIOS image; ipxe-qemu: the virtio-net option
  # ROM that -device virtio-net-pci loads; both are only Recommends/indirect)
  qemu-system-x86 seabios ipxe-qemu busybox-static cpio kmod xz-utils zstd
  debian-archive-keyring
  # eBPF build toolchain (clang-format: the BPF C's house style, .clang-format)
  clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool pkg-config dwarves clang-format
  # test workloads: io_uring, RDMA (soft-RoCE via rdma_rxe), networking
  liburing-dev rdma-core ibverbs-providers libibverbs-dev iproute2
  # metrics scraping in integration tests
  prometheus
  # protoc: the k8s-cri crate (the NRI scenario's CRI client) generates at build time
  protobuf-compiler
  # tests/src/shipped.rs reads the DaemonSet's YAML with /usr/bin/python3
  python3-yaml
)
# Only for build-kernel.sh (tests/guest/build-kernel.sh): building a kernel
# with BTF (dwarves = pahole) from the linux-source-* package (a .tar.xz).
KBUILD_PKGS=(
  build-essential bc bison flex libelf-dev libssl-dev dwarves xz-utils cpio
  kmod perl
)
((KBUILD)) && PKGS+=("${KBUILD_PKGS[@]}")
# shellcheck disable=SC2206
PKGS+=(${PINCG_EXTRA_DEPS:-})

die() { echo "install-deps.sh: $*" >&2; exit 1; }

# Which packages are not yet fully installed?
missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$st" == installed ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps.sh: all ${#PKGS[@]} packages already installed" >&2
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "need root to install: ${missing[*]}"

echo "install-deps.sh: installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2 || die "apt-get update failed"
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
  || die "apt-get install failed for: ${missing[*]}"

# Verify: a package that apt silently skipped would otherwise go unnoticed.
for p in "${missing[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$st" == installed ]] || die "package $p is still not installed after apt-get install"
done
echo "install-deps.sh: done" >&2
