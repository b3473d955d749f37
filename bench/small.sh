#!/usr/bin/env bash
# bench/small.sh — many small store paths (issue 14): niks3's drain (to a local directory and/or Garage) and
# `niks3 push` vs `nix copy --to 'file://…?compression=zstd'`, and niks3's stream vs a `nix copy`
# post-build-hook, all measured in this run on the same machine minutes apart.
#
# The closure: N derivations of 1–200 KiB each (a prefix of a real file from /usr/lib, so it compresses like
# real binaries; sizes skewed towards small, mean ~67 KiB) in LAYERS layers, each path referring to 0–3 paths
# of the layer below, plus one `top` referring to all of them (N+1 paths). It is built with niks3-hook as the
# post-build-hook into a staging spool; then
#   (a) full-spool drain, ROUNDS times, alternating:
#       nix copy: `nix copy --to file://DIR?compression=zstd` of the closure (CPU: its own, /usr/bin/time);
#                 the baseline for both targets;
#       niks3:    `niks3 serve` (embedded PostgreSQL; a local store directory, and/or a fresh single-node
#                 Garage, real S3 with SigV4, per TARGET) is started and idle; the staged entries are moved
#                 into its spool at t0; t1 is when the last narinfo appears (local: the file; Garage: top's
#                 narinfo served by the server's read proxy, top being published last, then all checked).
#                 CPU: the server's process tree (with the `nix` processes it spawns) plus the embedded
#                 PostgreSQL's, t0→t1; Garage's own CPU is printed beside it, not added.
#   push (PUSH=1, the default): `niks3 push` of the same closure from the Nix store it was built in to a
#       fresh idle server (local store) through the push API; wall (start to the last narinfo: push may
#       return before the server has published them all), paths/s, CPU of client (/usr/bin/time) + server +
#       PostgreSQL.
#   (b) steady stream (STREAM=1, the default): a fresh server; a fresh closure of STREAM_N paths is built
#       with niks3-hook writing straight into the server's spool while it runs; per path, the time from the
#       hook's return (logged by the hook wrapper) to the narinfo's mtime: p50/p90/p99/max.
#       The builds run as fast as Nix (max-jobs JOBS) builds them next to the server; the rate is printed.
#   (c) `nix copy` hook stream (NCHOOK=1, the default): the baseline of (b): a fresh closure of STREAM_N
#       paths built with a post-build-hook running `nix copy --to 'file://DIR?compression=zstd'` of the
#       build's outputs (Nix 2.8 gives the hook an empty OUT_PATHS: the hook asks `nix-store -q --outputs
#       $DRV_PATH`); per path, the hook's start (= build end) to the narinfo's mtime, and the CPU of the
#       hooks (/usr/bin/time around each).
# Prints paths/s, CPU-seconds per path, the ratios, the per-path `uploaded … seconds=` figures of the server
# log, PostgreSQL's transaction and tuple counts per path, and the load average before and after.
# STRACE=1 adds one more (untimed, clearly labelled) niks3 drain under `strace -f -c`, PERF=1 one under
# `perf record -a` (samples by command and shared object).
# Needs: root, nix (Debian nix-bin), PostgreSQL server binaries and psql, python3, curl, cargo, /usr/bin/time
# (garage and openssl for TARGET=garage|both, strace for STRACE=1, perf for PERF=1).
# Env: N (500), LAYERS (10), JOBS (cores: niks3's --jobs and the builds' max-jobs), ROUNDS (1),
#      TARGET (local | garage | both: the drain's store, default local), PUSH (1), STREAM (1), NCHOOK (1),
#      STREAM_N (N), STRACE (0), PERF (0), CARGO_TARGET_DIR (default target/ in the repository),
#      BENCH_DIR (scratch on the real disk, default /var/tmp), BENCH_FS (journal | host: see bench_scratch in
#      bench/lib.sh; journal by default where BENCH_DIR is ext4 without a journal), PROFILE (release), NO_BUILD=1 to use
#      binaries already built, KEEP_LOGS=DIR to copy the server logs there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
N=${N:-500}
LAYERS=${LAYERS:-10}
JOBS=${JOBS:-$(nproc)}
ROUNDS=${ROUNDS:-1}
STREAM=${STREAM:-1}
NCHOOK=${NCHOOK:-1}
PUSH=${PUSH:-1}
TARGET=${TARGET:-local}
case $TARGET in local) TARGETS=(local);; garage) TARGETS=(garage);; both) TARGETS=(local garage);;
  *) echo "TARGET must be local, garage or both" >&2; exit 2;; esac
STREAM_N=${STREAM_N:-$N}
STRACE=${STRACE:-0}
[ "$N" -ge "$LAYERS" ] || { echo "N must be at least LAYERS" >&2; exit 2; }

. bench/lib.sh
bench_build "${PROFILE:-release}" -p niks3 -p niks3-spool
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
  mapfile -t CLOSURE < <(nix-store -qR "$1" | grep -vxF "$1"; echo "$1")  # $1 last (see wait_served)
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

# wait_served HASH…: like wait_narinfos, through the running server's read proxy (the Garage target): polls
# the LAST hash's narinfo (top's: published after all its references) every 20 ms, then checks them all.
wait_served() {
  python3 - "$PORT" "$@" <<'PYEOF'
import sys, time, urllib.request, urllib.error
port, hashes = sys.argv[1], sys.argv[2:]
def served(h):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/{h}.narinfo", timeout=10).read()
        return True
    except urllib.error.HTTPError:
        return False
deadline = time.time() + 3600
while not served(hashes[-1]):
    if time.time() > deadline:
        sys.exit("timed out")
    time.sleep(0.02)
missing = [h for h in hashes if not served(h)]
if missing:
    sys.exit(f"top's narinfo is served but {len(missing)} of its closure's are not")
PYEOF
}

# wait_published TARGET: returns when every narinfo of the closure (HASHES, TOP's last) is published.
wait_published() {
  if [ "$1" = garage ]; then wait_served "${HASHES[@]}"; else wait_narinfos "$W/cache" "${HASHES[@]}"; fi
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
  bench_psql "$W/state" -c "select relname, seq_scan, seq_tup_read, idx_scan, n_live_tup
    from pg_stat_user_tables order by seq_tup_read desc limit 4" 2>/dev/null | tr '\n' ';' || true
}

pg_counts() { bench_pg_counts "$W/state"; }

# start_server TAG [TARGET]: a fresh `niks3 serve` (PORT) on $W/spool and $W/state, storing into $W/cache
# (TARGET local, the default) or a fresh Garage in $W/garage (TARGET garage).
start_server() {
  local store=(--storage-dir "$W/cache")
  bench_set_aside "$W/state" "$W/spool" "$W/cache"
  if [ "${2:-local}" = garage ]; then
    bench_garage "$W/garage"
    store=(--s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" --s3-bucket "$S3_BUCKET")
  fi
  PORT=$(free_port)
  RUST_LOG=${RUST_LOG:-info} bench_serve "$PORT" "$W/serve-$1.log" --state-dir "$W/state" \
    --spool-dir "$W/spool" --gcroots-dir "$W/roots" "${store[@]}" --jobs "$JOBS"
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
  bench_set_aside "$W/nixcopy"
  t0=$(date +%s%N)
  /usr/bin/time -f "%U %S" -o "$W/nixcopy-time-$1" nix copy --to "file://$W/nixcopy?compression=zstd" "$TOP" 2>/dev/null
  t1=$(date +%s%N)
  echo "$((t1 - t0)) $(awk -v t="$TCK" '{printf "%d", ($1 + $2) * t}' "$W/nixcopy-time-$1")"
}

niks3_round() { # $1: round tag, $2: target (local | garage); prints "nanoseconds cpu-ticks garage-cpu-ticks"
  local r=$1 t0 t1 c0 c1 g0 g1 pg0 pg1 spid=
  start_server "$r" "$2"
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
  c0=$(server_cpu); s0=$(cpu_split); g0=$(bench_tree_cpu_ticks "$GARAGE_PID")
  t0=$(date +%s%N)
  python3 -c 'import os,sys; [os.rename(os.path.join(sys.argv[1], n), os.path.join(sys.argv[2], n)) for n in sorted(os.listdir(sys.argv[1]))]' "$W/staging/new" "$W/spool/new"
  wait_published "$2"
  t1=$(date +%s%N)
  c1=$(server_cpu); s1=$(cpu_split); g1=$(bench_tree_cpu_ticks "$GARAGE_PID")
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
  if [ "$2" = garage ]; then
    du -sb "$W/garage/data" | cut -f1 >"$W/compressed-garage"
    bench_stop_garage
  else
    cat "$W"/cache/nar/* | wc -c >"$W/compressed-local"
  fi
  keep_log "$r"
  echo "$((t1 - t0)) $((c1 - c0)) $((g1 - g0))"
}

echo "load before the drains: $(uptime)"
NC_ALL=(); declare -A NK_ALL=([local]= [garage]=)
for r in $(seq "$ROUNDS"); do
  echo "== round $r: nix copy --to file://…?compression=zstd" >&2
  NC_ALL+=("$(nix_copy_round "$r")")
  for t in "${TARGETS[@]}"; do
    echo "== round $r: niks3 serve (jobs=$JOBS, $t store)" >&2
    NK_ALL[$t]+="$(niks3_round "$r-$t" "$t"),"
  done
done
echo "load after the drains: $(uptime)"
cat "$W"/nixcopy/nar/* | wc -c >"$W/compressed-nixcopy"

python3 - "${#CLOSURE[@]}" "$NAR_BYTES" "$JOBS" "$TCK" "$W" "$(IFS=,; echo "${NC_ALL[*]}")" "${NK_ALL[local]%,}" "${NK_ALL[garage]%,}" <<'EOF'
import os, sys
n, nar, jobs, tck, w = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
rounds = lambda a: [tuple(int(v) / (1e9 if i == 0 else tck) for i, v in enumerate(x.split())) for x in a.split(",") if x]
nc = rounds(sys.argv[6])
size = lambda tag: int(open(os.path.join(w, "compressed-" + tag)).read()) / 2**20
print(f"(a) full-spool drain of {n} paths, {nar / 2**20:.1f} MiB of NAR")
print("| pusher | s per round | paths/s (best) | vs nix copy, wall (best vs best; per round) | CPU-s per round | CPU ms per path (best round) | Garage CPU-s | stored |")
print("|---|---|---|---|---|---|---|---|")
rows = [("nix copy --to file://…?compression=zstd", nc, "nixcopy")]
rows += [(f"niks3 serve (jobs={jobs}, {t} store)", rounds(a), t) for t, a in (("local", sys.argv[7]), ("garage", sys.argv[8])) if a]
for name, t, tag in rows:
    best = min(t)
    ratio = "1" if tag == "nixcopy" else f"{min(nc)[0] / best[0]:.3f}x ({' '.join(f'{a[0] / b[0]:.3f}' for a, b in zip(nc, t))})"
    garage = " ".join(f"{r[2]:.2f}" for r in t) if tag == "garage" else ""
    stored = f"{size(tag):.1f} MiB" + (" (data dir)" if tag == "garage" else "")
    print(f"| {name} | {' '.join(f'{r[0]:.2f}' for r in t)} | {n / best[0]:.1f} | {ratio} | {' '.join(f'{r[1]:.2f}' for r in t)} "
          f"| {best[1] / n * 1000:.1f} | {garage} | {stored} |")
for name, t, tag in rows[1:]:
    print(f"{name}: takes {min(t)[0] / min(nc)[0]:.1f}x as long as nix copy; CPU per path {min(t)[1] / min(nc)[1]:.1f}x nix copy's")
EOF

if [ "$PUSH" = 1 ]; then
  echo "== push: niks3 push of the closure from /nix/store to a fresh idle server (local store)" >&2
  echo "load before the push: $(uptime)"
  start_server push local
  c0=$(server_cpu); pg0=$(pg_counts)
  t0=$(date +%s%N)
  /usr/bin/time -f "%U %S" -o "$W/push-time" "$BIN/niks3" push --server "http://127.0.0.1:$PORT" \
    --auth-token-file "$W/state/api-token" --jobs "$JOBS" "$TOP" 2>"$W/push.log" || { cat "$W/push.log" >&2; exit 1; }
  t1=$(date +%s%N)
  wait_narinfos "$W/cache" "${HASHES[@]}"  # push may return before the server has published them all
  t2=$(date +%s%N)
  c1=$(server_cpu)
  sleep 1; pg1=$(pg_counts)
  bench_stop_server
  keep_log push
  echo "load after the push: $(uptime)"
  python3 - "${#CLOSURE[@]}" "$NAR_BYTES" "$JOBS" "$TCK" "$((t1 - t0))" "$((t2 - t1))" "$((c1 - c0))" \
    "$(cat "$W/push-time")" "$pg0" "$pg1" "$(cat "$W/compressed-nixcopy")" "$(cat "$W"/cache/nar/* | wc -c)" "${NC_ALL[@]}" <<'EOF'
import sys
n, nar, jobs, tck, ns, lag, ticks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:8])
client = sum(map(float, sys.argv[8].split()))
commits = int(sys.argv[10].split()[0]) - int(sys.argv[9].split()[0])
nc_size, nk_size = int(sys.argv[11]) / 2**20, int(sys.argv[12]) / 2**20
nc = min((int(x.split()[0]) / 1e9, int(x.split()[1]) / tck) for x in sys.argv[13:])
s, server = (ns + lag) / 1e9, ticks / tck
print(f"push: `niks3 push` of {n} paths ({nar / 2**20:.1f} MiB of NAR) from /nix/store to a fresh server (local store, jobs={jobs})")
print("| pusher | s (to the last narinfo) | paths/s | CPU-s client | CPU-s server + PostgreSQL | CPU ms per path | PostgreSQL commits per path | stored |")
print("|---|---|---|---|---|---|---|---|")
print(f"| nix copy --to file://…?compression=zstd (best round of (a)) | {nc[0]:.2f} | {n / nc[0]:.1f} | {nc[1]:.2f} | | {nc[1] / n * 1000:.1f} | | {nc_size:.1f} MiB |")
print(f"| niks3 push | {s:.2f} | {n / s:.1f} | {client:.2f} | {server:.2f} | {(client + server) / n * 1000:.1f} | {commits / n:.1f} | {nk_size:.1f} MiB |")
print(f"niks3 push takes {s / nc[0]:.1f}x as long as nix copy, {(client + server) / nc[1]:.1f}x its CPU; "
      f"`niks3 push` returned after {ns / 1e9:.2f} s, the last narinfo appeared {lag / 1e6:.0f} ms later")
EOF
fi

if [ "$STRACE" = 1 ]; then
  echo "== extra round under strace -f -c (untimed)" >&2
  niks3_round strace local >/dev/null
  echo "strace -f -c of the server's process tree (not PostgreSQL's) during one drain of ${#CLOSURE[@]} paths, top 20 by calls:"
  sed -n '1,2p' "$W/strace.txt"
  grep -v -e '^%' -e '^-' -e total "$W/strace.txt" | sort -k4 -n -r | head -20
  grep -E ' total$' "$W/strace.txt" || true
fi

if [ "${PERF:-0}" = 1 ]; then
  echo "== extra round under perf record -a (untimed)" >&2
  niks3_round perf local >/dev/null
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
print("| stream | paths/s through the hook | build end -> narinfo p50 | p90 | p99 | max | CPU ms per path |\n|---|---:|---:|---:|---:|---:|---:|")
print(f"| niks3-hook + niks3 serve (local store) | {rate:.1f} | {q(.5) * 1000:.0f} ms | {q(.9) * 1000:.0f} ms | {q(.99) * 1000:.0f} ms | {lat[-1] * 1000:.0f} ms | {ticks / tck / n * 1000:.1f} |")
EOF
  bench_stop_server
  keep_log stream
  echo "load after the stream: $(uptime)"
fi

if [ "$NCHOOK" = 1 ]; then
  echo "== (c) nix copy hook stream: building $STREAM_N fresh paths, each copied by a post-build-hook" >&2
  cat >"$W/hook-nixcopy.sh" <<EOF
#!/bin/sh
t=\$(date +%s%N)
# Nix 2.8 gives the hook an empty OUT_PATHS: the outputs are the derivation's
/usr/bin/time -a -o '$W/nchook-time' -f '%U %S' sh -c 'nix copy --to "file://$W/nchook?compression=zstd" \${OUT_PATHS:-\$(nix-store -q --outputs "\$DRV_PATH")}'
echo "\$t \$DRV_PATH" >>'$W/nchook-hook.log'
EOF
  chmod +x "$W/hook-nixcopy.sh"
  : >"$W/nchook-time"
  t0=$(date +%s%N)
  TOP3=$(nix-build --no-out-link "$W/closure.nix" --argstr salt "nchook-$(date +%s%N)" --arg n "$STREAM_N" \
    --option post-build-hook "$W/hook-nixcopy.sh" 2>"$W/build3.log") || { cat "$W/build3.log" >&2; exit 1; }
  tb=$(date +%s%N)
  closure_of "$TOP3"
  wait_narinfos "$W/nchook" "${HASHES[@]}"
  awk '{print $2}' "$W/nchook-hook.log" | xargs nix show-derivation >"$W/nchook-drvs.json"
  python3 - "$W/nchook-hook.log" "$W/nchook" "$W/nchook-drvs.json" "$t0" "$tb" "$W/nchook-time" <<'EOF'
import json, os, sys
log, cache, drvs, t0, tb, times = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
lat, hooked = [], []
for line in open(log):
    ts, drv = line.split()
    for o in (v["path"] for v in drvs[drv]["outputs"].values()):
        hooked.append(int(ts))
        lat.append((os.stat(os.path.join(cache, os.path.basename(o)[:32] + ".narinfo")).st_mtime_ns - int(ts)) / 1e9)
cpu = sum(float(x) for l in open(times) if l[0].isdigit() for x in l.split())
lat.sort(); hooked.sort()
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
n = len(lat)
rate = n / ((hooked[-1] - hooked[0]) / 1e9) if n > 1 else 0
print(f"(c) nix copy hook stream: {n} paths built at {rate:.1f} paths/s (build {(tb - t0) / 1e9:.1f} s; the hook blocks Nix's build loop)")
print(f"build end (hook start) -> narinfo: p50 {q(.5) * 1000:.0f} ms, p90 {q(.9) * 1000:.0f} ms, p99 {q(.99) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
      f"hooks' CPU (nix-store -q + nix copy) {cpu:.2f} s = {cpu / n * 1000:.1f} ms per path")
print("| stream | paths/s through the hook | build end -> narinfo p50 | p90 | p99 | max | CPU ms per path |\n|---|---:|---:|---:|---:|---:|---:|")
print(f"| nix copy post-build-hook | {rate:.1f} | {q(.5) * 1000:.0f} ms | {q(.9) * 1000:.0f} ms | {q(.99) * 1000:.0f} ms | {lat[-1] * 1000:.0f} ms | {cpu / n * 1000:.1f} |")
EOF
  echo "load after the nix copy hook stream: $(uptime)"
fi
echo "load at the end: $(uptime)"
