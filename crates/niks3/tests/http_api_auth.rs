//! The API refuses anyone without the exact token (401, nothing written), rejects crafted paths and keys
//! with 400, and the relay upload only accepts NARs that were claimed and decompress to their NarHash.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TOKEN, TestServer};
use niks3_api::token::ApiToken;
use serde_json::json;

async fn object_rows(s: &TestServer) -> i64 {
    let c = s.state.db.pool().get().await.expect("db");
    let objects: i64 = c.query_one("SELECT count(*) FROM objects", &[]).await.expect("count").get(0);
    let uploads: i64 = c.query_one("SELECT count(*) FROM uploads", &[]).await.expect("count").get(0);
    objects + uploads
}

fn a_path(hash: &str, name: &str) -> serde_json::Value {
    json!({
        "path": format!("/nix/store/{hash}-{name}"),
        "nar_hash": "sha256:1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9",
        "nar_size": 120,
        "references": [],
    })
}

const H1: &str = "0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";

#[tokio::test(flavor = "multi_thread")]
async fn wrong_missing_or_short_tokens_get_401_and_nothing_is_written() {
    let s = TestServer::start(Backend::Local).await;
    let c = TestServer::client();
    let body = json!({ "roots": [format!("/nix/store/{H1}-a")], "paths": [a_path(H1, "a")] });
    let short = &TOKEN[..35];
    let longer = format!("{TOKEN}x");
    let wrong = TOKEN.replace('a', "b");
    let cases: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some(format!("Bearer {short}")),
        Some(format!("Bearer {longer}")),
        Some(format!("Bearer {wrong}")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    for route in ["/api/v1/push", "/api/v1/complete", "/api/v1/gc"] {
        for auth in &cases {
            let mut rb = c.post(format!("{}{route}", s.url)).json(&body);
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.send().await.expect("request");
            assert_eq!(r.status(), 401, "{route} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    let r = c
        .put(format!("{}/api/v1/uploads/1/nar/1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9", s.url))
        .header("authorization", format!("Bearer {wrong}"))
        .body(vec![0u8; 1000])
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 401);
    assert_eq!(object_rows(&s).await, 0);
    assert!(s.cache_files().is_empty(), "{:?}", s.cache_files());
    assert_eq!(s.state.metrics.api_bytes_received.load(std::sync::atomic::Ordering::Relaxed), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_tokens_are_refused_at_startup() {
    let e = ApiToken::new("0123456789abcdef0123456789abcdef012").expect_err("35 characters");
    assert!(e.to_string().contains("at least 36"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("token");
    std::fs::write(&f, "short\n").expect("write");
    let e = ApiToken::from_file(&f).expect_err("short file");
    assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    assert!(!e.to_string().contains("short\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_paths_and_keys_get_400_and_nothing_is_written() {
    let s = TestServer::start(Backend::Local).await;
    let c = TestServer::client();
    let auth = format!("Bearer {TOKEN}");
    let root = format!("/nix/store/{H1}-a");
    let mut bad_bodies = vec![
        json!({ "roots": ["/nix/store/../etc/passwd"], "paths": [a_path(H1, "a")] }),
        json!({ "roots": [root], "paths": [a_path("../../../../etc/passwd", "a")] }),
        json!({ "roots": [root], "paths": [a_path("0c0pcvxgzbblkhq7cwcs8z4vgp6xfjke", "a")] }),
        json!({ "roots": [root], "paths": [a_path(H1, "a/../../b")] }),
        json!({ "roots": [root], "paths": [a_path(H1, &"x".repeat(300))] }),
        json!({ "roots": ["/etc/passwd"], "paths": [a_path(H1, "a")] }),
        json!({ "roots": [root], "paths": [] }),
        json!({ "roots": [], "paths": [a_path(H1, "a")] }),
        json!({ "roots": [root], "paths": [a_path(H1, "a"), a_path(H1, "a")] }),
        json!({ "roots": [root], "paths": "nope" }),
    ];
    let mut p = a_path(H1, "a");
    p["nar_hash"] = json!("sha256:zzzz");
    bad_bodies.push(json!({ "roots": [root], "paths": [p] }));
    let mut p = a_path(H1, "a");
    p["references"] = json!(["/nix/store/1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl-missing"]);
    bad_bodies.push(json!({ "roots": [root], "paths": [p] }));
    let mut p = a_path(H1, "a");
    p["ca"] = json!("fixed:r:sha256:x\nSig: evil");
    bad_bodies.push(json!({ "roots": [root], "paths": [p] }));
    for body in &bad_bodies {
        for route in ["/api/v1/push", "/api/v1/complete"] {
            let r = c
                .post(format!("{}{route}", s.url))
                .header("authorization", &auth)
                .json(body)
                .send()
                .await
                .expect("post");
            let status = r.status();
            let text = r.text().await.expect("body");
            assert_eq!(status, 400, "{route} {body}: {text}");
            assert!(text.contains("error"), "{text}");
        }
    }
    let r = c
        .post(format!("{}/api/v1/push", s.url))
        .header("authorization", &auth)
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    for bad in ["../../x", "1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdjE", "abc"] {
        let r = c
            .put(format!("{}/api/v1/uploads/1/nar/{bad}", s.url))
            .header("authorization", &auth)
            .body("x")
            .send()
            .await
            .expect("put");
        assert!(r.status() == 400 || r.status() == 404, "{bad}: {}", r.status());
    }
    let r = c
        .put(format!("{}/api/v1/uploads/x/nar/1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9", s.url))
        .header("authorization", &auth)
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    // a well-formed key that no upload claimed
    let r = c
        .put(format!("{}/api/v1/uploads/1/nar/1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9", s.url))
        .header("authorization", &auth)
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 404);
    assert_eq!(object_rows(&s).await, 0);
    assert!(s.cache_files().is_empty(), "{:?}", s.cache_files());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_upload_rejects_a_nar_that_does_not_match_its_hash_and_keeps_nothing() {
    let s = TestServer::start(Backend::Local).await;
    let c = TestServer::client();
    let auth = format!("Bearer {TOKEN}");
    let root = format!("/nix/store/{H1}-a");
    let body = json!({ "roots": [root], "paths": [a_path(H1, "a")] });
    let r =
        c.post(format!("{}/api/v1/push", s.url)).header("authorization", &auth).json(&body).send().await.expect("push");
    assert_eq!(r.status(), 200);
    let plan: serde_json::Value = r.json().await.expect("json");
    let url = plan["missing_nars"][0]["upload_url"].as_str().expect("upload url").to_owned();
    assert_eq!(plan["missing_nars"][0]["presigned"], false);
    // valid zstd, wrong content
    let wrong = zstd::encode_all(&b"not the NAR"[..], 3).expect("zstd");
    let r = c.put(format!("{}{url}", s.url)).header("authorization", &auth).body(wrong).send().await.expect("put");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("decompresses to"));
    // not zstd at all
    let r = c
        .put(format!("{}{url}", s.url))
        .header("authorization", &auth)
        .body(vec![7u8; 5000])
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    assert!(s.cache_files().iter().all(|f| !f.starts_with("nar/")), "{:?}", s.cache_files());
    // completing without the NAR publishes nothing
    let done = json!({ "uploads": plan["uploads"], "roots": [root], "paths": [a_path(H1, "a")],
        "nars": [{ "nar_hash": "sha256:1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9",
                   "file_hash": "sha256:1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9", "file_size": 10 }] });
    let r = s.post_api("complete", &done).await;
    assert_eq!(r.status(), 409);
    assert!(s.cache_files().iter().all(|f| !f.ends_with(".narinfo")), "{:?}", s.cache_files());
    s.shutdown().await;
}
