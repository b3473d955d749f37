//! The size policy (`--max-nar-size`, issue 18 point 5): a path whose NAR is over the limit is left out
//! with one log line and a metric; its referrers are still published and name it; the closure is recorded
//! as incomplete; a spool entry whose root is over the limit is done, not failed. Through the drainer's
//! uploader and through `niks3 push` (the pusher's own limit, the server's, the smaller of both), with
//! real Nix showing what a client then does.

use crate::support::http::{Backend, TestServer};
use niks3_local::nix::LocalNix;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_server::metrics::Metrics;
use niks3_server::upload::pipeline::Uploader;
use niks3_server::upload::publish::Publisher;
use niks3_storage::ObjectKey;
use niks3_testkit::nix::NixEnv;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const EXPR: &str = include_str!("fixtures/size_policy.nix");
const LIMIT: u64 = 100 << 10;

struct Built {
    top: StorePath,
    big: StorePath,
    small: StorePath,
}

fn build(env: &NixEnv) -> Built {
    let dir = StoreDir::default();
    let built = |attr: &str| dir.parse_path(&env.build(EXPR, attr).expect("build").remove(0)).expect("store path");
    Built { top: built("top"), big: built("big"), small: built("small") }
}

async fn narinfo(s: &TestServer, p: &StorePath) -> Option<String> {
    let body = s.state.store.get(&ObjectKey::narinfo(p)).await.expect("get")?;
    Some(String::from_utf8(body.to_vec()).expect("utf-8"))
}

/// The cache has `top` and `small`, not `big`, and `top`'s narinfo still names `big`.
async fn assert_published_without_big(s: &TestServer, b: &Built) {
    assert!(narinfo(s, &b.big).await.is_none(), "the big path was uploaded");
    assert!(narinfo(s, &b.small).await.is_some(), "the small reference is missing");
    let top = narinfo(s, &b.top).await.expect("top published");
    let refs = top.lines().find_map(|l| l.strip_prefix("References: ")).expect("References line");
    assert!(refs.split(' ').any(|r| r == b.big.basename()), "{top}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drainer_leaves_out_a_path_over_the_limit_and_publishes_its_referrers() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let b = build(&env);
    let dir = StoreDir::default();
    let metrics = Arc::new(Metrics::default());
    let publisher =
        Publisher::new(Arc::clone(&s.state.store), s.state.db.clone(), dir.clone(), Arc::clone(&s.state.sign_keys));
    let uploader =
        Uploader::new(publisher, LocalNix::default(), Arc::clone(&metrics), 2).with_max_nar_size(Some(LIMIT));

    let report = uploader.upload_closure(std::slice::from_ref(&b.top)).await.expect("upload");
    assert_eq!(report.skipped, vec![b.big.clone()], "{report:?}");
    assert_eq!(report.uploaded, 2, "top and small: {report:?}");
    assert_published_without_big(&s, &b).await;
    assert_eq!(metrics.paths_skipped.load(Ordering::Relaxed), 1);
    let stats = s.state.db.stats().await.expect("stats");
    assert_eq!((stats.closures, stats.incomplete_closures), (1, 1), "{stats:?}");
    let audit = s.cli_on_db("audit", &["--path", &dir.display(&b.top)]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("\"skipped\":[") && audit.contains(b.big.basename().as_str()), "{audit}");

    // A spool entry for the big path itself: done (nothing to retry: the NAR will not shrink), not failed.
    let again = uploader.upload_closure(std::slice::from_ref(&b.big)).await.expect("an oversized root is no error");
    assert_eq!((again.uploaded, again.skipped.clone()), (0, vec![b.big.clone()]), "{again:?}");
    assert!(narinfo(&s, &b.big).await.is_none());

    // What a client does (docs/configuration.md "Size limit"): without the big path, Nix cannot take
    // `top` from this cache alone and says which path it lacks; with it (from elsewhere), it can.
    let key = s.key.public().to_nix_string();
    let err = env.substitute(&s.url, "lacking", &[dir.display(&b.top)], &key).expect_err("big is nowhere");
    assert!(err.contains(b.big.basename().as_str()), "{err}");
    let store = env.chroot_store("having").expect("store");
    let seed = env
        .command("nix")
        .args(["copy", "--no-check-sigs", "--to"])
        .arg(env.nix_path(&store))
        .arg(dir.display(&b.big))
        .output()
        .expect("nix copy");
    assert!(seed.status.success(), "{}", String::from_utf8_lossy(&seed.stderr));
    let got = env
        .command("nix-store")
        .arg("--store")
        .arg(env.nix_path(&store))
        .args(["--realise", &dir.display(&b.top)])
        .args(["--option", "substituters", &s.url, "--option", "trusted-public-keys", &key])
        .output()
        .expect("nix-store --realise");
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert!(env.host_path(&store.join(dir.display(&b.top).trim_start_matches('/'))).join("salt").exists());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_leaves_out_paths_over_the_smaller_of_its_own_and_the_servers_limit() {
    let env = NixEnv::new().expect("nix env");
    let b = build(&env);
    let top = StoreDir::default().display(&b.top);

    // No server limit: the pusher's own.
    let s = TestServer::start(Backend::Local).await;
    let (ok, out) = s.push_with_cli_args(&env, &["--max-nar-size", "100K", &top]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("skipped {}", StoreDir::default().display(&b.big))), "{out}");
    assert_published_without_big(&s, &b).await;
    assert_eq!(s.state.metrics.paths_skipped.load(Ordering::Relaxed), 1);
    assert_eq!(s.state.db.stats().await.expect("stats").incomplete_closures, 1);
    s.shutdown().await;

    // A server limit: a pusher cannot raise it, and a bad size is refused before anything is sent.
    let s = TestServer::start_adjusted(Backend::Local, |st| st.limits.max_nar_size = Some(LIMIT)).await;
    let (ok, out) = s.push_with_cli_args(&env, &["--max-nar-size", "abc", &top]).await;
    assert!(!ok && out.contains("not a size"), "{out}");
    assert!(s.cache_files().is_empty(), "{:?}", s.cache_files());
    let (ok, out) = s.push_with_cli_args(&env, &["--max-nar-size", "1G", &top]).await;
    assert!(ok, "{out}");
    assert!(out.contains("skipped"), "{out}");
    assert_published_without_big(&s, &b).await;
    let metrics = TestServer::client().get(format!("{}/metrics", s.url)).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.lines().any(|l| l == "niks3_paths_skipped_total 1"), "{text}");
    s.shutdown().await;
}

/// Through the real hook, spool and `niks3 serve --max-nar-size`: the big path's own spool entry is
/// acknowledged (not quarantined, not retried), the referrer's closure is cached without it, and the
/// server's log names it once.
#[test]
fn the_daemon_acknowledges_the_entry_of_a_path_over_the_limit() {
    use crate::support::e2e::World;
    use std::time::Duration;
    let w = World::local();
    let server = w.serve_with(|cmd| {
        cmd.args(["--max-nar-size", "100K"]);
    });
    let big = w.build(EXPR, "big");
    let top = w.build(EXPR, "top");
    let small = w.build(EXPR, "small");
    let ok =
        crate::support::e2e::wait_for(Duration::from_mins(1), || w.has_narinfo(&top[0]) && w.has_narinfo(&small[0]));
    assert!(ok, "top and small not cached:\n{}", server.log_text());
    w.wait_drained(&server);
    assert!(w.spool_entries("quarantine").is_empty(), "{}", w.quarantine_reasons());
    assert!(!w.has_narinfo(&big[0]), "the big path was cached");
    let log = server.log_text();
    let skipped = log.lines().filter(|l| l.contains("skipped") && l.contains(big[0].as_str())).count();
    assert!(skipped >= 1, "no log line names the skipped path:\n{log}");
    let top_info = w.narinfo_text(&top[0]).expect("top's narinfo");
    assert!(top_info.contains(big[0].trim_start_matches("/nix/store/")), "{top_info}");
}
