//! `POST /api/v1/gc` runs the real collector against PostgreSQL and the store, answers the five figures,
//! and the figures of a real run show up in `/metrics`.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TOKEN, TestServer, announce_and_upload};
use niks3_api::protocol::GcRequest;
use niks3_api::token::ApiToken;
use niks3_client::ApiClient;

#[tokio::test(flavor = "multi_thread")]
async fn gc_route_runs_the_collector_and_records_its_figures() {
    let s = TestServer::start(Backend::Local).await;
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let dry = api
        .gc(&GcRequest { older_than_secs: 3600, failed_uploads_older_than_secs: 3600, force: false, dry_run: true })
        .await
        .expect("dry run");
    assert_eq!(dry, niks3_api::protocol::GcFigures::default());
    let metrics =
        TestServer::client().get(format!("{}/metrics", s.url)).send().await.expect("m").text().await.expect("t");
    assert!(!metrics.contains("niks3_gc_last_"), "a dry run records nothing");
    let real = api
        .gc(&GcRequest { older_than_secs: 3600, failed_uploads_older_than_secs: 3600, force: true, dry_run: false })
        .await
        .expect("gc");
    assert_eq!(real.objects_failed_to_delete, 0);
    let metrics =
        TestServer::client().get(format!("{}/metrics", s.url)).send().await.expect("m").text().await.expect("t");
    assert!(metrics.contains("niks3_gc_last_objects_deleted_after_grace_period 0"), "{metrics}");
    // absurd options are a 400, not a crash
    let err = api
        .gc(&GcRequest { older_than_secs: u64::MAX, failed_uploads_older_than_secs: 3600, force: false, dry_run: true })
        .await
        .expect_err("absurd");
    assert!(err.to_string().contains("400"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_during_a_push_keeps_claimed_objects_and_expired_sessions_must_push_again() {
    let s = TestServer::start(Backend::Local).await;
    let env = niks3_testkit::nix::NixEnv::new().expect("nix env");
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");

    // 1. a GC between upload and complete (everything old, no grace) must not delete the claimed NAR
    let a = env.build_script("gc-race-a", "echo a > $out").expect("build");
    let (_, done) = announce_and_upload(&s, &env, &a, TOKEN).await;
    let figures = api
        .gc(&GcRequest { older_than_secs: 0, failed_uploads_older_than_secs: 3600, force: true, dry_run: false })
        .await
        .expect("gc");
    assert_eq!(figures.objects_failed_to_delete, 0);
    assert_eq!(s.cache_files().iter().filter(|f| f.starts_with("nar/")).count(), 1, "{:?}", s.cache_files());
    let r = s.post_api("complete", &done).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    env.substitute(&s.url, "client", &[&a], &s.key.public().to_nix_string()).expect("nix copy");

    // 2. a session GC considers failed is gone: completing it is a 409 and publishes nothing
    let b = env.build_script("gc-race-b", "echo b > $out").expect("build");
    let (_, done) = announce_and_upload(&s, &env, &b, TOKEN).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // 1 s is below the API's floor: only an admin token (the seed token is one) may ask, with force.
    api.gc(&GcRequest { older_than_secs: 3600, failed_uploads_older_than_secs: 1, force: true, dry_run: false })
        .await
        .expect("gc");
    let r = s.post_api("complete", &done).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.expect("body").contains("push again"));
    let b_hash = &b["/nix/store/".len().."/nix/store/".len() + 32];
    assert!(!s.cache_files().contains(&format!("{b_hash}.narinfo")), "{:?}", s.cache_files());
    s.shutdown().await;
}
