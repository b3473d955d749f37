//! `niks3 serve --http-addr 127.0.0.1:0` lets the kernel pick the port; everything the server prints or
//! records (the banner's substituter URL and nix.conf lines, the "serving" log line, the landing page)
//! names the port it really bound, and that URL serves the cache to stock Nix.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{World, wait_for};
use std::time::Duration;

const EXPR: &str = include_str!("fixtures/serve_bound_port.nix");

#[test]
fn port_zero_prints_and_serves_the_bound_port() {
    let mut w = World::local();
    let mut args = w.serve_args();
    let i = args.iter().position(|a| a == "--http-addr").expect("serve args have --http-addr");
    args[i + 1] = "127.0.0.1:0".to_owned();
    let log_path = w.dir.path().join("serve.log");
    let mut child = w
        .nix
        .command(crate::support::e2e::niks3_bin())
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn niks3 serve");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let marker = "niks3 is serving the cache at http://127.0.0.1:";
    let started = wait_for(Duration::from_secs(60), || log().contains(marker) && log().contains("serving"));
    let text = log();
    assert!(started, "no banner:\n{text}");
    let port: u16 = text
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|p| p.trim().parse().ok())
        .expect("a port in the banner");
    assert_ne!(port, 0, "{text}");
    let url = format!("http://127.0.0.1:{port}");
    assert!(text.contains(&format!("extra-substituters = {url}")), "{text}");
    assert!(text.contains(&format!("cache_url={url}")), "the serving log line: {text}");
    assert!(!text.contains("127.0.0.1:0"), "port 0 printed somewhere:\n{text}");

    // The printed URL is the cache: landing page, and a build pushed by the hook substitutes from it.
    w.port = port;
    let landing = std::process::Command::new("curl").args(["-sf", &url]).output().expect("curl");
    assert!(String::from_utf8_lossy(&landing.stdout).contains(&url), "the landing page names the bound URL");
    let out = w.build(EXPR, "");
    let uploaded = wait_for(Duration::from_secs(60), || out.iter().all(|p| w.has_narinfo(p)));
    assert!(uploaded, "the hook's build never reached the cache:\n{}", log());
    let public_key = w.public_key();
    w.nix.substitute(&url, "bound-port", &out, &public_key).expect("substitute from the printed URL");
    let _ = child.kill();
    let _ = child.wait();
}
