#!/usr/bin/env bash
# bench/rss.sh — peak memory of `niks3 serve` while it pushes one big NAR (default 4 GiB), measured in
# this run against two baselines: the same daemon idle (before the push), and `nix copy --to
# 'file://…?compression=zstd'` of the same path (/usr/bin/time -v).
#
# The path: one derivation writing SIZE_MIB of semi-compressible data (real binaries and libraries from
# /usr/lib concatenated, repeated as needed). The daemon (embedded PostgreSQL, local store) gets it from
# its spool; its peak RSS is the kernel's VmHWM of the process after the upload.
# Needs: root, nix (Debian nix-bin), PostgreSQL server binaries, python3, curl, cargo, /usr/bin/time.
# (Three passes over /usr/lib at most: SIZE_MIB must not exceed three times its size.)
# Env: CARGO_TARGET_DIR (default target/ in the repository), SIZE_MIB (4096), PROFILE (release), NO_BUILD=1,
#      BENCH_DIR (scratch on the real disk, default /var/tmp; needs ~2.5x SIZE_MIB free).
#      S3_ENDPOINT, S3_BUCKET, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY: push to that bucket instead of a
#      local directory (e.g. a Garage started like bench_garage in bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
SIZE_MIB=${SIZE_MIB:-4096}
. bench/lib.sh
bench_build "${PROFILE:-release}" -p niks3 -p niks3-spool
bench_scratch rss
BIG=
bench_on_exit '[ -z "$BIG" ] || nix-store --delete "$BIG" >/dev/null 2>&1'
bench_nix_offline
bench_hook_wrapper "$W/spool" "$W/roots"
BYTES=$((SIZE_MIB << 20))
cat >"$W/big.nix" <<EOF
{ salt }: derivation {
  name = "bench-big"; inherit salt;
  system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; for pass in 1 2 3; do find /usr/lib -type f -print0 | xargs -0 cat 2>/dev/null; done | head -c $BYTES > \$out" ];
}
EOF
echo "== building one $SIZE_MIB MiB path" >&2
BIG=$(bench_build_hooked "$W/big.nix" rss)
NAR_BYTES=$(nix-store -q --size "$BIG")
# keep the entry aside until the daemon is up and idle
mkdir -p "$W/staging"; mv "$W"/spool/new/* "$W/staging/"

echo "== nix copy --to file://…?compression=zstd (baseline)" >&2
/usr/bin/time -v nix copy --to "file://$W/nixcopy?compression=zstd" "$BIG" 2>"$W/time.log" >/dev/null
NIXCOPY_KB=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$W/time.log")
NIXCOPY_S=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$W/time.log")
rm -rf "$W/nixcopy"

echo "== niks3 serve" >&2
PORT=$(free_port)
if [ -n "${S3_ENDPOINT:-}" ]; then
  STORE_ARGS=(--s3-endpoint "$S3_ENDPOINT" --s3-bucket "$S3_BUCKET" --s3-region "${S3_REGION:-garage}")
  export NIKS3_S3_ACCESS_KEY=$S3_ACCESS_KEY NIKS3_S3_SECRET_KEY=$S3_SECRET_KEY
  BACKEND="S3 $S3_ENDPOINT"
else
  STORE_ARGS=(--storage-dir "$W/cache"); BACKEND="local directory"
fi
RUST_LOG=info bench_serve "$PORT" "$W/serve.log" --state-dir "$W/state" --spool-dir "$W/spool" \
  --gcroots-dir "$W/roots" "${STORE_ARGS[@]}"
sleep 1
IDLE_KB=$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$SERVER_PID/status")
H=${BIG##*/}; H=${H:0:32}
t0=$(date +%s%N)
mv "$W"/staging/* "$W/spool/new/"
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/$H.narinfo"; do
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$W/serve.log" >&2; exit 1; }
  sleep 0.05
done
t1=$(date +%s%N)
PEAK_KB=$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$SERVER_PID/status")
bench_stop_server

echo "backend: $BACKEND"
python3 - "$NAR_BYTES" "$IDLE_KB" "$PEAK_KB" "$NIXCOPY_KB" "$NIXCOPY_S" "$((t1 - t0))" <<'EOF'
import sys
nar, idle, peak, nc_kb, nc_s, nk_ns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(nc_s.split(":"))))
print(f"one path, NAR size {nar / 2**20:.0f} MiB")
print("| process | peak RSS | push time |")
print("|---|---|---|")
print(f"| niks3 serve, idle (before the push) | {idle / 1024:.1f} MiB | |")
print(f"| niks3 serve, pushing | {peak / 1024:.1f} MiB | {nk_ns / 1e9:.1f} s |")
print(f"| nix copy --to file://…?compression=zstd | {nc_kb / 1024:.1f} MiB | {secs:.1f} s |")
print(f"niks3 peak / NAR size = {peak * 1024 / nar * 100:.2f}%; niks3 peak vs nix copy = {peak / nc_kb:.2f}x")
EOF
