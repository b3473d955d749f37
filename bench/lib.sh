# bench/lib.sh — the preamble every benchmark script shares, sourced (not run) from bench/*.sh after
# `set -euo pipefail` and `cd "$(dirname "$0")/.."`: building the binaries, a scratch directory removed
# at exit, a private offline Nix, a free port, niks3-hook as a post-build-hook into a spool, and a
# `niks3 serve` that is stopped at exit whatever happens (and a Garage S3 node, psql on the embedded
# PostgreSQL). One copy, so the scripts cannot drift apart
# (a benchmark whose Nix silently reaches for cache.nixos.org measures the network, not niks3).

# Commands registered with bench_on_exit, run last-registered first at exit, after the server (and Garage)
# are stopped.
BENCH_AT_EXIT=()
# The `niks3 serve` started by bench_serve, if it is running.
SERVER_PID=

# bench_build PROFILE CARGO-ARGS…: builds (unless NO_BUILD=1) and sets BIN to the profile's output
# directory. PROFILE is a cargo profile; `debug` means `dev`.
bench_build() {
  local profile=$1; shift
  [ "$profile" = debug ] && profile=dev
  if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== building $* ($profile)" >&2
    cargo build --profile "$profile" -q "$@"
  fi
  BIN=$CARGO_TARGET_DIR/$([ "$profile" = dev ] && echo debug || echo "$profile")
}

# bench_on_exit COMMAND: runs COMMAND (a string, evaluated then) when the script exits, before the
# commands registered earlier (so the scratch directory goes last).
bench_on_exit() {
  BENCH_AT_EXIT+=("$1")
}

bench_exit() {
  bench_stop_server
  bench_stop_garage
  local i
  for ((i = ${#BENCH_AT_EXIT[@]} - 1; i >= 0; i--)); do eval "${BENCH_AT_EXIT[i]}" || true; done
}
trap bench_exit EXIT

# bench_scratch NAME: W = a fresh directory on the real disk (BENCH_DIR, default /var/tmp; tmpfs would
# hide fsync costs), removed at exit. Mode 711: the embedded PostgreSQL runs as the postgres user and
# must reach $W/state.
# BENCH_FS=journal (the default when BENCH_DIR is on ext4 without a journal, as on these VMs; needs root):
# W is the root of a fresh ext4 file system made with mkfs's defaults (so with a journal, as every
# deployment has: ext4's default, NixOS's) in a sparse image in BENCH_DIR, loop-mounted. Without a journal
# ext4 checks every recently freed inode when it creates a file (`recently_deleted`, only in no-journal
# mode): measured, 20% of niks3's CPU in a small-path drain, charged to whoever deletes files while
# others are created (niks3 acknowledges spool entries by deleting them; nix copy deletes nothing).
# BENCH_FS=host: W directly in BENCH_DIR, whatever it is on. Either way the choice is printed.
bench_scratch() {
  local base=${BENCH_DIR:-/var/tmp} fs=${BENCH_FS:-} dev
  if [ -z "$fs" ]; then
    dev=$(findmnt -no SOURCE -T "$base" 2>/dev/null | sed 's|^/dev/||')
    if [ "$(findmnt -no FSTYPE -T "$base" 2>/dev/null)" = ext4 ] && [ "$(cat "/sys/fs/ext4/$dev/journal_task" 2>/dev/null)" = "<none>" ] && [ "$(id -u)" = 0 ]; then
      fs=journal
    else
      fs=host
    fi
  fi
  if [ "$fs" = journal ]; then
    local img mnt
    img=$(mktemp "$base/niks3-bench-$1.XXXXXX.ext4")
    mnt=${img%.ext4}.mnt
    truncate -s 64G "$img"
    mkfs.ext4 -q -F "$img"
    mkdir -p "$mnt"
    mount -o loop "$img" "$mnt"
    bench_on_exit "rm -f '$img'; rmdir '$mnt'"
    bench_on_exit "umount '$mnt' || umount -l '$mnt'"
    W=$mnt
    echo "scratch: $W, a journaled ext4 (BENCH_FS=journal) loop-mounted from $img on $(findmnt -no FSTYPE -T "$base") $(findmnt -no SOURCE -T "$base")" >&2
  else
    W=$(mktemp -d "$base/niks3-bench-$1.XXXXXX")
    bench_on_exit 'rm -rf "$W"'
    echo "scratch: $W on $(findmnt -no FSTYPE,SOURCE -T "$base" | tr -s ' ') (BENCH_FS=host)" >&2
  fi
  chmod 711 "$W"
}

# bench_set_aside DIR…: moves the directories out of the way under $W, deleted only at exit. Deleting
# thousands of files just before a round makes ext4 skip their inodes (`recently_deleted`, for 30 s) when
# the round creates files: measured, a third of the next round's kernel time, so the contender whose round
# followed a deletion was charged for it.
bench_set_aside() {
  local d
  for d in "$@"; do
    if [ -e "$d" ]; then mv "$d" "$(mktemp -u "$W/old.XXXXXX")"; fi
  done
}

# bench_nix_offline [nix.conf line…]: a private Nix configuration under $W (as testkit/src/nix.rs
# writes): no sandbox, no substituters, no cached narinfo answers.
bench_nix_offline() {
  mkdir -p "$W/etc" "$W/xdg"
  {
    printf '%s\n' 'sandbox = false' 'build-users-group =' 'substituters =' \
      'experimental-features = nix-command' 'narinfo-cache-positive-ttl = 0' 'narinfo-cache-negative-ttl = 0'
    printf '%s\n' "$@"
  } >"$W/etc/nix.conf"
  export NIX_CONF_DIR=$W/etc NIX_USER_CONF_FILES=$W/etc/user.conf XDG_CACHE_HOME=$W/xdg
  unset NIX_REMOTE NIX_CONFIG NIX_PATH
}

# free_port: prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_hook_wrapper SPOOL ROOTS: $W/hook.sh, a post-build-hook running $BIN/niks3-hook into SPOOL
# (created with its subdirectories) and GC roots ROOTS.
bench_hook_wrapper() {
  mkdir -p "$1/new" "$1/tmp" "$1/claimed" "$1/quarantine" "$2"
  cat >"$W/hook.sh" <<EOF
#!/bin/sh
export NIKS3_SPOOL_DIR='$1' NIKS3_GCROOTS_DIR='$2'
exec '$BIN/niks3-hook'
EOF
  chmod +x "$W/hook.sh"
}

# bench_build_hooked NIX-FILE TAG: nix-build of NIX-FILE (a function of `salt`, fresh each time so that
# everything really builds) with $W/hook.sh as the post-build-hook; prints the output path, or shows
# the build log and exits.
bench_build_hooked() {
  nix-build --no-out-link "$1" --argstr salt "$2-$(date +%s%N)" --option post-build-hook "$W/hook.sh" \
    2>"$W/build.log" || { cat "$W/build.log" >&2; exit 1; }
}

# bench_serve PORT LOG SERVE-ARGS…: starts `$BIN/niks3 serve --http-addr 127.0.0.1:PORT SERVE-ARGS…`
# in the background (SERVER_PID), logging to LOG, and returns once it answers /nix-cache-info; exits
# with the log if it dies or does not answer within 60 s.
bench_serve() {
  local port=$1 log=$2; shift 2
  "$BIN/niks3" serve --http-addr "127.0.0.1:$port" "$@" 2>"$log" &
  SERVER_PID=$!
  local _
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/nix-cache-info" >/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "niks3 serve did not come up on port $port:" >&2
  cat "$log" >&2
  exit 1
}

# bench_stop_server: stops the server bench_serve started, if any.
bench_stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

# bench_tree_cpu_ticks PID…: clock ticks (getconf CLK_TCK) of user+system CPU used so far by each PID and
# all its live descendants, including the children they have already reaped (cutime+cstime). Take it
# before and after; the difference is what the process trees used in between (children spawned and
# reaped in between are counted in their parent's cutime). Missing PIDs count 0.
bench_tree_cpu_ticks() {
  python3 - "$@" <<'PYEOF'
import os, sys
kids, ticks = {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    kids.setdefault(int(f[1]), []).append(int(d))          # field 4: ppid
    ticks[int(d)] = sum(int(x) for x in f[11:15])           # fields 14-17: utime stime cutime cstime
seen, todo = set(), [int(p) for p in sys.argv[1:] if p]
while todo:
    p = todo.pop()
    if p in seen:
        continue
    seen.add(p); todo.extend(kids.get(p, []))
print(sum(ticks.get(p, 0) for p in seen))
PYEOF
}

# bench_postmaster_pid STATE-DIR: the pid of the embedded PostgreSQL `niks3 serve --state-dir STATE-DIR`
# started (pg_ctl detaches it, so it is not a descendant of the server), or nothing.
bench_postmaster_pid() {
  local f
  f=$(find "$1" -name postmaster.pid 2>/dev/null | head -1)
  [ -n "$f" ] && head -1 "$f" || true
}

# bench_garage DIR: a fresh single-node Garage S3 server in DIR (removed first), started as
# testkit/src/garage.rs does (sqlite metadata, one key, one default
# bucket, SigV4 enforced, region `garage`) on free ports; sets S3_ENDPOINT, S3_REGION, S3_BUCKET and
# GARAGE_PID and exports NIKS3_S3_ACCESS_KEY / NIKS3_S3_SECRET_KEY for `niks3 serve`. Stopped at exit (or by
# bench_stop_garage). Needs `garage` (2.x, on PATH or in ~/.cargo/bin) and openssl.
GARAGE_PID=
bench_garage() {
  local dir=$1 port rpc admin code _
  command -v garage >/dev/null || export PATH=$HOME/.cargo/bin:$PATH
  command -v garage >/dev/null || { echo "garage not installed (scripts/install-deps.sh installs it)" >&2; exit 2; }
  bench_stop_garage
  bench_set_aside "$dir"; mkdir -p "$dir/meta" "$dir/data"
  port=$(free_port); rpc=$(free_port); admin=$(free_port)
  cat >"$dir/garage.toml" <<EOC
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
EOC
  export NIKS3_S3_ACCESS_KEY=GK$(openssl rand -hex 12) NIKS3_S3_SECRET_KEY=$(openssl rand -hex 32)
  S3_ENDPOINT=http://127.0.0.1:$port S3_REGION=garage S3_BUCKET=niks3-bench
  GARAGE_DEFAULT_ACCESS_KEY=$NIKS3_S3_ACCESS_KEY GARAGE_DEFAULT_SECRET_KEY=$NIKS3_S3_SECRET_KEY \
    GARAGE_DEFAULT_BUCKET=$S3_BUCKET garage -c "$dir/garage.toml" server --single-node --default-bucket \
    >"$dir/garage.log" 2>&1 &
  GARAGE_PID=$!
  for _ in $(seq 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$S3_ENDPOINT/$S3_BUCKET" || true)
    case $code in 200|403) return 0;; esac
    sleep 0.1
  done
  echo "garage did not answer on $S3_ENDPOINT:" >&2; cat "$dir/garage.log" >&2; exit 1
}

# bench_stop_garage: stops the Garage bench_garage started, if any.
bench_stop_garage() {
  if [ -n "$GARAGE_PID" ]; then
    kill "$GARAGE_PID" 2>/dev/null || true
    wait "$GARAGE_PID" 2>/dev/null || true
    GARAGE_PID=
  fi
}

# bench_psql STATE-DIR PSQL-ARGS…: psql as postgres on database niks3 of the embedded PostgreSQL of
# `niks3 serve --state-dir STATE-DIR` (unaligned, tuples only, space-separated).
bench_psql() {
  local state=$1 pidfile; shift
  pidfile=$(find "$state" -name postmaster.pid | head -1)
  psql -h "$(sed -n 5p "$pidfile")" -U postgres -d niks3 -XAtq -F' ' "$@"
}

# bench_pg_counts STATE-DIR: "xact_commit tup_returned tup_fetched tup_inserted tup_updated tup_deleted" of
# database niks3 (PostgreSQL publishes them at most once a second: sleep 1 before the final reading). The
# reading itself commits two transactions (and a backend flushes its counters at most once a second).
bench_pg_counts() {
  bench_psql "$1" -c "select pg_stat_clear_snapshot()" -c "select xact_commit, tup_returned, tup_fetched,
    tup_inserted, tup_updated, tup_deleted from pg_stat_database where datname = 'niks3'" 2>/dev/null | tail -1
}
