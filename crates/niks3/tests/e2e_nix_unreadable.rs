//! A local Nix store niks3 cannot read is niks3's problem, never the entry's: with a broken `nix-daemon`
//! on the server's PATH, queued entries stay in the spool (nothing is quarantined), the cause is logged
//! once and shown on `/health` and `/metrics`, and the entries are uploaded as soon as Nix works again.
//! Entries an older niks3 quarantined for such a cause come back with `niks3 spool requeue`.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{World, niks3_bin, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

fn curl(url: &str) -> String {
    let out = Command::new("curl").args(["-s", url]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_broken_nix_quarantines_nothing_and_the_entries_go_through_once_it_is_fixed() {
    let w = World::local();
    let real = Command::new("sh").args(["-c", "command -v nix-daemon"]).output().expect("sh").stdout;
    let real = String::from_utf8(real).expect("utf-8");
    let bin = w.state().with_file_name("fake-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let broken = bin.join("broken");
    std::fs::write(&broken, "").expect("flag");
    let daemon = bin.join("nix-daemon");
    let script = format!(
        "#!/bin/sh\nif [ -e {flag} ]; then echo 'nix-daemon: cannot open libnixstore.so (a broken upgrade)' >&2; exit 1; fi\nexec {real} \"$@\"\n",
        flag = broken.display(),
        real = real.trim()
    );
    std::fs::write(&daemon, script).expect("write");
    std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let out = w.nix.build_script("e2e-unreadable", "echo while nix is broken > $out").expect("build");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut server = w.serve_with(|cmd| {
        cmd.env("PATH", &path);
    });
    w.wait_http(&server);
    server.wait_log("cannot read the local Nix store", Duration::from_secs(60));
    let health = curl(&format!("{}/health", w.url()));
    assert!(health.contains("\"degraded\"") && health.contains("cannot read the local Nix store"), "{health}");
    assert!(!health.contains("libnixstore"), "details stay in the log: {health}");
    let metrics = curl(&format!("{}/metrics", w.url()));
    assert!(metrics.contains("niks3_nix_store_up 0"), "{metrics}");
    // Several retries, one error line for the cause.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.log_text().matches("cannot read the local Nix store; queued").count(),
        1,
        "{}",
        server.log_text()
    );
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
    assert!(!w.has_narinfo(&out));

    std::fs::remove_file(&broken).expect("fix nix");
    w.wait_uploaded(std::slice::from_ref(&out), &server, Duration::from_secs(90));
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
    assert!(wait_for(Duration::from_secs(10), || curl(&format!("{}/health", w.url())).contains("\"ok\"")));
    assert!(curl(&format!("{}/metrics", w.url())).contains("niks3_nix_store_up 1"));
    server.terminate();

    // An entry quarantined by an older niks3 for an unreadable store: list shows it, requeue brings it back.
    let later = w.nix.build_script("e2e-requeued", "echo requeued > $out").expect("build");
    let queued = w.spool_entries("new");
    assert_eq!(queued.len(), 1);
    let name = queued[0].file_name().expect("name").to_owned();
    let quarantine = w.spool().join("quarantine");
    std::fs::rename(&queued[0], quarantine.join(&name)).expect("quarantine by hand");
    let mut reason = name.clone();
    reason.push(".reason");
    std::fs::write(quarantine.join(reason), "unexpected output from nix path-info: bad JSON\n").expect("reason");
    let spool = w.spool();
    let list = w.nix.run(w.nix.command(niks3_bin()).args(["spool", "list", "--spool-dir"]).arg(&spool)).expect("list");
    assert!(list.contains("quarantined: 1") && list.contains("bad JSON"), "{list}");
    let requeue =
        w.nix.run(w.nix.command(niks3_bin()).args(["spool", "requeue", "--spool-dir"]).arg(&spool)).expect("requeue");
    assert!(requeue.contains("1 entry back in the queue"), "{requeue}");
    assert!(w.spool_entries("quarantine").is_empty());
    let mut server = w.serve();
    w.wait_uploaded(&[later], &server, Duration::from_secs(60));
    server.terminate();
}
