#!/usr/bin/env bash
# bench/small-repush.sh — re-pushing a closure that is already cached (issue 14, deliverable 3: "≤ 1 s and a
# constant number of database round trips" for a 10 000-path closure): wall time, CPU and PostgreSQL
# statements / transactions, at each closure size of SIZES, so that "constant" is visible.
#
# The closures: for each size S of SIZES, S paths (a regular file of 0.1–4 KiB each) in LAYERS layers, each
# path referring to 0–3 paths of the layer below, plus one `top` referring to all of them (S+1 paths). They
# are not built (10 000 nix-builds take ~5 min here) but imported: a Python generator writes a
# `nix-store --import` stream (Nix's export format: per path 1, the NAR, the export magic, the path, its
# references, an empty deriver, no signature; 0 at the end) with fresh random store paths. They are deleted
# from the Nix store at exit.
# One `niks3 serve` (embedded PostgreSQL with pg_stat_statements preloaded — written into its
# postgresql.conf between a first start and the real one — local store) gets every closure with a first
# `niks3 push` (timed too); then, ROUNDS times for each closure:
#   (i)  `niks3 push TOP` again: wall from start to exit; CPU of client + server + PostgreSQL;
#   (ii) one spool entry for TOP (niks3-hook with OUT_PATHS=TOP, no DRV_PATH) written into the running
#        server's spool: wall from the hook's start until the entry has left the spool (`new/` and
#        `claimed/` empty, polled every 5 ms); CPU of server + PostgreSQL.
# Database work of each: statements the server sent (top-level pg_stat_statements calls, BEGIN/COMMIT
# included, not those run inside its PL/pgSQL functions; psql's own
# queries excluded; a statement outside BEGIN…COMMIT is a transaction of its own) and the explicit
# transactions among them (COMMIT calls). Not pg_stat_database.xact_commit: PostgreSQL 15's backends flush
# those counters at most once a second, so counts straddle the boundaries of sub-second measurements (the
# first push's thousands of commits landed in the re-pushes' deltas), and autovacuum's count too.
# Each extended-protocol statement that is not a cached prepared statement costs tokio-postgres two round
# trips (prepare, then execute); BEGIN/COMMIT one. So the round trips themselves are counted too, in one
# more (untimed) round of each under `strace -f` of the postmaster and its backends: the ReadyForQuery
# messages they send (one per Sync or simple query, i.e. one per round trip of a client that does not
# pipeline), found in the bytes of their `sendto` calls.
# Needs: root, nix (Debian nix-bin), PostgreSQL server binaries with pg_stat_statements, psql, python3,
# curl, cargo, /usr/bin/time, strace.
# Env: SIZES ("1000 10000"), LAYERS (10), ROUNDS (3), JOBS (cores: niks3's --jobs),
#      CARGO_TARGET_DIR (default target/ in the repository), BENCH_DIR (scratch on the real disk, default
#      /var/tmp), PROFILE (release), NO_BUILD=1 to use binaries already built, KEEP_LOGS=DIR to copy the
#      server and PostgreSQL logs there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
SIZES=${SIZES:-1000 10000}
LAYERS=${LAYERS:-10}
ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-$(nproc)}

. bench/lib.sh
bench_build "${PROFILE:-release}" -p niks3 -p niks3-spool
bench_scratch repush
bench_nix_offline
TCK=$(getconf CLK_TCK)
echo "load before: $(uptime)"

# The imported paths, deleted from the Nix store at exit: last imported first (referrers before their
# references), in as few `nix-store --delete` calls as the argument limit allows (a call fails as a whole
# when a path it names is still referred to by one it does not).
: >"$W/imported"
bench_on_exit 'tac "$W/imported" | xargs -r -s 1500000 nix-store --delete >/dev/null 2>&1'

# import_closure SIZE: imports a fresh layered closure of SIZE+1 paths; prints its top path.
import_closure() {
  python3 - "$1" "$LAYERS" <<'PYEOF' | nix-store --import >"$W/import.out" 2>"$W/import.log" || { cat "$W/import.log" >&2; exit 1; }
import hashlib, os, struct, sys
n, layers = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
alphabet = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base-32
salt = os.urandom(16)
def u64(x): return struct.pack("<Q", x)
def s(b):
    b = b if isinstance(b, bytes) else b.encode()
    return u64(len(b)) + b + b"\0" * (-len(b) % 8)
def path(name):
    h = hashlib.sha256(salt + name.encode()).digest()
    return "/nix/store/" + "".join(alphabet[b % 32] for b in h[:32]) + "-" + name
def export(p, data, refs):
    nar = b"".join(map(s, ("nix-archive-1", "(", "type", "regular", "contents", data, ")")))
    out.write(u64(1) + nar + u64(0x4558494e) + s(p) + u64(len(refs)) + b"".join(map(s, refs)) + s("") + u64(0))
per = (n + layers - 1) // layers
paths = []
for i in range(n):
    layer = i // per
    ndeps = 0 if layer == 0 else (i * 7 + 3) % 4
    refs = sorted({paths[(layer - 1) * per + (i * 31 + k * 17) % per] for k in range(ndeps)})
    p = path(f"repush-{layer}-{i}")
    size = 100 + (i * 2654435761) % 4000
    export(p, (hashlib.sha256(p.encode()).hexdigest() * (size // 64 + 1))[:size].encode(), refs)
    paths.append(p)
top = path("repush-top")
export(top, " ".join(paths).encode(), sorted(paths))
out.write(u64(0))
PYEOF
  cat "$W/import.out" >>"$W/imported"
  tail -1 "$W/import.out"
}

# pg_strace_start / pg_strace_stop: `strace -f -e sendto` of the postmaster and its live children (the
# server's pooled connections' backends) in between; pg_strace_stop prints the number of ReadyForQuery
# messages ('Z', length 5, status I/T/E) they sent.
pg_strace_start() {
  local pm pids=() p
  pm=$(bench_postmaster_pid "$W/state")
  for p in "$pm" $(pgrep -P "$pm"); do pids+=(-p "$p"); done
  strace -f -qq -e trace=sendto -s 16777216 -xx -o "$W/pg-strace" "${pids[@]}" 2>/dev/null &
  STRACE_PID=$!
  sleep 1
}
pg_strace_stop() {
  kill -INT "$STRACE_PID"; wait "$STRACE_PID" 2>/dev/null || true
  python3 -c 'import re, sys; print(len(re.findall(r"\\x5a\\x00\\x00\\x00\\x05\\x(49|54|45)", open(sys.argv[1]).read())))' "$W/pg-strace"
}

server_cpu() { bench_tree_cpu_ticks "$SERVER_PID" "$(bench_postmaster_pid "$W/state")"; }

# db_reset / db_read: pg_stat_statements around a measurement; db_read prints "statements commits".
db_reset() { bench_psql "$W/state" -c "select pg_stat_statements_reset()" >/dev/null; }
db_read() {
  bench_psql "$W/state" -c "select coalesce(sum(calls), 0), coalesce(sum(calls) filter (where query ilike 'commit%'), 0)
    from pg_stat_statements where query not ilike '%pg_stat%'"
}
# db_top TAG: the statements of the last measurement by calls, into $W/statements-TAG.
db_top() {
  bench_psql "$W/state" -c "select calls, rows, regexp_replace(left(query, 110), '\s+', ' ', 'g') from pg_stat_statements
    where query not ilike '%pg_stat%' order by calls desc" >"$W/statements-$1"
}

push() { # TOP: `niks3 push`, its CPU (user sys) into $W/push-time
  /usr/bin/time -f "%U %S" -o "$W/push-time" "$BIN/niks3" push --server "http://127.0.0.1:$PORT" \
    --auth-token-file "$W/state/api-token" --jobs "$JOBS" "$1" 2>"$W/push.log" || { cat "$W/push.log" >&2; exit 1; }
}

# The server: a first start creates the cluster; pg_stat_statements goes into its postgresql.conf; the
# second start (same state directory) loads it.
serve() {
  PORT=$(free_port)
  RUST_LOG=${RUST_LOG:-info} bench_serve "$PORT" "$W/serve.log" --state-dir "$W/state" --spool-dir "$W/spool" \
    --gcroots-dir "$W/roots" --storage-dir "$W/cache" --jobs "$JOBS"
}
mkdir -p "$W/spool" "$W/roots"
serve
bench_stop_server
for _ in $(seq 100); do [ -z "$(bench_postmaster_pid "$W/state")" ] || ! kill -0 "$(bench_postmaster_pid "$W/state")" 2>/dev/null && break; sleep 0.1; done
PGCONF=$(find "$W/state" -name postgresql.conf | head -1)
printf '%s\n' "shared_preload_libraries = 'pg_stat_statements'" "pg_stat_statements.track = top" \
  "pg_stat_statements.max = 10000" >>"$PGCONF"
serve
bench_psql "$W/state" -c "create extension if not exists pg_stat_statements"
[ "$(bench_psql "$W/state" -c "show shared_preload_libraries")" = pg_stat_statements ] ||
  { echo "pg_stat_statements is not loaded" >&2; exit 1; }

# The idle calibration: what db_reset + db_read count with nothing happening for a second.
db_reset; sleep 1; read -r IDLE_ST IDLE_C < <(db_read)
echo "idle calibration: $IDLE_ST statements, $IDLE_C commits (subtracted below)" >&2

declare -A TOPS
for size in $SIZES; do
  echo "== importing a closure of $size+1 paths ($LAYERS layers)" >&2
  t0=$(date +%s%N)
  TOPS[$size]=$(import_closure "$size")
  t1=$(date +%s%N)
  echo "imported $(nix-store -qR "${TOPS[$size]}" | wc -l) paths in $(((t1 - t0) / 1000000)) ms" >&2
  echo "== first push of $size+1 paths" >&2
  db_reset; c0=$(server_cpu); t0=$(date +%s%N)
  push "${TOPS[$size]}"
  t1=$(date +%s%N); c1=$(server_cpu); read -r st c < <(db_read)
  echo "first $size $((t1 - t0)) $(awk -v t="$TCK" '{printf "%d", ($1 + $2) * t}' "$W/push-time") $((c1 - c0)) $((st - IDLE_ST)) $((c - IDLE_C))" >>"$W/results"
done
echo "load after the first pushes: $(uptime)"

for r in $(seq "$ROUNDS"); do
  for size in $SIZES; do
    top=${TOPS[$size]}
    echo "== round $r, $size+1 paths: niks3 push again" >&2
    db_reset; c0=$(server_cpu); t0=$(date +%s%N)
    push "$top"
    t1=$(date +%s%N); c1=$(server_cpu); read -r st c < <(db_read)
    db_top "push-$size"
    echo "push $size $((t1 - t0)) $(awk -v t="$TCK" '{printf "%d", ($1 + $2) * t}' "$W/push-time") $((c1 - c0)) $((st - IDLE_ST)) $((c - IDLE_C))" >>"$W/results"

    echo "== round $r, $size+1 paths: one spool entry for top" >&2
    db_reset; c0=$(server_cpu); t0=$(date +%s%N)
    env -u DRV_PATH OUT_PATHS="$top" NIKS3_SPOOL_DIR="$W/spool" NIKS3_GCROOTS_DIR="$W/roots" "$BIN/niks3-hook"
    python3 - "$W/spool" <<'PYEOF'
import os, sys, time
spool, deadline = sys.argv[1], time.time() + 600
while os.listdir(os.path.join(spool, "new")) or os.listdir(os.path.join(spool, "claimed")):
    if time.time() > deadline:
        sys.exit("the spool entry did not leave the spool in 600 s")
    time.sleep(0.005)
PYEOF
    t1=$(date +%s%N); c1=$(server_cpu); read -r st c < <(db_read)
    db_top "spool-$size"
    [ -z "$(ls "$W/spool/quarantine")" ] || { echo "the entry was quarantined:" >&2; cat "$W"/spool/quarantine/* >&2; exit 1; }
    echo "spool $size $((t1 - t0)) 0 $((c1 - c0)) $((st - IDLE_ST)) $((c - IDLE_C))" >>"$W/results"
  done
done

# re_push_traced SIZE: the two re-pushes of the closure of SIZE once more, untimed, each under pg_strace_*;
# appends "rt SIZE push-sendtos spool-sendtos" to the results.
re_push_traced() {
  local top=${TOPS[$1]} a b
  pg_strace_start; push "$top"; sleep 0.5; a=$(pg_strace_stop)
  pg_strace_start
  env -u DRV_PATH OUT_PATHS="$top" NIKS3_SPOOL_DIR="$W/spool" NIKS3_GCROOTS_DIR="$W/roots" "$BIN/niks3-hook"
  until [ -z "$(find "$W/spool/new" "$W/spool/claimed" -mindepth 1 | head -1)" ]; do sleep 0.01; done
  sleep 0.5; b=$(pg_strace_stop)
  echo "rt $1 $a $b" >>"$W/results"
}
for size in $SIZES; do
  echo "== $size+1 paths: both re-pushes again under strace -f -e sendto of PostgreSQL (untimed)" >&2
  re_push_traced "$size"
done
echo "load at the end: $(uptime)"
grep -E 'uploaded|entry|closure|cached' "$W/serve.log" | tail -5 >&2 || true
if [ -n "${KEEP_LOGS:-}" ]; then
  mkdir -p "$KEEP_LOGS"; cp "$W/serve.log" "$W"/statements-* "$KEEP_LOGS/"
  cp "$(find "$W/state" -name postgres.log | head -1)" "$KEEP_LOGS/" || true
fi

python3 - "$W/results" "$TCK" <<'EOF'
import collections, statistics, sys
rows, tck, rt = collections.defaultdict(list), int(sys.argv[2]), {}
for line in open(sys.argv[1]):
    if line.startswith("rt "):
        _, size, a, b = line.split()
        rt[("push", int(size))], rt[("spool", int(size))] = a, b
        continue
    kind, size, ns, client, server, st, c = line.split()
    rows[(kind, int(size))].append((int(ns) / 1e9, int(client) / tck, int(server) / tck, int(st), int(c)))
names = {"first": "first `niks3 push` (uploads everything)", "push": "`niks3 push` again (all cached)",
         "spool": "one spool entry for top (all cached)"}
print("| what | paths | s (each round) | CPU-s client | CPU-s server + PostgreSQL (median) | statements (median) | "
      "round trips (ReadyForQuery, one traced round) | COMMITs (median) |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
for kind in ("first", "push", "spool"):
    for size in sorted({s for k, s in rows if k == kind}):
        r = rows[(kind, size)]
        med = lambda i: statistics.median(x[i] for x in r)
        client = f"{med(1):.2f}" if kind != "spool" else "—"
        print(f"| {names[kind]} | {size + 1} | {' '.join(f'{x[0]:.2f}' for x in r)} | {client} | {med(2):.2f} | "
              f"{med(3):.0f} | {rt.get((kind, size), '')} | {med(4):.0f} |")
EOF
for f in "$W"/statements-*; do
  echo "statements of the last ${f##*/statements-} re-push (calls rows query), top 12:"
  head -12 "$f"
done
