//! The S3 backend against a real single-node Garage: round trips, single and multipart streaming uploads,
//! failed uploads leaving nothing behind, range reads, presigned PUTs, batch deletes, stale multipart
//! cleanup, bad credentials and outages.

use crate::support::objects::{data, nar_key, narinfo_key};
use bytes::Bytes;
use futures::StreamExt;
use niks3_nix::hash::Sha256Hash;
use niks3_storage::s3::{S3Config, S3Store};
use niks3_storage::{ObjectKey, ObjectKind, Storage, StorageError, UploadJournal};
use niks3_testkit::garage::Garage;
use sha2::Digest;
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const PART: usize = 8 * MIB;

fn config(g: &Garage) -> S3Config {
    crate::support::s3_config(g, PART)
}

fn setup() -> (Garage, Storage) {
    let g = Garage::start().expect("start garage");
    let store = Storage::S3(S3Store::new(config(&g)).expect("valid config"));
    (g, store)
}

fn s3(store: &Storage) -> &S3Store {
    match store {
        Storage::S3(s) => s,
        Storage::Local(_) => unreachable!("these tests use S3"),
    }
}

/// A raw rust-s3 client on the same bucket, for what the store API deliberately hides (ETags, multipart).
fn raw_bucket(g: &Garage) -> Box<s3::Bucket> {
    let region = s3::Region::Custom { region: g.region.clone(), endpoint: g.endpoint.clone() };
    let creds =
        s3::creds::Credentials::new(Some(&g.access_key), Some(&g.secret_key), None, None, None).expect("credentials");
    s3::Bucket::new(&g.bucket, region, creds).expect("bucket").with_path_style()
}

/// Feeds `data` in chunks of the given sizes (cycled) through a bounded channel, optionally failing after
/// `fail_after` bytes, as the upload pipeline does.
fn feed(
    data: Vec<u8>,
    sizes: &[usize],
    fail_after: Option<usize>,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sizes = sizes.to_vec();
    tokio::spawn(async move {
        let data = Bytes::from(data);
        let mut pos = 0;
        for size in sizes.iter().cycle() {
            if pos >= data.len() {
                break;
            }
            if fail_after.is_some_and(|f| pos >= f) {
                let _ =
                    tx.send(Err(StorageError::Source { key: "test".into(), reason: "NAR read failed".into() })).await;
                return;
            }
            let end = (pos + size).min(data.len());
            if tx.send(Ok(data.slice(pos..end))).await.is_err() {
                return;
            }
            pos = end;
        }
    });
    rx
}

async fn read_all(store: &Storage, key: &ObjectKey, range: Option<(u64, Option<u64>)>) -> (u64, Vec<u8>) {
    let (meta, mut stream) = store.get_stream(key, range).await.expect("get_stream").expect("object exists");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    (meta.size, out)
}

/// The ETag (multipart objects have `-<parts>` at its end), checking on the way that NARs carry the
/// immutable `Cache-Control` and the content type given.
async fn etag(g: &Garage, key: &ObjectKey) -> String {
    let (head, _) = raw_bucket(g).head_object(key.as_str()).await.expect("head");
    if key.kind() == ObjectKind::Nar {
        let cc = head.cache_control.unwrap_or_default();
        assert!(cc.contains("immutable"), "NAR {key} has Cache-Control {cc:?}");
        assert_eq!(head.content_type.as_deref(), Some("application/x-nix-nar"), "{key}");
    }
    head.e_tag.expect("etag")
}

#[tokio::test]
async fn put_get_head_delete_round_trip() {
    let (_g, store) = setup();
    let key = narinfo_key(1);
    let body = Bytes::from_static(b"StorePath: /nix/store/x\n");
    assert_eq!(store.get(&key).await.expect("get absent"), None);
    assert_eq!(store.head(&key).await.expect("head absent"), None);
    assert!(store.get_stream(&key, None).await.expect("stream absent").is_none());

    store.put(&key, body.clone(), "text/x-nix-narinfo").await.expect("put");
    assert_eq!(store.get(&key).await.expect("get"), Some(body.clone()));
    assert_eq!(store.head(&key).await.expect("head").map(|m| m.size), Some(body.len() as u64));
    assert_eq!(store.list("").await.expect("list"), vec![key.to_string()]);

    assert!(store.delete_many(std::slice::from_ref(&key)).await.is_empty());
    assert_eq!(store.get(&key).await.expect("get deleted"), None);
}

#[tokio::test]
async fn small_stream_is_one_put() {
    let (g, store) = setup();
    let d = data(100 * 1024 + 7, 1);
    let key = nar_key(&d);
    let n = store
        .put_stream(&key, feed(d.clone(), &[7000, 1, 65536], None), "application/x-nix-nar", None)
        .await
        .expect("put");
    assert_eq!(n, d.len() as u64);
    assert_eq!(read_all(&store, &key, None).await, (d.len() as u64, d));
    assert!(!etag(&g, &key).await.contains('-'), "a small object must not be multipart");
    // An empty stream stores an empty object.
    let empty = nar_key(b"");
    assert_eq!(store.put_stream(&empty, feed(Vec::new(), &[1], None), "x", None).await.expect("put empty"), 0);
    assert_eq!(store.head(&empty).await.expect("head").map(|m| m.size), Some(0));
}

#[tokio::test]
async fn large_stream_is_multipart_in_equal_parts() {
    let (g, store) = setup();
    for (len, parts) in [(20 * MIB + 12345, Some(3)), (2 * PART, Some(2)), (PART, None)] {
        let d = data(len, len as u64);
        let key = nar_key(&d);
        let n = store
            .put_stream(&key, feed(d.clone(), &[MIB, 3 * MIB + 1, 4096], None), "application/x-nix-nar", None)
            .await
            .expect("put_stream");
        assert_eq!(n, len as u64);
        let (size, back) = read_all(&store, &key, None).await;
        assert_eq!(size, len as u64);
        assert_eq!(sha2::Sha256::digest(&back), sha2::Sha256::digest(&d), "content of {len} bytes");
        let tag = etag(&g, &key).await;
        match parts {
            Some(p) => assert!(tag.trim_matches('"').ends_with(&format!("-{p}")), "{len} bytes: etag {tag}"),
            None => assert!(!tag.contains('-'), "exactly one part must be a single PUT: {tag}"),
        }
    }
    assert!(s3(&store).pending_uploads().await.expect("list uploads").is_empty());
}

/// Any object fits S3's part limit (10 000 parts; 4 here, so megabytes show what terabytes would):
/// with a bound (a NAR's zstd bound) the parts are equal — as R2 requires — and grown to hold it;
/// without one they double as they fill; past what the parts can hold the upload fails clearly and
/// leaves nothing behind.
#[tokio::test]
async fn the_part_size_grows_so_any_size_fits_the_part_limit() {
    let g = Garage::start().expect("start garage");
    let store = Storage::S3(S3Store::new(config(&g)).expect("valid config").with_max_parts(4));
    // 50 MiB in 8 MiB parts would need 7 parts: with the bound, 4 equal parts of 13 MiB.
    let d = data(50 * MIB, 11);
    let key = nar_key(&d);
    let bound = Some(niks3_local::nar_stream::max_compressed_size(d.len() as u64));
    let n = store.put_stream(&key, feed(d.clone(), &[MIB], None), "application/x-nix-nar", bound).await.expect("put");
    assert_eq!(n, d.len() as u64);
    assert!(etag(&g, &key).await.trim_matches('"').ends_with("-4"), "{}", etag(&g, &key).await);
    assert_eq!(sha2::Sha256::digest(read_all(&store, &key, None).await.1), sha2::Sha256::digest(&d));
    // Without a bound: 8, 16, 32 MiB parts hold the same 50 MiB in 3 parts.
    let d2 = data(50 * MIB, 12);
    let key2 = nar_key(&d2);
    store.put_stream(&key2, feed(d2.clone(), &[MIB], None), "application/x-nix-nar", None).await.expect("put");
    assert!(etag(&g, &key2).await.trim_matches('"').ends_with("-3"), "{}", etag(&g, &key2).await);
    assert_eq!(sha2::Sha256::digest(read_all(&store, &key2, None).await.1), sha2::Sha256::digest(&d2));
    // Two parts at most, no bound: 8 + 16 MiB hold 24 MiB; 30 MiB is refused and nothing is left.
    let two = Storage::S3(S3Store::new(config(&g)).expect("valid config").with_max_parts(2));
    let d3 = data(30 * MIB, 13);
    let key3 = nar_key(&d3);
    let err = two.put_stream(&key3, feed(d3, &[MIB], None), "x", None).await.expect_err("too large");
    assert!(matches!(err, StorageError::TooLarge { .. }) && err.to_string().contains("limit of 2 parts"), "{err}");
    assert!(!err.is_transient(), "retrying cannot help");
    assert_eq!(store.head(&key3).await.expect("head"), None);
    assert!(s3(&store).pending_uploads().await.expect("list uploads").is_empty(), "multipart upload left");
}

#[tokio::test]
async fn failed_stream_leaves_nothing() {
    let (_g, store) = setup();
    // Fails after two full parts were sent (multipart started) and before the first part (single PUT).
    for fail_after in [2 * PART + MIB, 3 * MIB] {
        let d = data(3 * PART, 7);
        let key = nar_key(&d);
        let err = store.put_stream(&key, feed(d, &[MIB], Some(fail_after)), "x", None).await.expect_err("must fail");
        assert!(matches!(err, StorageError::Source { .. }), "{err}");
        assert_eq!(store.head(&key).await.expect("head"), None);
        assert!(store.list("").await.expect("list").is_empty());
        assert!(s3(&store).pending_uploads().await.expect("list uploads").is_empty(), "multipart upload left");
    }
}

#[tokio::test]
async fn range_reads() {
    let (_g, store) = setup();
    let d = data(1000, 3);
    let key = nar_key(&d);
    store.put(&key, Bytes::from(d.clone()), "application/x-nix-nar").await.expect("put");
    assert_eq!(read_all(&store, &key, Some((10, Some(19)))).await, (1000, d[10..20].to_vec()));
    assert_eq!(read_all(&store, &key, Some((990, None))).await, (1000, d[990..].to_vec()));
    assert_eq!(read_all(&store, &key, Some((995, Some(5000)))).await, (1000, d[995..].to_vec()));
    assert_eq!(read_all(&store, &key, Some((0, Some(0)))).await, (1000, d[..1].to_vec()));
    assert_eq!(read_all(&store, &key, Some((1000, None))).await, (1000, Vec::new()));
    assert_eq!(read_all(&store, &key, Some((20, Some(10)))).await, (1000, Vec::new()));
    assert!(store.get_stream(&narinfo_key(2), Some((0, None))).await.expect("absent").is_none());
}

#[tokio::test]
async fn presigned_put_works_with_reqwest_and_curl() {
    let (_g, store) = setup();
    let d = data(300 * 1024, 4);
    let key = nar_key(&d);
    let url = store.presign_put(&key, Duration::from_mins(10)).await.expect("presign").expect("S3 presigns");
    let resp = reqwest::Client::new().put(&url).body(d.clone()).send().await.expect("PUT");
    assert!(resp.status().is_success(), "{}: {:?}", resp.status(), resp.text().await);
    assert_eq!(store.get(&key).await.expect("get"), Some(Bytes::from(d)));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("body");
    std::fs::write(&file, b"hello from curl").expect("write");
    let key2 = narinfo_key(3);
    let url2 = store.presign_put(&key2, Duration::from_mins(1)).await.expect("presign").expect("url");
    let out = std::process::Command::new("curl")
        .args(["-sf", "-X", "PUT", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(&url2)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(store.get(&key2).await.expect("get"), Some(Bytes::from_static(b"hello from curl")));

    let too_long = store.presign_put(&key2, Duration::from_hours(8 * 24)).await;
    assert!(matches!(too_long, Err(StorageError::Config(_))), "{too_long:?}");
}

/// Review #19: a presigned PUT bound to the file's size and SHA-256 accepts that file only: another
/// length (the 5 GiB a single PUT allows), other bytes of the same length, or a request leaving the
/// checksum out are all refused by the real Garage, and the object stays the file it was issued for.
#[tokio::test]
async fn a_bound_presigned_put_accepts_only_the_file_it_was_issued_for() {
    let (_g, store) = setup();
    let d = data(64 * 1024, 9);
    let key = nar_key(&d);
    let hash = Sha256Hash::digest(&d);
    let url =
        s3(&store).presign_put_bound(&key, Duration::from_mins(10), d.len() as u64, &hash).await.expect("presign");
    let checksum = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(hash.0)
    };
    // A fresh connection per request: Garage may answer a refused PUT before reading its body and close.
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let put = |body: Vec<u8>, with_checksum: bool| {
        let mut rb = c.put(&url).body(body);
        if with_checksum {
            rb = rb.header("x-amz-checksum-sha256", &checksum);
        }
        rb.send()
    };
    let mut longer = d.clone();
    longer.extend_from_slice(b"more");
    let r = put(longer, true).await.expect("PUT longer");
    assert_eq!(r.status(), 403, "another length breaks the signature");
    let mut other = d.clone();
    other[0] ^= 1;
    let r = put(other.clone(), true).await.expect("PUT other bytes");
    assert_eq!(r.status(), 400, "other bytes fail the checksum");
    let r = put(other, false).await.expect("PUT without checksum");
    assert_eq!(r.status(), 400, "the signed checksum header must be sent");
    assert_eq!(store.head(&key).await.expect("head"), None, "nothing stored by the refused PUTs");
    let r = put(d.clone(), true).await.expect("PUT");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(store.get(&key).await.expect("get"), Some(Bytes::from(d)));
}

#[tokio::test]
async fn delete_many_present_and_absent() {
    let (_g, store) = setup();
    let keys: Vec<ObjectKey> = (0..5).map(narinfo_key).collect();
    for k in &keys[..3] {
        store.put(k, Bytes::from_static(b"x"), "text/plain").await.expect("put");
    }
    let failed = store.delete_many(&keys).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(store.list("").await.expect("list").is_empty());
    assert!(store.delete_many(&[]).await.is_empty());
}

#[tokio::test]
async fn abort_stale_uploads_removes_only_old_ones() {
    let (g, store) = setup();
    let raw = raw_bucket(&g);
    let key = nar_key(b"abandoned");
    let up = raw.initiate_multipart_upload(key.as_str(), "application/x-nix-nar").await.expect("initiate");
    raw.put_multipart_chunk(vec![1; MIB], key.as_str(), 1, &up.upload_id, "application/x-nix-nar").await.expect("part");
    let pending = s3(&store).pending_uploads().await.expect("list");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, key.as_str());
    assert!(pending[0].initiated.is_some(), "initiated date parsed");

    assert_eq!(store.abort_stale_uploads(Duration::from_hours(1)).await.expect("abort none"), 0);
    assert_eq!(store.abort_stale_uploads(Duration::MAX).await.expect("absurd age"), 0);
    assert_eq!(s3(&store).pending_uploads().await.expect("list").len(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.abort_stale_uploads(Duration::ZERO).await.expect("abort"), 1);
    assert!(s3(&store).pending_uploads().await.expect("list").is_empty());
    assert_eq!(store.head(&key).await.expect("head"), None);
}

#[tokio::test]
async fn wrong_secret_is_a_clear_permanent_error_without_the_secret() {
    let g = Garage::start().expect("start garage");
    let wrong = "0123456789abcdef0123456789abcdefWRONGSECRET";
    let store = Storage::S3(S3Store::new(S3Config { secret_key: wrong.to_owned(), ..config(&g) }).expect("config"));
    let key = narinfo_key(4);
    for err in [
        store.put(&key, Bytes::from_static(b"x"), "text/plain").await.expect_err("put must fail"),
        store.head(&key).await.expect_err("head must fail, not report absence"),
        store.get(&key).await.expect_err("get must fail"),
    ] {
        let msg = err.to_string();
        eprintln!("bad credentials: {msg}");
        assert!(!err.is_transient(), "bad credentials are not transient: {msg}");
        assert!(msg.contains(key.as_str()) && msg.contains(&g.bucket), "{msg}");
        assert!(!msg.contains(wrong) && !msg.contains(&g.secret_key), "secret leaked: {msg}");
        assert!(!format!("{err:?}").contains(wrong), "secret leaked in Debug");
    }
    let d = data(PART + 1, 5);
    let err = store.put_stream(&nar_key(&d), feed(d, &[MIB], None), "x", None).await.expect_err("multipart must fail");
    assert!(!err.is_transient() && !err.to_string().contains(wrong), "{err}");
}

#[tokio::test]
async fn outage_is_transient_and_recovers() {
    let (mut g, store) = setup();
    let key = narinfo_key(5);
    g.stop();
    let err = store.put(&key, Bytes::from_static(b"x"), "text/plain").await.expect_err("server down");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&g.bucket), "{err}");
    eprintln!("outage: {err}");
    let err = store.head(&key).await.expect_err("server down");
    assert!(err.is_transient(), "{err}");
    g.resume().expect("restart garage");
    store.put(&key, Bytes::from_static(b"x"), "text/plain").await.expect("put after restart");
    assert_eq!(store.get(&key).await.expect("get"), Some(Bytes::from_static(b"x")));
}

#[tokio::test]
async fn extra_bucket_is_usable() {
    let g = Garage::start().expect("start garage");
    g.create_bucket("second").expect("create bucket");
    let store = Storage::S3(S3Store::new(S3Config { bucket: "second".into(), ..config(&g) }).expect("config"));
    store
        .put(&ObjectKey::cache_info(), Bytes::from_static(b"StoreDir: /nix/store\n"), "text/x-nix-cache-info")
        .await
        .expect("put into second bucket");
    assert!(store.get(&ObjectKey::cache_info()).await.expect("get").is_some());
}

#[tokio::test]
async fn presigned_multipart_upload_by_a_remote_client() {
    let (_g, store) = setup();
    let s3 = s3(&store);
    let d = data(PART + 3 * MIB, 9);
    let key = nar_key(&d);
    let id = s3.initiate_multipart(&key, "application/x-nix-nar").await.expect("initiate");
    let client = reqwest::Client::new();
    let mut etags = Vec::new();
    for (i, part) in d.chunks(PART).enumerate() {
        let n = u32::try_from(i + 1).expect("few parts");
        let md5 = md5::compute(part).0;
        let len = part.len() as u64;
        let url = s3.presign_part_bound(&key, &id, n, Duration::from_mins(10), len, &md5).await.expect("presign part");
        let resp = client
            .put(&url)
            .header("content-md5", {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(md5)
            })
            .body(part.to_vec())
            .send()
            .await
            .expect("PUT part");
        assert!(resp.status().is_success(), "part {n}: {}", resp.status());
        etags.push(resp.headers()["etag"].to_str().expect("ascii etag").to_owned());
    }
    assert_eq!(store.head(&key).await.expect("head"), None, "invisible until completed");
    s3.complete_multipart(&key, &id, etags).await.expect("complete");
    let (size, back) = read_all(&store, &key, None).await;
    assert_eq!((size, sha2::Sha256::digest(&back)), (d.len() as u64, sha2::Sha256::digest(&d)));

    // An abandoned one is aborted and leaves nothing.
    let key2 = nar_key(b"abandoned by the client");
    let id2 = s3.initiate_multipart(&key2, "application/x-nix-nar").await.expect("initiate");
    s3.abort_multipart(&key2, &id2).await.expect("abort");
    s3.abort_multipart(&key2, &id2).await.expect("aborting twice is fine");
    assert!(s3.pending_uploads().await.expect("list").is_empty());
    let presign = |n| s3.presign_part_bound(&key2, &id2, n, Duration::from_mins(1), 1, &[0; 16]);
    assert!(presign(0).await.is_err(), "part numbers start at 1");
    assert!(presign(10_001).await.is_err(), "and end at 10 000");
}

/// Not a pass/fail check: prints streamed (multipart, two parts in flight at most) upload throughput
/// against one plain PUT of the same bytes, measured in the same run.
/// `cargo test -p niks3 --test it store_s3::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn throughput_of_put_stream_vs_single_put() {
    let (g, store) = setup();
    let len = 256 * MIB;
    let d = data(len, 11);
    let raw = raw_bucket(&g);
    let t = std::time::Instant::now();
    raw.put_object("baseline", &d).await.expect("baseline PUT");
    let base = t.elapsed();
    let key = nar_key(&d);
    let t = std::time::Instant::now();
    store.put_stream(&key, feed(d.clone(), &[MIB], None), "application/x-nix-nar", None).await.expect("put_stream");
    let ours = t.elapsed();
    let t = std::time::Instant::now();
    let (size, _) = read_all(&store, &key, None).await;
    let read = t.elapsed();
    assert_eq!(size, len as u64);
    let mibs = |t: Duration| len as f64 / MIB as f64 / t.as_secs_f64();
    println!(
        "256 MiB to Garage: single PUT {:.0} MiB/s, put_stream (8 MiB parts) {:.0} MiB/s (ratio {:.2}), get_stream {:.0} MiB/s",
        mibs(base),
        mibs(ours),
        base.as_secs_f64() / ours.as_secs_f64(),
        mibs(read)
    );
}

/// An [`UploadJournal`] in memory: at most one recorded upload, handed over once.
#[derive(Default)]
struct MemJournal(std::sync::Mutex<Option<String>>);

impl UploadJournal for MemJournal {
    fn take_over<'a>(&'a self, _key: &'a ObjectKey) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move { self.0.lock().expect("journal").take() })
    }
    fn started<'a>(&'a self, _key: &'a ObjectKey, upload_id: &'a str) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move { *self.0.lock().expect("journal") = Some(upload_id.to_owned()) })
    }
}

impl MemJournal {
    fn recorded(&self) -> Option<String> {
        self.0.lock().expect("journal").clone()
    }
}

/// Issue 18 (resume): an upload cut off after 9 of its 10 parts (its future dropped, as a killed process
/// leaves it) is continued by the next upload of the key: the 9 parts the bucket holds are checked (size
/// and MD5 = ETag) and not sent again, only the missing one is; a part whose bytes differ is sent again;
/// an upload the journal names that is gone (GC aborted it) means a fresh upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_multipart_upload_is_continued_sending_only_the_missing_parts() {
    let g = Garage::start().expect("start garage");
    let part = 5 * MIB;
    let store = Storage::S3(S3Store::new(crate::support::s3_config(&g, part)).expect("valid config"));
    let d = data(9 * part + part / 2, 21);
    let len = d.len() as u64;
    let key = nar_key(&d);
    let bound = Some(niks3_local::nar_stream::max_compressed_size(len));
    let journal = MemJournal::default();

    // The first attempt: 9 full parts and one more byte, then the producer stalls (channel held open)
    // and the upload is dropped mid-way. The 9th part was in flight: wait until the bucket holds it.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = {
        let head = Bytes::from(d[..=9 * part].to_vec());
        let sender = tx.clone();
        tokio::spawn(async move {
            for chunk in head.chunks(MIB) {
                sender.send(Ok(Bytes::copy_from_slice(chunk))).await.expect("send");
            }
        })
    };
    let upload = {
        let store_ref = &store;
        let (key, journal) = (&key, &journal);
        async move { store_ref.put_stream_resumable(key, rx, "application/x-nix-nar", bound, journal).await }
    };
    let parts_held = async {
        loop {
            if let Some(id) = journal.recorded()
                && s3(&store).list_parts(&key, &id).await.expect("list parts").len() == 9
            {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let upload_id = tokio::select! {
        r = upload => panic!("the stalled upload ended: {r:?}"),
        id = tokio::time::timeout(Duration::from_mins(1), parts_held) => id.expect("9 parts within a minute"),
    };
    first.await.expect("feeder");
    drop(tx);
    assert_eq!(store.head(&key).await.expect("head"), None, "nothing visible yet");

    // The second attempt with the same bytes sends only part 10.
    let stored = store
        .put_stream_resumable(&key, feed(d.clone(), &[MIB], None), "application/x-nix-nar", bound, &journal)
        .await
        .expect("continued upload");
    assert_eq!(stored.size, len);
    assert_eq!(stored.reused_parts, 9, "{stored:?}");
    assert_eq!(stored.sent, len - 9 * part as u64, "{stored:?}");
    assert_eq!(sha2::Sha256::digest(read_all(&store, &key, None).await.1), sha2::Sha256::digest(&d));
    assert!(s3(&store).pending_uploads().await.expect("list uploads").is_empty(), "multipart upload left");
    eprintln!("resume: {} of {len} bytes sent again ({} parts reused)", stored.sent, stored.reused_parts);

    // Parts that differ are sent again: interrupt an upload of `d2` again, then continue it with bytes
    // that differ in part 2.
    let d2 = data(9 * part + part / 2, 22);
    let key2 = nar_key(&d2);
    let mp = s3(&store).initiate_multipart(&key2, "x").await.expect("initiate");
    for n in 1..=9u32 {
        let at = (n as usize - 1) * part;
        raw_bucket(&g).put_multipart_chunk(d2[at..at + part].to_vec(), key2.as_str(), n, &mp, "x").await.expect("part");
    }
    let mut d2b = d2.clone();
    d2b[part + 7] ^= 0xff;
    let journal2 = MemJournal(std::sync::Mutex::new(Some(mp)));
    let stored = store
        .put_stream_resumable(&key2, feed(d2b.clone(), &[MIB], None), "x", bound, &journal2)
        .await
        .expect("continued upload");
    assert_eq!((stored.reused_parts, stored.sent), (8, len - 8 * part as u64), "{stored:?}");
    assert_eq!(sha2::Sha256::digest(read_all(&store, &key2, None).await.1), sha2::Sha256::digest(&d2b));

    // The journal names an upload that is gone (aborted): a fresh upload, recorded in the journal.
    let d3 = data(2 * part + 1, 23);
    let key3 = nar_key(&d3);
    let journal3 = MemJournal(std::sync::Mutex::new(Some(upload_id)));
    let stored = store
        .put_stream_resumable(&key3, feed(d3.clone(), &[MIB], None), "x", None, &journal3)
        .await
        .expect("fresh upload");
    assert_eq!((stored.reused_parts, stored.sent), (0, d3.len() as u64));
    assert!(journal3.recorded().is_some(), "the fresh upload is recorded");
    assert_eq!(sha2::Sha256::digest(read_all(&store, &key3, None).await.1), sha2::Sha256::digest(&d3));
    assert!(s3(&store).pending_uploads().await.expect("list uploads").is_empty(), "multipart upload left");
}
