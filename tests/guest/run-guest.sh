#!/usr/bin/env bash
# run-guest.sh: run one command inside a QEMU (TCG) guest that boots a Debian
# kernel and uses the host's root filesystem read-only over 9p.
#
# Usage:
#   tests/guest/run-guest.sh [--series 6.12] [--timeout SECONDS] [--mem 2G]
#       [--smp 2] [--vfio] [--rdma-net] [--env NAME[=VALUE]]... [--append ARGS]
#       [--console] [--debug] [--no-echo] --out DIR -- COMMAND [ARG...]
#
#   --series S     kernel series: 6.12 (default), 6.1, 7 (Debian's, via
#                  fetch-kernel.sh) or iommufd (6.12 with iommufd, compiled
#                  by build-kernel.sh; everything built in, no modules)
#   --timeout N    kill QEMU after N seconds of wall time (default 300); exit 124
#   --mem M        guest memory (default 2G)
#   --smp N        guest CPUs (default 2)
#   --vfio         q35 + emulated Intel IOMMU (intremap) + two QEMU `edu` PCI
#                  devices (two IOMMU groups, as a VM with two assigned
#                  devices), guest cmdline intel_iommu=on: for VFIO tests
#   --rdma-net     a virtio-net NIC on a restricted user-mode network (nothing
#                  leaves the guest), for rdma_rxe (soft-RoCE) tests
#   --env N[=V]    also pass variable N (with value V, or the caller's value)
#   --append ARGS  extra kernel command line arguments
#   --console      stream the guest serial console to stderr while running
#   --debug        stage timestamps on the console (pincg.debug=1)
#   --no-echo      do not copy COMMAND's output to the serial console (it costs
#                  about 4 s per MiB under TCG); DIR/output still gets it all
#   --out DIR      work dir shared writable with the guest (created if needed;
#                  at /mnt/out in the guest). Holds cmd.sh (the generated
#                  script), console.log, qemu.log, output and rc afterwards.
#
# COMMAND runs as root in the guest with bash, in the caller's working
# directory, with the caller's PATH (plus a modprobe/modinfo wrapper dir in
# front) and a set of the caller's variables (locale, RUST_*, CARGO_*,
# PINCG_*, ...). Its stdin is /dev/null; stdout and stderr are merged.
# In the guest: PINCG_IN_GUEST=1, PINCG_MODROOT, PINCG_KVER.
#
# Exit status: COMMAND's status; 124 on timeout; 125 if the guest died
# without reporting a status (last 50 console lines go to stderr) or QEMU
# failed; 2 on a usage error. On completion COMMAND's output goes to stdout.
#
# Env: PINCG_CACHE (see fetch-kernel.sh, build-kernel.sh), PINCG_QEMU
# (default qemu-system-x86_64).
# shellcheck disable=SC2054,SC2016,SC2317 # commas are QEMU option syntax; the
# guest expands PINCG_GUEST_BIN; on_signal is called by trap
set -euo pipefail

PROG=run-guest.sh
die()   { echo "$PROG: error: $*" >&2; exit 125; }
usage() { echo "$PROG: $*" >&2; sed -n '4,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
SERIES=6.12 TIMEOUT=300 MEM=2G SMP=2 VFIO=0 RDMA=0 OUT="" APPEND="" CONSOLE=0 DEBUG=0 NOECHO=0
EXTRA_ENV=()
while (($#)); do
  case "$1" in
    --series)  (($# >= 2)) || usage "--series needs a value"; SERIES=$2; shift 2 ;;
    --timeout) (($# >= 2)) || usage "--timeout needs a value"; TIMEOUT=$2; shift 2 ;;
    --mem)     (($# >= 2)) || usage "--mem needs a value"; MEM=$2; shift 2 ;;
    --smp)     (($# >= 2)) || usage "--smp needs a value"; SMP=$2; shift 2 ;;
    --out)     (($# >= 2)) || usage "--out needs a value"; OUT=$2; shift 2 ;;
    --env)     (($# >= 2)) || usage "--env needs a value"; EXTRA_ENV+=("$2"); shift 2 ;;
    --append)  (($# >= 2)) || usage "--append needs a value"; APPEND=$2; shift 2 ;;
    --vfio)     VFIO=1; shift ;;
    --rdma-net) RDMA=1; shift ;;
    --console)  CONSOLE=1; shift ;;
    --debug)    DEBUG=1; shift ;;
    --no-echo)  NOECHO=1; shift ;;
    --) shift; break ;;
    *) usage "unknown option '$1' (the command goes after --)" ;;
  esac
done
(($# >= 1)) || usage "no COMMAND given after --"
[[ -n "$OUT" ]] || usage "--out DIR is required"
[[ "$TIMEOUT" =~ ^[0-9]+$ && "$TIMEOUT" -gt 0 ]] || usage "--timeout must be a positive integer (seconds)"
[[ "$SMP" =~ ^[0-9]+$ && "$SMP" -gt 0 ]] || usage "--smp must be a positive integer"

QEMU=${PINCG_QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || die "$QEMU not found (run tests/guest/install-deps.sh)"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

# --- kernel and initramfs (both cached) ----------------------------------------------
# Debian's own kernels are downloaded; a series Debian does not build
# (iommufd) is compiled from Debian's kernel source by build-kernel.sh (once:
# the first run takes about ten minutes, later ones hit its cache).
case "$SERIES" in
  iommufd) KSCRIPT=build-kernel.sh ;;
  *)       KSCRIPT=fetch-kernel.sh ;;
esac
kinfo=$("$HERE/$KSCRIPT" "$SERIES") || die "$KSCRIPT $SERIES failed"
KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$kinfo")
MODROOT=$(sed -n 's/^MODROOT=//p' <<<"$kinfo")
KVER=$(sed -n 's/^KVER=//p' <<<"$kinfo")
[[ -f "$KERNEL" && -n "$MODROOT" && -n "$KVER" ]] || die "$KSCRIPT printed no usable KERNEL/MODROOT/KVER: $kinfo"
[[ "$MODROOT" != *[[:space:]]* ]] || die "module root '$MODROOT' contains white space (kernel cmdline cannot carry it); set PINCG_CACHE to a path without spaces"
# The initramfs sits next to the kernel's unpacked root/ (kernels/<KVER>/ for
# fetch-kernel.sh, kernels/custom-<flavor>-<hash>/ for build-kernel.sh).
if [[ "$KERNEL" == */root/* ]]; then
  INITRD=${KERNEL%%/root/*}/initramfs.cpio.gz
else
  INITRD=${PINCG_CACHE:-/var/cache/pincg}/kernels/$KVER/initramfs.cpio.gz
fi
# Two guests of one series may start at once (the lock below is taken
# later): one builds the initramfs, the other waits for it.
flock "$INITRD.lock" "$HERE/build-initramfs.sh" "$MODROOT" "$KVER" "$INITRD" 2>"$INITRD.log" \
  || { cat "$INITRD.log" >&2; die "build-initramfs.sh failed for $KVER"; }

# One guest at a time on this machine, across processes and work trees: two
# TCG guests on 2 cores only slow each other down and blur timings. Taken
# after the kernel is there, so that a guest waiting for a kernel build
# (tests/run-tests.sh starts the iommufd one in the background) does not
# hold up the others.
exec 9> "${PINCG_GUEST_LOCK:-/tmp/pincg-guest.lock}"
flock 9

# --- work dir and the command script ------------------------------------------------------
mkdir -p "$OUT" || die "cannot create --out dir $OUT"
OUT=$(cd "$OUT" && pwd -P)
[[ "$OUT" != *,* ]] || die "--out dir '$OUT' contains a comma (QEMU -virtfs cannot take it)"
rm -f "$OUT/rc" "$OUT/rc.tmp" "$OUT/output" "$OUT/console.log" "$OUT/console.boot-failure.log" "$OUT/qemu.log" "$OUT/cmd.sh"

CWD=$(pwd -P)
{
  echo '#!/bin/bash'
  echo "# Generated by $PROG: runs in the guest as /mnt/out/cmd.sh."
  printf 'export PATH="${PINCG_GUEST_BIN:-/run/pincg/bin}":%q\n' "$PATH"
  # The caller's relevant environment (the guest sets PINCG_IN_GUEST,
  # PINCG_MODROOT, PINCG_KVER, PINCG_GUEST_BIN, PINCG_DEBUG itself).
  while IFS= read -r name; do
    case "$name" in
      PINCG_IN_GUEST|PINCG_MODROOT|PINCG_KVER|PINCG_GUEST_BIN|PINCG_DEBUG) continue ;;
    esac
    printf 'export %s=%q\n' "$name" "${!name}"
  done < <(compgen -e | grep -E '^(HOME|USER|LOGNAME|LANG|LANGUAGE|LC_[A-Z]+|TZ|NO_COLOR|CI|RUST_[A-Z_]+|CARGO_[A-Z_]+|RUSTUP_[A-Z_]+|PINCG_[A-Z0-9_]+)$' || true)
  for e in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
    name=${e%%=*}
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || usage "--env '$e': bad variable name"
    if [[ "$e" == *=* ]]; then val=${e#*=}; else val=${!name-}; fi
    printf 'export %s=%q\n' "$name" "$val"
  done
  # /tmp, /var/tmp, /run are guest tmpfs; the host's /tmp is at /mnt/host-tmp
  # (read-only), so a working dir under /tmp is looked for there.
  printf 'cwd=%q\n' "$CWD"
  # The guest kernel's module trees are not at /lib/modules (the host's
  # root, read-only): tell the agent where they are.
  cat <<'EOF'
[ -d "$PINCG_MODROOT/lib/modules" ] && export PINCG_MODULE_TREE="$PINCG_MODROOT/lib/modules"
if ! cd "$cwd" 2>/dev/null; then
  case "$cwd" in
    /tmp|/tmp/*) cd "/mnt/host-tmp${cwd#/tmp}" 2>/dev/null ;;
    *) false ;;
  esac || { echo "pincg-guest: cannot cd to the caller's working directory $cwd in the guest" >&2; exit 126; }
fi
EOF
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} > "$OUT/cmd.sh" || die "cannot write $OUT/cmd.sh"
chmod 755 "$OUT/cmd.sh"

# --- QEMU ------------------------------------------------------------------------------------
CMDLINE="console=ttyS0 panic=-1 quiet pincg.modroot=$MODROOT pincg.kver=$KVER"
((DEBUG)) && CMDLINE+=" pincg.debug=1"
((NOECHO)) && CMDLINE+=" pincg.echo=0"
QARGS=(
  -accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM"
  # No default devices/monitor, no window; the serial console goes to a file
  # (this is -nographic without the stdio monitor that would grab the
  # caller's terminal).
  -nodefaults -no-user-config -display none -no-reboot
  -serial "file:$OUT/console.log"
)
if ((VFIO)); then
  # The IOMMU must come before the PCI devices it translates for.
  QARGS+=(-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on -device edu -device edu)
  CMDLINE+=" intel_iommu=on"
fi
QARGS+=(
  -kernel "$KERNEL" -initrd "$INITRD"
  -virtfs local,path=/,mount_tag=hostfs,security_model=none,readonly=on,multidevs=remap
  -virtfs "local,path=$OUT,mount_tag=out,security_model=none"
)
if ((RDMA)); then
  # restrict=on: the user-mode network has no route out of the guest.
  QARGS+=(-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,romfile=)
fi
[[ -n "$APPEND" ]] && CMDLINE+=" $APPEND"
QARGS+=(-append "$CMDLINE")

tailpid=""
if ((CONSOLE)); then
  : > "$OUT/console.log"
  tail -n +1 -F "$OUT/console.log" >&2 2>/dev/null &
  tailpid=$!
fi
# QEMU runs under timeout(1) in the background so that this script, if it is
# itself killed or interrupted, can take QEMU down with it (timeout puts
# itself in its own process group, so a Ctrl-C or a group kill aimed at the
# caller would not reach it; timeout forwards the TERM to QEMU).
on_signal() {
  kill -TERM "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  [[ -n "$tailpid" ]] && kill "$tailpid" 2>/dev/null
  echo "$PROG: interrupted; QEMU stopped" >&2
  exit 130
}
# TCG occasionally oopses a guest kernel while it patches its own code
# during boot; a guest that died before the command started is booted once
# more. One that died while running the command is reported, never retried.
for attempt in 1 2; do
  start=$SECONDS
  timeout --kill-after=5 "$TIMEOUT" "$QEMU" "${QARGS[@]}" < /dev/null > "$OUT/qemu.log" 2>&1 &
  qpid=$!
  trap on_signal INT TERM HUP
  set +e
  wait "$qpid"
  qrc=$?
  set -e
  trap - INT TERM HUP
  elapsed=$((SECONDS - start))
  if ((attempt == 1 && qrc == 0)) && [[ ! -s "$OUT/rc" ]] \
      && ! grep -q "pincg-stage2: command started" "$OUT/console.log" 2>/dev/null; then
    echo "$PROG: the guest died while booting, before the command started; booting once more. Its console:" >&2
    grep -E "Oops|BUG|panic|RIP" "$OUT/console.log" | head -n 5 >&2 || true
    mv "$OUT/console.log" "$OUT/console.boot-failure.log"
    continue
  fi
  break
done
if ((qrc == 124 || qrc == 137)) && ((elapsed >= TIMEOUT)); then
  echo "$PROG: timeout: guest did not finish within ${TIMEOUT}s; QEMU killed (console: $OUT/console.log)" >&2
  exit 124
fi
if ((qrc != 0)); then
  echo "$PROG: QEMU exited with status $qrc; its messages ($OUT/qemu.log):" >&2
  tail -n 20 "$OUT/qemu.log" >&2 || true
  [[ -f "$OUT/console.log" ]] && { echo "$PROG: last 50 console lines:" >&2; tail -n 50 "$OUT/console.log" >&2; }
  exit 125
fi
if [[ ! -s "$OUT/rc" ]]; then
  echo "$PROG: the guest ended without writing $OUT/rc (it died or init failed); last 50 lines of $OUT/console.log:" >&2
  tail -n 50 "$OUT/console.log" >&2 2>/dev/null || echo "(no console.log)" >&2
  exit 125
fi
rc=$(<"$OUT/rc")
[[ "$rc" =~ ^[0-9]+$ ]] || die "guest wrote a malformed status '$rc' to $OUT/rc"
[[ -f "$OUT/output" ]] && cat "$OUT/output"
exit "$rc"
