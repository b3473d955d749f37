//! The no-configuration default: `niks3 serve` with no database, store, key or token flags creates its
//! own private PostgreSQL, local cache, signing key and API token in the state directory, prints what
//! to add to nix.conf, tells systemd it is ready, and works end to end; a second start reuses all of it.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{GRAPH, World, free_port, niks3_bin, wait_for};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn serve_without_flags_sets_everything_up_and_notifies_readiness() {
    let w = World::local();
    // The embedded PostgreSQL runs as the `postgres` user: it must be able to traverse to the state dir.
    std::fs::set_permissions(w.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
    let notify_path = w.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let port = free_port();
    let log_path = w.dir.path().join("embedded.log");
    let start = |log: &std::path::Path| {
        w.nix
            .command(niks3_bin())
            .args(["serve", "--state-dir"])
            .arg(w.state())
            .args(["--spool-dir"])
            .arg(w.spool())
            .args(["--gcroots-dir"])
            .arg(w.gcroots())
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            // Stands for a secret passed in the environment (NIKS3_API_TOKEN, NIKS3_S3_SECRET_KEY): no child
            // may inherit it (security review, finding 13).
            .env("NIKS3_TEST_SECRET", "must-not-leak")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn niks3 serve")
    };
    let mut child = start(&log_path);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1", "sd_notify message");

    let banner = std::fs::read_to_string(&log_path).expect("log");
    let state = w.state();
    for needle in [
        "public key: ".to_owned(),
        format!("API token file: {}/api-token (generated)", state.display()),
        format!("extra-substituters = http://127.0.0.1:{port}"),
        "extra-trusted-public-keys = ".to_owned(),
        "post-build-hook = ".to_owned(),
    ] {
        assert!(banner.contains(&needle), "banner lacks {needle:?}:\n{banner}");
    }
    let token = std::fs::read_to_string(state.join("api-token")).expect("token");
    assert!(token.len() >= 36 && !banner.contains(token.trim()), "token generated and never printed");
    assert!(state.join("postgres").is_dir() && state.join("cache/nix-cache-info").is_file());
    let pid = std::fs::read_to_string(state.join("postgres/data/postmaster.pid")).expect("postmaster.pid");
    let environ = std::fs::read(format!("/proc/{}/environ", pid.lines().next().unwrap_or("").trim())).expect("environ");
    assert!(!String::from_utf8_lossy(&environ).contains("NIKS3_"), "PostgreSQL inherited niks3's variables");

    let public_key = w.public_key();
    let url = format!("http://127.0.0.1:{port}");
    let app = w.build(GRAPH, "app");
    let closure = w.closure(&app[0]);
    let status = |p: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{url}/{}.narinfo", &p[11..43])])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(wait_for(Duration::from_secs(60), || closure.iter().all(|p| status(p) == "200")), "uploads");
    w.nix.substitute(&url, "embedded", &app, &public_key).expect("substitute");

    // SIGTERM: clean exit; a second start reuses key, token and database.
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "exit status {exit}");
    let log2 = w.dir.path().join("embedded-2.log");
    let mut child = start(&log2);
    // The first server said STOPPING=1 on its way out; the second must say READY=1.
    loop {
        let n = notify.recv(&mut buf).expect("READY=1 again");
        match String::from_utf8_lossy(&buf[..n]).trim() {
            "STOPPING=1" => {}
            other => {
                assert_eq!(other, "READY=1");
                break;
            }
        }
    }
    let banner2 = std::fs::read_to_string(&log2).expect("log");
    assert!(banner2.contains(&format!("public key: {public_key}")) && !banner2.contains("(generated)"), "{banner2}");
    assert!(closure.iter().all(|p| status(p) == "200"), "the cache survived the restart");
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success());
}
