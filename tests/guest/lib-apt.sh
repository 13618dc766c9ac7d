# lib-apt.sh: private apt state for the guest harness (sourced, not run).
#
# Used by fetch-kernel.sh and build-kernel.sh. Downloads Debian packages with
# `apt-get download` under a PRIVATE apt state (own sources list, lists and
# cache dirs below $CACHE/apt/<suite>/, host apt.conf.d hooks cleared).
# Nothing is installed on the host and the host's apt state is not touched.
# The mirror URI is derived from the host's own apt sources (the main Debian
# archive entry serving the host's codename); no host name is written down.
#
# The caller defines log() and die() and sets CACHE (cache root) and SUITE
# (the suite to use). Sourcing defines the functions; then call
#   apt_private_init    sets HOST_CODENAME, MIRROR, KEYRING
#   apt_private_suite   apt-get update of $SUITE (keyring fallback, see below)
# and use apt_p / apt_cache_p (apt-get / apt-cache in that state; APT_DIR is
# the state dir, APT_DIR/debs the download dir).
#
# Env:
#   PINCG_DEBIAN_MIRROR   use this archive URI instead of deriving it
#   PINCG_KEYRING         start from this keyring instead of
#                         /usr/share/keyrings/debian-archive-keyring.gpg
# shellcheck shell=bash
# --- the mirror URI, from the host's apt sources ------------------------------

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

newer_keyring() {
  local src kr_dir=$CACHE/apt/keyring deb
  for src in "$HOST_CODENAME-updates" stable testing; do
    # shellcheck disable=SC2153 # SUITE: set by the caller
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

# apt_private_init: HOST_CODENAME, MIRROR (from the host's apt sources) and
# the starting KEYRING.
apt_private_init() {
  [[ -n "${SUITE:-}" && -n "${CACHE:-}" ]] || die "lib-apt.sh: the caller must set SUITE and CACHE"
  command -v apt-get >/dev/null || die "apt-get not found (need a Debian host)"
  command -v dpkg >/dev/null || die "dpkg not found"
  # shellcheck disable=SC1091
  HOST_CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n "$HOST_CODENAME" ]] || die "cannot read VERSION_CODENAME from /etc/os-release"
  MIRROR=$(derive_mirror) || die "no Debian archive entry (URI ending in /debian, suite $HOST_CODENAME, component main) in /etc/apt/sources.list or /etc/apt/sources.list.d/; set PINCG_DEBIAN_MIRROR"
  log "mirror (from host apt sources): $MIRROR"
  KEYRING=${PINCG_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
  [[ -f "$KEYRING" ]] || die "keyring $KEYRING not found (apt-get install debian-archive-keyring)"
}

# apt_private_suite: private state for $SUITE with fresh, verified lists.
apt_private_suite() {
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
}
