#!/usr/bin/env bash
# test.sh — the whole test suite: installs what it needs, then lint, unit, property, integration and
# end-to-end tests against real Nix, PostgreSQL and Garage, the NixOS module evaluation, and the module's
# units booted under a real systemd in a qemu VM (nixos/tests/systemd-vm), and a 30-second smoke run of every
# fuzz target (scripts/fuzz.sh; the long runs are `scripts/fuzz.sh run`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH
scripts/install-deps.sh --test
echo "== rustfmt"; cargo fmt --all --check
echo "== clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== crate layers (docs/architecture.md)"; scripts/check-layers.py
echo "== nix files parse"
for f in $(git ls-files '*.nix'); do nix-instantiate --parse "$f" >/dev/null || { echo "parse failed: $f"; exit 1; }; done
echo "== NixOS module evaluation"; tests/nixos-eval.sh
echo "== NixOS units under a real systemd (qemu VM)"; nixos/tests/systemd-vm/run.sh
echo "== cargo test"; cargo test --workspace --locked --no-fail-fast
echo "== fuzz targets, 30 s each (scripts/fuzz.sh smoke)"; scripts/fuzz.sh smoke 30
