#!/usr/bin/env bash
# base-image.sh DIR — the root file system the systemd VM check boots (nixos/tests/systemd-vm/run.sh):
# Debian bookworm (minbase) with systemd 252 as PID 1, a kernel and initrd, dbus, Debian's Nix 2.8 as a
# multi-user installation (nix-bin + nix-setup-systemd: nix-daemon.socket/.service, the nixbld users) and
# PostgreSQL 15. Run as root. Idempotent: when DIR is complete this only checks it (~0.1 s); from nothing it
# takes ~5 min (debootstrap, then apt inside, as scripts/trixie-nix-chroot.sh does and for the same
# reason: debootstrap's resolver cannot place nix-bin's perl dependencies, apt inside can).
#
# Like the trixie chroot: host apt runs under /run/lock/niks3-apt.lock, a new root is made in DIR.partial
# and renamed only when complete, and nothing stays mounted. Nothing of niks3 is in here: run.sh adds the
# binaries, the rendered units and the test to a per-run copy, so this directory changes only when the
# recipe below does (kept in DIR/.niks3-recipe; bump `machine` when the setup after apt changes).
set -euo pipefail
dir=${1:?usage: base-image.sh DIR}
dir=${dir%/}
mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv,linux-image-amd64,udev,kmod,dbus
packages="nix-bin nix-setup-systemd postgresql procps curl"
[ "$(id -u)" = 0 ] || { echo "base-image: must run as root" >&2; exit 1; }
recipe="bookworm minbase include=$include packages=$packages machine=1"

complete() {
  [ "$(cat "$1/.niks3-recipe" 2>/dev/null)" = "$recipe" ] || return 1
  ls "$1"/boot/vmlinuz-* "$1"/boot/initrd.img-* >/dev/null 2>&1 || return 1
  # shellcheck disable=SC2086
  status=$(chroot "$1" /usr/bin/env -i PATH=/usr/bin:/bin dpkg-query -W -f='${db:Status-Abbrev}\n' $packages 2>/dev/null) || return 1
  [ "$(printf '%s\n' "$status" | grep -cv '^ii')" = 0 ]
}
if [ -d "$dir" ] && complete "$dir"; then
  exit 0
fi
# One builder at a time (install-deps.sh and run.sh both call this; two test runs may share the cache).
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if [ -d "$dir" ] && complete "$dir"; then
  exit 0
fi

host_apt() { flock /run/lock/niks3-apt.lock apt-get -o DPkg::Lock::Timeout=300 "$@"; }
mounted_under() { awk -v d="$1/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; }
unmount_all() {
  for m in dev/pts dev proc; do
    if mountpoint -q "$1/$m"; then umount "$1/$m" || umount -l "$1/$m"; fi
  done
}
export DEBIAN_FRONTEND=noninteractive
command -v debootstrap >/dev/null ||
  { host_apt install -y -qq debootstrap >/dev/null 2>&1 || { host_apt update -qq && host_apt install -y -qq debootstrap >/dev/null; }; }

# An old or interrupted root is rebuilt from scratch: it is a cache, never edited in place.
work=$dir.partial
for d in "$work" "$dir"; do
  [ -e "$d" ] || continue
  unmount_all "$d"
  if mounted_under "$d"; then echo "base-image: something is still mounted under $d" >&2; exit 1; fi
  [ "$d" = "$work" ] || [ -e "$dir/.niks3-recipe" ] || [ ! -e "$dir" ] ||
    { echo "base-image: $dir exists but was not made by this script; remove it" >&2; exit 1; }
  rm -rf --one-file-system "$d"
done
echo "base-image: debootstrap bookworm into $work (a few minutes)" >&2
debootstrap --variant=minbase --include=$include bookworm "$work" "$mirror" >/dev/null
trap 'unmount_all "$work"' EXIT
mountpoint -q "$work/proc" || mount -t proc proc "$work/proc"
for m in dev dev/pts; do mountpoint -q "$work/$m" || mount --bind "/$m" "$work/$m"; done
echo "deb $mirror bookworm main" >"$work/etc/apt/sources.list"
echo "base-image: apt-get install $packages inside $work" >&2
chroot "$work" /usr/bin/env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin DEBIAN_FRONTEND=noninteractive bash -c \
  "apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages >/dev/null && apt-get clean"
unmount_all "$work"
trap - EXIT

# The machine: a root file system on the first virtio disk, no password on root (the console is the
# test's only way in and nothing listens on the network), a fixed hostname (the generated signing key's
# name), and no units that only slow a TCG boot down.
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$work/etc/fstab"
echo niks3-vm >"$work/etc/hostname"
chroot "$work" passwd -d root >/dev/null
for u in e2scrub_reap.service e2scrub_all.timer fstrim.timer apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer man-db.timer systemd-timesyncd.service; do
  chroot "$work" systemctl disable "$u" >/dev/null 2>&1 || true
  chroot "$work" systemctl mask "$u" >/dev/null 2>&1 || true
done
echo "$recipe" >"$work/.niks3-recipe"
complete "$work" || { echo "base-image: $work is still incomplete after apt" >&2; exit 1; }
mv "$work" "$dir"
