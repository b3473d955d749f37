#!/usr/bin/env bash
# bench/small.sh — many small store paths (issue 14): niks3's drain vs `nix copy --to 'file://…?compression=zstd'`,
# both measured in this run on the same fresh closure.
#
# The closure: N derivations of 1–200 KiB each (a prefix of a real file from /usr/lib, so it compresses like
# real binaries; sizes skewed towards small, mean ~67 KiB) in LAYERS layers, each path referring to 0–3 paths
# of the layer below, plus one `top` referring to all of them (N+1 paths). It is built with niks3-hook as the
# post-build-hook into a staging spool; then
#   (a) full-spool drain, ROUNDS times, alternating:
#       nix copy: `nix copy --to file://DIR?compression=zstd` of the closure (CPU: its own, /usr/bin/time);
#       niks3:    `niks3 serve` (embedded PostgreSQL, local store) is started and idle; the staged entries
#                 are moved into its spool at t0; t1 is when the last narinfo appears. CPU: the server's
#                 process tree (with the `nix` processes it spawns) plus the embedded PostgreSQL's, t0→t1.
#   (b) steady stream (STREAM=1, the default): a fresh server; a fresh closure of STREAM_N paths is built
#       with niks3-hook writing straight into the server's spool while it runs; per path, the time from the
#       hook's return (logged by the hook wrapper) to the narinfo's mtime: p50/p90/p99/max.
#       The builds run as fast as Nix (max-jobs JOBS) builds them next to the server; the rate is printed.
# Prints paths/s, CPU-seconds per path, the ratios, the per-path `uploaded … seconds=` figures of the server
# log, PostgreSQL's transaction and tuple counts per path, and the load average before and after.
# STRACE=1 adds one more (untimed, clearly labelled) niks3 drain under `strace -f -c`, PERF=1 one under
# `perf record -a` (samples by command and shared object).
# Needs: root, nix (Debian nix-bin), PostgreSQL server binaries and psql, python3, curl, cargo (strace for
# STRACE=1, perf for PERF=1).
# Env: N (500), LAYERS (10), JOBS (cores: niks3's --jobs and the builds' max-jobs), ROUNDS (1),
#      STREAM (1), STREAM_N (N), STRACE (0), PERF (0), CARGO_TARGET_DIR (default /work/target-small),
#      BENCH_DIR (scratch on the real disk, default /var/tmp), PROFILE (release), NO_BUILD=1 to use
#      binaries already built, KEEP_LOGS=DIR to copy the server logs there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-small}
N=${N:-500}
LAYERS=${LAYERS:-10}
JOBS=${JOBS:-$(nproc)}
ROUNDS=${ROUNDS:-1}
STREAM=${STREAM:-1}
STREAM_N=${STREAM_N:-$N}
STRACE=${STRACE:-0}
[ "$N" -ge "$LAYERS" ] || { echo "N must be at least LAYERS" >&2; exit 2; }

. bench/lib.sh
bench_build "${PROFILE:-release}" -p niks3 -p niks3-hook
bench_scratch small
bench_nix_offline "max-jobs = $JOBS"
echo "load before: $(uptime)"

# Source files for the paths' contents: real files of at least 200 KiB.
python3 - "$W/files.nix" <<'EOF'
import os, sys
files = []
for d, _, names in sorted(os.walk("/usr/lib")):
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.islink(p) or not os.path.isfile(p) or any(c in p for c in "\n\"'$`\\ "):
            continue
        if os.path.getsize(p) >= 200 << 10:
            files.append(p)
        if len(files) == 64:
            break
    if len(files) == 64:
        break
open(sys.argv[1], "w").write("[\n" + "".join(f'  "{f}"\n' for f in files) + "]\n")
EOF

cat >"$W/closure.nix" <<EOF
{ salt, n }:
let
  layers = $LAYERS;
  per = (n + layers - 1) / layers;
  files = import $W/files.nix;
  mod = a: b: a - (a / b) * b;
  small = i:
    let
      layer = i / per;
      ndeps = if layer == 0 then 0 else mod (i * 7 + 3) 4;
      deps = builtins.genList (k: builtins.elemAt drvs ((layer - 1) * per + mod (i * 31 + k * 17) per)) ndeps;
      r = mod (i * 2654435761) 200;
      bytes = 1024 + r * r * 1024 / 199;
      file = builtins.elemAt files (mod i (builtins.length files));
    in derivation {
      name = "small-\${toString layer}-\${toString i}"; inherit salt;
      system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir \$out && /usr/bin/head -c \${toString bytes} \${file} >\$out/data && echo \${toString deps} >\$out/refs" ];
    };
  drvs = builtins.genList small n;
in derivation {
  name = "small-top"; inherit salt;
  system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo \${toString drvs} >\$out" ];
}
EOF

# closure_of TOP: CLOSURE (paths), HASHES (their hash parts), NAR_BYTES.
closure_of() {
  mapfile -t CLOSURE < <(nix-store -qR "$1")
  HASHES=(); local p b; for p in "${CLOSURE[@]}"; do b=${p##*/}; HASHES+=("${b:0:32}"); done
  NAR_BYTES=$(nix path-info --json -r "$1" | python3 -c 'import json,sys; print(sum(e["narSize"] for e in json.load(sys.stdin)))')
}

# wait_narinfos CACHE-DIR HASH…: returns when every HASH.narinfo exists. One stat per 10 ms while it
# waits (it waits on the first missing one), so the poller takes next to no CPU from the contenders.
wait_narinfos() {
  python3 - "$@" <<'PYEOF'
import os, sys, time
cache, hashes, i = sys.argv[1], sys.argv[2:], 0
deadline = time.time() + 3600
while i < len(hashes):
    if os.path.exists(os.path.join(cache, hashes[i] + ".narinfo")):
        i += 1
        continue
    if time.time() > deadline:
        sys.exit(f"timed out, {len(hashes) - i} narinfos missing")
    time.sleep(0.01)
PYEOF
}

TCK=$(getconf CLK_TCK)
# server_cpu: ticks used so far by the server's process tree and the embedded PostgreSQL's.
server_cpu() { bench_tree_cpu_ticks "$SERVER_PID" "$(bench_postmaster_pid "$W/state")"; }

# cpu_split: "niks3-itself reaped-children postgresql" ticks so far.
cpu_split() {
  echo "$(awk '{print $14 + $15, $16 + $17}' "/proc/$SERVER_PID/stat") $(bench_tree_cpu_ticks "$(bench_postmaster_pid "$W/state")")"
}

# pg_tables: the tables with the most rows read by sequential scans since the server started.
pg_tables() {
  local sock
  sock=$(sed -n 5p "$(find "$W/state" -name postmaster.pid | head -1)")
  psql -h "$sock" -U postgres -d niks3 -XAt -F' ' -c "select relname, seq_scan, seq_tup_read, idx_scan, n_live_tup
    from pg_stat_user_tables order by seq_tup_read desc limit 4" 2>/dev/null | tr '\n' ';' || true
}

# pg_counts: "xact_commit tup_returned tup_fetched tup_inserted tup_updated tup_deleted" of database niks3.
pg_counts() {
  local pidfile sock
  pidfile=$(find "$W/state" -name postmaster.pid | head -1)
  sock=$(sed -n 5p "$pidfile")
  psql -h "$sock" -U postgres -d niks3 -XAt -F' ' -c "select pg_stat_clear_snapshot()" \
    -c "select xact_commit, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted from pg_stat_database where datname = 'niks3'" 2>/dev/null |
    tail -1
}

# start_server TAG: a fresh `niks3 serve` on $W/spool, $W/state, $W/cache.
start_server() {
  rm -rf "$W/state" "$W/spool" "$W/cache"
  RUST_LOG=${RUST_LOG:-info} bench_serve "$(free_port)" "$W/serve-$1.log" --state-dir "$W/state" \
    --spool-dir "$W/spool" --gcroots-dir "$W/roots" --store-dir "$W/cache" --jobs "$JOBS"
}

# keep_log TAG: copies the server log to KEEP_LOGS, if set.
keep_log() {
  [ -z "${KEEP_LOGS:-}" ] || { mkdir -p "$KEEP_LOGS" && cp "$W/serve-$1.log" "$KEEP_LOGS/serve-$1.log"; }
}

# log_summary LOG: the `uploaded … seconds=` lines of a server log, summarised.
log_summary() {
  python3 - "$1" <<'PYEOF'
import re, statistics, sys
s = sorted(float(m.group(1)) for l in open(sys.argv[1]) if "uploaded" in l and "realisation" not in l
           for m in [re.search(r"seconds=([0-9.]+)", l)] if m)
if s:
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]
    print(f"{len(s)} `uploaded` lines, seconds= p50 {q(.5):.3f} p90 {q(.9):.3f} p99 {q(.99):.3f} max {s[-1]:.3f} sum {sum(s):.1f}")
PYEOF
}

bench_hook_wrapper "$W/staging" "$W/roots"
echo "== building the closure ($N small paths, $LAYERS layers, max-jobs $JOBS)" >&2
t0=$(date +%s%N)
TOP=$(nix-build --no-out-link "$W/closure.nix" --argstr salt "drain-$(date +%s%N)" --arg n "$N" \
  --option post-build-hook "$W/hook.sh" 2>"$W/build.log") || { cat "$W/build.log" >&2; exit 1; }
t1=$(date +%s%N)
closure_of "$TOP"
echo "closure: ${#CLOSURE[@]} paths, $((NAR_BYTES >> 10)) KiB of NAR (mean $((NAR_BYTES / ${#CLOSURE[@]} >> 10)) KiB); built in $(((t1 - t0) / 1000000)) ms; staged entries: $(ls "$W/staging/new" | wc -l)"
# warm the page cache for both contenders alike
find "${CLOSURE[@]}" -type f -exec cat {} + >/dev/null
cp -a "$W/staging/new" "$W/staged-entries"

nix_copy_round() { # $1: round; prints "nanoseconds cpu-ticks"
  local t0 t1
  rm -rf "$W/nixcopy"
  t0=$(date +%s%N)
  /usr/bin/time -f "%U %S" -o "$W/nixcopy-time-$1" nix copy --to "file://$W/nixcopy?compression=zstd" "$TOP" 2>/dev/null
  t1=$(date +%s%N)
  echo "$((t1 - t0)) $(awk -v t="$TCK" '{printf "%d", ($1 + $2) * t}' "$W/nixcopy-time-$1")"
}

niks3_round() { # $1: round tag; prints "nanoseconds cpu-ticks xacts"
  local r=$1 t0 t1 c0 c1 pg0 pg1 spid=
  start_server "$r"
  rm -rf "$W/staging/new"; cp -a "$W/staged-entries" "$W/staging/new"
  pg0=$(pg_counts)
  if [ "$r" = strace ]; then
    strace -f -c -o "$W/strace.txt" -p "$SERVER_PID" 2>/dev/null & spid=$!
    sleep 1
  fi
  if [ "$r" = perf ]; then
    perf record -a -q -o "$W/perf.data" 2>/dev/null & spid=$!
    sleep 1
  fi
  c0=$(server_cpu); s0=$(cpu_split)
  t0=$(date +%s%N)
  python3 -c 'import os,sys; [os.rename(os.path.join(sys.argv[1], n), os.path.join(sys.argv[2], n)) for n in sorted(os.listdir(sys.argv[1]))]' "$W/staging/new" "$W/spool/new"
  wait_narinfos "$W/cache" "${HASHES[@]}"
  t1=$(date +%s%N)
  c1=$(server_cpu); s1=$(cpu_split)
  [ -z "$spid" ] || { kill -INT "$spid"; wait "$spid" || true; }
  echo "round $r: CPU-s niks3 itself / its reaped children (nix-store --read-log …) / PostgreSQL (the rest of the total: its live nix-daemon --stdio): $(python3 -c 'import sys
a, b, t = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
print(" / ".join(f"{(int(y) - int(x)) / t:.2f}" for x, y in zip(a, b)))' "$s0" "$s1" "$TCK")" >&2
  sleep 1  # PostgreSQL reports its statistics at most every second
  pg1=$(pg_counts)
  echo "round $r: server log: $(log_summary "$W/serve-$r.log")" >&2
  echo "round $r: PostgreSQL per path: $(python3 -c 'import sys
a, b, n = sys.argv[1].split(), sys.argv[2].split(), int(sys.argv[3])
print(" ".join(f"{k} {(int(y) - int(x)) / n:.1f}" for k, x, y in zip(("commits", "returned", "fetched", "inserted", "updated", "deleted"), a, b)))' "$pg0" "$pg1" "${#CLOSURE[@]}")" >&2
  echo "round $r: PostgreSQL tables by rows read in sequential scans (name seq_scan seq_tup_read idx_scan rows): $(pg_tables)" >&2
  bench_stop_server
  keep_log "$r"
  echo "$((t1 - t0)) $((c1 - c0))"
}

NC_ALL=(); NK_ALL=()
for r in $(seq "$ROUNDS"); do
  echo "== round $r: nix copy --to file://…?compression=zstd" >&2
  NC_ALL+=("$(nix_copy_round "$r")")
  echo "== round $r: niks3 serve (jobs=$JOBS)" >&2
  NK_ALL+=("$(niks3_round "$r")")
done
echo "load after the drains: $(uptime)"

python3 - "${#CLOSURE[@]}" "$NAR_BYTES" "$JOBS" "$TCK" "$W/nixcopy" "$W/cache" "$(IFS=,; echo "${NC_ALL[*]}")" "$(IFS=,; echo "${NK_ALL[*]}")" <<'EOF'
import os, sys
n, nar, jobs, tck, ncdir, nkdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
rounds = lambda a: [(int(x.split()[0]) / 1e9, int(x.split()[1]) / tck) for x in a.split(",")]
nc, nk = rounds(sys.argv[7]), rounds(sys.argv[8])
def size(d):
    return sum(os.path.getsize(os.path.join(d, "nar", f)) for f in os.listdir(os.path.join(d, "nar")))
print(f"(a) full-spool drain of {n} paths, {nar / 2**20:.1f} MiB of NAR")
print("| pusher | s per round | paths/s (best) | CPU-s per round | CPU ms per path (best round) | compressed |")
print("|---|---|---|---|---|---|")
for name, t, d in (("nix copy --to file://…?compression=zstd", nc, ncdir), (f"niks3 serve (jobs={jobs}, local store)", nk, nkdir)):
    best = min(t)
    print(f"| {name} | {' '.join(f'{s:.2f}' for s, _ in t)} | {n / best[0]:.1f} | {' '.join(f'{c:.2f}' for _, c in t)} "
          f"| {best[1] / n * 1000:.1f} | {size(d) / 2**20:.1f} MiB |")
print(f"niks3 vs nix copy, wall (best vs best): {min(nc)[0] / min(nk)[0]:.3f}x "
      f"(niks3 takes {min(nk)[0] / min(nc)[0]:.1f}x as long); per round: {' '.join(f'{a[0] / b[0]:.3f}' for a, b in zip(nc, nk))}")
print(f"CPU per path, niks3 / nix copy (best rounds): {min(nk)[1] / min(nc)[1]:.1f}x")
EOF

if [ "$STRACE" = 1 ]; then
  echo "== extra round under strace -f -c (untimed)" >&2
  niks3_round strace >/dev/null
  echo "strace -f -c of the server's process tree (not PostgreSQL's) during one drain of ${#CLOSURE[@]} paths, top 20 by calls:"
  sed -n '1,2p' "$W/strace.txt"
  grep -v -e '^%' -e '^-' -e total "$W/strace.txt" | sort -k4 -n -r | head -20
  grep -E ' total$' "$W/strace.txt" || true
fi

if [ "${PERF:-0}" = 1 ]; then
  echo "== extra round under perf record -a (untimed)" >&2
  niks3_round perf >/dev/null
  echo "perf record -a during one drain of ${#CLOSURE[@]} paths: samples by command and object (top 25):"
  perf report -i "$W/perf.data" --stdio --sort comm,dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
fi

if [ "$STREAM" = 1 ]; then
  echo "== (b) steady stream: building $STREAM_N fresh paths through the hook into the running server's spool" >&2
  start_server stream
  cat >"$W/hook-stream.sh" <<EOF
#!/bin/sh
NIKS3_SPOOL_DIR='$W/spool' NIKS3_GCROOTS_DIR='$W/roots' '$BIN/niks3-hook'
echo "\$(date +%s%N) \$DRV_PATH" >>'$W/stream-hook.log'
EOF
  chmod +x "$W/hook-stream.sh"
  c0=$(server_cpu)
  t0=$(date +%s%N)
  TOP2=$(nix-build --no-out-link "$W/closure.nix" --argstr salt "stream-$(date +%s%N)" --arg n "$STREAM_N" \
    --option post-build-hook "$W/hook-stream.sh" 2>"$W/build2.log") || { cat "$W/build2.log" >&2; exit 1; }
  tb=$(date +%s%N)
  closure_of "$TOP2"
  wait_narinfos "$W/cache" "${HASHES[@]}"
  t1=$(date +%s%N)
  c1=$(server_cpu)
  echo "stream: server log: $(log_summary "$W/serve-stream.log")"
  # Nix 2.8 gives the hook DRV_PATH (OUT_PATHS is empty): map the derivations to their outputs
  awk '{print $2}' "$W/stream-hook.log" | xargs nix show-derivation >"$W/stream-drvs.json"
  python3 - "$W/stream-hook.log" "$W/cache" "$W/stream-drvs.json" "$t0" "$tb" "$t1" "$((c1 - c0))" "$TCK" <<'EOF'
import json, os, sys
log, cache, drvs, t0, tb, t1, ticks, tck = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), *map(int, sys.argv[4:])
lat, hooked = [], []
for line in open(log):
    ts, drv = line.split()
    for o in (v["path"] for v in drvs[drv]["outputs"].values()):
        h = os.path.basename(o)[:32]
        hooked.append(int(ts))
        lat.append((os.stat(os.path.join(cache, h + ".narinfo")).st_mtime_ns - int(ts)) / 1e9)
lat.sort(); hooked.sort()
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
n = len(lat)
rate = n / ((hooked[-1] - hooked[0]) / 1e9) if n > 1 else 0
print(f"(b) steady stream: {n} paths built through the hook at {rate:.1f} paths/s (build {(tb - t0) / 1e9:.1f} s); "
      f"last narinfo {(t1 - tb) / 1e9:.1f} s after the build ended")
print(f"hook spool entry -> narinfo: p50 {q(.5) * 1000:.0f} ms, p90 {q(.9) * 1000:.0f} ms, p99 {q(.99) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
      f"server CPU {ticks / tck:.2f} s = {ticks / tck / n * 1000:.1f} ms per path")
EOF
  bench_stop_server
  keep_log stream
fi
echo "load at the end: $(uptime)"
