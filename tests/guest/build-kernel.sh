#!/usr/bin/env bash
# build-kernel.sh: build (once) a guest kernel that Debian does not ship, from
# Debian's own kernel source package and a config fragment of ours.
#
# Usage: tests/guest/build-kernel.sh [FLAVOR]
#   FLAVOR  iommufd (default): linux-source-6.12 from Debian trixie, configured
#           as tinyconfig + tests/guest/kernel-iommufd.config (iommufd, VFIO
#           cdev, Intel IOMMU, soft-RoCE, io_uring, BPF with BTF/LSM/fentry,
#           9p/virtio, everything built in, no modules)
#
# Output (stdout, exactly three lines, as fetch-kernel.sh prints them):
#   KERNEL=<path to the bzImage>
#   MODROOT=<dir D with D/lib/modules/$KVER: modules.builtin + depmod output>
#   KVER=<kernel release, as uname -r prints it in the guest>
# Progress, the build's wall time and errors go to stderr.
#
# Steps (each cached): download linux-source-<ver> with `apt-get download`
# under the same private apt state as fetch-kernel.sh (lib-apt.sh; the mirror
# comes from the host's apt sources), unpack its tarball, configure
# (`make tinyconfig`, `scripts/kconfig/merge_config.sh` with the fragment,
# `make olddefconfig`), check that every option of the fragment came out as
# asked (else print the ones that did not and fail), `make -j$(nproc)
# bzImage`, and store the result in the layout fetch-kernel.sh produces.
# Build dependencies: `install-deps.sh --kernel-build` (does nothing if they
# are installed).
#
# Cache: ${PINCG_CACHE:-/var/cache/pincg}/kernels/
#   custom-<FLAVOR>-<HASH>/root/boot/vmlinuz-<KVER>     the kernel (+ config-, System.map-)
#   custom-<FLAVOR>-<HASH>/root/usr/lib/modules/<KVER>/ modules.builtin[.modinfo], depmod output
#   custom-<FLAVOR>-<HASH>/build.log                    the configure + build log
#   custom-<FLAVOR>-<HASH>/complete                     completion marker (= the output lines)
#   series-<FLAVOR>.env                                 the last build of FLAVOR (+ SRCVER=, HASH=)
#   src/<srcpkg>-<SRCVER>/                              the unpacked source tree (read-only input)
#   build/<FLAVOR>/                                     the O= build dir, reused: after a change
#                                                       of the fragment only what changed is rebuilt
# HASH covers the fragment, the source package version and this script. A
# cache hit (series pointer -> complete build with that hash) needs no network
# and no make. KVER is <kernel version>-pincg-<FLAVOR>-<first 8 of HASH>.
#
# Env:
#   PINCG_CACHE           cache root (default /var/cache/pincg)
#   PINCG_REFRESH=1       ask the mirror for the newest source package version
#                         (otherwise the version of the last build is kept)
#   PINCG_KBUILD_CLEAN=1  start from an empty build dir (a cold build)
#   PINCG_KBUILD_JOBS     make -j value (default: nproc)
#   PINCG_DEBIAN_MIRROR, PINCG_KEYRING: see lib-apt.sh
set -euo pipefail

PROG=build-kernel.sh
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")

FLAVOR=${1:-iommufd}
case "$FLAVOR" in
  iommufd)
    SUITE=trixie SRCPKG=linux-source-6.12 BASECONFIG=tinyconfig
    FRAGMENT=$HERE/kernel-iommufd.config ;;
  *) die "unknown kernel flavor '$FLAVOR' (supported: iommufd)" ;;
esac
[[ -f "$FRAGMENT" ]] || die "config fragment $FRAGMENT not found"

CACHE=${PINCG_CACHE:-/var/cache/pincg}
KDIR_BASE=$CACHE/kernels
mkdir -p "$KDIR_BASE" "$CACHE/apt" || die "cannot create cache dir $CACHE"
POINTER=$KDIR_BASE/series-$FLAVOR.env

# build_hash SRCVER: what the cache is keyed by.
build_hash() {
  { printf 'flavor=%s srcpkg=%s srcver=%s base=%s\n' "$FLAVOR" "$SRCPKG" "$1" "$BASECONFIG"
    echo "--- fragment"; cat "$FRAGMENT"
    echo "--- script"; cat "$SELF"
  } | sha256sum | cut -c1-16
}

# serve HASH: print the complete build with that hash, if it is intact.
serve() {
  local d=$KDIR_BASE/custom-$FLAVOR-$1 k m v
  [[ -f "$d/complete" ]] || return 1
  k=$(sed -n 's/^KERNEL=//p' "$d/complete")
  m=$(sed -n 's/^MODROOT=//p' "$d/complete")
  v=$(sed -n 's/^KVER=//p' "$d/complete")
  [[ -f "$k" && -f "$m/lib/modules/$v/modules.dep" ]] || return 1
  cat "$d/complete"
}

pointer_srcver() { [[ -f "$POINTER" ]] && sed -n 's/^SRCVER=//p' "$POINTER"; }

# set_pointer HASH SRCVER
set_pointer() {
  { cat "$KDIR_BASE/custom-$FLAVOR-$1/complete"; echo "SRCVER=$2"; echo "HASH=$1"; } > "$POINTER.tmp"
  mv "$POINTER.tmp" "$POINTER"
}

# --- fast path: the last build's source version, same fragment and script ------------
if [[ "${PINCG_REFRESH:-0}" != 1 ]] && SRCVER=$(pointer_srcver) && [[ -n "$SRCVER" ]]; then
  serve "$(build_hash "$SRCVER")" && exit 0
fi

exec 9>"$KDIR_BASE/.lock-custom-$FLAVOR"
flock 9 || die "cannot lock $KDIR_BASE/.lock-custom-$FLAVOR"
T0=$SECONDS

# --- which source version ----------------------------------------------------------------
# Without PINCG_REFRESH, keep the version of the last build if its source tree
# is still unpacked (no network); otherwise ask the mirror.
SRCVER=""
if [[ "${PINCG_REFRESH:-0}" != 1 ]]; then
  SRCVER=$(pointer_srcver || true)
  if [[ -n "$SRCVER" ]]; then
    serve "$(build_hash "$SRCVER")" && exit 0   # built while we waited for the lock
    [[ -f "$KDIR_BASE/src/$SRCPKG-$SRCVER/complete" ]] || SRCVER=""
  fi
fi
APT_READY=0
if [[ -z "$SRCVER" ]]; then
  # shellcheck source=lib-apt.sh
  . "$HERE/lib-apt.sh"
  apt_private_init
  apt_private_suite
  APT_READY=1
  SRCVER=$(apt_cache_p show --no-all-versions "$SRCPKG" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
  [[ -n "$SRCVER" ]] || die "$SRCPKG not found in $SUITE"
  log "$SUITE: $SRCPKG $SRCVER"
fi

HASH=$(build_hash "$SRCVER")
if serve "$HASH" >/dev/null; then
  set_pointer "$HASH" "$SRCVER"
  serve "$HASH"
  exit 0
fi
OUTDIR=$KDIR_BASE/custom-$FLAVOR-$HASH

"$HERE/install-deps.sh" --kernel-build || die "install-deps.sh --kernel-build failed"
for tool in make gcc bison flex bc pahole depmod xz; do
  command -v "$tool" >/dev/null || die "$tool not found (tests/guest/install-deps.sh --kernel-build)"
done
log "pahole $(pahole --version), $(gcc --version | head -n1)"

# --- the source tree ------------------------------------------------------------------------
SRCTOP=$KDIR_BASE/src/$SRCPKG-$SRCVER
SRC=$SRCTOP/${SRCPKG}
if [[ ! -f "$SRCTOP/complete" ]]; then
  if ((!APT_READY)); then
    # shellcheck source=lib-apt.sh
    . "$HERE/lib-apt.sh"
    apt_private_init
    apt_private_suite
  fi
  rm -f "$APT_DIR"/debs/"$SRCPKG"_*.deb
  log "downloading $SRCPKG=$SRCVER"
  (cd "$APT_DIR/debs" && apt_p -q download "$SRCPKG=$SRCVER" >&2) \
    || die "apt-get download $SRCPKG=$SRCVER from $SUITE failed"
  deb=$(compgen -G "$APT_DIR/debs/${SRCPKG}_*.deb" | head -n1 || true)
  [[ -n "$deb" ]] || die "downloaded package file for $SRCPKG not found in $APT_DIR/debs"
  log "unpacking the source tarball of $(basename "$deb")"
  rm -rf "$SRCTOP"
  mkdir -p "$SRCTOP"
  # The package holds usr/src/<srcpkg>.tar.xz; unpack it without the detour.
  dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$SRCPKG.tar.xz" | tar -xJ -C "$SRCTOP" \
    || die "unpacking usr/src/$SRCPKG.tar.xz of $deb failed"
  [[ -f "$SRC/Makefile" ]] || die "no $SRC/Makefile after unpacking $deb"
  rm -f "$deb"
  echo "$SRCVER" > "$SRCTOP/complete"
fi

T_SRC=$((SECONDS - T0))

# --- configure -------------------------------------------------------------------------------
T1=$SECONDS
BUILD=$KDIR_BASE/build/$FLAVOR
if [[ "${PINCG_KBUILD_CLEAN:-0}" == 1 || "$(cat "$BUILD/.pincg-src" 2>/dev/null)" != "$SRC" ]]; then
  rm -rf "$BUILD"
fi
mkdir -p "$BUILD"
echo "$SRC" > "$BUILD/.pincg-src"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
LOG=$OUTDIR/build.log
: > "$LOG"
JOBS=${PINCG_KBUILD_JOBS:-$(nproc)}
LOCALVERSION=-pincg-$FLAVOR-${HASH:0:8}
MAKE=(make -C "$SRC" O="$BUILD" ARCH=x86_64 LOCALVERSION="$LOCALVERSION")

# fail_with MSG: the last 50 lines of the log, then die.
fail_with() {
  echo "$PROG: last 50 lines of $LOG:" >&2
  tail -n 50 "$LOG" >&2
  die "$1"
}

log "configuring $SRCPKG $SRCVER: $BASECONFIG + $(basename "$FRAGMENT") (log: $LOG)"
{
  echo "### $(date -u +%FT%TZ) $PROG $FLAVOR: $SRCPKG $SRCVER, hash $HASH"
  echo "### pahole $(pahole --version), $(gcc --version | head -n1)"
} >> "$LOG"
"${MAKE[@]}" "$BASECONFIG" >> "$LOG" 2>&1 || fail_with "make $BASECONFIG failed"
# -m: merge only; olddefconfig then fills in the dependencies' defaults.
(cd "$BUILD" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "$FRAGMENT") >> "$LOG" 2>&1 \
  || fail_with "merge_config.sh failed"
"${MAKE[@]}" olddefconfig >> "$LOG" 2>&1 || fail_with "make olddefconfig failed"

# Every option of the fragment must have come out as asked: kconfig silently
# drops what an unmet dependency does not allow.
bad=0
while IFS= read -r line; do
  if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    sym=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
  elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
    sym=${BASH_REMATCH[1]} want=n
  else
    continue
  fi
  got=$(grep -E "^$sym=|^# $sym is not set" "$BUILD/.config" | head -n1 || true)
  case "$got" in
    "$sym="*) got=${got#"$sym="} ;;
    "# $sym is not set") got=n ;;
    *) got="(absent)" ;;
  esac
  if [[ "$got" != "$want" ]] && ! [[ "$want" == n && "$got" == "(absent)" ]]; then
    echo "$PROG:   $sym: asked $want, got $got" >&2
    bad=1
  fi
done < "$FRAGMENT"
((bad == 0)) || die "the options above did not end up as $(basename "$FRAGMENT") asks (unmet dependencies? see $BUILD/.config)"
cp "$BUILD/.config" "$OUTDIR/config"
T_CONF=$((SECONDS - T1))

# --- build -------------------------------------------------------------------------------------
MODULES=0
grep -q '^CONFIG_MODULES=y' "$BUILD/.config" && MODULES=1
targets=(bzImage)
((MODULES)) && targets+=(modules)
log "building ${targets[*]} with -j$JOBS (log: $LOG)"
T2=$SECONDS
"${MAKE[@]}" -j"$JOBS" "${targets[@]}" >> "$LOG" 2>&1 || fail_with "make ${targets[*]} failed"
T_BUILD=$((SECONDS - T2))
KVER=$("${MAKE[@]}" -s kernelrelease 2>>"$LOG") || fail_with "make kernelrelease failed"
[[ "$KVER" == *"$LOCALVERSION" ]] || die "unexpected kernel release '$KVER'"
grep -q '\.BTF' <(readelf -S "$BUILD/vmlinux" 2>/dev/null) || die "$BUILD/vmlinux has no .BTF section"

# --- install in fetch-kernel.sh's layout ---------------------------------------------------------
ROOT=$OUTDIR/root
MODROOT=$ROOT/usr
MODDIR=$MODROOT/lib/modules/$KVER
mkdir -p "$ROOT/boot" "$MODDIR"
cp "$BUILD/arch/x86/boot/bzImage" "$ROOT/boot/vmlinuz-$KVER"
cp "$BUILD/.config" "$ROOT/boot/config-$KVER"
cp "$BUILD/System.map" "$ROOT/boot/System.map-$KVER"
if ((MODULES)); then
  "${MAKE[@]}" INSTALL_MOD_PATH="$MODROOT" INSTALL_MOD_STRIP=1 DEPMOD=true modules_install >> "$LOG" 2>&1 \
    || fail_with "make modules_install failed"
  rm -f "$MODDIR/build" "$MODDIR/source"
else
  # No modules: what modprobe needs to know that a module is built in (kmod's
  # modprobe of a built-in module succeeds if depmod's modules.builtin.bin
  # lists it), and an empty modules.order.
  for f in modules.builtin modules.builtin.modinfo; do
    [[ -f "$BUILD/$f" ]] || die "$BUILD/$f missing after the build"
    cp "$BUILD/$f" "$MODDIR/$f"
  done
  : > "$MODDIR/modules.order"
fi
depmod -b "$MODROOT" "$KVER" >> "$LOG" 2>&1 || fail_with "depmod -b $MODROOT $KVER failed"
printf 'KERNEL=%s\nMODROOT=%s\nKVER=%s\n' "$ROOT/boot/vmlinuz-$KVER" "$MODROOT" "$KVER" > "$OUTDIR/complete.tmp"
mv "$OUTDIR/complete.tmp" "$OUTDIR/complete"
set_pointer "$HASH" "$SRCVER"
# Source trees of older versions are no longer used (the build dir follows
# the newest); ~1.5 GB each.
for old in "$KDIR_BASE/src/$SRCPKG"-*; do
  [[ -d "$old" && "$old" != "$SRCTOP" ]] && rm -rf "$old"
done
T_ALL=$((SECONDS - T0))
msg="built $KVER in $((T_ALL / 60))m$((T_ALL % 60))s wall time (apt+deps+source ${T_SRC}s, configure ${T_CONF}s, make ${T_BUILD}s with -j$JOBS)"
log "$msg"
echo "### $msg" >> "$LOG"
cat "$OUTDIR/complete"
