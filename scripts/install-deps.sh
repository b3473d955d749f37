#!/usr/bin/env bash
# install-deps.sh [--test] — installs what niks3 needs on Debian, idempotently and fast when all is there.
#   always: nix-bin (Nix), PostgreSQL server binaries
#   --test: also the Garage S3 server (cargo install, ~8 min once), chromium (landing page screenshot), curl,
#           and a Debian trixie chroot with Nix 2.26 at $NIKS3_TEST_TRIXIE_CHROOT (default
#           /var/cache/niks3-test/trixie; scripts/trixie-nix-chroot.sh, ~3 min once), the second Nix the tests use;
#           qemu-system-x86 (without recommends) and the Debian bookworm root the systemd VM check boots, at
#           $NIKS3_VM_CACHE/bookworm-vm (default /var/cache/niks3-test; nixos/tests/systemd-vm/base-image.sh,
#           ~5 min once); and the OpenID provider of the OIDC tests: Node and the npm package oidc-provider (pinned,
#           as in testkit/src/oidc.rs) in $NIKS3_TEST_OIDC_PROVIDER_DIR (default /var/cache/niks3-test/oidc-provider);
#           and cargo-fuzz (pinned; scripts/fuzz.sh, the fuzz smoke run; a few minutes once)
# Host apt runs one at a time: under /run/lock/niks3-apt.lock (trixie-nix-chroot.sh takes it too), waiting for
# dpkg's lock rather than failing on it.
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
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
host_apt() { flock /run/lock/niks3-apt.lock apt-get -o DPkg::Lock::Timeout=300 "$@"; }
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need[*]}" >&2
  [ "$(id -u)" = 0 ] || { echo "install-deps: run as root to install ${need[*]}" >&2; exit 1; }
  host_apt install -y -qq "${need[@]}" >/dev/null 2>&1 ||
    { host_apt update -qq && host_apt install -y -qq "${need[@]}" >/dev/null; }
fi
# The systemd VM check's emulator: only the x86 system emulator, without its recommends (a GUI, audio and
# video libraries that the headless TCG boot never loads).
if [ $want_test = 1 ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "install-deps: apt-get install --no-install-recommends qemu-system-x86" >&2
  [ "$(id -u)" = 0 ] || { echo "install-deps: run as root to install qemu-system-x86" >&2; exit 1; }
  host_apt install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1 ||
    { host_apt update -qq && host_apt install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; }
fi
if [ $want_test = 1 ]; then
  # The chroot (network-bound) builds while garage compiles (CPU-bound); it starts after the host apt above,
  # never beside it, and finds debootstrap installed.
  # The VM's root (network-bound too) builds beside the chroot: each runs apt inside its own root only.
  chroot_pid= vm_pid=
  if [ "$(id -u)" = 0 ]; then
    "$(dirname "$0")/trixie-nix-chroot.sh" "${NIKS3_TEST_TRIXIE_CHROOT:-/var/cache/niks3-test/trixie}" >/dev/null &
    chroot_pid=$!
    "$(dirname "$0")/../nixos/tests/systemd-vm/base-image.sh" "${NIKS3_VM_CACHE:-/var/cache/niks3-test}/bookworm-vm" &
    vm_pid=$!
  else
    echo "install-deps: not root, so no Nix 2.26 chroot: its tests will skip (or fail under CI=true)" >&2
  fi
  export PATH=$HOME/.cargo/bin:$PATH
  if ! garage --version 2>/dev/null | grep -Eq '(v|cargo:)2\.5\.0\b'; then
    echo "install-deps: cargo install garage 2.5.0 (one time, several minutes)" >&2
    cargo install garage --locked --version 2.5.0 --no-default-features --features bundled-libs,sqlite
  fi
  if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.2$'; then
    echo "install-deps: cargo install cargo-fuzz 0.13.2 (one time, a few minutes)" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
  fi
  oidc_version=9.13.3
  oidc_dir=${NIKS3_TEST_OIDC_PROVIDER_DIR:-/var/cache/niks3-test/oidc-provider}
  if ! grep -qs "\"version\": \"$oidc_version\"" "$oidc_dir/node_modules/oidc-provider/package.json"; then
    echo "install-deps: npm install oidc-provider@$oidc_version into $oidc_dir" >&2
    mkdir -p "$oidc_dir"
    [ -f "$oidc_dir/package.json" ] || echo '{"name": "niks3-test-oidc", "private": true}' > "$oidc_dir/package.json"
    flock "$oidc_dir/.install.lock" npm install --no-audit --no-fund --prefix "$oidc_dir" "oidc-provider@$oidc_version" >/dev/null
  fi
  [ -z "$chroot_pid" ] || wait "$chroot_pid" || { echo "install-deps: scripts/trixie-nix-chroot.sh failed" >&2; exit 1; }
  [ -z "$vm_pid" ] || wait "$vm_pid" || { echo "install-deps: nixos/tests/systemd-vm/base-image.sh failed" >&2; exit 1; }
fi
