#!/usr/bin/env bash
# install-deps.sh [--test] — installs what niks3 needs on Debian, idempotently and fast when all is there.
#   always: nix-bin (Nix), PostgreSQL server binaries
#   --test: also the Garage S3 server (cargo install, ~8 min once), chromium (landing page screenshot), curl
set -euo pipefail
want_test=0; [ "${1:-}" = --test ] && want_test=1
export DEBIAN_FRONTEND=noninteractive
need=()
command -v nix-build >/dev/null 2>&1 || need+=(nix-bin)
ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ $want_test = 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need[*]}" >&2
  [ "$(id -u)" = 0 ] || { echo "install-deps: run as root to install ${need[*]}" >&2; exit 1; }
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
if [ $want_test = 1 ]; then
  export PATH=$HOME/.cargo/bin:$PATH
  if ! garage --version 2>/dev/null | grep -q 'v2.5.0'; then
    echo "install-deps: cargo install garage 2.5.0 (one time, several minutes)" >&2
    cargo install garage --locked --version 2.5.0 --no-default-features --features bundled-libs,sqlite
  fi
fi
