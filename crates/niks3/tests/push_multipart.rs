//! Big NARs through presigned multipart uploads, against Garage with 5 MiB parts: a NAR that may exceed
//! one part goes up in equal parts straight to the bucket (none of its bytes through the server), the
//! server completes it from the parts' ETags and the cache substitutes with signatures required. A push
//! interrupted mid-upload leaves no narinfo, and its multipart upload is aborted by GC phase 1 (from the
//! upload record, not by the bucket's clock) or at once when the client gives the session up.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{BIG_NAR_EXPR, Backend, TOKEN, TestServer};
use chrono::Utc;
use niks3_api::protocol::{
    AbortRequest, CompleteRequest, HeldPartWire, MissingNar, MultipartWire, PushRequest, PushResponse, UploadedNar,
};
use niks3_api::token::ApiToken;
use niks3_client::ApiClient;
use niks3_client::push::to_wire;
use niks3_local::nix::LocalNix;
use niks3_nix::store_path::StoreDir;
use niks3_server::gc::{self, GcOptions};
use niks3_storage::s3::{MIN_PART_SIZE, S3Store};
use niks3_storage::{ObjectKey, Storage};
use niks3_testkit::nix::NixEnv;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// [`BIG_NAR_EXPR`]'s `big` with 5 MiB parts: two full parts and a short third one.
const EXPR: &str = BIG_NAR_EXPR;

fn s3(store: &Storage) -> &S3Store {
    match store {
        Storage::S3(s) => s,
        Storage::Local(_) => panic!("these tests need the S3 backend"),
    }
}

/// The push request for the closure of `root`, from the test's Nix.
async fn push_request(root: &str) -> PushRequest {
    let dir = StoreDir::default();
    let infos = LocalNix::default().closure(&dir, &[dir.parse_path(root).expect("path")]).await.expect("closure");
    PushRequest {
        roots: vec![root.to_owned()],
        paths: infos.iter().map(|p| to_wire(&dir, p)).collect(),
        dry_run: false,
        max_nar_size: None,
    }
}

/// The planned upload of the big NAR, which must be multipart.
fn big_nar<'a>(plan: &'a PushResponse, big: &str) -> &'a MissingNar {
    let m = plan.missing_nars.iter().find(|m| m.path == big).expect("the big NAR is missing");
    assert!(m.presigned && m.upload_url.is_empty(), "{m:?}");
    m
}

/// `PUT`s `body` as part `n` of `mp` the way `niks3 push` does: a URL bound to its size and MD5 from the
/// part route, sent with the headers it names.
async fn put_part(api: &ApiClient, mp: &MultipartWire, n: u32, body: Vec<u8>) -> reqwest::Response {
    let md5 = md5::compute(&body).0;
    let bound = api.presign_part(&mp.part_route, n, body.len() as u64, &md5).await.expect("presign part");
    let mut put = TestServer::client().put(&bound.upload_url);
    for (k, v) in &bound.headers {
        put = put.header(k.as_str(), v.as_str());
    }
    put.body(body).send().await.expect("PUT part")
}

async fn multipart_rows(s: &TestServer) -> i64 {
    let c = s.state.db.client().await.expect("db");
    c.query_one("SELECT count(*) FROM upload_multiparts", &[]).await.expect("count").get(0)
}

async fn narinfo_status(s: &TestServer, path: &str) -> u16 {
    let p = StoreDir::default().parse_path(path).expect("store path");
    let url = format!("{}/{}", s.url, ObjectKey::narinfo(&p));
    TestServer::client().get(&url).send().await.expect("GET narinfo").status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn big_nar_goes_to_the_bucket_in_equal_presigned_parts_and_substitutes() {
    let s = TestServer::start(Backend::GarageWithPartSize(MIN_PART_SIZE)).await;
    let env = NixEnv::new().expect("nix env");
    let top = env.build(EXPR, "top").expect("build top").remove(0);
    let big = env.build(EXPR, "big").expect("build big").remove(0);

    // The plan: the big NAR in 5 MiB parts (each part's URL asked for once it is compressed), the small
    // one in one PUT. A dry run starts nothing.
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let mut req = push_request(&top).await;
    req.dry_run = true;
    let dry = api.announce(&req).await.expect("dry run");
    assert!(dry.missing_nars.iter().all(|m| m.multipart.is_none() && m.upload_url.is_empty()), "{dry:?}");
    assert!(s3(&s.state.store).pending_uploads().await.expect("list").is_empty(), "a dry run starts no upload");
    req.dry_run = false;
    let plan = api.announce(&req).await.expect("announce");
    let mp = big_nar(&plan, &big).multipart.as_ref().expect("the big NAR goes multipart");
    assert_eq!(mp.part_size, MIN_PART_SIZE as u64);
    assert!(mp.part_route.ends_with("/part"), "{mp:?}");
    let small = plan.missing_nars.iter().find(|m| m.path == top).expect("top is missing");
    assert!(
        small.multipart.is_none() && small.presigned && small.upload_url.is_empty() && small.presign_route.is_some(),
        "one PUT, through a URL bound to the file once it is compressed"
    );
    api.abort(&AbortRequest { uploads: plan.uploads }).await.expect("give that plan up");

    let (ok, log) = s.push_with_cli(&env, &top).await;
    assert!(ok, "{log}");
    assert!(log.contains("pushed 2 paths") && log.contains("2 straight to S3"), "{log}");
    assert_eq!(s.state.metrics.api_bytes_received.load(Ordering::Relaxed), 0, "NAR bytes went through the server");

    // Completed: the NAR is whole in the bucket, nothing pending, no record left.
    let dir = StoreDir::default();
    let infos = LocalNix::default().closure(&dir, &[dir.parse_path(&big).expect("path")]).await.expect("closure");
    let infos: Vec<_> = infos.into_iter().filter(|i| dir.display(&i.path) == big).collect();
    let meta = s.state.store.head(&ObjectKey::nar(&infos[0].nar_hash)).await.expect("head").expect("NAR stored");
    assert!(meta.size > 2 * MIN_PART_SIZE as u64, "three parts: {}", meta.size);
    assert!(s3(&s.state.store).pending_uploads().await.expect("list").is_empty(), "multipart upload left open");
    assert_eq!(multipart_rows(&s).await, 0, "records of finished multipart uploads are dropped");
    assert_eq!(narinfo_status(&s, &big).await, 200);

    // Stock Nix substitutes the closure from the read proxy, signatures required.
    let chroot = env.substitute(&s.url, "client", &[&top], &s.key.public().to_nix_string()).expect("nix copy");
    let copied = std::fs::read(chroot.join(big.trim_start_matches('/'))).expect("big copied");
    assert_eq!(copied, std::fs::read(&big).expect("big local"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_multipart_push_publishes_nothing_and_gc_aborts_its_upload() {
    let s = TestServer::start(Backend::GarageWithPartSize(MIN_PART_SIZE)).await;
    let env = NixEnv::new().expect("nix env");
    let top = env.build(EXPR, "top").expect("build top").remove(0);
    let big = env.build(EXPR, "big").expect("build big").remove(0);
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let plan = api.announce(&push_request(&top).await).await.expect("announce");
    let m = big_nar(&plan, &big);
    let mp = m.multipart.as_ref().expect("multipart plan");
    assert_eq!(mp.part_size, MIN_PART_SIZE as u64);

    // The client sends one part, then dies.
    let r = put_part(&api, mp, 1, vec![7u8; MIN_PART_SIZE]).await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(s.state.metrics.api_bytes_received.load(Ordering::Relaxed), 0);
    assert_eq!(narinfo_status(&s, &big).await, 404, "nothing visible");
    assert_eq!(narinfo_status(&s, &top).await, 404, "nothing visible");
    let pending = s3(&s.state.store).pending_uploads().await.expect("list");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(multipart_rows(&s).await, 1, "the session records its multipart upload");

    // A GC before the failed-uploads cutoff keeps it (the session is still in flight).
    let opts = GcOptions {
        older_than: Duration::from_hours(720),
        failed_uploads_older_than: Duration::from_hours(6),
        force: false,
        dry_run: false,
    };
    let f = gc::run(&s.state.db, &s.state.store, opts, Utc::now()).await.expect("gc");
    assert_eq!(f.failed_uploads_deleted, 0);
    assert_eq!(s3(&s.state.store).pending_uploads().await.expect("list").len(), 1, "in flight: kept");

    // Seven hours later the session counts as failed: phase 1 drops it and aborts its multipart upload
    // (by its record: for the bucket, the upload started seconds ago).
    let later = Utc::now() + chrono::Duration::hours(7);
    let f = gc::run(&s.state.db, &s.state.store, opts, later).await.expect("gc later");
    assert_eq!(f.failed_uploads_deleted, 1, "{f:?}");
    assert!(s3(&s.state.store).pending_uploads().await.expect("list").is_empty(), "abandoned upload aborted");
    assert_eq!(multipart_rows(&s).await, 0);
    assert_eq!(narinfo_status(&s, &big).await, 404);

    // Completing the dropped session is refused: the client must push again.
    let nar = UploadedNar { nar_hash: m.nar_hash.clone(), file_hash: m.nar_hash.clone(), file_size: 1, parts: vec![] };
    let req = push_request(&top).await;
    let err = api
        .complete(&CompleteRequest {
            uploads: plan.uploads.clone(),
            roots: req.roots,
            paths: req.paths,
            nars: vec![nar],
            listings: vec![],
            max_nar_size: None,
        })
        .await
        .expect_err("session gone");
    assert!(err.to_string().contains("push again"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_part_etags_abort_the_upload_and_a_client_can_give_a_session_up() {
    let s = TestServer::start(Backend::GarageWithPartSize(MIN_PART_SIZE)).await;
    let env = NixEnv::new().expect("nix env");
    let top = env.build(EXPR, "top").expect("build top").remove(0);
    let big = env.build(EXPR, "big").expect("build big").remove(0);
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let req = push_request(&top).await;

    // ETags S3 never gave: the server's completion is refused, it aborts the upload and says so.
    let plan = api.announce(&req).await.expect("announce");
    let m = big_nar(&plan, &big);
    let nar = |parts: Vec<String>| UploadedNar {
        nar_hash: m.nar_hash.clone(),
        file_hash: m.nar_hash.clone(),
        file_size: 12 << 20,
        parts,
    };
    let complete = |nars| CompleteRequest {
        uploads: plan.uploads.clone(),
        roots: req.roots.clone(),
        paths: req.paths.clone(),
        nars,
        listings: vec![],
        max_nar_size: None,
    };
    let err = api.complete(&complete(vec![nar(vec!["<x/>".to_owned()])])).await.expect_err("malformed ETag");
    assert!(err.to_string().contains("malformed part ETag"), "{err}");
    assert_eq!(
        s3(&s.state.store).pending_uploads().await.expect("list").len(),
        1,
        "a malformed request changes nothing"
    );
    let fake = "\"0123456789abcdef0123456789abcdef\"".to_owned();
    let err = api.complete(&complete(vec![nar(vec![fake])])).await.expect_err("unknown part");
    assert!(err.to_string().contains("push again"), "{err}");
    assert!(s3(&s.state.store).pending_uploads().await.expect("list").is_empty(), "refused upload aborted");
    assert_eq!(narinfo_status(&s, &big).await, 404);

    // Told to push again, a client gives the session up first (as `niks3 push` does), or it keeps the
    // path's lease and the next push waits for it.
    api.abort(&AbortRequest { uploads: plan.uploads.clone() }).await.expect("abort the refused push");
    // A client that gives up: its sessions end and their multipart uploads are aborted at once.
    let plan = api.announce(&req).await.expect("announce again");
    big_nar(&plan, &big);
    assert_eq!(s3(&s.state.store).pending_uploads().await.expect("list").len(), 1);
    let r = api.abort(&AbortRequest { uploads: plan.uploads.clone() }).await.expect("abort");
    assert_eq!((r.aborted_uploads, r.aborted_multiparts), (1, 1));
    assert!(s3(&s.state.store).pending_uploads().await.expect("list").is_empty());
    assert_eq!(multipart_rows(&s).await, 0);
    let c = s.state.db.client().await.expect("db");
    let n: i64 =
        c.query_one("SELECT count(*) FROM uploads WHERE id = ANY($1)", &[&plan.uploads]).await.expect("count").get(0);
    assert_eq!(n, 0, "sessions ended");
    s.shutdown().await;
}

/// Resume (issue 18): a push killed part way leaves its multipart upload and session behind. While its
/// lease is fresh nobody else uploads the path; once it is stale another token's push gets an upload of
/// its own (never someone else's), and the owner's next push gets the interrupted one back — same upload,
/// same parts, and the parts the bucket holds, which `niks3 push` then does not send again.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_multipart_upload_is_handed_back_to_its_owner_only() {
    let lease = Duration::from_secs(3);
    let s =
        TestServer::start_adjusted(Backend::GarageWithPartSize(MIN_PART_SIZE), |st| st.limits.lease_timeout = lease)
            .await;
    let env = NixEnv::new().expect("nix env");
    let big = env.build(EXPR, "big").expect("build big").remove(0);
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let req = push_request(&big).await;
    let plan = api.announce(&req).await.expect("announce");
    let mp = big_nar(&plan, &big).multipart.clone().expect("multipart plan");
    assert!(mp.held_parts.is_empty(), "a fresh upload holds nothing");

    // Alive (its lease fresh): a second push of the same owner is not asked for the NAR at all.
    let live = api.announce(&req).await.expect("announce while the first push is alive");
    assert!(live.missing_nars.is_empty(), "{live:?}");
    api.abort(&AbortRequest { uploads: live.uploads }).await.expect("give the second push up");

    // The first push sends part 1, then dies.
    let r = put_part(&api, &mp, 1, vec![7u8; MIN_PART_SIZE]).await;
    assert!(r.status().is_success(), "{}", r.status());
    let etag = r.headers()["etag"].to_str().expect("ETag").trim_matches('"').to_owned();
    tokio::time::sleep(lease + Duration::from_millis(500)).await;

    // Another token: its own fresh upload; the interrupted one is not handed out.
    let secret = s.create_token("builder-2", &["push"], &[]);
    let other = ApiClient::new(&s.url, ApiToken::new(&secret).expect("token")).expect("client");
    let theirs = other.announce(&req).await.expect("announce as another token");
    assert!(big_nar(&theirs, &big).multipart.as_ref().expect("multipart").held_parts.is_empty());
    assert_eq!(s3(&s.state.store).pending_uploads().await.expect("list").len(), 2, "a second upload");
    other.abort(&AbortRequest { uploads: theirs.uploads }).await.expect("give that push up");

    // The owner again: the interrupted upload, with part 1 held, cut as before.
    let again = api.announce(&req).await.expect("announce again");
    let resumed = big_nar(&again, &big).multipart.clone().expect("multipart");
    assert_eq!(resumed.held_parts, vec![HeldPartWire { number: 1, size: MIN_PART_SIZE as u64, etag }]);
    assert_eq!(resumed.part_size, mp.part_size);
    assert_ne!(resumed.part_route, mp.part_route, "asked through the new session");
    let pending = s3(&s.state.store).pending_uploads().await.expect("list");
    assert_eq!(pending.len(), 1, "the same upload, continued: {pending:?}");
    assert_eq!(multipart_rows(&s).await, 1, "its record moved, not copied");
    let c = s.state.db.client().await.expect("db");
    let n: i64 = c
        .query_one("SELECT count(*) FROM upload_multiparts WHERE upload_id = ANY($1)", &[&again.uploads])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "recorded under the new session");
    let r = api.abort(&AbortRequest { uploads: again.uploads }).await.expect("abort");
    assert_eq!(r.aborted_multiparts, 1);
    assert!(s3(&s.state.store).pending_uploads().await.expect("list").is_empty());
    s.shutdown().await;
}

/// Issue 18, integrity in transit: a part's URL exists only once its bytes do, bound to their size and
/// MD5 (`Content-Length` and `Content-MD5` signed), so S3 refuses other bytes — a part corrupted on the
/// wire is never stored. The route hands out URLs only for parts the announced NAR can need, in the
/// caller's own session.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_url_takes_only_the_bytes_it_was_asked_for() {
    let s = TestServer::start(Backend::GarageWithPartSize(MIN_PART_SIZE)).await;
    let env = NixEnv::new().expect("nix env");
    let top = env.build(EXPR, "top").expect("build top").remove(0);
    let big = env.build(EXPR, "big").expect("build big").remove(0);
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let plan = api.announce(&push_request(&top).await).await.expect("announce");
    let mp = big_nar(&plan, &big).multipart.clone().expect("multipart plan");
    let route = mp.part_route.trim_start_matches("/api/v1/").to_owned();

    // The refusals on a small last part (3): the store answers before reading much of a wrong request,
    // and a big body would then meet a closed connection instead of the answer.
    let part = vec![7u8; 1000];
    let md5 = md5::compute(&part).0;
    let bound = api.presign_part(&mp.part_route, 3, part.len() as u64, &md5).await.expect("presign part 3");
    assert_eq!(bound.headers.keys().collect::<Vec<_>>(), ["content-length", "content-md5"]);
    let send = |url: String, body: Vec<u8>, headers: Vec<(String, String)>| {
        let mut put = TestServer::client().put(url);
        for (k, v) in headers {
            put = put.header(k, v);
        }
        async move {
            let r = put.body(body).send().await.expect("PUT");
            let status = r.status().as_u16();
            (status, r.text().await.expect("body"))
        }
    };
    // The body sets Content-Length itself (a header saying otherwise would cut or pad what is sent).
    let signed: Vec<(String, String)> =
        bound.headers.clone().into_iter().filter(|(k, _)| k != "content-length").collect();
    // Other bytes of the same length (one flipped, as on a bad link): 400 BadDigest.
    let mut flipped = part.clone();
    flipped[500] ^= 0x20;
    let (status, text) = send(bound.upload_url.clone(), flipped, signed.clone()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("BadDigest") || text.contains("InvalidDigest"), "{text}");
    // Another length, or no Content-MD5: the signature does not cover the request.
    let (status, text) = send(bound.upload_url.clone(), vec![7u8; 1001], signed.clone()).await;
    assert_eq!(status, 403, "{text}");
    // (Garage: 400 "signed header `content-md5` is not present"; AWS: 403 SignatureDoesNotMatch.)
    let (status, text) = send(bound.upload_url.clone(), part.clone(), Vec::new()).await;
    assert!(matches!(status, 400 | 403) && (text.contains("content-md5") || text.contains("Signature")), "{text}");
    let held = s3(&s.state.store).list_parts(&nar_key(&big).await, &pending_id(&s).await).await.expect("parts");
    assert!(held.is_empty(), "nothing stored: {held:?}");
    // The bytes asked for (a whole part 1): stored, the ETag their MD5.
    let r = put_part(&api, &mp, 1, vec![7u8; MIN_PART_SIZE]).await;
    assert!(r.status().is_success(), "{}", r.status());
    let hex = format!("{:x}", md5::compute(vec![7u8; MIN_PART_SIZE]));
    assert_eq!(r.headers()["etag"].to_str().expect("ETag").trim_matches('"'), hex);

    // What the plan cannot need is refused before anything is signed.
    let b64 = |d: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(d)
    };
    let ask = |part: u32, size: u64, md5: String| serde_json::json!({"part": part, "size": size, "md5": md5});
    for (body, status, says) in [
        (ask(0, 1, b64(&md5)), 400, "parts 1..=3"),
        (ask(4, 1, b64(&md5)), 400, "parts 1..=3"),
        (ask(1, MIN_PART_SIZE as u64 + 1, b64(&md5)), 413, "1..=5242880"),
        (ask(1, 0, b64(&md5)), 413, "1..=5242880"),
        (ask(1, 1, b64(&[1, 2, 3])), 400, "not a base64 MD5"),
        (ask(1, 1, "%%".to_owned()), 400, "not a base64 MD5"),
    ] {
        let r = s.post_api(&route, &body).await;
        let code = r.status().as_u16();
        let text = r.text().await.expect("body");
        assert_eq!(code, status, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    // Another token's session is unknown; a NAR of the session that goes up in one PUT has no parts.
    let secret = s.create_token("builder-2", &["push"], &[]);
    let r = s.post_api_as(&secret, &route, &ask(1, 1, b64(&md5))).await;
    assert_eq!(r.status().as_u16(), 404, "{}", r.text().await.expect("body"));
    let small = plan.missing_nars.iter().find(|m| m.path == top).expect("top is missing");
    let small_route =
        small.presign_route.as_ref().expect("one PUT").trim_start_matches("/api/v1/").replace("/presign", "/part");
    let r = s.post_api(&small_route, &ask(1, 1, b64(&md5))).await;
    let text = r.text().await.expect("body");
    assert!(text.contains("no multipart upload"), "{text}");
    api.abort(&AbortRequest { uploads: plan.uploads }).await.expect("abort");
    s.shutdown().await;
}

/// The key of the NAR of store path `path` (its NarHash from the test's Nix).
async fn nar_key(path: &str) -> ObjectKey {
    let dir = StoreDir::default();
    let p = dir.parse_path(path).expect("path");
    let infos = LocalNix::default().closure(&dir, std::slice::from_ref(&p)).await.expect("closure");
    ObjectKey::nar(&infos.into_iter().find(|i| i.path == p).expect("in its closure").nar_hash)
}

/// The id of the one multipart upload in flight.
async fn pending_id(s: &TestServer) -> String {
    let c = s.state.db.client().await.expect("db");
    c.query_one("SELECT multipart_id FROM upload_multiparts", &[]).await.expect("one upload").get(0)
}

/// Not a pass/fail check: what binding each part costs `niks3 push` — the part route's round trip
/// (session and plan checks in PostgreSQL, a presignature) against the `PUT` of one 5 MiB part to Garage,
/// both measured here in the same run, alternated. The client asks for part n+1's URL while part n
/// uploads, so the added time per part is at most the ratio printed, and nothing when uploads are slower.
/// `cargo test -p niks3 --test it push_multipart::bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark"]
async fn bench_part_route_round_trip_vs_part_upload() {
    let s = TestServer::start(Backend::GarageWithPartSize(MIN_PART_SIZE)).await;
    let env = NixEnv::new().expect("nix env");
    let big = env.build(EXPR, "big").expect("build big").remove(0);
    let api = ApiClient::new(&s.url, ApiToken::new(TOKEN).expect("token")).expect("client");
    let plan = api.announce(&push_request(&big).await).await.expect("announce");
    let mp = big_nar(&plan, &big).multipart.clone().expect("multipart plan");
    let part: Vec<u8> = (0..MIN_PART_SIZE).map(|i| (i * 7919 % 251) as u8).collect();
    let md5 = md5::compute(&part).0;
    let (mut asks, mut puts) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let bound = api.presign_part(&mp.part_route, 1, part.len() as u64, &md5).await.expect("presign");
        asks.push(t.elapsed());
        let mut put = TestServer::client().put(&bound.upload_url);
        for (k, v) in bound.headers.iter().filter(|(k, _)| *k != "content-length") {
            put = put.header(k.as_str(), v.as_str());
        }
        let t = std::time::Instant::now();
        let r = put.body(part.clone()).send().await.expect("PUT");
        assert!(r.status().is_success(), "{}", r.status());
        puts.push(t.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (ask, put) = (median(&mut asks), median(&mut puts));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "part route {:.1} ms vs 5 MiB part PUT {:.1} ms (medians of 20): ratio {:.3}; load {}",
        ask.as_secs_f64() * 1e3,
        put.as_secs_f64() * 1e3,
        ask.as_secs_f64() / put.as_secs_f64(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    api.abort(&AbortRequest { uploads: plan.uploads }).await.expect("abort");
    s.shutdown().await;
}
