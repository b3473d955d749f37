#!/usr/bin/env bash
# bench/hook.sh — what niks3-hook costs a build, measured against baselines in the same run.
#
#   1. whole-process time of `niks3-hook` as Nix 2.8 runs it (DRV_PATH set, OUT_PATHS empty, so it parses
#      the real .drv; durable spool entry on the real disk; one GC root), vs `/bin/true` (the floor: any
#      hook costs a fork+exec) and vs a synchronous `nix copy --to file://DIR` post-build-hook for the same
#      path (what people do without niks3).
#   2. a real `nix-build` of 20 trivial derivations: no hook / `/bin/true` as hook (what Nix's hook
#      mechanism itself costs) / niks3-hook / synchronous nix-copy hook.
#
# Prints times and ratios. Needs: root, nix (Debian nix-bin), hyperfine, python3, cargo.
# Env: CARGO_TARGET_DIR (default target/ in the repository), RUNS (hyperfine runs for part 1, default 200),
#      BUILD_RUNS (runs for part 2, default 5), BENCH_DIR (scratch on the real disk, default /var/tmp),
#      PROFILE (release), NO_BUILD=1 to use the binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
RUNS=${RUNS:-200}
BUILD_RUNS=${BUILD_RUNS:-5}

. bench/lib.sh
bench_build "${PROFILE:-release}" -p niks3-spool
HOOK=$BIN/niks3-hook
bench_scratch hook
ROOTS=/nix/var/nix/gcroots/niks3-bench-$$
bench_on_exit 'rm -rf "$ROOTS"'
bench_nix_offline "max-jobs = 1"
mkdir -p "$W/spool" "$W/cache"

SALT="b$(date +%s%N)"
cat >"$W/one.nix" <<'NIX'
{ salt }: derivation { name = "bench-one"; inherit salt; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" "echo $salt > $out" ]; }
NIX
cat >"$W/many.nix" <<'NIX'
{ salt }: builtins.genList (i: derivation { name = "bench-many-${toString i}"; inherit salt;
  system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${toString i} > $out" ]; }) 20
NIX
OUT=$(nix-build --no-out-link "$W/one.nix" --argstr salt "$SALT" 2>/dev/null)
DRV=$(nix-store -q --deriver "$OUT")
echo "== path: $OUT  drv: $DRV" >&2

# the baseline hook people write without niks3 (synchronous upload; Nix 2.8's OUT_PATHS is empty)
cat >"$W/copy-hook.sh" <<SH
#!/bin/sh
set -e
exec nix copy --to "file://$W/cache" \$(nix-store -q --outputs "\$DRV_PATH")
SH
chmod +x "$W/copy-hook.sh"

export DRV_PATH=$DRV OUT_PATHS= NIKS3_SPOOL_DIR=$W/spool NIKS3_GCROOTS_DIR=$ROOTS
mkdir -p "$W/spool"
# sanity: the hook really queues the path and says nothing
err=$("$HOOK" 2>&1); [ -z "$err" ] || { echo "hook complained: $err" >&2; exit 1; }
grep -qx "out=$OUT" "$W"/spool/new/* || { echo "hook did not queue $OUT" >&2; exit 1; }

echo "== 1. one post-build-hook invocation (hyperfine, $RUNS runs each)" >&2
# --prepare removes the GC root and the cache so every run does the full work of a fresh build
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$W/hook.json" \
  --prepare /bin/true --prepare "rm -f $ROOTS/$(basename "$OUT")" --prepare "rm -rf $W/cache" \
  --command-name "/bin/true" "/bin/true" \
  --command-name "niks3-hook" "$HOOK" \
  --command-name "nix copy hook" "$W/copy-hook.sh" \
  >&2
# the same hook with the spool on tmpfs, where fsync is free: separates the hook's own CPU work from the
# disk's sync latency (not a configuration to use: tmpfs loses the queue on reboot)
SHM=$(mktemp -d /dev/shm/niks3-bench-hook.XXXXXX)
bench_on_exit 'rm -rf "$SHM"'
NIKS3_SPOOL_DIR=$SHM hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$W/hook-tmpfs.json" \
  --prepare "rm -f $ROOTS/$(basename "$OUT")" --command-name "niks3-hook, spool on tmpfs" "$HOOK" >&2
nentries=$(ls "$W/spool/new" | wc -l)

echo "== 2. nix-build of 20 trivial derivations ($BUILD_RUNS runs each; a fresh salt per run so all 20 build)" >&2
N=0
salt() { N=$((N+1)); echo "$SALT-$1-$N-$(date +%s%N)"; }
hyperfine --warmup 1 --runs "$BUILD_RUNS" --export-json "$W/build.json" \
  --command-name "no hook" \
  "nix-build --no-out-link $W/many.nix --argstr salt \$(date +%s%N)-none >/dev/null 2>&1" \
  --command-name "/bin/true as hook" \
  "nix-build --no-out-link $W/many.nix --argstr salt \$(date +%s%N)-true --option post-build-hook /bin/true >/dev/null 2>&1" \
  --command-name "niks3-hook" \
  "nix-build --no-out-link $W/many.nix --argstr salt \$(date +%s%N)-niks3 --option post-build-hook $HOOK >/dev/null 2>&1" \
  --command-name "nix copy hook" \
  "nix-build --no-out-link $W/many.nix --argstr salt \$(date +%s%N)-copy --option post-build-hook $W/copy-hook.sh >/dev/null 2>&1" \
  >&2
built=$(( $(ls "$W/spool/new" | wc -l) - nentries ))
expect=$(( 20 * (BUILD_RUNS + 1) ))
[ "$built" -eq "$expect" ] || { echo "expected $expect entries from the niks3-hook builds, found $built" >&2; exit 1; }

python3 - "$W/hook.json" "$W/build.json" "$W/hook-tmpfs.json" <<'PY'
import json, sys
def load(p):
    return {r["command"]: r for r in json.load(open(p))["results"]}
h, b = load(sys.argv[1]), load(sys.argv[2])
h.update(load(sys.argv[3]))
ms = lambda r: r["mean"] * 1000
sd = lambda r: r["stddev"] * 1000
med = lambda r: r["median"] * 1000
print("\n## niks3-hook: one invocation (whole process)")
for k in ["/bin/true", "niks3-hook", "niks3-hook, spool on tmpfs", "nix copy hook"]:
    print(f"  {k:27s} mean {ms(h[k]):8.3f} ms  ± {sd(h[k]):6.3f}  median {med(h[k]):8.3f} ms")
t, n, c = ms(h["/bin/true"]), ms(h["niks3-hook"]), ms(h["nix copy hook"])
f = ms(h["niks3-hook, spool on tmpfs"])
print(f"  niks3-hook / /bin/true        = {n / t:6.2f}x  (hook's own work: {n - t:.3f} ms)")
print(f"  of which fsync on this disk   = {n - f:.3f} ms (tmpfs variant: {f / t:.2f}x /bin/true)")
print(f"  nix copy hook / niks3-hook    = {c / n:6.1f}x")
print("\n## nix-build of 20 trivial derivations")
for k in ["no hook", "/bin/true as hook", "niks3-hook", "nix copy hook"]:
    print(f"  {k:27s} mean {ms(b[k]):8.1f} ms  ± {sd(b[k]):6.1f}  median {med(b[k]):8.1f} ms")
base = ms(b["no hook"])
for k in ["/bin/true as hook", "niks3-hook", "nix copy hook"]:
    print(f"  {k:27s} / no hook = {ms(b[k]) / base:5.3f}x  (+{(ms(b[k]) - base) / 20:.2f} ms per derivation)")
PY
