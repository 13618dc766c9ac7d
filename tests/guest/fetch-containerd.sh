#!/usr/bin/env bash
# fetch-containerd.sh: download and unpack Debian's containerd and runc for the
# NRI guest scenarios.
#
# Usage: tests/guest/fetch-containerd.sh
#
# Output (stdout, exactly one line): ROOT=<dir> with ROOT/usr/bin/containerd,
# ROOT/usr/bin/containerd-shim-runc-v2, ROOT/usr/bin/ctr and ROOT/usr/sbin/runc.
# The guest sees the host root read-only, so the binaries unpacked here run in
# the guest as they are.
#
# containerd comes from trixie (1.7.x: the first series with NRI; it needs
# libc6 >= 2.34), runc from bookworm (trixie's runc needs libc6 >= 2.38, newer
# than a bookworm host's). Both are fetched with `apt-get download` under the
# private apt state of lib-apt.sh and unpacked with dpkg -x: nothing is
# installed on the host.
#
# Cache: ${PINCG_CACHE:-/var/cache/pincg}/containerd/<containerd version>/
# (complete marker = the output line). Served with no network once done.
set -euo pipefail

PROG=fetch-containerd.sh
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

CACHE=${PINCG_CACHE:-/var/cache/pincg}
BASE=$CACHE/containerd
mkdir -p "$BASE" || die "cannot create $BASE"
PTR=$BASE/current.env
if [[ "${PINCG_REFRESH:-0}" != 1 && -f "$PTR" ]]; then
  root=$(sed -n 's/^ROOT=//p' "$PTR")
  if [[ -x "$root/usr/bin/containerd" && -x "$root/usr/sbin/runc" ]]; then cat "$PTR"; exit 0; fi
fi
exec 9>"$BASE/.lock"
flock 9 || die "cannot lock $BASE/.lock"

# shellcheck source=lib-apt.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib-apt.sh"

# fetch_pkg SUITE PKG DEST: download PKG from SUITE and unpack it into DEST.
fetch_pkg() {
  local deb
  SUITE=$1
  apt_private_init
  apt_private_suite
  rm -f "$APT_DIR"/debs/*.deb
  (cd "$APT_DIR/debs" && apt_p -q download "$2" >&2) || die "apt-get download $2 from $1 failed"
  deb=$(compgen -G "$APT_DIR/debs/${2}_*.deb" | head -n1 || true)
  [[ -n "$deb" ]] || die "downloaded package file for $2 not found in $APT_DIR/debs"
  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$3" || die "dpkg -x $deb failed"
  rm -f "$deb"
}

TMP=$BASE/root.tmp
rm -rf "$TMP" && mkdir -p "$TMP"
fetch_pkg trixie containerd "$TMP"
fetch_pkg bookworm runc "$TMP"
[[ -x "$TMP/usr/bin/containerd" ]] || die "no usr/bin/containerd in the containerd package"
[[ -x "$TMP/usr/sbin/runc" ]] || die "no usr/sbin/runc in the runc package"
ver=$("$TMP/usr/bin/containerd" --version | awk '{print $3}')
[[ -n "$ver" ]] || die "cannot read containerd's version"
rm -rf "${BASE:?}/$ver"
mv "$TMP" "$BASE/$ver"
printf 'ROOT=%s\n' "$BASE/$ver" > "$PTR.tmp"
mv "$PTR.tmp" "$PTR"
cat "$PTR"
