#!/usr/bin/env bash
# bench/proxy.sh — narinfo GETs per second from niks3's read proxy vs nginx serving the very same files,
# measured with wrk on loopback in one run (so the ratio is meaningful on a shared machine).
#
#   1. writes N narinfo files (default 2000, ~450 bytes each, real nix32 names) into a cache directory;
#   2. starts `niks3 serve --storage-dir DIR --no-spool` (embedded PostgreSQL in a scratch state dir) and
#      nginx (worker_processes = cores, access_log off, sendfile on) with that directory as its root;
#   3. runs wrk (THREADS threads, CONNS connections, DURATION) against each, twice, alternating, with a
#      Lua script cycling over all N narinfo URLs, and checks every answer was a 200;
#   4. prints requests/s of both and the ratio (target: niks3 >= 50% of nginx).
#
# Needs: root, cargo, wrk, nginx, PostgreSQL server binaries (for the embedded database).
# Env: CARGO_TARGET_DIR (default target/ in the repository), N, THREADS (2), CONNS (64), DURATION (10s),
#      PROFILE (release), NO_BUILD=1 to use the binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
N=${N:-2000}; THREADS=${THREADS:-2}; CONNS=${CONNS:-64}; DURATION=${DURATION:-10s}; PROFILE=${PROFILE:-release}

. bench/lib.sh
bench_build "$PROFILE" -p niks3 --bin niks3
bench_scratch proxy
bench_on_exit '[ ! -f "$W/nginx.pid" ] || { kill "$(cat "$W/nginx.pid")"; sleep 0.5; }'

echo "== writing $N narinfos" >&2
python3 - "$W/cache" "$N" "$W/paths.lua" <<'PY'
import os, random, sys
root, n, lua = sys.argv[1], int(sys.argv[2]), sys.argv[3]
alpha = "0123456789abcdfghijklmnpqrsvwxyz"
os.makedirs(os.path.join(root, "nar"), exist_ok=True)
rnd = random.Random(42)
h = lambda k: "".join(rnd.choice(alpha) for _ in range(k))
names = []
for i in range(n):
    p = h(32)
    text = (f"StorePath: /nix/store/{p}-bench-{i}\nURL: nar/{h(52)}.nar.zst\nCompression: zstd\n"
            f"FileHash: sha256:{h(52)}\nFileSize: {rnd.randint(1000, 10**7)}\nNarHash: sha256:{h(52)}\n"
            f"NarSize: {rnd.randint(1000, 10**7)}\nReferences: {h(32)}-dep-a {h(32)}-dep-b\n"
            f"Deriver: {h(32)}-bench-{i}.drv\nSig: bench-1:{h(86)}==\n")
    open(os.path.join(root, p + ".narinfo"), "w").write(text)
    names.append(p)
open(os.path.join(root, "nix-cache-info"), "w").write("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
with open(lua, "w") as f:
    f.write("local paths = {\n" + "".join(f'  "/{p}.narinfo",\n' for p in names) + "}\n")
    f.write("""local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
local non200 = 0
response = function(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.1f %d %.3f\\n", summary.requests / (summary.duration / 1e6), errs, latency:percentile(99) / 1000))
end
""")
PY

P_NIKS3=$(free_port); P_NGINX=$(free_port)
echo "== starting niks3 serve on :$P_NIKS3" >&2
NIKS3_API_TOKEN=bench-token-0123456789abcdefghijklmnopqrstuvwxyz bench_serve "$P_NIKS3" "$W/niks3.log" \
  --state-dir "$W/state" --storage-dir "$W/cache" --no-spool --cache-url "http://127.0.0.1:$P_NIKS3"
echo "== starting nginx on :$P_NGINX" >&2
cat >"$W/nginx.conf" <<NGX
worker_processes $(nproc);
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { text/x-nix-narinfo narinfo; }
  server {
    listen 127.0.0.1:$P_NGINX;
    root $W/cache;
    location / { add_header Cache-Control "public, max-age=60"; }
  }
}
NGX
nginx -c "$W/nginx.conf"
first=$(head -c 100 "$W/paths.lua" | grep -o '/[a-z0-9]*\.narinfo' | head -1)
for i in $(seq 300); do
  curl -sf "http://127.0.0.1:$P_NIKS3$first" >/dev/null && curl -sf "http://127.0.0.1:$P_NGINX$first" >/dev/null && break
  sleep 0.1
done
cmp <(curl -sf "http://127.0.0.1:$P_NIKS3$first") <(curl -sf "http://127.0.0.1:$P_NGINX$first") \
  || { echo "the two servers do not serve the same bytes (niks3 log: $W/niks3.log)" >&2; tail -20 "$W/niks3.log" >&2; exit 1; }

run() { wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$W/paths.lua" "http://127.0.0.1:$1" 2>&1 | sed -n 's/^RESULT //p'; }
declare -a R_NIKS3 R_NGINX
for round in 1 2; do
  echo "== round $round: nginx" >&2; r=$(run "$P_NGINX"); R_NGINX+=("$r"); echo "   $r" >&2
  echo "== round $round: niks3" >&2; r=$(run "$P_NIKS3"); R_NIKS3+=("$r"); echo "   $r" >&2
done
python3 - "${R_NIKS3[@]}" "${R_NGINX[@]}" "$N" "$THREADS" "$CONNS" "$DURATION" "$PROFILE" <<'PY'
import sys
a = sys.argv[1:]
niks3 = [list(map(float, x.split())) for x in a[0:2]]
nginx = [list(map(float, x.split())) for x in a[2:4]]
n, t, c, d, prof = a[4:9]
best = lambda rs: max(r[0] for r in rs)
errs = lambda rs: int(sum(r[1] for r in rs))
p99 = lambda rs: min(r[2] for r in rs)
rn, rg = best(niks3), best(nginx)
print(f"narinfo GETs/s over {n} distinct narinfos, wrk -t{t} -c{c} -d{d}, best of 2 rounds ({prof} build):")
print(f"  nginx : {rg:10.0f} req/s  p99 {p99(nginx):6.2f} ms  errors {errs(nginx)}")
print(f"  niks3 : {rn:10.0f} req/s  p99 {p99(niks3):6.2f} ms  errors {errs(niks3)}")
print(f"  ratio niks3/nginx = {rn / rg:.2f} (target >= 0.50)")
if errs(niks3) or errs(nginx):
    sys.exit("non-200 answers or socket errors: the numbers are not comparable")
PY
