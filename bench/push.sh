#!/usr/bin/env bash
# bench/push.sh — push throughput of niks3's upload pipeline vs `nix copy --to 'file://…?compression=zstd'`,
# both measured in this run on the same fresh closure.
#
# The closure: PARTS derivations, each copying a slice of the real files under /usr/lib and /usr/bin (about
# TOTAL_MIB in all), and one small `top` referring to all of them. It is built with niks3-hook as the
# post-build-hook into a staging spool; then
#   niks3:    `niks3 serve` (embedded PostgreSQL, local store) is started and idle; the staged entries are
#             moved into its spool at t0; t1 is when the last narinfo (top's, published after all the
#             others) appears in the cache directory.
#   nix copy: `nix copy --to file://DIR?compression=zstd` of the same closure (Nix 2.8, zstd level 3).
# Prints NAR MiB, seconds, MiB/s and the ratio. Needs: root, nix (Debian nix-bin), PostgreSQL server
# binaries, python3, curl, cargo.
# Env: CARGO_TARGET_DIR (default target/ in the repository), TOTAL_MIB (1024), PARTS (8), JOBS (cores),
#      ROUNDS (2: the pushers alternate, each one's best round is reported),
#      LEVEL (niks3's --compression-level, default 3 = what nix copy uses),
#      BASELINE_BIN (a directory with another build's `niks3`, e.g. of the previous commit: it joins every
#      round, so a change is measured against its baseline on the same machine minutes apart),
#      BENCH_DIR (scratch on the real disk, default /var/tmp), PROFILE (release), NO_BUILD=1 to use
#      binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TOTAL_MIB=${TOTAL_MIB:-1024}
PARTS=${PARTS:-8}
JOBS=${JOBS:-$(nproc)}
ROUNDS=${ROUNDS:-2}

. bench/lib.sh
bench_build "${PROFILE:-release}" -p niks3 -p niks3-spool
bench_scratch push
bench_nix_offline "max-jobs = 2"

# File lists: real binaries and libraries, PARTS slices of about TOTAL_MIB/PARTS each.
python3 - "$W" "$TOTAL_MIB" "$PARTS" <<'EOF'
import os, sys
w, total, parts = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3])
files, size = [], 0
for root in ("/usr/lib", "/usr/bin"):
    for d, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            p = os.path.join(d, n)
            if os.path.islink(p) or not os.path.isfile(p) or any(c in p for c in "\n\"'$`\\ "):
                continue
            s = os.path.getsize(p)
            if size + s > total:
                continue
            files.append((p, s)); size += s
# balance: biggest files first, each into the currently smallest part
lists = [[] for _ in range(parts)]; sizes = [0] * parts
for p, s in sorted(files, key=lambda f: -f[1]):
    i = sizes.index(min(sizes)); lists[i].append(p); sizes[i] += s
for i, l in enumerate(lists):
    open(os.path.join(w, "list-%d" % i), "w").write("".join(f + "\n" for f in sorted(l)))
EOF

bench_hook_wrapper "$W/staging" "$W/roots"
cat >"$W/closure.nix" <<EOF
{ salt }:
let
  part = i: derivation {
    name = "bench-part-\${toString i}"; inherit salt;
    system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p \$out && /usr/bin/xargs -r -d '\\\\n' -a $W/list-\${toString i} /bin/cp --parents -t \$out" ];
  };
  parts = builtins.genList part $PARTS;
in derivation {
  name = "bench-top"; inherit salt;
  system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo \${toString parts} > \$out" ];
}
EOF
echo "== building the closure ($PARTS parts, ~$TOTAL_MIB MiB of /usr/lib and /usr/bin)" >&2
TOP=$(bench_build_hooked "$W/closure.nix" push)
mapfile -t CLOSURE < <(nix-store -qR "$TOP")
NAR_BYTES=$(nix path-info --json -r "$TOP" | python3 -c 'import json,sys; print(sum(e["narSize"] for e in json.load(sys.stdin)))')
echo "closure: ${#CLOSURE[@]} paths, $((NAR_BYTES >> 20)) MiB of NAR; staged entries: $(ls "$W/staging/new" | wc -l)" >&2
# warm the page cache for both contenders alike
nix-store --dump "$TOP" >/dev/null; for p in "${CLOSURE[@]}"; do nix-store --dump "$p" >/dev/null; done

cp -a "$W/staging/new" "$W/staged-entries"
hashes=(); for p in "${CLOSURE[@]}"; do b=${p##*/}; hashes+=("${b:0:32}"); done

nix_copy_round() { # $1: round number; prints nanoseconds
  local t0 t1
  rm -rf "$W/nixcopy"
  t0=$(date +%s%N)
  /usr/bin/time -f "%U %S" -o "$W/nixcopy-time-$1" nix copy --to "file://$W/nixcopy?compression=zstd" "$TOP" 2>/dev/null
  t1=$(date +%s%N)
  echo "round $1: nix copy used $(awk '{printf "%d", ($1 + $2) * 100}' "$W/nixcopy-time-$1")/100 CPU-seconds (user+sys)" >&2
  echo $((t1 - t0))
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

niks3_round() { # $1: round number, $2: directory of the niks3 binary, $3: a tag; prints nanoseconds
  local r=$1 t0 t1
  rm -rf "$W/state" "$W/spool" "$W/cache"
  RUST_LOG=warn BIN=$2 bench_serve "$(free_port)" "$W/serve-$r.log" --state-dir "$W/state" --spool-dir "$W/spool" \
    --gcroots-dir "$W/roots" --storage-dir "$W/cache" --jobs "$JOBS" \
    $([ "$3" = main ] && echo --compression-level "${LEVEL:-3}")
  rm -rf "$W/staging/new"; cp -a "$W/staged-entries" "$W/staging/new"
  cpu0=$(cpu_ticks "$SERVER_PID")
  t0=$(date +%s%N)
  python3 -c 'import os,sys; [os.rename(os.path.join(sys.argv[1], n), os.path.join(sys.argv[2], n)) for n in sorted(os.listdir(sys.argv[1]))]' "$W/staging/new" "$W/spool/new"
  python3 - "$W/cache" "${hashes[@]}" <<'PYEOF'
import os, sys, time
cache, hashes = sys.argv[1], sys.argv[2:]
deadline = time.time() + 1800
while not all(os.path.exists(os.path.join(cache, h + ".narinfo")) for h in hashes):
    if time.time() > deadline:
        sys.exit("timed out")
    time.sleep(0.01)
PYEOF
  t1=$(date +%s%N)
  cpu1=$(cpu_ticks "$SERVER_PID")
  echo "round $r: niks3 ($2) used $(( (cpu1 - cpu0) * 100 / $(getconf CLK_TCK) ))/100 CPU-seconds (user+sys, all threads)" >&2
  bench_stop_server
  cat "$W"/cache/nar/* | wc -c >"$W/compressed-$3"
  echo $((t1 - t0))
}

# Alternate the pushers, ROUNDS times each (the machine is shared: compare within a round).
NC_ALL=(); NK_ALL=(); NB_ALL=()
for r in $(seq "$ROUNDS"); do
  echo "== round $r: nix copy --to file://…?compression=zstd" >&2
  NC_ALL+=("$(nix_copy_round "$r")")
  echo "== round $r: niks3 serve (jobs=$JOBS, level ${LEVEL:-3})" >&2
  NK_ALL+=("$(niks3_round "$r" "$BIN" main)")
  if [ -n "${BASELINE_BIN:-}" ]; then
    echo "== round $r: baseline niks3 serve from $BASELINE_BIN (jobs=$JOBS)" >&2
    NB_ALL+=("$(niks3_round "$r" "$BASELINE_BIN" baseline)")
  fi
done
echo "all rounds (s): nix copy ${NC_ALL[*]}; niks3 ${NK_ALL[*]}${BASELINE_BIN:+; baseline ${NB_ALL[*]}}" |
  python3 -c 'import re,sys; print(re.sub(r"\d{6,}", lambda m: "%.2f" % (int(m.group())/1e9), sys.stdin.read()), end="")'

python3 - "$NAR_BYTES" "$W/nixcopy" "$W/compressed-main" "$W/compressed-baseline" "$JOBS" "${NC_ALL[*]}" "${NK_ALL[*]}" "${NB_ALL[*]:-}" <<'EOF'
import os, statistics, sys
nar, ncdir, nksize, nbsize, jobs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
nc, nk, nb = ([int(x) / 1e9 for x in a.split()] for a in sys.argv[6:9])
def size(d):
    return sum(os.path.getsize(os.path.join(d, "nar", f)) for f in os.listdir(os.path.join(d, "nar")))
mib = nar / 2**20
print(f"closure NAR size: {mib:.0f} MiB")
print("| pusher | best s | median s | MiB/s (best) | compressed | best vs best | per-round ratios |")
print("|---|---|---|---|---|---|---|")
print(f"| nix copy --to file://…?compression=zstd | {min(nc):.2f} | {statistics.median(nc):.2f} | {mib/min(nc):.0f} | {size(ncdir)/2**20:.0f} MiB | 1.00x | |")
for name, t, sizefile in ((f"niks3 (jobs={jobs}, level {os.environ.get('LEVEL', '3')})", nk, nksize), (f"baseline niks3 (jobs={jobs})", nb, nbsize)):
    if t:
        rounds = " ".join(f"{a / b:.2f}" for a, b in zip(nc, t))
        print(f"| {name} | {min(t):.2f} | {statistics.median(t):.2f} | {mib/min(t):.0f} | {int(open(sizefile).read())/2**20:.0f} MiB | {min(nc)/min(t):.2f}x | {rounds} |")
EOF
