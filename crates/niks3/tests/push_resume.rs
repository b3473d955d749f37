//! Issue 18, resume, the `niks3 push` half: the real `niks3 push` killed with SIGKILL once 10 of the 12
//! parts (87% of the bytes) of a big NAR's presigned multipart upload are in the bucket (Garage behind a
//! proxy that slows uploads to 16 MiB/s and counts them, so the kill lands where the test wants it) and
//! run again once its leases went stale is handed the same multipart upload back with the parts the
//! bucket holds: it sends only the parts the bucket lacks, and the path is published and substitutes with
//! stock Nix.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::http::{Backend, TOKEN, TestServer};
use niks3_local::nix::LocalNix;
use niks3_nix::store_path::StoreDir;
use niks3_storage::ObjectKey;
use niks3_testkit::nix::NixEnv;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// 96 MB of random bytes: incompressible, so 12 parts of 8 MiB (11 full ones and ~3.6 MiB).
const BIG: &str = r#"{ salt }: {
  big = derivation { name = "push-resume-big"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c 96000000 /dev/urandom > $out" ]; };
}"#;

const PART: u64 = 8 << 20;

/// Parts the bucket holds of its one unfinished multipart upload (0 when there is none).
async fn held_parts(s3: &niks3_storage::s3::S3Store) -> usize {
    let mut most = 0;
    for upload in s3.pending_uploads().await.expect("list uploads") {
        let (_, key) = ObjectKey::parse(&upload.key).expect("a key of ours");
        most = most.max(s3.list_parts(&key, &upload.upload_id).await.map_or(0, |p| p.len()));
    }
    most
}

/// The number in `… (N bytes) resumed from an interrupted push` of a push's summary line.
fn resumed_bytes(log: &str) -> Option<u64> {
    let end = log.find(" bytes) resumed from an interrupted push")?;
    let start = log[..end].rfind('(')? + 1;
    log[start..end].parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_killed_at_90_percent_sends_only_the_missing_parts_when_run_again() {
    let s = TestServer::start_adjusted(Backend::GarageThrottled(16 << 20), |st| {
        st.limits.lease_timeout = Duration::from_secs(2);
    })
    .await;
    let (Some(throttle), Some(direct)) = (&s.throttle, &s.direct_s3) else { unreachable!("a throttled backend") };
    let env = NixEnv::new().expect("nix env");
    let big = env.build(BIG, "big").expect("build big").remove(0);
    let dir = StoreDir::default();
    let info = LocalNix::default()
        .closure(&dir, &[dir.parse_path(&big).expect("path")])
        .await
        .expect("closure")
        .into_iter()
        .find(|i| dir.display(&i.path) == big)
        .expect("big in its closure");
    let nar_key = ObjectKey::nar(&info.nar_hash);

    // The first push, killed once 10 of the 12 parts are in the bucket (part 11, 8 MiB, is on its way:
    // half a second at 16 MiB/s, ample room for the kill to land before the push ends).
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let first_log = s.dir.path().join("first-push.log");
    let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
    cmd.args(["push", "--server", &s.url, "--auth-token-file"]).arg(&token_file).arg(&big);
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&first_log).expect("log file"));
    let mut first = cmd.spawn().expect("run niks3 push");
    let started = Instant::now();
    let parts = loop {
        let n = held_parts(direct).await;
        if n >= 10 {
            break n;
        }
        if let Some(status) = first.try_wait().expect("wait") {
            panic!(
                "the first push ended ({status}) before 10 parts: {}",
                std::fs::read_to_string(&first_log).unwrap_or_default()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(240), "no 10 parts uploaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    first.kill().expect("SIGKILL the push");
    let _ = first.wait();
    let first_text = std::fs::read_to_string(&first_log).unwrap_or_default();
    assert!(!first_text.contains("niks3: pushed"), "the kill must land mid-upload: {first_text}");
    assert!(s.state.store.head(&ObjectKey::narinfo(&info.path)).await.expect("head").is_none(), "published");

    // Past the lease timeout the killed push's session looks dead: the next push takes its upload over.
    // Counted only then, once the proxy has stopped forwarding: what the killed push wrote before dying
    // sits in the socket buffers (megabytes on loopback) and the proxy still reads it, at its pace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut first_run = throttle.sent();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = throttle.sent();
        if now == first_run {
            break;
        }
        first_run = now;
    }
    let (ok, log) = s.push_with_cli(&env, &big).await;
    let resent = throttle.sent() - first_run;
    assert!(ok, "{log}");
    let reused = resumed_bytes(&log).unwrap_or_else(|| panic!("no resumed bytes in the summary: {log}"));
    let file_size = s.state.store.head(&nar_key).await.expect("head").expect("the NAR is stored").size;
    eprintln!(
        "push resume: killed with {parts} of 12 parts in the bucket after {first_run} bytes through the proxy; \
         the second push reused {reused} bytes and sent {resent} bytes (NAR file {file_size} bytes)"
    );
    assert!(reused >= 10 * PART && reused.is_multiple_of(PART), "10 or 11 whole parts reused: {reused}\n{log}");
    // What the second push sent is the parts it did not reuse, plus request headers and the server's few
    // small S3 requests (list parts, complete): well under one part more.
    let missing = file_size - reused;
    assert!(resent >= missing && resent < missing + (1 << 20), "sent {resent} bytes for {missing} missing:\n{log}");
    assert!(direct.pending_uploads().await.expect("list uploads").is_empty(), "an upload left behind");
    assert!(s.state.store.head(&ObjectKey::narinfo(&info.path)).await.expect("head").is_some(), "not published");
    let public_key = s.key.public().to_nix_string();
    let chroot = env.substitute(&s.url, "after-resume", &[&big], &public_key).expect("substitute the resumed NAR");
    let copied = std::fs::read(chroot.join(big.trim_start_matches('/'))).expect("big copied");
    assert_eq!(copied, std::fs::read(&big).expect("big local"));
    s.shutdown().await;
}
