//! Never lose a path, never break a build, never serve a broken closure: the daemon down while builds
//! run, the daemon killed with SIGKILL in the middle of a big upload, PostgreSQL down for a while.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{Backend, GRAPH, World, check_local_invariant, wait_for};
use std::time::Duration;

#[test]
fn builds_succeed_while_the_daemon_is_down_and_everything_uploads_after_start() {
    let w = World::local();
    let app = w.build(GRAPH, "app");
    let other = w.nix.build_script("e2e-offline", "echo offline > $out").expect("build");
    assert_eq!(w.spool_entries("new").len(), 4, "hook queued every build while the daemon was down");
    let mut server = w.serve();
    w.wait_uploaded(&[app[0].clone(), other], &server, Duration::from_secs(60));
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    assert_eq!(check_local_invariant(cache), 4);
    server.terminate();
}

#[test]
fn sigkill_mid_upload_loses_nothing_and_leaves_no_narinfo_without_its_nar() {
    let w = World::local();
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    // ~200 MB of base64 (semi-compressible) that a small path depends on.
    let expr = r#"{ salt }: rec {
      big = derivation { name = "e2e-big"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "/usr/bin/head -c 150000000 /dev/urandom | /usr/bin/base64 > $out" ]; };
      top = derivation { name = "e2e-top"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "echo ${big} > $out" ]; };
    }"#;
    let top = w.build(expr, "top");
    let mut server = w.serve();
    server.wait_log("uploading path=/nix/store/", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();
    let big = w.nix.run(w.nix.command("nix-store").args(["-q", "--references", &top[0]])).expect("refs");
    assert!(!w.has_narinfo(big.trim()), "the kill must land mid-upload of the big path");
    // Whatever got written, the invariant holds.
    check_local_invariant(cache);
    let claimed = w.spool_entries("claimed").len() + w.spool_entries("new").len();
    assert!(claimed > 0, "the interrupted entries must still be queued:\n{}", server.log_text());

    let server = w.serve();
    w.wait_uploaded(&top, &server, Duration::from_secs(120));
    assert_eq!(check_local_invariant(cache), 2);
    assert!(wait_for(Duration::from_secs(10), || w.spool_entries("claimed").is_empty()
        && w.spool_entries("new").is_empty()));
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
    let public_key = w.public_key();
    w.nix.substitute(&format!("file://{}", cache.display()), "after-crash", &top, &public_key).expect("substitute");
}

#[test]
fn postgres_outage_delays_uploads_but_loses_nothing() {
    let w = World::local();
    let server = w.serve();
    let first = w.nix.build_script("e2e-before-outage", "echo before > $out").expect("build");
    w.wait_uploaded(&[first], &server, Duration::from_secs(60));
    w.wait_drained(&server);

    w.pg().stop().expect("stop postgres");
    let during =
        w.nix.build_script("e2e-during-outage", "echo during > $out").expect("build succeeds during the outage");
    server.wait_log("will be retried", Duration::from_secs(30));
    assert!(!w.has_narinfo(&during));
    assert_eq!(w.spool_entries("claimed").len(), 1, "the entry stays claimed during the outage");

    w.pg().restart().expect("restart postgres");
    w.wait_uploaded(&[during], &server, Duration::from_secs(90));
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    check_local_invariant(cache);
}
