//! `LocalNix` speaks the nix-daemon worker protocol to a child `nix-daemon --stdio`: many paths are asked
//! in one pipelined burst, a failed request leaves the connection usable, and a connection that breaks
//! (the child killed, a broken `nix-daemon` in its place) is an environment error that heals itself on
//! the next call once Nix works again — the property the drainer relies on to never quarantine an entry
//! for an unreadable store.

use niks3_local::nix::{LocalNix, PathInfoError};
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_testkit::nix::NixEnv;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const EXPR: &str = include_str!("fixtures/nix_daemon_protocol.nix");

fn sp(dir: &StoreDir, p: &str) -> StorePath {
    dir.parse_path(p).expect("store path")
}

/// A directory whose `nix-daemon` is `script` and whose `nix`/`nix-store` are the real ones.
fn fake_bin(dir: &Path, script: &str) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let daemon = bin.join("nix-daemon");
    std::fs::write(&daemon, format!("#!/bin/sh\n{script}\n")).expect("write");
    std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[tokio::test]
async fn many_roots_in_one_burst_give_each_path_once_in_dependency_order() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let nix = LocalNix::default();
    let roots: Vec<StorePath> =
        ["a", "b", "c", "d"].iter().map(|attr| sp(&dir, &env.build(EXPR, attr).expect("build").remove(0))).collect();
    let one = nix.closure(&dir, &roots).await.expect("closure");
    assert_eq!(one.len(), 4);
    // 20 000 roots (one pipelined burst; no command line to overflow) give the same answer.
    let many: Vec<StorePath> = roots.iter().cycle().take(20_000).cloned().collect();
    assert_eq!(nix.closure(&dir, &many).await.expect("20 000 roots"), one);
    let version = nix.version().await.expect("version");
    assert!(version.contains("protocol 1."), "{version}");
}

#[tokio::test]
async fn an_invalid_path_among_valid_ones_is_named_and_the_connection_stays_usable() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let nix = LocalNix::default();
    let a = sp(&dir, &env.build(EXPR, "a").expect("build").remove(0));
    let missing = sp(&dir, "/nix/store/00000000000000000000000000000000-not-there");
    let err = nix.closure(&dir, &[a.clone(), missing.clone()]).await.expect_err("invalid path");
    assert!(matches!(&err, PathInfoError::NotValid { path } if *path == dir.display(&missing)), "{err:?}");
    assert!(!err.is_environment());
    assert!(!nix.is_valid(&dir, &missing).await.expect("query"));
    assert_eq!(nix.closure(&dir, &[a]).await.expect("same connection, next request").len(), 1);
}

#[tokio::test]
async fn a_broken_nix_daemon_is_an_environment_error_that_heals_once_nix_is_back() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let a = sp(&dir, &env.build(EXPR, "a").expect("build").remove(0));
    let real = String::from_utf8(
        std::process::Command::new("sh").args(["-c", "command -v nix-daemon"]).output().expect("sh").stdout,
    )
    .expect("utf-8");
    let tmp = tempfile::tempdir().expect("tmp");
    // Each case: a `nix-daemon` that misbehaves the way a broken installation does.
    for (script, expect) in [
        ("echo 'nix-daemon: error while loading shared libraries' >&2; exit 127", "shared libraries"),
        ("printf 'garbage!'; sleep 1", "bad magic"),
        ("exec cat", "bad magic"),
    ] {
        let bin = fake_bin(tmp.path(), script);
        let nix = LocalNix::new(Some(bin.clone()));
        let err = nix.closure(&dir, std::slice::from_ref(&a)).await.expect_err(script);
        assert!(err.is_environment(), "{script}: {err:?}");
        assert!(err.to_string().contains(expect), "{script}: {err}");
        // The installation is repaired: the same LocalNix reconnects on its own.
        fake_bin(tmp.path(), &format!("exec {} \"$@\"", real.trim()));
        assert_eq!(nix.closure(&dir, std::slice::from_ref(&a)).await.expect("healed").len(), 1, "{script}");
    }
}

#[tokio::test]
async fn a_daemon_killed_between_calls_is_replaced() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let a = sp(&dir, &env.build(EXPR, "a").expect("build").remove(0));
    let tmp = tempfile::tempdir().expect("tmp");
    let real = String::from_utf8(
        std::process::Command::new("sh").args(["-c", "command -v nix-daemon"]).output().expect("sh").stdout,
    )
    .expect("utf-8");
    // A wrapper that records its pid so the test can kill the child like an OOM killer would.
    let pidfile = tmp.path().join("pid");
    let bin = fake_bin(tmp.path(), &format!("echo $$ > {}; exec {} \"$@\"", pidfile.display(), real.trim()));
    let nix = LocalNix::new(Some(bin));
    assert_eq!(nix.closure(&dir, std::slice::from_ref(&a)).await.expect("first").len(), 1);
    let pid = std::fs::read_to_string(&pidfile).expect("pid");
    assert!(std::process::Command::new("kill").args(["-9", pid.trim()]).status().expect("kill").success());
    // The first call after the kill may fail (broken pipe: an environment error) or already reconnect.
    match nix.closure(&dir, std::slice::from_ref(&a)).await {
        Ok(c) => assert_eq!(c.len(), 1),
        Err(e) => assert!(e.is_environment(), "{e:?}"),
    }
    assert_eq!(nix.closure(&dir, std::slice::from_ref(&a)).await.expect("reconnected").len(), 1);
    let new_pid = std::fs::read_to_string(&pidfile).expect("pid");
    assert_ne!(pid, new_pid, "a new nix-daemon --stdio was started");
}
