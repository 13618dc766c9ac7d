#!/usr/bin/python3
"""Check a Grafana dashboard for deploy/validate.sh.

Usage: check_dashboard.py DASHBOARD.json RULES_OUT.yaml

Parses the dashboard, checks its structure (unique panel ids, every target
with a refId and an expr, panels using the `datasource` variable, the
`cgroup` template variable present), and writes every PromQL expression
(panel targets and the inner selector of `label_values(...)` variable
queries), with Grafana's variables replaced by plain values, as recording
rules to RULES_OUT.yaml, so that `promtool check rules` parses them.
Prints one line per problem and exits 1 if there is any.
"""

import json
import re
import sys

# Grafana variables and what stands for them in the syntax check.
SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def substitute(expr):
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    # Any other $var or ${var} is used inside a regex matcher: any value.
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def variable_query(var):
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query")
    return q if isinstance(q, str) else None


def main():
    dashboard_path, rules_path = sys.argv[1], sys.argv[2]
    problems = []
    try:
        with open(dashboard_path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{dashboard_path}: does not parse: {e}")
        return 1

    exprs = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for name in ("datasource", "cgroup"):
        if name not in variables:
            problems.append(f"template variable ${name} is missing")
    for name, var in variables.items():
        if var.get("type") != "query":
            continue
        q = variable_query(var)
        m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", q or "")
        if m:
            exprs.append((f"variable {name}", m.group(1)))
        elif q:
            exprs.append((f"variable {name}", q))
        else:
            problems.append(f"variable {name}: no query")

    ids = set()
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        if panel.get("type") == "row":
            continue
        pid, title = panel.get("id"), panel.get("title", "?")
        if pid in ids:
            problems.append(f"panel id {pid} is used twice")
        ids.add(pid)
        ds = panel.get("datasource") or {}
        if ds.get("uid") != "${datasource}":
            problems.append(f"panel {title!r}: datasource is not the $datasource variable")
        if not panel.get("targets"):
            problems.append(f"panel {title!r}: no targets")
        for t in panel.get("targets", []):
            if not t.get("refId") or not t.get("expr"):
                problems.append(f"panel {title!r}: a target without refId or expr")
            else:
                exprs.append((f"panel {title!r} {t['refId']}", t["expr"]))

    with open(rules_path, "w", encoding="utf-8") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for n, (where, expr) in enumerate(exprs):
            f.write(f"      # {where}\n")
            f.write(f"      - record: dashboard:expr{n}\n")
            f.write(f"        expr: {json.dumps(substitute(expr))}\n")

    for p in problems:
        print(f"{dashboard_path}: {p}")
    print(f"{len(ids)} panels, {len(exprs)} PromQL expressions")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
