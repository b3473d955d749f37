#!/usr/bin/env bash
# run.sh — builds niks3 and runs `niks3 serve` on the embedded defaults: a private PostgreSQL and a local
# object store in the state directory, a signing key and API token generated on first start.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH
scripts/install-deps.sh
cargo build --release --locked --bins
exec target/release/niks3 serve "$@"
