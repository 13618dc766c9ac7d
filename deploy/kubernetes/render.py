#!/usr/bin/python3
"""Render a kustomization: a STAND-IN for `kubectl kustomize`.

Neither kustomize nor kubectl is packaged in Debian 12, and CI reaches only
Debian's and the language registries, so deploy/validate.sh renders pincg's
kustomizations with this script (Debian's python3-yaml). Where kubectl is
installed, validate.sh also renders with `kubectl kustomize` and checks that
both produce the same objects, which keeps this subset honest.

It implements only what deploy/kubernetes uses, and refuses anything else:

* `resources`: local YAML files (one or more documents) and directories
  holding a kustomization (rendered recursively);
* `patches`: from `path` or inline `patch`, optionally with a `target`
  (group, version, kind, name, namespace; exact matches);
  a patch that is a YAML list is a JSON 6902 patch (add, remove, replace,
  move, copy, test), a mapping is a strategic-merge patch (maps merge,
  `null` deletes, the usual keyed lists of a pod spec merge by key, every
  other list is replaced).

Usage: render.py DIR [--out OUTDIR] [--compare FILE]
  without --out, prints the objects as a YAML stream (like kubectl kustomize);
  --out writes OUTDIR/all.yaml, OUTDIR/objects.json and one file per object
  in OUTDIR/objects/;
  --compare FILE checks that FILE (e.g. `kubectl kustomize` output) holds the
  same objects, in any order.
"""

import argparse
import copy
import json
import os
import sys

import yaml

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches"}
TARGET_FIELDS = {"group", "version", "kind", "name", "namespace"}

# Strategic-merge keys of the lists a pod template uses (from the Kubernetes
# API's patchMergeKey); any other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


class RenderError(Exception):
    pass


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def find_kustomization(directory):
    for name in KUSTOMIZATION_NAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise RenderError(f"{directory}: no kustomization.yaml")


def render(directory):
    path = find_kustomization(directory)
    docs = load_yaml_docs(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{path}: expected one mapping")
    kust = docs[0]
    unsupported = set(kust) - SUPPORTED_FIELDS
    if unsupported:
        raise RenderError(
            f"{path}: {', '.join(sorted(unsupported))} not supported by render.py "
            "(a stand-in for `kubectl kustomize` that implements resources and patches only)"
        )
    if kust.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind {kust.get('kind')} is not supported")

    objects = []
    for entry in kust.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
            raise RenderError(f"{path}: resource {entry!r}: only local files and directories are supported")
        full = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(full):
            objects.extend(render(full))
        elif os.path.isfile(full):
            for doc in load_yaml_docs(full):
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    raise RenderError(f"{full}: a document without apiVersion/kind")
                if doc.get("kind", "").endswith("List") and "items" in doc:
                    raise RenderError(f"{full}: List documents are not supported")
                objects.append(doc)
        else:
            raise RenderError(f"{path}: resource {entry} does not exist")

    for i, patch in enumerate(kust.get("patches") or []):
        apply_patch(objects, patch, directory, f"{path}: patches[{i}]")

    seen = {}
    for obj in objects:
        key = object_key(obj)
        if key in seen:
            raise RenderError(f"{path}: {format_key(key)} is defined twice")
        seen[key] = True
    return objects


def object_key(obj):
    meta = obj.get("metadata") or {}
    group = obj["apiVersion"].rpartition("/")[0]
    return (group, obj["kind"], meta.get("namespace") or "", meta.get("name") or "")


def format_key(key):
    group, kind, namespace, name = key
    return f"{kind}{'.' + group if group else ''} {namespace + '/' if namespace else ''}{name}"


def matches(obj, target):
    group, _, version = obj["apiVersion"].rpartition("/")
    meta = obj.get("metadata") or {}
    actual = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
    }
    return all(actual[field] == value for field, value in target.items())


def apply_patch(objects, spec, directory, where):
    if not isinstance(spec, dict) or set(spec) - {"path", "patch", "target"}:
        raise RenderError(f"{where}: only path, patch and target are supported")
    if ("path" in spec) == ("patch" in spec):
        raise RenderError(f"{where}: give exactly one of path and patch")
    if "path" in spec:
        with open(os.path.join(directory, spec["path"]), encoding="utf-8") as f:
            text = f.read()
    else:
        text = spec["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) != 1:
        raise RenderError(f"{where}: expected one patch document")
    body = docs[0]
    target = spec.get("target")
    if target is not None:
        if not isinstance(target, dict) or set(target) - TARGET_FIELDS:
            raise RenderError(f"{where}: target may name only {', '.join(sorted(TARGET_FIELDS))}")
    elif isinstance(body, dict):
        group, _, version = body.get("apiVersion", "").rpartition("/")
        target = {"kind": body.get("kind"), "name": (body.get("metadata") or {}).get("name")}
        if group:
            target["group"] = group
    else:
        raise RenderError(f"{where}: a JSON 6902 patch needs a target")

    hits = [i for i, obj in enumerate(objects) if matches(obj, target)]
    if not hits:
        raise RenderError(f"{where}: target {target} matches no object")
    for i in hits:
        if isinstance(body, list):
            objects[i] = json6902(objects[i], body, where)
        elif isinstance(body, dict):
            merged = strategic_merge(objects[i], body)
            # The patch names its target; identity fields stay as they were.
            merged["apiVersion"], merged["kind"] = objects[i]["apiVersion"], objects[i]["kind"]
            objects[i] = merged
        else:
            raise RenderError(f"{where}: a patch is a list (JSON 6902) or a mapping (strategic merge)")


def strategic_merge(base, patch, key=None):
    if isinstance(patch, dict) and isinstance(base, dict):
        for directive in ("$patch", "$retainKeys", "$deleteFromPrimitiveList", "$setElementOrder"):
            if any(k.startswith(directive) for k in patch):
                raise RenderError(f"strategic-merge directive {directive} is not supported by render.py")
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list) and key in MERGE_KEYS:
        # As kustomize orders them: the patch's items first (merged with
        # the base's item of the same key), then the base's other items.
        merge_key = MERGE_KEYS[key]
        out, patched = [], set()
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise RenderError(f"strategic merge of {key}: every item needs {merge_key}")
            same = [b for b in base if isinstance(b, dict) and b.get(merge_key) == item[merge_key]]
            out.append(strategic_merge(same[0], item) if same else copy.deepcopy(item))
            patched.add(item[merge_key])
        out.extend(copy.deepcopy(b) for b in base if not (isinstance(b, dict) and b.get(merge_key) in patched))
        return out
    return copy.deepcopy(patch)


def pointer(path, where):
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"{where}: JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def walk(doc, parts, where, path):
    node = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise RenderError(f"{where}: {path} does not exist")
    return node


def json6902(obj, ops, where):
    doc = copy.deepcopy(obj)
    for n, op in enumerate(ops):
        here = f"{where}: op {n}"
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise RenderError(f"{here}: needs op and path")
        kind, path = op["op"], op["path"]
        parts = pointer(path, here)
        if kind == "test":
            if walk(doc, parts, here, path) != op.get("value"):
                raise RenderError(f"{here}: test failed: {path} is not {op.get('value')!r}")
            continue
        if kind in ("move", "copy"):
            src = pointer(op["from"], here)
            value = copy.deepcopy(walk(doc, src, here, op["from"]))
            if kind == "move":
                remove(doc, src, here, op["from"])
            add(doc, parts, value, here, path)
        elif kind == "add":
            add(doc, parts, copy.deepcopy(op["value"]), here, path)
        elif kind == "remove":
            remove(doc, parts, here, path)
        elif kind == "replace":
            if not parts:
                doc = copy.deepcopy(op["value"])
                continue
            parent = walk(doc, parts[:-1], here, path)
            last = parts[-1]
            if isinstance(parent, dict) and last in parent:
                parent[last] = copy.deepcopy(op["value"])
            elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
                parent[int(last)] = copy.deepcopy(op["value"])
            else:
                raise RenderError(f"{here}: replace: {path} does not exist")
        else:
            raise RenderError(f"{here}: unknown op {kind!r}")
    return doc


def add(doc, parts, value, where, path):
    if not parts:
        raise RenderError(f"{where}: add at the document root is not supported")
    parent = walk(doc, parts[:-1], where, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise RenderError(f"{where}: add: bad index in {path}")
    else:
        raise RenderError(f"{where}: add: parent of {path} is not a container")


def remove(doc, parts, where, path):
    parent = walk(doc, parts[:-1], where, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise RenderError(f"{where}: remove: {path} does not exist")


def dump(objects):
    return "---\n".join(yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objects)


def compare(objects, other_path):
    others = load_yaml_docs(other_path)
    mine = {object_key(o): o for o in objects}
    theirs = {object_key(o): o for o in others}
    problems = []
    for key in sorted(set(mine) | set(theirs)):
        if key not in theirs:
            problems.append(f"{format_key(key)}: only in render.py's output")
        elif key not in mine:
            problems.append(f"{format_key(key)}: only in {other_path}")
        elif mine[key] != theirs[key]:
            a = json.dumps(mine[key], indent=1, sort_keys=True).splitlines()
            b = json.dumps(theirs[key], indent=1, sort_keys=True).splitlines()
            import difflib

            diff = "\n".join(list(difflib.unified_diff(a, b, "render.py", other_path, lineterm=""))[:40])
            problems.append(f"{format_key(key)} differs:\n{diff}")
    return problems


def write_out(objects, out):
    objdir = os.path.join(out, "objects")
    os.makedirs(objdir, exist_ok=True)
    for name in os.listdir(objdir):
        os.remove(os.path.join(objdir, name))
    with open(os.path.join(out, "all.yaml"), "w", encoding="utf-8") as f:
        f.write(dump(objects))
    with open(os.path.join(out, "objects.json"), "w", encoding="utf-8") as f:
        json.dump(objects, f, indent=1)
        f.write("\n")
    for n, obj in enumerate(objects):
        name = (obj.get("metadata") or {}).get("name", "unnamed")
        with open(os.path.join(objdir, f"{n:02d}-{obj['kind'].lower()}-{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(yaml.safe_dump(obj, sort_keys=False))


def main():
    parser = argparse.ArgumentParser(description="render a kustomization (a stand-in for kubectl kustomize)")
    parser.add_argument("directory")
    parser.add_argument("--out", help="write all.yaml, objects.json and objects/ here")
    parser.add_argument("--compare", help="a YAML stream that must hold the same objects")
    args = parser.parse_args()
    try:
        objects = render(args.directory)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    if args.compare:
        problems = compare(objects, args.compare)
        for p in problems:
            print(f"render.py: {p}", file=sys.stderr)
        if problems:
            return 1
    if args.out:
        write_out(objects, args.out)
    elif not args.compare:
        sys.stdout.write(dump(objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
