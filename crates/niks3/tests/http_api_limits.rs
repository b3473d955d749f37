//! Abuse limits of the API (docs/api.md "Limits"): a token past its request rate, or with too many upload
//! sessions open, gets 429 with Retry-After and a message saying which limit; other tokens are not
//! affected; a refused token is told only "missing, invalid or expired".

use crate::support::gc::hash_part;
use crate::support::http::{Backend, TestServer};
use niks3_nix::hash::Sha256Hash;
use niks3_server::http::api::rate::ApiRate;
use serde_json::{Value, json};

async fn post(s: &TestServer, token: &str, route: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = s.post_api_as(token, route, body).await;
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// A push of one made-up path `n` (the announce opens a session; nothing is uploaded).
fn push_of(n: usize) -> Value {
    let path = format!("/nix/store/{}-limited", hash_part(1000 + n));
    let nar = Sha256Hash::digest(format!("nar {n}").as_bytes()).to_nix_string();
    json!({ "roots": [path], "paths": [{ "path": path, "nar_hash": nar, "nar_size": 100, "references": [] }] })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_past_its_rate_or_session_limit_gets_429_and_others_go_on() {
    let s = TestServer::start_adjusted(Backend::Local, |st| {
        st.api_rate = ApiRate::new(5);
        st.limits.max_sessions_per_token = 2;
    })
    .await;
    let ci = s.create_token("ci", &["push"], &[]);
    // Two sessions open: the third announce is refused until one ends.
    let (a, _, plan) = post(&s, &ci, "push", &push_of(1)).await;
    assert_eq!(a, 200, "{plan}");
    assert_eq!(post(&s, &ci, "push", &push_of(2)).await.0, 200);
    let (st, retry, e) = post(&s, &ci, "push", &push_of(3)).await;
    assert_eq!((st, retry.as_deref()), (429, Some("5")), "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("2 upload sessions open")), "{e}");
    let (st, _, aborted) = post(&s, &ci, "abort", &json!({ "uploads": plan["uploads"] })).await;
    assert_eq!((st, &aborted["aborted_uploads"]), (200, &json!(1)), "{aborted} {plan}");
    assert_eq!(post(&s, &ci, "push", &push_of(3)).await.0, 200, "room again after an abort");
    // That was five requests in the minute: the sixth is over the rate (checked before anything else).
    let (st, retry, e) = post(&s, &ci, "push", &push_of(4)).await;
    assert_eq!(st, 429, "{e}");
    let wait: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((1..=13).contains(&wait), "one request back within 60/5 s: {wait}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("more than 5 API requests in a minute")), "{e}");
    // Another token has its own budget; the seed token opens sessions past the per-token limit.
    let other = s.create_token("builder-2", &["push"], &[]);
    assert_eq!(post(&s, &other, "push", &push_of(5)).await.0, 200);
    for n in 6..9 {
        assert_eq!(post(&s, crate::support::http::TOKEN, "push", &push_of(n)).await.0, 200, "seed push {n}");
    }
    // A refused token learns nothing about why.
    let (st, _, e) = post(&s, &"x".repeat(40), "push", &push_of(9)).await;
    assert_eq!(st, 401);
    assert_eq!(e["error"], "missing, invalid or expired API token");
    s.shutdown().await;
}
