//! `POST /api/v1/gc` runs the real collector against PostgreSQL and the store, answers the five figures,
//! and the figures of a real run show up in `/metrics`.

mod http_support;

use http_support::{Backend, TOKEN, TestServer};
use niks3::client::ApiClient;
use niks3::http::ApiToken;
use niks3::http::api::protocol::GcRequest;

#[tokio::test(flavor = "multi_thread")]
async fn gc_route_runs_the_collector_and_records_its_figures() {
    let s = TestServer::start(Backend::Local).await;
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let dry = api
        .gc(&GcRequest { older_than_secs: 3600, failed_uploads_older_than_secs: 3600, force: false, dry_run: true })
        .await
        .expect("dry run");
    assert_eq!(dry, niks3::metrics::GcFigures::default());
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
        .gc(&GcRequest { older_than_secs: u64::MAX, failed_uploads_older_than_secs: 1, force: false, dry_run: true })
        .await
        .expect_err("absurd");
    assert!(err.to_string().contains("400"), "{err}");
    s.shutdown().await;
}
