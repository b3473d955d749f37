#!/usr/bin/env bash
# fuzz.sh — the cargo-fuzz (libFuzzer) targets in fuzz/ (docs/testing.md, Fuzzing):
#   scripts/fuzz.sh build                  builds every target
#   scripts/fuzz.sh smoke [seconds]        every target for 30 s (or [seconds]), two at a time, on a scratch copy
#                                          of its corpus (the test suite runs this; fuzz/corpus stays as it is)
#   scripts/fuzz.sh run [target] [seconds] one target (default: all, one after another) for 600 s (or
#                                          [seconds]), adding what it finds to fuzz/corpus/<target>
#   scripts/fuzz.sh cmin [target]          minimises fuzz/corpus/<target> (default: all) in place
#   scripts/fuzz.sh list                   the targets
# A crash, a hang (-timeout) or an allocation beyond the limits (-malloc_limit_mb, -rss_limit_mb) fails the
# run; libFuzzer leaves the input in fuzz/artifacts/<target>/. cargo-fuzz needs nightly flags: the stable
# toolchain builds them with RUSTC_BOOTSTRAP=1. CARGO_TARGET_DIR (default fuzz/target) is honoured.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH=$HOME/.cargo/bin:$PATH RUSTC_BOOTSTRAP=1
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz missing (scripts/install-deps.sh --test)" >&2; exit 1; }

targets() { sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^niks3-fuzz$'; }

# The longest input worth trying per target: past it, each parser refuses by length alone (object keys
# longer than 300 bytes), or only repeats what shorter inputs reach. Bounds what one exec costs, too.
max_len() {
  case $1 in
    nar_reader | push_request) echo 65536 ;;
    object_key | range_header) echo 1024 ;;
    *) echo 8192 ;;
  esac
}

# libFuzzer flags of every run: a hang is an input taking over 10 s, an allocation of over 256 MiB at once
# (the inputs are at most 64 KiB) or 1.5 GiB in all is a finding.
flags() {
  echo "-max_len=$(max_len "$1") -timeout=10 -malloc_limit_mb=256 -rss_limit_mb=1536 -artifact_prefix=$PWD/artifacts/$1/ -print_final_stats=1"
}

build() { cargo fuzz build --target-dir "$target_dir" "$@"; }

# run_one TARGET SECONDS CORPUS_DIR...: libFuzzer writes new inputs to the first directory.
run_one() {
  local t=$1 secs=$2
  shift 2
  mkdir -p "artifacts/$t" "$1"
  # shellcheck disable=SC2046
  "$target_dir/x86_64-unknown-linux-gnu/release/$t" $(flags "$t") -max_total_time="$secs" "$@"
}

case ${1:-} in
  list) targets ;;
  build) build ;;
  smoke)
    secs=${2:-30}
    build
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    export -f run_one flags max_len
    export target_dir
    # Two at a time: the suite's machines have two cores. A target's log is shown only when it fails.
    if ! targets | xargs -P 2 -I{} bash -c '
        if run_one {} '"$secs"' "'"$scratch"'/{}" "corpus/{}" >"'"$scratch"'/{}.log" 2>&1; then
          echo "fuzz smoke {}: ok ($(grep -o "stat::number_of_executed_units: *[0-9]*" "'"$scratch"'/{}.log" | grep -o "[0-9]*$") execs in '"$secs"' s)"
        else
          echo "fuzz smoke {}: FAILED"; tail -n 40 "'"$scratch"'/{}.log"; exit 255
        fi'; then
      echo "fuzz.sh smoke: a target failed; its input is in fuzz/artifacts/<target>/" >&2
      exit 1
    fi
    ;;
  run)
    secs=${3:-600}
    build
    for t in ${2:-$(targets)}; do
      echo "== fuzz $t for $secs s"
      run_one "$t" "$secs" "corpus/$t"
    done
    ;;
  cmin)
    build
    for t in ${2:-$(targets)}; do
      cargo fuzz cmin --target-dir "$target_dir" "$t" "corpus/$t" -- -max_len="$(max_len "$t")"
    done
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
