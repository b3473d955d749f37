//! Scoped, revocable tokens end to end: `niks3 token` (the real binary) against a real PostgreSQL, the real
//! server in-process and, for revocation, a second `niks3 serve` process sharing the database. A push token
//! pushes but cannot collect, a gc token collects but cannot push, sessions belong to the token that opened
//! them, revoked and expired tokens get 401, only SHA-256 digests are stored, the seed token stays admin,
//! GC floors hold for everyone but admin-with-force, and GC never removes an upload's temp file in flight.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TOKEN, TestServer, announce_and_upload};
use niks3_testkit::nix::NixEnv;
use serde_json::json;
use sha2::Digest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn post(s: &TestServer, token: &str, route: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = s.post_api_as(token, route, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn gc_body(older: u64, failed: u64, force: bool) -> serde_json::Value {
    json!({ "older_than_secs": older, "failed_uploads_older_than_secs": failed, "force": force, "dry_run": false })
}

/// A dry-run push of a path the cache does not have: 200 for any push token, touching nothing.
fn dry_push() -> serde_json::Value {
    let p = "/nix/store/0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl-dry";
    json!({ "roots": [p], "dry_run": true, "paths": [{ "path": p,
        "nar_hash": "sha256:1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9", "nar_size": 120, "references": [] }] })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_token_pushes_but_gets_403_on_gc() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let push = s.create_token("builder-1", &["push"], &[]);
    let a = env.build_script("token-push", "echo pushed > $out").expect("build");
    let (_, done) = announce_and_upload(&s, &env, &a, &push).await;
    let (status, v) = post(&s, &push, "complete", &done).await;
    assert_eq!((status, &v["published"]), (200, &json!(1)), "{v}");
    env.substitute(&s.url, "client", &[&a], &s.key.public().to_nix_string()).expect("nix copy");

    let (status, v) = post(&s, &push, "gc", &gc_body(720 * 3600, 6 * 3600, false)).await;
    assert_eq!(status, 403, "{v}");
    let msg = v["error"].as_str().expect("a JSON error");
    assert!(msg.contains("gc scope") && msg.contains("builder-1"), "{msg}");
    // 401 stays for tokens that do not exist
    let (status, _) = post(&s, &format!("{push}x"), "gc", &gc_body(720 * 3600, 6 * 3600, false)).await;
    assert_eq!(status, 401);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gc_token_cannot_push_and_only_admin_with_force_goes_below_the_floors() {
    let s = TestServer::start(Backend::Local).await;
    let gc = s.create_token("gc-timer", &["gc"], &[]);
    let (status, v) = post(&s, &gc, "push", &dry_push()).await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().expect("error").contains("push scope"), "{v}");
    let r = TestServer::client()
        .put(format!("{}/api/v1/uploads/1/nar/1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9", s.url))
        .bearer_auth(&gc)
        .body(vec![0u8; 10])
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 403);

    // at or above the floors: fine
    let (status, v) = post(&s, &gc, "gc", &gc_body(3600, 3600, false)).await;
    assert_eq!(status, 200, "{v}");
    // below them: refused for a gc token even with force (the wipe of security review #3) …
    for (older, failed, force) in [(0, 3600, true), (3600, 0, true), (0, 0, false), (3599, 3600, false)] {
        let (status, v) = post(&s, &gc, "gc", &gc_body(older, failed, force)).await;
        assert_eq!(status, 403, "{older} {failed} {force}: {v}");
        assert!(v["error"].as_str().expect("error").contains("floor"), "{v}");
    }
    // … for an admin token without force; an admin token with force may (the seed token is admin)
    let admin = s.create_token("ops", &["admin"], &[]);
    for t in [admin.as_str(), TOKEN] {
        let (status, v) = post(&s, t, "gc", &gc_body(0, 0, false)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().expect("error").contains("force"), "{v}");
        let (status, v) = post(&s, t, "gc", &gc_body(0, 0, true)).await;
        assert_eq!(status, 200, "{v}");
    }
    // the seed token pushes too
    assert_eq!(post(&s, TOKEN, "push", &dry_push()).await.0, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_sessions_belong_to_the_token_that_opened_them() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let one = s.create_token("builder-1", &["push"], &[]);
    let two = s.create_token("builder-2", &["push"], &[]);
    let a = env.build_script("token-owned", "echo owned > $out").expect("build");
    let info = env.command("nix").args(["path-info", "--json", &a]).output().expect("path-info");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    let wire = json!({ "path": a, "nar_hash": v[0]["narHash"], "nar_size": v[0]["narSize"], "references": [] });
    let (status, plan) = post(&s, &one, "push", &json!({ "roots": [a], "paths": [wire] })).await;
    assert_eq!(status, 200, "{plan}");
    let url = plan["missing_nars"][0]["upload_url"].as_str().expect("relay url");
    let dump = env.command("nix-store").args(["--dump", &a]).output().expect("dump").stdout;
    let zst = zstd::encode_all(dump.as_slice(), 3).expect("zstd");

    // another token: the session does not exist for it
    let put = |token: &str| {
        TestServer::client().put(format!("{}{url}", s.url)).bearer_auth(token.to_owned()).body(zst.clone()).send()
    };
    let r = put(&two).await.expect("put");
    assert_eq!(r.status(), 404);
    assert!(s.cache_files().iter().all(|f| !f.starts_with("nar/")), "{:?}", s.cache_files());
    let (status, v) = post(&s, &two, "abort", &json!({ "uploads": plan["uploads"] })).await;
    assert_eq!((status, &v["aborted_uploads"]), (200, &json!(0)), "{v}");
    // not even the seed token touches a scoped token's session
    assert_eq!(put(TOKEN).await.expect("put").status(), 404);

    // its owner uploads and completes; another token cannot complete it
    let up: serde_json::Value = put(&one).await.expect("put").json().await.expect("answer");
    let done = json!({ "uploads": plan["uploads"], "roots": [a], "paths": [wire],
        "nars": [{ "nar_hash": wire["nar_hash"], "file_hash": up["file_hash"], "file_size": up["size"] }] });
    let (status, v) = post(&s, &two, "complete", &done).await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = post(&s, &one, "complete", &done).await;
    assert_eq!(status, 200, "{v}");
    s.shutdown().await;
}

/// A `niks3 serve` process (API only, no spool) on the test server's database; killed on drop.
struct SecondServer {
    child: std::process::Child,
    url: String,
}

impl SecondServer {
    async fn start(s: &TestServer) -> SecondServer {
        let port = crate::support::e2e::free_port();
        let dir = s.dir.path().join("second");
        let child = Command::new(env!("CARGO_BIN_EXE_niks3"))
            .args(["serve", "--no-spool", "--http-addr", &format!("127.0.0.1:{port}"), "--db", &s.pg.url()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--storage-dir")
            .arg(dir.join("cache"))
            .arg("--gcroots-dir")
            .arg(dir.join("gcroots"))
            .env_remove("NIKS3_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(s.dir.path().join("second.log")).expect("log"))
            .spawn()
            .expect("spawn niks3 serve");
        let server = SecondServer { child, url: format!("http://127.0.0.1:{port}") };
        let start = Instant::now();
        while start.elapsed() < Duration::from_mins(1) {
            let r = TestServer::client().get(format!("{}/nix-cache-info", server.url)).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the second server never answered: {}",
            std::fs::read_to_string(s.dir.path().join("second.log")).unwrap_or_default()
        );
    }

    async fn dry_push(&self, token: &str) -> u16 {
        let r = TestServer::client()
            .post(format!("{}/api/v1/push", self.url))
            .bearer_auth(token)
            .json(&dry_push())
            .send()
            .await
            .expect("push");
        r.status().as_u16()
    }
}

impl Drop for SecondServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_every_server_sharing_the_database_within_seconds() {
    let s = TestServer::start(Backend::Local).await;
    let push = s.create_token("laptop", &["push"], &[]);
    let second = SecondServer::start(&s).await;
    assert_eq!(post(&s, &push, "push", &dry_push()).await.0, 200);
    assert_eq!(second.dry_push(&push).await, 200);

    let out = s.token_cli(&["revoke", "laptop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = Instant::now();
    let mut refused = false;
    while revoked_at.elapsed() < Duration::from_secs(5) {
        if second.dry_push(&push).await == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the second server still accepts the revoked token after 5 s");
    assert_eq!(post(&s, &push, "push", &dry_push()).await.0, 401);
    let list = String::from_utf8(s.token_cli(&["list"]).stdout).expect("utf-8");
    assert!(list.lines().any(|l| l.starts_with("laptop") && l.contains("revoked")), "{list}");
    // the seed token of each server is its own, and still admin
    assert_eq!(post(&s, TOKEN, "push", &dry_push()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_gets_401() {
    let s = TestServer::start(Backend::Local).await;
    let created = Instant::now();
    let push = s.create_token("ci-short", &["push"], &["--expires-in", "5s"]);
    assert_eq!(post(&s, &push, "push", &dry_push()).await.0, 200);
    assert!(created.elapsed() < Duration::from_secs(5), "too slow to see the token before it expired");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(created.elapsed()) + Duration::from_millis(500)).await;
    let (status, v) = post(&s, &push, "push", &dry_push()).await;
    assert_eq!(status, 401, "{v}");
    let list = String::from_utf8(s.token_cli(&["list"]).stdout).expect("utf-8");
    assert!(list.lines().any(|l| l.starts_with("ci-short") && l.contains("expired")), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_is_printed_once_and_only_its_sha256_is_stored() {
    let s = TestServer::start(Backend::Local).await;
    let secret = s.create_token("builder-9", &["push", "gc"], &["--expires-in", "30d"]);
    assert!(secret.starts_with("niks3_") && secret.len() == 6 + 64, "256 bits, hex: {secret}");
    // used once, so last_used_at is set too
    assert_eq!(post(&s, &secret, "push", &dry_push()).await.0, 200);

    let c = s.state.db.pool().get().await.expect("db");
    let row = c
        .query_one("SELECT sha256, scopes, row_to_json(api_tokens)::text FROM api_tokens WHERE name = 'builder-9'", &[])
        .await
        .expect("row");
    let stored: Vec<u8> = row.get(0);
    assert_eq!(stored, sha2::Sha256::digest(secret.as_bytes()).to_vec());
    let scopes: Vec<String> = row.get(1);
    assert_eq!(scopes, ["push", "gc"]);
    let whole: String = row.get(2);
    let hex = &secret["niks3_".len()..];
    assert!(!whole.contains(hex) && !whole.contains(&secret), "the secret is in the row: {whole}");
    assert!(whole.contains("last_used_at\":\"2"), "{whole}");
    // nowhere else in the database either
    let dump = std::process::Command::new(niks3_testkit::postgres::server_bin().expect("pg bin").join("pg_dump"))
        .args(["-d", &s.pg.url()])
        .output()
        .expect("pg_dump");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(!String::from_utf8_lossy(&dump.stdout).contains(hex));

    // list never shows it; a second create of the same name is refused and prints nothing
    let list = s.token_cli(&["list"]);
    let text = String::from_utf8(list.stdout).expect("utf-8");
    assert!(text.contains("builder-9") && text.contains("push,gc") && !text.contains(hex), "{text}");
    let again = s.token_cli(&["create", "--name", "builder-9", "--scope", "push"]);
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_never_removes_the_temp_file_of_an_upload_in_flight() {
    // Security review #11: a slow relay upload, then GC with failed_uploads_older_than = 0 (as an admin
    // with force, the only caller still allowed to ask): the `.tmp/*.part` being written must survive
    // and the upload must succeed.
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let a = env.build_script("in-flight", "/bin/dd if=/dev/urandom of=$out bs=1M count=2 status=none").expect("build");
    let info = env.command("nix").args(["path-info", "--json", &a]).output().expect("path-info");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    let wire = json!({ "path": a, "nar_hash": v[0]["narHash"], "nar_size": v[0]["narSize"], "references": [] });
    let (status, plan) = post(&s, TOKEN, "push", &json!({ "roots": [a], "paths": [wire] })).await;
    assert_eq!(status, 200, "{plan}");
    let url = format!("{}{}", s.url, plan["missing_nars"][0]["upload_url"].as_str().expect("relay url"));
    let dump = env.command("nix-store").args(["--dump", &a]).output().expect("dump").stdout;
    let zst = zstd::encode_all(dump.as_slice(), 3).expect("zstd");
    let (half, rest) = zst.split_at(zst.len() / 2);

    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let upload = tokio::spawn(
        TestServer::client()
            .put(url)
            .bearer_auth(TOKEN)
            .header("content-length", zst.len())
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    futures::SinkExt::send(&mut tx, Ok(half.to_vec())).await.expect("send the first half");
    let tmp = s.cache_dir.as_ref().expect("local cache").join(".tmp");
    let parts = || std::fs::read_dir(&tmp).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>());
    let start = Instant::now();
    while parts().expect("list .tmp").is_empty() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = parts().expect("list .tmp");
    assert_eq!(before.len(), 1, "the upload's temp file: {before:?}");

    let (status, v) = post(&s, TOKEN, "gc", &gc_body(0, 0, true)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(parts().expect("list .tmp"), before, "GC removed the temp file of an upload in flight");

    futures::SinkExt::send(&mut tx, Ok(rest.to_vec())).await.expect("send the rest");
    drop(tx);
    let r = upload.await.expect("join").expect("upload");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert!(parts().expect("list .tmp").is_empty());
    s.shutdown().await;
}
