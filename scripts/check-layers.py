#!/usr/bin/env python3
"""check-layers.py — fails when a crate of the workspace depends on one of its own layer or above.

The layering of docs/architecture.md ("Crates"), made a check: a crate may use crates of lower layers
only, so the pure formats never grow a tokio or a database, the contract never grows an HTTP stack, and
the hook stays std-only. Reads `cargo metadata` (normal and build dependencies; dev-dependencies are
free, tests may use anything). Also checks that every crate but niks3-local forbids `unsafe` code and
that niks3-local allows it in one module only.

Usage: scripts/check-layers.py   (from anywhere in the repository; prints one line per crate)
"""
import json
import os
import re
import subprocess
import sys

# Layer of each workspace crate: lower numbers are lower layers. A crate depends only on lower layers.
LAYERS = {
    "niks3-spool": 0,    # the spool format and the post-build-hook: std only
    "niks3-testkit": 0,  # starts real PostgreSQL, Garage, Nix for tests: no niks3 code
    "niks3-nix": 1,      # pure Nix formats
    "niks3-api": 1,      # the push API's contract (serde types, tokens)
    "niks3-storage": 2,  # the bucket: object keys, S3 and local backends
    "niks3-local": 3,    # this machine: local store, NAR stream, spool drainer
    "niks3-server": 4,   # everything behind `niks3 serve`
    "niks3-client": 4,   # the API client: push, drain, gc
    "niks3": 5,          # the `niks3` binary: argument parsing and wiring
}
# Crates that may have no dependencies at all, not even from crates.io.
STD_ONLY = {"niks3-spool"}
# The one crate allowed `unsafe`, and the one module of it that uses it.
UNSAFE_CRATE, UNSAFE_MODULE = "niks3-local", "zstd_ring.rs"

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
                                 cwd=root, check=True, capture_output=True, text=True).stdout)
members = {p["name"]: p for p in meta["packages"]}
errors = []

for name in sorted(set(members) - set(LAYERS)):
    errors.append(f"{name}: not in LAYERS of scripts/check-layers.py (add it, and to docs/architecture.md)")
for name in sorted(set(LAYERS) - set(members)):
    errors.append(f"{name}: in LAYERS but not a workspace member")

for name, pkg in sorted(members.items()):
    if name not in LAYERS:
        continue
    used = [d for d in pkg["dependencies"] if d.get("kind") in (None, "build")]
    inner = sorted(d["name"] for d in used if d["name"] in members)
    bad = [d for d in inner if LAYERS.get(d, 99) >= LAYERS[name]]
    for d in bad:
        errors.append(f"{name} (layer {LAYERS[name]}) depends on {d} (layer {LAYERS[d]}): "
                      "a crate may only use lower layers")
    if name in STD_ONLY and used:
        errors.append(f"{name} must depend on std only, has: {', '.join(sorted(d['name'] for d in used))}")

    src = os.path.dirname(pkg["manifest_path"])
    roots = [t["src_path"] for t in pkg["targets"] if set(t["kind"]) & {"lib", "bin"}]
    for r in roots:
        text = open(r).read()
        if name == UNSAFE_CRATE:
            if "#![deny(unsafe_code)]" not in text and "#![forbid(unsafe_code)]" not in text:
                errors.append(f"{os.path.relpath(r, root)}: needs #![deny(unsafe_code)]")
        elif "#![forbid(unsafe_code)]" not in text:
            errors.append(f"{os.path.relpath(r, root)}: needs #![forbid(unsafe_code)]")
    if name == UNSAFE_CRATE:
        for dirpath, _, files in os.walk(os.path.join(src, "src")):
            for f in files:
                path = os.path.join(dirpath, f)
                if f.endswith(".rs") and f != UNSAFE_MODULE and re.search(r"allow\(unsafe_code\)", open(path).read()):
                    errors.append(f"{os.path.relpath(path, root)}: only {UNSAFE_MODULE} may allow unsafe code")

    print(f"  {name:15} layer {LAYERS.get(name, '?')}  uses {', '.join(inner) or '-'}")

for e in errors:
    print(f"  FAIL - {e}")
if errors:
    sys.exit(1)
print("layers ok")
