#!/usr/bin/env bash
# build-initramfs.sh: build the tiny initramfs that boots the QEMU guest.
#
# Usage: tests/guest/build-initramfs.sh KERNEL_ROOT KVER OUT.cpio.gz
#   KERNEL_ROOT  a dir D with D/lib/modules/KVER (fetch-kernel.sh's MODROOT),
#                or the unpacked package root with usr/lib/modules/KVER
#   KVER         kernel release (fetch-kernel.sh's KVER)
#   OUT          the gzip'd newc cpio archive to write
#
# Contents: static busybox (/bin/busybox + applet symlinks), the 9p modules
# (virtio_pci if modular, netfs, 9pnet, 9pnet_virtio, 9p and whatever
# modules.dep says they need) DECOMPRESSED to plain .ko, because busybox insmod
# cannot load .ko.xz/.ko.zst (none for a kernel that has them built in, as
# modules.builtin says: build-kernel.sh's, even without CONFIG_MODULES), and
# two scripts:
#
#   /init    (stage 1, PID 1 in the initramfs): mounts proc/sys/dev, loads the
#            9p modules, mounts the host root read-only at /newroot (9p tag
#            `hostfs`) with tmpfs over the dirs that must be writable and the
#            writable output share (9p tag `out`) at /mnt/out, then
#            switch_root's into it running stage 2. Kernel cmdline inputs:
#            pincg.modroot=DIR pincg.kver=KVER [pincg.debug=1]
#            [pincg.echo=0: do not copy the command's output to the console]
#            [pincg.hostcache=MODE: 9p cache mode of the host root, default loose]
#   /stage2  (PID 1 in the host root): runs `/bin/bash /mnt/out/cmd.sh`,
#            output to a guest tmpfs file and the console, copies it once to
#            /mnt/out/output, writes the exit status to /mnt/out/rc, powers off.
#
# switch_root (not a plain chroot child) matters: PID 1 shares its fs root with
# the kernel threads, so after it the kernel's module autoloader
# (/proc/sys/kernel/modprobe) resolves paths in the host root.
#
# Cached by content: if OUT exists and is newer than this script, busybox and
# the modules it would contain, nothing is done.
set -euo pipefail

PROG=build-initramfs.sh
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }

(($# == 3)) || die "usage: $PROG KERNEL_ROOT KVER OUT.cpio.gz"
KROOT=$1 KVER=$2 OUT=$3

if [[ -d "$KROOT/lib/modules/$KVER" ]]; then
  MODDIR=$KROOT/lib/modules/$KVER
elif [[ -d "$KROOT/usr/lib/modules/$KVER" ]]; then
  MODDIR=$KROOT/usr/lib/modules/$KVER
else
  die "no lib/modules/$KVER under $KROOT (nor usr/lib/modules/$KVER)"
fi
[[ -f "$MODDIR/modules.dep" ]] || die "$MODDIR/modules.dep missing (run depmod -b)"

BUSYBOX=${PINCG_BUSYBOX:-/bin/busybox}
[[ -x "$BUSYBOX" ]] || die "static busybox $BUSYBOX not found (apt-get install busybox-static)"
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
  die "$BUSYBOX is not statically linked (need busybox-static, not busybox)"
fi
command -v cpio >/dev/null || die "cpio not found (apt-get install cpio)"

# --- resolve the modules to include, in load order ------------------------------
# modules.dep lines: "kernel/x/y.ko.xz: dep1.ko.xz dep2.ko.xz"
declare -A DEPS=() PATH_OF=()
while IFS= read -r line; do
  m=${line%%:*}
  DEPS[$m]=${line#*:}
  b=${m##*/}; b=${b%%.ko*}; b=${b//-/_}
  PATH_OF[$b]=$m
done < "$MODDIR/modules.dep"

declare -A SEEN=()
ORDER=()
visit() {
  local m=$1 d
  [[ -n "${SEEN[$m]:-}" ]] && return 0
  SEEN[$m]=1
  for d in ${DEPS[$m]:-}; do visit "$d"; done
  ORDER+=("$m")
}
for want in virtio_pci netfs 9pnet 9pnet_virtio 9p overlay; do
  if [[ -n "${PATH_OF[$want]:-}" ]]; then
    visit "${PATH_OF[$want]}"
  elif grep -qE "/${want//_/[_-]}\.ko$" "$MODDIR/modules.builtin" 2>/dev/null; then
    :   # built into the kernel
  elif [[ "$want" == netfs || "$want" == virtio_pci || "$want" == overlay ]]; then
    :   # optional: not every kernel has/needs it as a module (no overlay:
        # /tmp falls back to a plain tmpfs)
  else
    die "module $want is neither in $MODDIR/modules.dep nor in modules.builtin"
  fi
done

# --- cache check -----------------------------------------------------------------
SELF=$(readlink -f "${BASH_SOURCE[0]}")
if [[ -s "$OUT" ]]; then
  fresh=1
  for f in "$SELF" "$BUSYBOX" "$MODDIR/modules.dep"; do
    [[ "$OUT" -nt "$f" ]] || fresh=0
  done
  for m in "${ORDER[@]}"; do [[ "$OUT" -nt "$MODDIR/$m" ]] || fresh=0; done
  if ((fresh)); then
    log "$OUT is up to date"
    exit 0
  fi
fi

# --- stage the tree ------------------------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/pincg-initramfs.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,sys,newroot,lib/modules,tmp}
cp "$BUSYBOX" "$STAGE/bin/busybox"
for a in $("$STAGE/bin/busybox" --list); do
  [[ "$a" == busybox ]] || ln -s busybox "$STAGE/bin/$a"
done
# The kernel opens /dev/console for init's stdio before /init can mount
# devtmpfs; creating the node needs root (init re-opens it anyway).
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true

: > "$STAGE/modules.load"
for m in "${ORDER[@]}"; do
  src=$MODDIR/$m
  b=${m##*/}; b=${b%%.ko*}.ko
  case "$m" in
    *.ko.xz)  xz -dc "$src" > "$STAGE/lib/modules/$b" || die "xz -d $src failed" ;;
    *.ko.zst) zstd -q -dc "$src" > "$STAGE/lib/modules/$b" || die "zstd -d $src failed" ;;
    *.ko.gz)  gzip -dc "$src" > "$STAGE/lib/modules/$b" || die "gzip -d $src failed" ;;
    *.ko)     cp "$src" "$STAGE/lib/modules/$b" || die "cp $src failed" ;;
    *) die "unknown module file type: $src" ;;
  esac
  echo "$b" >> "$STAGE/modules.load"
done
log "modules for $KVER: $(tr '\n' ' ' < "$STAGE/modules.load")"

# --- stage 1: /init ---------------------------------------------------------------
cat > "$STAGE/init" <<'INIT'
#!/bin/busybox sh
# pincg guest stage 1 (initramfs PID 1). Generated by build-initramfs.sh.
export PATH=/bin
fail() {
  echo "pincg-init: FAILED: $*"
  echo "PINCG-INIT-FAILED"
  poweroff -f
  sleep 10
  exit 1   # init exiting panics; panic=-1 + -no-reboot ends QEMU
}
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs on /dev"
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc || fail "mount proc on /proc"
mount -t sysfs sysfs /sys || fail "mount sysfs on /sys"

MODROOT= KVER= DEBUG=0 HOSTCACHE=loose
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    pincg.modroot=*) MODROOT=${arg#*=} ;;
    pincg.kver=*)    KVER=${arg#*=} ;;
    pincg.debug=1)   DEBUG=1 ;;
    pincg.hostcache=*) HOSTCACHE=${arg#*=} ;;
  esac
done
[ -n "$KVER" ] || KVER=$(uname -r)
PROC=/proc   # becomes /newroot/proc once moved
t() { [ "$DEBUG" = 1 ] && echo "pincg-init: $(cut -d' ' -f1 $PROC/uptime)s $*"; return 0; }
t "stage1 start"

while read -r m; do
  if [ "$m" = overlay.ko ]; then
    insmod "/lib/modules/$m" || echo "pincg-init: warning: insmod overlay failed"
  else
    insmod "/lib/modules/$m" || fail "insmod $m"
  fi
done < /modules.load
t "modules loaded"

# Host root, read-only. cache=loose: the share is read-only and the host does
# not change the files a run uses while it runs, so caching data and metadata
# in the guest page/dentry cache is correct and much faster than cache=none.
# (pincg.hostcache=MODE overrides it, for measurements.)
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=$HOSTCACHE hostfs /newroot \
  || fail "mount 9p hostfs (host root) on /newroot"
t "hostfs mounted"

N=/newroot
# Writable places on tmpfs. /mnt is replaced too: the share mount point
# /mnt/out must exist and the host root cannot be written. The host's /tmp
# stays visible (read-only) at /mnt/host-tmp.
mount -t tmpfs -o mode=0755 tmpfs $N/run || fail "mount tmpfs on /run"
mount -t tmpfs -o mode=0755 tmpfs $N/mnt || fail "mount tmpfs on /mnt"
mkdir -p $N/mnt/out $N/mnt/host-tmp $N/run/lock $N/run/pincg/bin
mount -o bind $N/tmp $N/mnt/host-tmp || fail "bind host /tmp on /mnt/host-tmp"
# /tmp: the host's /tmp (so scripts and binaries a test put there run, and a
# working dir there exists) with writes going to guest memory: an overlay
# with the read-only 9p /tmp below a tmpfs upper layer. Plain tmpfs if the
# kernel has no overlayfs.
U=$N/run/pincg/tmp-overlay
mkdir -p $U/upper $U/work && chmod 1777 $U/upper
if ! mount -t overlay -o lowerdir=$N/tmp,upperdir=$U/upper,workdir=$U/work overlay $N/tmp 2>/dev/null; then
  echo "pincg-init: warning: overlay on /tmp failed; /tmp is an empty tmpfs"
  mount -t tmpfs -o mode=1777 tmpfs $N/tmp || fail "mount tmpfs on /tmp"
fi
mount -t tmpfs -o mode=1777 tmpfs $N/var/tmp || fail "mount tmpfs on /var/tmp"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out $N/mnt/out \
  || fail "mount 9p out (output share) on /mnt/out"

# Move the kernel filesystems over and add the rest.
mount -o move /dev $N/dev || fail "move /dev"
mount -o move /proc $N/proc || fail "move /proc"
PROC=$N/proc
mount -o move /sys $N/sys || fail "move /sys"
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $N/dev/pts || fail "mount devpts"
mount -t tmpfs -o mode=1777 tmpfs $N/dev/shm || fail "mount tmpfs on /dev/shm"
ln -sf /proc/self/fd $N/dev/fd
ln -sf /proc/self/fd/0 $N/dev/stdin
ln -sf /proc/self/fd/1 $N/dev/stdout
ln -sf /proc/self/fd/2 $N/dev/stderr
mount -t tracefs tracefs $N/sys/kernel/tracing || fail "mount tracefs"
mount -t debugfs debugfs $N/sys/kernel/debug || fail "mount debugfs"
mount -t securityfs securityfs $N/sys/kernel/security || fail "mount securityfs"
mount -t bpf -o mode=0700 bpf $N/sys/fs/bpf || fail "mount bpffs"
mount -t cgroup2 -o nsdelegate cgroup2 $N/sys/fs/cgroup || fail "mount cgroup2"
t "mounts done"

# Module loading: the guest kernel's modules live in the host's cache dir
# (MODROOT), not in /lib/modules. Wrappers add -d/-b; the kernel autoloader
# uses the same wrapper (valid after switch_root, see below).
P=$N/run/pincg
if [ -n "$MODROOT" ] && [ -d "$N$MODROOT/lib/modules/$KVER" ]; then
  printf '#!/bin/sh\nexec /sbin/modprobe -d "%s" "$@"\n' "$MODROOT" > $P/modprobe
  printf '#!/bin/sh\nexec /sbin/modinfo -b "%s" "$@"\n' "$MODROOT" > $P/modinfo
  chmod 755 $P/modprobe $P/modinfo
  ln -s ../modprobe $P/bin/modprobe
  ln -s ../modinfo $P/bin/modinfo
  # A kernel without CONFIG_MODULES has no autoloader to point (and nothing
  # to load: `modprobe NAME` of a built-in module succeeds via
  # modules.builtin).
  if [ -e $PROC/sys/kernel/modprobe ]; then
    echo /run/pincg/modprobe > $PROC/sys/kernel/modprobe \
      || fail "set /proc/sys/kernel/modprobe"
  fi
else
  echo "pincg-init: warning: no modules at $MODROOT/lib/modules/$KVER; modprobe will not work"
fi
cp /bin/busybox $P/busybox || fail "copy busybox to /run/pincg"
cp /stage2 $P/stage2 || fail "copy stage2 to /run/pincg"
export PINCG_MODROOT="$MODROOT" PINCG_KVER="$KVER" PINCG_DEBUG="$DEBUG"
t "switch_root"
exec switch_root $N /run/pincg/busybox sh /run/pincg/stage2
fail "switch_root to $N"
INIT

# --- stage 2: run the command ---------------------------------------------------------
cat > "$STAGE/stage2" <<'STAGE2'
# pincg guest stage 2 (PID 1 after switch_root into the host root).
# Generated by build-initramfs.sh.
BB=/run/pincg/busybox
P=/run/pincg
export PATH=$P/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb PINCG_IN_GUEST=1 PINCG_GUEST_BIN=$P/bin
t() { [ "$PINCG_DEBUG" = 1 ] && echo "pincg-stage2: $($BB cut -d' ' -f1 /proc/uptime)s $*"; return 0; }
t "start"
$BB hostname pincg-guest
$BB ip link set lo up 2>/dev/null || echo "pincg-stage2: warning: could not bring up lo"

# Coldplug: there is no udev, so load drivers for the virtio devices that have
# none yet (virtio_net for --rdma-net), in one modprobe call. Only virtio: a
# PCI coldplug would load libata/scsi/i2c for the emulated chipset, ~1-1.5 s
# of useless work under TCG. Other drivers: modprobe them in the command.
aliases=""
for d in /sys/bus/virtio/devices/*; do
  [ -e "$d/modalias" ] && [ ! -e "$d/driver" ] && aliases="$aliases $($BB cat "$d/modalias")"
done
if [ -n "$aliases" ] && [ -x $P/modprobe ]; then
  $P/modprobe -q -a $aliases 2>/dev/null
fi
t "coldplug done"

# Output: the command writes into a FIFO; tee copies it to a tmpfs file and the
# console. (A plain pipe would make us wait for any background process the
# command left running; with the FIFO we stop waiting shortly after the
# command itself exits.)
ECHO=/dev/console
$BB grep -qw 'pincg.echo=0' /proc/cmdline && ECHO=/dev/null
$BB mkfifo $P/fifo
$BB tee $P/output < $P/fifo > $ECHO &
teepid=$!
# The first memory cgroup flips the slab allocator's kmem static key, a live
# text patch of kmem_cache_alloc. Under TCG that patch can race the vCPU
# running the code (seen: an oops at the patched nop, 6.12 guest, a scenario's
# first `+memory`). Flip it here, before the command starts, where a crash
# counts as a boot failure and is retried; the controller is left as found.
if echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
  $BB mkdir /sys/fs/cgroup/pincg-kmem-warmup && $BB rmdir /sys/fs/cgroup/pincg-kmem-warmup
  echo -memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
    || echo "pincg-stage2: warning: could not disable the memory controller again"
fi
t "kmem static key flipped"
# run-guest.sh tells a guest that died booting (retried) from one that died
# running the command (reported) by this line on the console.
echo "pincg-stage2: command started" > /dev/console
if [ -f /mnt/out/cmd.sh ]; then
  /bin/bash /mnt/out/cmd.sh < /dev/null > $P/fifo 2>&1
  rc=$?
else
  echo "pincg-stage2: /mnt/out/cmd.sh not found" > $P/fifo
  rc=127
fi
t "command exited with $rc"
i=0
while kill -0 $teepid 2>/dev/null && [ $i -lt 20 ]; do $BB usleep 100000; i=$((i+1)); done
kill $teepid 2>/dev/null

# One copy to the 9p share (many small 9p writes are slow).
$BB cp $P/output /mnt/out/output || echo "pincg-stage2: copying output to /mnt/out failed"
echo $rc > /mnt/out/rc.tmp && $BB mv /mnt/out/rc.tmp /mnt/out/rc \
  || echo "pincg-stage2: writing /mnt/out/rc failed"
$BB sync
t "poweroff"
$BB poweroff -f
STAGE2
chmod 755 "$STAGE/init" "$STAGE/stage2"

# --- pack -------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")" || die "cannot create the directory of $OUT"
TMP_OUT=$(mktemp "$OUT.XXXXXX") || die "cannot create a temp file next to $OUT"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z \
  | cpio --null -o -H newc --owner 0:0 --quiet | gzip -1) > "$TMP_OUT" \
  || { rm -f "$TMP_OUT"; die "cpio/gzip of $STAGE into $OUT failed"; }
chmod 644 "$TMP_OUT"
mv "$TMP_OUT" "$OUT"
log "wrote $OUT ($(du -k "$OUT" | cut -f1) KiB)"
