#!/usr/bin/env bash
# bench/nar.sh — niks3's streaming NAR writer (+ SHA-256) vs Nix serialising the same tree, same run.
#
# Compares `nar_hash DIR` (crates/niks3/examples/nar_hash.rs: dump_path → HashingWriter → sink) with
# `nix hash path DIR` (Nix's in-process NAR + hash) and `nix-store --dump DIR | sha256sum`, first checking
# that all three agree on the hash. Prints hyperfine's table and ratios.
# Needs: nix (Debian nix-bin), hyperfine, cargo. Env: DIR (default /usr/lib/x86_64-linux-gnu, ~1 GiB of
# NAR), RUNS (default 5), CARGO_TARGET_DIR. The example is built in the dev profile with opt-level 3
# for niks3 itself (dependencies are already opt-level 2 there), to avoid a full release build.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/usr/lib/x86_64-linux-gnu}
RUNS=${RUNS:-5}
CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo build -q -p niks3 --example nar_hash 2>/dev/null \
  || CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo build -p niks3 --example nar_hash
NAR_HASH=${CARGO_TARGET_DIR:-target}/debug/examples/nar_hash
. bench/lib.sh
bench_scratch nar
bench_nix_offline

ours=$("$NAR_HASH" "$DIR" | cut -d' ' -f1)
nix_path=sha256:$(nix hash path --base32 "$DIR")
dump=$(nix-store --dump "$DIR" | sha256sum | cut -d' ' -f1)
[ "$ours" = "$nix_path" ] || { echo "MISMATCH: ours $ours, nix hash path $nix_path" >&2; exit 1; }
[ "$(nix hash to-base16 "$ours")" = "$dump" ] || { echo "MISMATCH vs nix-store --dump" >&2; exit 1; }
echo "hashes agree: $ours ($("$NAR_HASH" "$DIR" | cut -d' ' -f2) bytes of NAR)"
hyperfine -N -w 1 -r "$RUNS" -n "niks3 dump_path+sha256" "$NAR_HASH $DIR" -n "nix hash path" "nix hash path --base32 $DIR" \
  -n "nix-store --dump | sha256sum" "bash -c 'nix-store --dump $DIR | sha256sum'"
