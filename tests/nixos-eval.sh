#!/usr/bin/env bash
# nixos-eval.sh — the NixOS side of the test suite, runnable without nixpkgs or KVM:
#   1. every .nix file of the repository parses (nix-instantiate --parse), and those under nixos/ are
#      formatted with nixfmt (when it is installed);
#   2. nixos/module.nix (the role files of nixos/modules/niks3) evaluates with
#      nixos/tests/evaluator/eval-nixos-module (the real nixpkgs lib, stand-ins for the rest of NixOS) on
#      the example configurations and on broken ones, and the systemd units, timer, credentials,
#      hardening, post-build-hook and settings it produces are checked (nixos/tests/eval_test.py),
#      also with systemd-analyze, systemd-tmpfiles and real permission checks; the flake's outputs and the
#      VM tests' nodes evaluate; and the one-machine and remote-builder setups run for real without
#      systemd (the hook wrapper under real Nix, `niks3 serve`, `niks3 drain` and `niks3 gc` with the
#      units' exact environment and command lines, a throwaway PostgreSQL) — parts whose binaries are
#      still skeletons are reported as skipped;
#   3. docs/nixos-example-output.json is what the module really produces for the examples.
# Prints one line per check and `N passed, M failed`; exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tool=$root/nixos/tests/evaluator/eval-nixos-module
command -v nix-instantiate >/dev/null || { echo "nixos-eval: nix-instantiate not found (apt-get install nix-bin)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "nixos-eval: python3 not found" >&2; exit 2; }
export NIX_CONF_DIR XDG_CACHE_HOME
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
NIX_CONF_DIR=$tmp/etc XDG_CACHE_HOME=$tmp/cache
mkdir -p "$NIX_CONF_DIR" "$XDG_CACHE_HOME"
printf 'experimental-features = nix-command\nsubstituters =\n' >"$NIX_CONF_DIR/nix.conf"
unset NIX_CONFIG NIX_PATH NIX_REMOTE

pass=0; fail=0
echo "== every .nix file parses"
cd "$root"
# The vendored nixpkgs lib is not ours to check (the evaluation below exercises what the module uses).
files=$( (git ls-files -co --exclude-standard '*.nix' 2>/dev/null || find . -name '*.nix' -not -path './target/*') \
  | sed 's|^\./||' | grep -v '^nixos/tests/evaluator/vendor/' | sort -u)
for f in $files; do
  if err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    echo "  ok   - $f parses"; pass=$((pass + 1))
  else
    echo "  FAIL - $f: $err"; fail=$((fail + 1))
  fi
done

echo "== the NixOS side is formatted with nixfmt (RFC 166)"
# nixos/ (module, role files, examples, VM tests, harness) but the vendored nixpkgs lib. nixfmt is not
# in Debian; without it this is reported and skipped (`nix fmt`, the flake's formatter, formats them).
fmt_skipped=0
if command -v nixfmt >/dev/null; then
  unformatted=$(printf '%s\n' $files | grep '^nixos/' | while read -r f; do nixfmt --check "$f" >/dev/null 2>&1 || echo "$f"; done)
  if [ -z "$unformatted" ]; then
    echo "  ok   - every .nix file under nixos/ is as $(nixfmt --version 2>/dev/null | head -1) formats it"; pass=$((pass + 1))
  else
    echo "  FAIL - not formatted with nixfmt:" $unformatted; fail=$((fail + 1))
  fi
else
  echo "  skip - nixfmt --check nixos/: nixfmt is not installed"; fmt_skipped=1
fi

echo "== module evaluation"
set +e
python3 "$root/nixos/tests/eval_test.py" "$root" "$tool" | tee "$tmp/eval.out"
set -e
read -r p f s < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed\( (\([0-9]*\) skipped)\)\{0,1\}$/\1 \2 \4/p' "$tmp/eval.out" | tail -1) || true
[ -n "${p:-}" ] || { p=0; f=1; echo "  FAIL - eval_test.py did not finish"; }
pass=$((pass + p)); fail=$((fail + f)); skipped=$((${s:-0} + fmt_skipped))

echo "== docs/nixos-example-output.json is up to date"
if "$root/nixos/tests/example-output.sh" >"$tmp/example-output.json" 2>"$tmp/example-output.err" \
   && cmp -s "$tmp/example-output.json" "$root/docs/nixos-example-output.json"; then
  echo "  ok   - docs/nixos-example-output.json matches the module"; pass=$((pass + 1))
else
  echo "  FAIL - docs/nixos-example-output.json is stale: run nixos/tests/example-output.sh > docs/nixos-example-output.json"
  cat "$tmp/example-output.err"; fail=$((fail + 1))
fi

echo "$pass passed, $fail failed$([ "$skipped" = 0 ] || echo " ($skipped skipped)")"
[ "$fail" = 0 ]
