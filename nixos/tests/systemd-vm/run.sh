#!/usr/bin/env bash
# run.sh — the systemd VM check: the NixOS module's units under a real systemd, without nixpkgs or KVM.
#
#   1. render.nix evaluates nixos/module.nix (nixos/tests/evaluator, the real nixpkgs lib) for
#      configs/server.nix (nixos/examples/embedded.nix: server, local PostgreSQL, hook, GC timer) and
#      configs/builder.nix (the same plus niks3-drain.service pushing with a push token, GC with a gc
#      token) and renders what NixOS would install: the unit files, tmpfiles rules, system users,
#      nix.conf, PostgreSQL's ensure* setup; vm-pkgs.nix maps the packages to where the VM has them.
#   2. A per-run copy of the cached Debian bookworm root (base-image.sh: systemd 252, nix-daemon, PostgreSQL
#      15; under /var/cache/niks3-test, built once) gets this tree's niks3 and niks3-hook (cargo build,
#      debug), the server configuration's files, the builder configuration's files to switch to, and
#      guest-test.sh as niks3-vm-test.service.
#   3. qemu-system-x86_64 -accel tcg boots it (KVM stalls on these machines); guest-test.sh checks the
#      boot order, a build through the hook, serving and substituting with signatures, GC with its
#      credential, restart and kill -9, the switch to the builder, and the `systemd-analyze security`
#      exposure, writes its results to a virtio serial port and powers off.
# Prints the guest's result lines; exits 0 iff the guest reported `vm-check: N passed, 0 failed`.
# Needs root (the image keeps the base's owners and is assembled with a mount), qemu-system-x86_64, mkfs.ext4, nix-instantiate,
# python3 and cargo. NIKS3_VM_CACHE (default /var/cache/niks3-test) holds the base root;
# NIKS3_VM_TIMEOUT (default 900) bounds the VM's run in seconds; NIKS3_VM_KEEP=1 keeps the scratch
# directory (the console log, the rendered files, the image) for a post-mortem.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cache=${NIKS3_VM_CACHE:-/var/cache/niks3-test}
timeout=${NIKS3_VM_TIMEOUT:-900}
say() { printf 'systemd-vm: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (the VM's files keep their owners; the image is assembled with a mount)"
for c in qemu-system-x86_64 mkfs.ext4 nix-instantiate python3 cargo; do
  command -v "$c" >/dev/null || die "$c not found (scripts/install-deps.sh --test installs what is missing)"
done
t0=$(date +%s)

say "base image: $cache/bookworm-vm"
"$here/base-image.sh" "$cache/bookworm-vm" || die "base-image.sh $cache/bookworm-vm failed"
base=$cache/bookworm-vm
kernel=$(ls "$base"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$base"/boot/initrd.img-* | sort -V | tail -1)

say "cargo build -p niks3 -p niks3-spool (debug)"
(cd "$root" && cargo build --locked -q -p niks3 -p niks3-spool --bins) || die "cargo build failed"
bin=${CARGO_TARGET_DIR:-$root/target}/debug
for b in niks3 niks3-hook; do [ -x "$bin/$b" ] || die "$bin/$b was not built"; done

scratch=$(mktemp -d /var/tmp/niks3-systemd-vm.XXXXXX)
merged=$scratch/root
cleanup() {
  if mountpoint -q "$merged"; then umount "$merged" || umount -l "$merged"; fi
  if [ "${NIKS3_VM_KEEP:-0}" = 1 ]; then say "kept $scratch"; else rm -rf --one-file-system "$scratch"; fi
  [ -z "${qemu_pid:-}" ] || kill "$qemu_pid" 2>/dev/null || true
}
trap cleanup EXIT

# 1. What NixOS would install for each configuration.
export NIX_CONF_DIR=$scratch/nix-etc XDG_CACHE_HOME=$scratch/nix-cache
mkdir -p "$NIX_CONF_DIR" "$XDG_CACHE_HOME"
printf 'experimental-features = nix-command\nsubstituters =\n' >"$NIX_CONF_DIR/nix.conf"
unset NIX_CONFIG NIX_PATH NIX_REMOTE
render() {
  nix-instantiate --eval --strict --json --read-write-mode \
    --arg libPath "$root/nixos/tests/evaluator/vendor/nixpkgs-lib/lib" \
    --arg modulePath "$root/nixos/module.nix" \
    --arg configPath "$here/configs/$1.nix" \
    --arg extraPkgsPath "$here/vm-pkgs.nix" \
    "$here/render.nix" >"$scratch/$1.json" || die "render.nix failed for configs/$1.nix"
}
render server
render builder

# 2. The VM's root: an overlay on the cached base, so the base stays untouched and nothing is copied;
# where overlayfs is not allowed (some containers), a copy (~1 GB, a few seconds more).
mkdir -p "$scratch/upper" "$scratch/work" "$merged"
if ! mount -t overlay overlay -o "lowerdir=$base,upperdir=$scratch/upper,workdir=$scratch/work" "$merged" 2>/dev/null; then
  say "no overlay mount here; copying $base"
  cp -a --reflink=auto "$base/." "$merged/" || die "cannot copy $base to $merged"
fi
python3 - "$scratch" "$merged" <<'PY' || die "installing the rendered files failed"
"""Writes the rendered files: the server configuration at the VM's root, the builder configuration
under /usr/local/lib/niks3-vm/configs/builder (guest-test.sh switches to it); copies the store paths
they mention from this machine's store. Refuses anything that failed an assertion or still names a
stand-in package (/nix/store/000…)."""
import json, os, shutil, sys
scratch, root = sys.argv[1], sys.argv[2]
stub = "/nix/store/00000000000000000000000000000000-"
store_paths = set()
for config, prefix in [("server", ""), ("builder", "usr/local/lib/niks3-vm/configs/builder")]:
    d = json.load(open(f"{scratch}/{config}.json"))
    if d["failedAssertions"]:
        sys.exit(f"configs/{config}.nix fails assertions: {d['failedAssertions']}")
    base = os.path.join(root, prefix)
    for f in d["files"]:
        if stub in f["text"]:
            sys.exit(f"configs/{config}.nix: {f['path']} names a stand-in package: map it in vm-pkgs.nix")
        path = os.path.join(base, f["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(f["text"])
        os.chmod(path, int(f["mode"], 8))
    for l in d["links"]:
        path = os.path.join(base, l["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(l["target"], path)
    store_paths.update(d["storePaths"])
# They are the scripts of vm-pkgs.nix's writeShellScript (builtins.toFile, which cannot set the
# executable bit that nixpkgs' writeShellScript sets): installed 0555, as in a real store.
os.makedirs(f"{root}/nix/store", exist_ok=True)
for p in sorted(store_paths):
    if not os.path.isfile(p):
        sys.exit(f"{p}, named by a rendered file, is not a file in this machine's store")
    shutil.copyfile(p, root + p)
    os.chmod(root + p, 0o555)
with open(f"{root}/usr/local/lib/niks3-vm/store-paths", "w") as fh:
    fh.write("".join(p + "\n" for p in sorted(store_paths)))
PY
# Where Debian's Nix differs from NixOS's in what the module relies on: Debian lets only the group
# nix-users reach the daemon's socket (its tmpfiles.d/nix-daemon.conf makes the directory root:nix-users
# 0770 at every boot); NixOS lets anyone connect and nix-daemon's allowed-users decides (the module adds
# niks3 to extra-allowed-users). An /etc/tmpfiles.d file of the same name replaces Debian's.
mkdir -p "$merged/etc/tmpfiles.d"
sed 's|^d     /nix/var/nix/daemon-socket 770 root nix-users$|d     /nix/var/nix/daemon-socket 755 root root|' \
  "$merged/usr/lib/tmpfiles.d/nix-daemon.conf" >"$merged/etc/tmpfiles.d/nix-daemon.conf"
grep -q '^d     /nix/var/nix/daemon-socket 755 root root$' "$merged/etc/tmpfiles.d/nix-daemon.conf" ||
  die "Debian's tmpfiles.d/nix-daemon.conf changed: make the daemon's socket reachable by all users again"
install -D -m 0755 "$bin/niks3" "$merged/opt/niks3/bin/niks3"
install -D -m 0755 "$bin/niks3-hook" "$merged/opt/niks3-hook/bin/niks3-hook"
install -D -m 0755 "$here/guest-test.sh" "$merged/usr/local/lib/niks3-vm/guest-test.sh"
# The store paths copied above are registered as valid, as a NixOS system's closure is, before
# nix-daemon starts (nothing may garbage-collect or refuse them).
cat >"$merged/etc/systemd/system/niks3-vm-register.service" <<'EOF'
[Unit]
Description=Register the store paths of the rendered configuration (NixOS: the system closure)
DefaultDependencies=no
After=local-fs.target
Before=nix-daemon.socket nix-daemon.service sysinit.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'while read -r p; do printf "%%s\\n\\n0\\n" "$p"; done </usr/local/lib/niks3-vm/store-paths | /usr/bin/nix-store --register-validity'
[Install]
WantedBy=sysinit.target
EOF
cat >"$merged/etc/systemd/system/niks3-vm-test.service" <<'EOF'
[Unit]
Description=niks3 systemd VM check (nixos/tests/systemd-vm/guest-test.sh)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/lib/niks3-vm/guest-test.sh
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$merged/etc/systemd/system/sysinit.target.wants" "$merged/etc/systemd/system/multi-user.target.wants"
ln -sf ../niks3-vm-register.service "$merged/etc/systemd/system/sysinit.target.wants/"
ln -sf ../niks3-vm-test.service "$merged/etc/systemd/system/multi-user.target.wants/"

say "mkfs.ext4 -d (the VM's disk)"
img=$scratch/disk.img
mkfs.ext4 -q -F -L niks3-vm -d "$merged" "$img" 4G || die "mkfs.ext4 -d $merged failed"
if mountpoint -q "$merged"; then umount "$merged"; fi
t1=$(date +%s)
say "image ready in $((t1 - t0)) s; booting (qemu TCG, at most $timeout s)"

# 3. Boot. The console goes to console.log, the results to results.log through a virtio serial port.
qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -nographic -no-reboot -nic none \
  -kernel "$kernel" -initrd "$initrd" \
  -append "root=/dev/vda rw console=ttyS0 edd=off quiet systemd.show_status=false panic=-1" \
  -drive "file=$img,format=raw,if=virtio" \
  -device virtio-serial -chardev "file,id=results,path=$scratch/results.log" \
  -device virtserialport,chardev=results,name=niks3-vm.results \
  -serial "file:$scratch/console.log" -monitor none </dev/null &
qemu_pid=$!
deadline=$((SECONDS + timeout))
while kill -0 "$qemu_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 2; done
if kill -0 "$qemu_pid" 2>/dev/null; then
  kill "$qemu_pid"
  wait "$qemu_pid" 2>/dev/null || true
  qemu_pid=
  cat "$scratch/results.log" 2>/dev/null
  say "the VM did not power off within $timeout s; the console's last lines:"
  tail -n 40 "$scratch/console.log" >&2
  exit 1
fi
wait "$qemu_pid" || true
qemu_pid=
t2=$(date +%s)
cat "$scratch/results.log" 2>/dev/null || true
say "VM ran $((t2 - t1)) s; whole check $((t2 - t0)) s"
if ! grep -Eq '^vm-check: [0-9]+ passed, 0 failed$' "$scratch/results.log" 2>/dev/null; then
  grep -q '^vm-check: ' "$scratch/results.log" 2>/dev/null ||
    { say "the guest did not report; the console's last lines:"; tail -n 60 "$scratch/console.log" >&2; }
  exit 1
fi
