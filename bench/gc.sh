#!/usr/bin/env bash
# bench/gc.sh — GC at scale: 1 000 000 objects / 100 000 closures in a real PostgreSQL (built with
# generate_series), half of it expired. Runs the ignored test crates/niks3/tests/gc_bench.rs, which prints:
#   - the baseline: one sequential read of every object and its references (the least any collector
#     must do), measured in the same run;
#   - GC run 1 (expire 50 000 closures, mark ~511 000 objects, grace keeps them), run 2 (delete them after
#     the grace period, referrers first, from a local store), run 3 (nothing to do), each with its ratio
#     to the baseline;
#   - the peak RSS of the niks3 side (everything set-based happens inside PostgreSQL);
#   - every PostgreSQL statement slower than 300 ms.
# The store is the local backend with the objects absent (a delete of an absent file is a syscall, as
# S3's DeleteObjects of 1 000 keys is one request); PostgreSQL runs with fsync off, like all tests.
# Env: CARGO_TARGET_DIR (default target/ in the repository), PROFILE (debug|release, default debug: the work is in SQL).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
flags=()
[ "${PROFILE:-debug}" = release ] && flags+=(--release)
cargo test "${flags[@]}" -q -p niks3 --test it gc_bench:: -- --ignored --nocapture --test-threads=1 2>&1 \
  | grep -vE '^(running|test result|$)'
