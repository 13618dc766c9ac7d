#!/usr/bin/env bash
# fetch-kernel.sh: download and unpack a Debian kernel for the QEMU guest.
#
# Usage: tests/guest/fetch-kernel.sh [SERIES]
#   SERIES  6.12 (default): current kernel of Debian trixie
#           6.1           : current kernel of Debian bookworm
#           7             : newest 7.x kernel of Debian unstable (sid)
#
# Output (stdout, exactly three lines, nothing else):
#   KERNEL=<path to vmlinuz>
#   MODROOT=<dir D such that D/lib/modules/$KVER exists, with depmod output>
#   KVER=<kernel release, as uname -r prints it in the guest>
# Progress and errors go to stderr.
#
# The package is found as the dependency of the linux-image-amd64 metapackage
# in the chosen suite and fetched with `apt-get download` under a PRIVATE apt
# state (own sources list, lists and cache dirs below the cache dir, host
# apt.conf.d hooks cleared). Nothing is installed on the host and the host's
# apt state is not touched. The mirror URI is derived from the host's own apt
# sources (the main Debian archive entry serving the host's codename).
#
# Cache: ${PINCG_CACHE:-/var/cache/pincg}
#   apt/<suite>/                 private apt state per suite
#   kernels/<KVER>/root/         the unpacked package(s) (dpkg -x)
#   kernels/<KVER>/complete      completion marker (= the three output lines)
#   kernels/series-<SERIES>.env  which KVER a series resolved to
# A series whose kernel is complete is served from the cache with no network
# access. Set PINCG_REFRESH=1 to re-resolve the series (picks up a newer
# kernel).
#
# Env:
#   PINCG_CACHE           cache root (default /var/cache/pincg)
#   PINCG_REFRESH=1       ignore the series pointer and ask the mirror again
#   PINCG_DEBIAN_MIRROR   use this archive URI instead of deriving it
#   PINCG_KEYRING         start from this keyring instead of
#                         /usr/share/keyrings/debian-archive-keyring.gpg
set -euo pipefail

PROG=fetch-kernel.sh
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

SERIES=${1:-6.12}
case "$SERIES" in
  6.1)  SUITE=bookworm ;;
  6.12) SUITE=trixie ;;
  7|7.*) SUITE=sid ;;
  *) die "unknown kernel series '$SERIES' (supported: 6.1, 6.12, 7)" ;;
esac

CACHE=${PINCG_CACHE:-/var/cache/pincg}
KDIR_BASE=$CACHE/kernels
mkdir -p "$KDIR_BASE" "$CACHE/apt" || die "cannot create cache dir $CACHE"

# --- fast path: cached, no network -------------------------------------------
serve_cached() {
  local ptr=$KDIR_BASE/series-$SERIES.env kver
  [[ -f "$ptr" ]] || return 1
  kver=$(sed -n 's/^KVER=//p' "$ptr")
  [[ -n "$kver" && -f "$KDIR_BASE/$kver/complete" ]] || return 1
  # Re-check that the files the marker names are still there.
  local k m
  k=$(sed -n 's/^KERNEL=//p' "$KDIR_BASE/$kver/complete")
  m=$(sed -n 's/^MODROOT=//p' "$KDIR_BASE/$kver/complete")
  [[ -f "$k" && -d "$m/lib/modules/$kver" ]] || return 1
  cat "$KDIR_BASE/$kver/complete"
}
if [[ "${PINCG_REFRESH:-0}" != 1 ]] && serve_cached; then
  exit 0
fi

# Serialise concurrent fetches of the same series (parallel test runs).
exec 9>"$KDIR_BASE/.lock-series-$SERIES"
flock 9 || die "cannot lock $KDIR_BASE/.lock-series-$SERIES"
if [[ "${PINCG_REFRESH:-0}" != 1 ]] && serve_cached; then
  exit 0   # another process finished it while we waited
fi

command -v depmod >/dev/null || die "depmod not found (apt-get install kmod)"

# --- private apt state (lib-apt.sh), fresh lists of $SUITE ---------------------
# shellcheck source=lib-apt.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib-apt.sh"
apt_private_init
apt_private_suite

# --- resolve the kernel package -------------------------------------------------
meta=$(apt_cache_p show --no-all-versions linux-image-amd64 2>/dev/null) \
  || die "linux-image-amd64 not found in $SUITE"
meta_ver=$(sed -n 's/^Version: //p' <<<"$meta" | head -n1)
img=$(sed -n 's/^Depends: //p' <<<"$meta" | head -n1 | tr ',' '\n' \
      | sed -n 's/^ *\(linux-image-[^ |]*\).*/\1/p' | head -n1)
[[ -n "$img" ]] || die "cannot find the linux-image-* dependency of linux-image-amd64 $meta_ver in $SUITE"
[[ "$meta_ver" == "$SERIES."* ]] \
  || die "$SUITE's linux-image-amd64 is $meta_ver, not from kernel series $SERIES"
KVER=${img#linux-image-}
KVER=${KVER%-unsigned}
log "$SUITE: linux-image-amd64 $meta_ver -> $img (kernel $KVER)"

# 7.x splits the image into linux-binary-* (vmlinuz) and linux-modules-*; the
# linux-image-* package is then only a metapackage depending on both.
img_deps=$(apt_cache_p show --no-all-versions "$img" | sed -n 's/^Depends: //p' | head -n1 | tr ',' '\n')
split=$(sed -n 's/^ *\(linux-\(binary\|modules\|base\)-[^ |]*\).*/\1/p' <<<"$img_deps")
if [[ -n "$split" ]]; then
  mapfile -t pkgs <<<"$split"
else
  pkgs=("$img")
fi

KDIR=$KDIR_BASE/$KVER
if [[ -f "$KDIR/complete" ]]; then
  log "kernel $KVER already unpacked"
else
  rm -rf "$KDIR/root.tmp" "$APT_DIR"/debs/*.deb
  mkdir -p "$KDIR/root.tmp"
  log "downloading ${pkgs[*]}"
  (cd "$APT_DIR/debs" && apt_p -q download "${pkgs[@]}" >&2) \
    || die "apt-get download ${pkgs[*]} from $SUITE failed"
  for p in "${pkgs[@]}"; do
    deb=$(compgen -G "$APT_DIR/debs/${p}_*.deb" | head -n1 || true)
    [[ -n "$deb" ]] || die "downloaded package file for $p not found in $APT_DIR/debs"
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$KDIR/root.tmp" || die "dpkg -x $deb failed"
  done
  rm -f "$APT_DIR"/debs/*.deb
  rm -rf "$KDIR/root"
  mv "$KDIR/root.tmp" "$KDIR/root"
fi

ROOT=$KDIR/root
# trixie and later are usr-merged: modules under usr/lib/modules.
if [[ -d "$ROOT/lib/modules/$KVER" ]]; then
  MODROOT=$ROOT
elif [[ -d "$ROOT/usr/lib/modules/$KVER" ]]; then
  MODROOT=$ROOT/usr
else
  die "no lib/modules/$KVER or usr/lib/modules/$KVER in $ROOT"
fi
KERNEL=""
for k in "$ROOT/boot/vmlinuz-$KVER" "$MODROOT/lib/modules/$KVER/vmlinuz"; do
  [[ -f "$k" ]] && { KERNEL=$k; break; }
done
[[ -n "$KERNEL" ]] || die "no vmlinuz for $KVER in $ROOT (looked in boot/ and lib/modules/$KVER/)"

if [[ ! -f "$KDIR/complete" ]]; then
  log "depmod -b $MODROOT $KVER"
  depmod -b "$MODROOT" "$KVER" || die "depmod -b $MODROOT $KVER failed"
  printf 'KERNEL=%s\nMODROOT=%s\nKVER=%s\n' "$KERNEL" "$MODROOT" "$KVER" > "$KDIR/complete.tmp"
  mv "$KDIR/complete.tmp" "$KDIR/complete"
fi
cp "$KDIR/complete" "$KDIR_BASE/series-$SERIES.env.tmp"
mv "$KDIR_BASE/series-$SERIES.env.tmp" "$KDIR_BASE/series-$SERIES.env"
cat "$KDIR/complete"
