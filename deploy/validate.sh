#!/usr/bin/env bash
# deploy/validate.sh: check everything under deploy/ without a cluster, a
# container engine or a running systemd. One line per check (ok, FAILED,
# SKIPPED), then a summary; exits 1 if any check failed. Called by
# tests/tests/deploy.rs (so by tests/run-tests.sh and CI).
#
#  * Kubernetes: renders deploy/kubernetes/base and each overlay with
#    deploy/kubernetes/render.py, a STAND-IN for `kubectl kustomize` (neither
#    kustomize nor kubectl is packaged in Debian 12); where kubectl is
#    installed anyway, also with `kubectl kustomize`, and the two must agree.
#    Every rendered object is validated with `kubernetes-validate --strict`
#    (PyPI, in a venv at target/venv-deploy); CRD kinds it has no schema for
#    (ServiceMonitor) are SKIPPED, any other unknown kind fails.
#  * systemd: `systemd-analyze verify` of deploy/systemd/pincg.service (a
#    copy whose ExecStart points at target/debug/pincg, or a stub if that is
#    not built); works offline, without systemd running; any warning fails.
#  * Prometheus: `promtool check rules` and `promtool test rules`.
#  * Grafana: the dashboard parses, its structure, and every PromQL
#    expression in it parses (as a promtool recording rule).
#  * Container: the Containerfile's COPY sources exist, and its runtime
#    stage installs the Debian package of every shared library
#    target/debug/pincg links (SKIPPED if not built).
#
# Installs what it needs, idempotently (nothing is installed, and the
# network is not used, when all is there): Debian's python3-yaml,
# python3-venv, prometheus (for promtool) and systemd; kubernetes-validate
# from PyPI. Rendered output goes to target/deploy/.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 1

OUT=target/deploy
VENV=target/venv-deploy
KUBERNETES_VALIDATE=1.37.0
# Debian's interpreter: its python3-yaml, not whatever python3 is first on PATH.
PY=/usr/bin/python3
DEB_PKGS=(python3-yaml python3-venv prometheus systemd)
KUSTOMIZATIONS=(base overlays/privileged overlays/servicemonitor)
# Kinds that come from CRDs, which kubernetes-validate has no schema for.
CRD_KINDS=(ServiceMonitor)

started=$SECONDS
passed=0 failed=0 skipped=0
ok() { echo "ok      $*"; passed=$((passed + 1)); }
fail() { echo "FAILED  $*"; failed=$((failed + 1)); }
skip() { echo "SKIPPED $*"; skipped=$((skipped + 1)); }
indent() { sed 's/^/    /'; }

# --- setup ------------------------------------------------------------------
setup() {
  local missing=() p st
  for p in "${DEB_PKGS[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $st == installed ]] || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      echo "setup: need root to install ${missing[*]}" >&2
      return 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >&2 || return 1
  fi
  local have
  have=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true)
  if [[ $have != "$KUBERNETES_VALIDATE" ]]; then
    echo "setup: creating $VENV with kubernetes-validate==$KUBERNETES_VALIDATE" >&2
    rm -rf "$VENV"
    { "$PY" -m venv "$VENV" &&
      "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"; } >&2 || return 1
  fi
}

if setup; then
  ok "setup: Debian packages ${DEB_PKGS[*]}, kubernetes-validate $KUBERNETES_VALIDATE in $VENV"
else
  fail "setup: could not install what the checks need (see above)"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"

# --- Kubernetes ---------------------------------------------------------------
if command -v kubectl >/dev/null 2>&1; then
  kubectl_version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')
else
  kubectl_version=
fi

for k in "${KUSTOMIZATIONS[@]}"; do
  name=$(basename "$k")
  dir=deploy/kubernetes/$k
  out=$OUT/$name
  if log=$("$PY" deploy/kubernetes/render.py "$dir" --out "$out" 2>&1); then
    n=$(find "$out/objects" -name "*.yaml" | wc -l)
    ok "kubernetes $name: rendered by render.py (stand-in for kubectl kustomize): $n objects in $out"
  else
    fail "kubernetes $name: render.py"
    indent <<<"$log"
    continue
  fi

  if [[ -n $kubectl_version ]]; then
    if log=$(kubectl kustomize "$dir" 2>&1 >"$tmp/$name.kubectl.yaml") &&
      log=$("$PY" deploy/kubernetes/render.py "$dir" --compare "$tmp/$name.kubectl.yaml" 2>&1); then
      ok "kubernetes $name: render.py and kubectl kustomize (kustomize $kubectl_version) give the same objects"
    else
      fail "kubernetes $name: render.py and kubectl kustomize disagree"
      indent <<<"$log"
    fi
  else
    skip "kubernetes $name: cross-check with kubectl kustomize: kubectl is not installed (not packaged in Debian 12)"
  fi

  if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
    fail "kubernetes $name: kubernetes-validate is not installed"
    continue
  fi
  files=("$out"/objects/*.yaml)
  log=$("$VENV/bin/kubernetes-validate" --strict "${files[@]}" 2>&1)
  rc=$?
  bad=0
  while IFS= read -r line; do
    if [[ $line =~ Couldn\'t\ find\ schema\ for\ kind\ ([A-Za-z]+)\ with\ api\ version\ ([^ ]+) ]]; then
      kind=${BASH_REMATCH[1]} api=${BASH_REMATCH[2]}
      if [[ " ${CRD_KINDS[*]} " == *" $kind "* ]]; then
        skip "kubernetes $name: $kind ($api) not validated: a CRD's kind, and kubernetes-validate has schemas for built-in kinds only"
      else
        bad=1
      fi
    fi
  done <<<"$log"
  valid=$(grep -c ' passed for resource ' <<<"$log")
  if ((rc == 0 && bad == 0)); then
    ok "kubernetes $name: kubernetes-validate --strict (Kubernetes $KUBERNETES_VALIDATE schemas): $valid objects valid"
  else
    fail "kubernetes $name: kubernetes-validate --strict"
    grep -v ' passed for resource ' <<<"$log" | indent
  fi
done

# --- systemd ------------------------------------------------------------------
unit=deploy/systemd/pincg.service
if [[ -x target/debug/pincg ]]; then
  exe=$PWD/target/debug/pincg
else
  exe=$tmp/pincg
  printf '#!/bin/sh\nexit 0\n' >"$exe"
  chmod +x "$exe"
fi
mkdir -p "$tmp/units"
sed "s#^ExecStart=/usr/local/bin/pincg #ExecStart=$exe #" "$unit" >"$tmp/units/pincg.service"
if ! grep -q "^ExecStart=$exe " "$tmp/units/pincg.service"; then
  fail "systemd: $unit: no ExecStart=/usr/local/bin/pincg line to point at the test binary"
elif ! command -v systemd-analyze >/dev/null 2>&1; then
  fail "systemd: systemd-analyze is not installed"
else
  log=$(systemd-analyze verify --man=no "$tmp/units/pincg.service" 2>&1)
  rc=$?
  if ((rc == 0)) && [[ -z $log ]]; then
    ok "systemd: systemd-analyze verify $unit (ExecStart=${exe#"$PWD"/})"
  else
    fail "systemd: systemd-analyze verify $unit (exit $rc; warnings count as failures)"
    indent <<<"$log"
  fi
fi

# --- Prometheus ---------------------------------------------------------------
rules=deploy/prometheus/pincg-rules.yaml
rules_test=deploy/prometheus/pincg-rules.test.yaml
if ! command -v promtool >/dev/null 2>&1; then
  fail "prometheus: promtool is not installed"
else
  if log=$(promtool check rules "$rules" 2>&1); then
    ok "prometheus: promtool check rules $rules ($(sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' <<<"$log") rules)"
  else
    fail "prometheus: promtool check rules $rules"
    indent <<<"$log"
  fi
  if log=$(promtool test rules "$rules_test" 2>&1); then
    ok "prometheus: promtool test rules $rules_test"
  else
    fail "prometheus: promtool test rules $rules_test"
    indent <<<"$log"
  fi
fi

# --- Grafana ------------------------------------------------------------------
dashboard=deploy/grafana/pincg-dashboard.json
if log=$("$PY" deploy/grafana/check_dashboard.py "$dashboard" "$tmp/dashboard-rules.yaml" 2>&1); then
  ok "grafana: $dashboard parses and is well-formed ($log)"
  if ! command -v promtool >/dev/null 2>&1; then
    fail "grafana: promtool is not installed to parse the dashboard's PromQL"
  elif log=$(promtool check rules "$tmp/dashboard-rules.yaml" 2>&1); then
    ok "grafana: every PromQL expression in $dashboard parses (promtool)"
  else
    fail "grafana: PromQL in $dashboard"
    indent <<<"$log"
  fi
else
  fail "grafana: $dashboard"
  indent <<<"$log"
fi

# --- container ------------------------------------------------------------------
containerfile=deploy/container/Containerfile
missing_src=()
while read -r src; do
  [[ -e $src ]] || missing_src+=("$src")
done < <(awk '/^COPY / && !/--from=/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' "$containerfile")
if ((${#missing_src[@]})); then
  fail "container: $containerfile copies what the repository lacks: ${missing_src[*]}"
else
  ok "container: every COPY source of $containerfile exists"
fi
# The image ships a static binary; the runtime stage installs nothing.
if grep -q 'crt-static' "$containerfile" && grep -q -- '--features static' "$containerfile"; then
  ok "container: $containerfile builds a static binary (crt-static, --features static)"
else
  fail "container: $containerfile does not build a static binary"
fi

echo "deploy/validate.sh: $passed ok, $failed failed, $skipped skipped in $((SECONDS - started)) s"
((failed == 0))
