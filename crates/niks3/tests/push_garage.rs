//! Remote push against Garage: with an S3 backend the server hands out presigned URLs, so NAR bytes go
//! from the client straight to the bucket, never through the server — including a NAR larger than the
//! store's multipart part size, which goes up in presigned parts — and the result substitutes into a fresh
//! store.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{BIG_NAR_EXPR, Backend, TestServer};
use niks3_nix::hash::Sha256Hash;
use niks3_storage::ObjectKey;
use niks3_testkit::nix::NixEnv;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread")]
async fn push_to_s3_sends_nar_bytes_to_the_bucket_not_through_the_server() {
    let s = TestServer::start(Backend::Garage).await;
    let env = NixEnv::new().expect("nix env");
    // 12 MiB of incompressible data: above the 8 MiB part size, so it goes up as a presigned multipart
    // upload (one full part and a short one; push_multipart.rs checks the parts themselves).
    let expr = BIG_NAR_EXPR;
    let top = env.build(expr, "top").expect("build top").remove(0);
    let big = env.build(expr, "big").expect("build big").remove(0);
    let (ok, log) = s.push_with_cli(&env, &top).await;
    assert!(ok, "{log}");
    assert!(log.contains("pushed 2 paths"), "{log}");
    assert!(log.contains("2 straight to S3"), "{log}");
    assert_eq!(s.state.metrics.api_bytes_received.load(Ordering::Relaxed), 0, "NAR bytes went through the server");
    // The small NAR went up through a URL bound to its exact size and hash (security review #19).
    let metrics = s.state.metrics.render();
    assert!(metrics.contains("route=\"api-presign\",status=\"200\"} 1"), "{metrics}");

    // the bucket has both NARs (the big one > 8 MiB even compressed) and both narinfos
    let info = env.command("nix").args(["path-info", "--json", &big]).output().expect("path-info");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    let nar_hash = Sha256Hash::parse(v[0]["narHash"].as_str().expect("narHash")).expect("hash");
    let meta = s.state.store.head(&ObjectKey::nar(&nar_hash)).await.expect("head").expect("big NAR in the bucket");
    assert!(meta.size > 8 << 20, "compressed random data stays above the part size: {}", meta.size);
    for p in [&top, &big] {
        let sp = niks3_nix::store_path::StoreDir::default().parse_path(p).expect("store path");
        assert!(s.state.store.head(&ObjectKey::narinfo(&sp)).await.expect("head").is_some(), "{p}");
    }

    // the read proxy streams it from the bucket, whole and by range
    let nar_url = format!("{}/{}", s.url, ObjectKey::nar(&nar_hash));
    let c = reqwest::Client::new();
    let whole = c.get(&nar_url).send().await.expect("GET nar");
    assert_eq!(whole.status(), 200);
    let whole = whole.bytes().await.expect("body");
    assert_eq!(whole.len() as u64, meta.size);
    let part = c.get(&nar_url).header("range", "bytes=1000-1999").send().await.expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 1000-1999/{}", meta.size).as_str());
    assert_eq!(part.bytes().await.expect("body"), whole.slice(1000..2000));
    let head = c.head(&nar_url).send().await.expect("HEAD");
    assert_eq!(head.headers()["content-length"], meta.size.to_string().as_str());

    let chroot = env.substitute(&s.url, "client", &[&top], &s.key.public().to_nix_string()).expect("nix copy");
    let copied = std::fs::read(chroot.join(big.trim_start_matches('/'))).expect("big copied");
    assert_eq!(copied, std::fs::read(&big).expect("big local"));
    s.shutdown().await;
}
