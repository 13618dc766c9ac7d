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

command -v apt-get >/dev/null || die "apt-get not found (need a Debian host)"
command -v dpkg >/dev/null || die "dpkg not found"
command -v depmod >/dev/null || die "depmod not found (apt-get install kmod)"

# --- derive the mirror URI from the host's apt sources ------------------------
# shellcheck disable=SC1091
HOST_CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n "$HOST_CODENAME" ]] || die "cannot read VERSION_CODENAME from /etc/os-release"

# Print "URI<TAB>SUITES<TAB>COMPONENTS" (space separated lists) for every
# enabled `deb` entry of the host's apt configuration.
list_sources() {
  local f
  # One-line format: deb [options] uri suite [component...]
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    awk '
      { sub(/#.*/, "") }
      $1 != "deb" { next }
      {
        line = $0
        sub(/^[ \t]*deb[ \t]+/, "", line)
        if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)
        n = split(line, w, /[ \t]+/)
        if (n < 2) next
        comps = ""
        for (i = 3; i <= n; i++) comps = comps (comps == "" ? "" : " ") w[i]
        print w[1] "\t" w[2] "\t" comps
      }' "$f"
  done
  # deb822 format: stanzas separated by blank lines.
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    grep -v '^[[:space:]]*#' "$f" | awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
          nu = split(uris, u, / +/)
          for (i = 1; i <= nu; i++) if (u[i] != "") print u[i] "\t" suites "\t" comps
        }
        types = uris = suites = comps = ""; enabled = "yes"; key = ""
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ {                       # continuation of a multi-line field
        v = $0; gsub(/^[ \t]+|[ \t]+$/, "", v)
        if (key == "uris") uris = uris " " v
        else if (key == "suites") suites = suites " " v
        else if (key == "components") comps = comps " " v
        next
      }
      {
        key = tolower($0); sub(/:.*/, "", key)
        v = $0; sub(/^[^:]*:[ \t]*/, "", v); gsub(/[ \t]+$/, "", v)
        if (key == "types") types = v
        else if (key == "uris") uris = v
        else if (key == "suites") suites = v
        else if (key == "components") comps = v
        else if (key == "enabled") enabled = v
      }
      END { flush() }'
  done
}

derive_mirror() {
  if [[ -n "${PINCG_DEBIAN_MIRROR:-}" ]]; then
    echo "${PINCG_DEBIAN_MIRROR%/}"
    return
  fi
  local uri suites comps s has_suite
  while IFS=$'\t' read -r uri suites comps; do
    has_suite=0
    for s in $suites; do [[ "$s" == "$HOST_CODENAME" ]] && has_suite=1; done
    ((has_suite)) || continue
    [[ " $comps " == *" main "* ]] || continue
    uri=${uri%/}
    [[ "$uri" == */debian ]] || continue      # not -security, not third party
    echo "$uri"
    return
  done < <(list_sources)
  return 1
}
MIRROR=$(derive_mirror) || die "no Debian archive entry (URI ending in /debian, suite $HOST_CODENAME, component main) in /etc/apt/sources.list or /etc/apt/sources.list.d/; set PINCG_DEBIAN_MIRROR"
log "mirror (from host apt sources): $MIRROR"

# --- private apt state --------------------------------------------------------
# apt_env DIR: set APT_OPTS for a private state in DIR (created on demand).
# An APT_CONFIG file clears the host's update/dpkg hooks (appstream refresh,
# docker-clean, packagekit) so that nothing outside DIR is touched: apt reads
# APT_CONFIG, then apt.conf.d, then Dir::Etc::main, so pointing
# Dir::Etc::main at the same file lets its #clear lines win.
apt_env() {
  local d=$1
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/parts" "$d/debs" \
    || die "cannot create private apt dir $d"
  # apt downloads as user _apt; let it write there (else a warning and an
  # unsandboxed download).
  if id _apt >/dev/null 2>&1; then chown _apt "$d/debs" "$d/lists/partial" "$d/cache/archives/partial" 2>/dev/null || true; fi
  cat > "$d/apt.conf" <<EOF
Dir::Etc::main "$d/apt.conf";
#clear APT::Update::Post-Invoke-Success;
#clear APT::Update::Post-Invoke;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Install-Pkgs;
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::Languages "none";
EOF
  APT_OPTS=(
    -o "Dir::Etc::SourceList=$d/sources.list"
    -o "Dir::Etc::SourceParts=$d/parts"
    -o "Dir::State::Lists=$d/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$d/cache"
  )
  APT_DIR=$d
}
apt_p()       { APT_CONFIG="$APT_DIR/apt.conf" apt-get "${APT_OPTS[@]}" "$@"; }
apt_cache_p() { APT_CONFIG="$APT_DIR/apt.conf" apt-cache "${APT_OPTS[@]}" "$@"; }

# apt_update SUITE KEYRING|trusted: private state for SUITE, update its lists.
# Returns non-zero if the suite could not be fetched or verified.
apt_update() {
  local suite=$1 key=$2 opt
  apt_env "$CACHE/apt/$suite"
  if [[ "$key" == trusted ]]; then opt="trusted=yes"; else opt="signed-by=$key"; fi
  echo "deb [$opt] $MIRROR $suite main" > "$APT_DIR/sources.list"
  log "apt-get update ($suite, $opt)"
  rm -f "$APT_DIR"/lists/*Packages* "$APT_DIR"/lists/*Release*
  if ! apt_p -q update > "$APT_DIR/update.log" 2>&1; then
    sed 's/^/  /' "$APT_DIR/update.log" >&2
    return 1
  fi
  if grep -qE '^E: |GPG error|NO_PUBKEY' "$APT_DIR/update.log" || ! compgen -G "$APT_DIR/lists/*_Packages*" >/dev/null; then
    sed 's/^/  /' "$APT_DIR/update.log" >&2
    return 1
  fi
}

# --- keyring ------------------------------------------------------------------
# The host's debian-archive-keyring (bookworm 2023.3+deb12u2) already carries
# the trixie keys, which sign trixie and sid. If a future sid is signed only by
# keys the host lacks, fetch a newer debian-archive-keyring from a suite the
# current keyring CAN verify (host-updates, then stable, then testing; each
# verified before use) and retry. trusted=yes is the last resort only.
KEYRING=${PINCG_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
[[ -f "$KEYRING" ]] || die "keyring $KEYRING not found (apt-get install debian-archive-keyring)"

newer_keyring() {
  local src kr_dir=$CACHE/apt/keyring deb
  for src in "$HOST_CODENAME-updates" stable testing; do
    [[ "$src" == "$SUITE" ]] && continue
    apt_update "$src" "$KEYRING" || continue
    rm -f "$APT_DIR"/debs/*.deb
    (cd "$APT_DIR/debs" && apt_p -q download debian-archive-keyring >&2) || continue
    deb=$(compgen -G "$APT_DIR/debs/debian-archive-keyring_*.deb" | head -n1 || true)
    [[ -n "$deb" ]] || continue
    rm -rf "$kr_dir" && mkdir -p "$kr_dir"
    dpkg -x "$deb" "$kr_dir" || continue
    if [[ -f "$kr_dir/usr/share/keyrings/debian-archive-keyring.gpg" ]]; then
      KEYRING=$kr_dir/usr/share/keyrings/debian-archive-keyring.gpg
      log "using keyring from $(basename "$deb") (verified via $src)"
      return 0
    fi
  done
  return 1
}

if ! apt_update "$SUITE" "$KEYRING"; then
  log "could not fetch/verify $SUITE with $KEYRING; trying a newer debian-archive-keyring"
  if newer_keyring && apt_update "$SUITE" "$KEYRING"; then
    :
  else
    # Last resort: no signature check. Only reached if no verifiable keyring
    # for $SUITE could be found; it is announced loudly.
    log "WARNING: falling back to [trusted=yes] for $SUITE: package signatures NOT verified"
    apt_update "$SUITE" trusted || die "apt-get update of $SUITE from $MIRROR failed (see above)"
  fi
fi

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
