//! Issue 18, resume: `niks3 serve` killed with SIGKILL at ~90% of a big NAR's multipart upload to S3
//! (Garage behind a proxy that slows uploads to 32 MiB/s, so the kill lands where the test wants it) and
//! started again sends only the parts the bucket lacks, and the path substitutes correctly.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{Backend, World};
use crate::support::throttle::Throttle;
use niks3_storage::ObjectKey;
use niks3_storage::s3::S3Store;
use std::time::{Duration, Instant};

/// 100 MB of random bytes: incompressible, so 12 parts of 8 MiB (11 full ones and the rest).
const BIG: &str = r#"{ salt }: {
  big = derivation { name = "e2e-resume-big"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c 100000000 /dev/urandom > $out" ]; };
}"#;

#[test]
fn a_daemon_killed_at_90_percent_of_an_upload_sends_only_the_missing_parts_after_restart() {
    let mut w = World::s3();
    let Backend::S3(g) = &mut w.backend else { unreachable!() };
    // The test looks at the bucket directly; the server goes through the proxy.
    let direct = S3Store::new(crate::support::s3_config(g, 8 << 20)).expect("config");
    let throttle = Throttle::start(g.endpoint.trim_start_matches("http://"), 32 << 20);
    g.endpoint.clone_from(&throttle.endpoint);
    let big = w.build(BIG, "big");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    let mut server = w.serve();
    // Wait for the multipart upload, then until 11 of its 12 parts are in the bucket.
    let started = Instant::now();
    let held = |want: usize| {
        rt.block_on(async {
            for upload in direct.pending_uploads().await.expect("list uploads") {
                let (_, key) = ObjectKey::parse(&upload.key).expect("a key of ours");
                let n = direct.list_parts(&key, &upload.upload_id).await.map_or(0, |p| p.len());
                if n >= want {
                    return Some(n);
                }
            }
            None
        })
    };
    let parts = loop {
        if let Some(n) = held(11) {
            break n;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "no 11 parts uploaded:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    server.kill9();
    let first_run = throttle.sent();
    assert!(!w.has_narinfo(&big[0]), "the kill must land mid-upload");
    assert!(held(1).is_some(), "the interrupted upload stays in the bucket");

    let server = w.serve();
    w.wait_uploaded(&big, &server, Duration::from_secs(180));
    let resent = throttle.sent() - first_run;
    let nar_size = 100_000_000 + 1000;
    eprintln!(
        "resume: killed with {parts} of 12 parts in the bucket after {first_run} bytes sent; \
         the restarted server sent {resent} bytes"
    );
    server.wait_log("continued an interrupted multipart upload", Duration::from_secs(10));
    assert!(resent < nar_size / 5, "sent {resent} bytes again of a ~{nar_size}-byte NAR:\n{}", server.log_text());
    assert!(rt.block_on(direct.pending_uploads()).expect("list uploads").is_empty(), "an upload left behind");
    let public_key = w.public_key();
    w.nix.substitute(&w.url(), "after-resume", &big, &public_key).expect("substitute the resumed NAR");
}
