#!/usr/bin/env bash
# trixie-nix-chroot.sh DIR — a Debian trixie chroot with Nix 2.26 (nix-bin) and PostgreSQL 17: the second Nix
# the tests run against (testkit's `Chroot`, crates/niks3/tests/e2e_nix_versions.rs). Run as root. Idempotent:
# when DIR is complete this only checks it (~0.1 s); from nothing it takes ~3 min (debootstrap minbase, then
# apt inside; `--include=nix-bin` on the debootstrap line cannot resolve nix-bin's perl DBD dependency, apt
# inside can). Binaries built on bookworm (glibc 2.36) run unchanged inside (trixie has glibc 2.41).
#
# Unlike the plain recipe (debootstrap, then apt-get install nix-bin inside), which it grew from:
# - host apt is serialised: every apt-get of ours holds /run/lock/niks3-apt.lock (install-deps.sh takes the
#   same lock) and waits for dpkg's own lock instead of failing on it (DPkg::Lock::Timeout);
# - a new chroot is made in DIR.partial and renamed when complete, so an interrupted run never leaves a DIR
#   that looks done;
# - nothing stays mounted: /proc and /dev are mounted only while apt runs inside, so `rm -rf DIR` never
#   reaches the host's /dev. The tests mount what they need themselves (testkit/src/chroot.rs).
set -euo pipefail
dir=${1:?usage: trixie-nix-chroot.sh DIR}
dir=${dir%/}
mirror=http://deb.debian.org/debian
packages="nix-bin postgresql curl ca-certificates procps"
[ "$(id -u)" = 0 ] || { echo "trixie-nix-chroot: must run as root" >&2; exit 1; }

# True when every package is installed and configured inside $1.
complete() {
  [ -x "$1/usr/bin/nix-daemon" ] || return 1
  # shellcheck disable=SC2086
  status=$(chroot "$1" /usr/bin/env -i PATH=/usr/bin:/bin dpkg-query -W -f='${db:Status-Abbrev}\n' $packages 2>/dev/null) || return 1
  [ "$(printf '%s\n' "$status" | grep -cv '^ii')" = 0 ]
}
# What is installed (dpkg's record: nix itself needs /proc, which is not mounted here).
version() { chroot "$1" /usr/bin/env -i PATH=/usr/bin:/bin dpkg-query -W -f='nix-bin ${Version}\n' nix-bin; }
if [ -d "$dir" ] && complete "$dir"; then
  version "$dir"
  exit 0
fi

# Host apt, one at a time (see above).
host_apt() {
  flock /run/lock/niks3-apt.lock apt-get -o DPkg::Lock::Timeout=300 "$@"
}
mounted_under() { awk -v d="$1/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; }
unmount_all() {
  for m in dev/pts dev proc; do
    if mountpoint -q "$1/$m"; then umount "$1/$m" || umount -l "$1/$m"; fi
  done
}

export DEBIAN_FRONTEND=noninteractive
command -v debootstrap >/dev/null ||
  { host_apt install -y -qq debootstrap >/dev/null 2>&1 || { host_apt update -qq && host_apt install -y -qq debootstrap >/dev/null; }; }

# Finish an existing but incomplete DIR in place (e.g. an apt run that was interrupted); else build anew.
work=$dir
if [ ! -x "$dir/usr/bin/apt-get" ]; then
  work=$dir.partial
  if [ -e "$work" ]; then
    unmount_all "$work"
    if mounted_under "$work"; then echo "trixie-nix-chroot: something is still mounted under $work" >&2; exit 1; fi
    rm -rf --one-file-system "$work"
  fi
  echo "trixie-nix-chroot: debootstrap trixie into $work (about 3 minutes)" >&2
  debootstrap --variant=minbase trixie "$work" "$mirror" >/dev/null
fi
trap 'unmount_all "$work"' EXIT
mountpoint -q "$work/proc" || mount -t proc proc "$work/proc"
for m in dev dev/pts; do mountpoint -q "$work/$m" || mount --bind "/$m" "$work/$m"; done
echo "deb $mirror trixie main" >"$work/etc/apt/sources.list"
echo "trixie-nix-chroot: apt-get install $packages inside $work" >&2
chroot "$work" /usr/bin/env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin DEBIAN_FRONTEND=noninteractive bash -c \
  "apt-get update -qq && apt-get install -y -qq -f >/dev/null && apt-get install -y -qq $packages >/dev/null"
unmount_all "$work"
trap - EXIT
complete "$work" || { echo "trixie-nix-chroot: $work is still incomplete after apt" >&2; exit 1; }
[ "$work" = "$dir" ] || mv "$work" "$dir"
version "$dir"
