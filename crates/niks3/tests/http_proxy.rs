//! The read proxy against a real PostgreSQL and a real local store: GET/HEAD/Range/404, caching headers
//! and content types, path traversal, and the health and metrics routes.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TestServer, check_prometheus_text};
use bytes::Bytes;
use niks3_storage::ObjectKey;

/// Sends `GET <path>` verbatim and returns the status and the whole response text.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

const HASH: &str = "0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";

async fn put_objects(s: &TestServer) -> (String, Vec<u8>) {
    let nar_key = "nar/1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9.nar.zst";
    let nar: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (_, k) = ObjectKey::parse(nar_key).expect("nar key");
    s.state.store.put(&k, Bytes::from(nar.clone()), "application/zstd").await.expect("put nar");
    let (_, k) = ObjectKey::parse(&format!("{HASH}.narinfo")).expect("narinfo key");
    s.state.store.put(&k, Bytes::from_static(b"StorePath: x\n"), "text/x-nix-narinfo").await.expect("put narinfo");
    let (_, k) = ObjectKey::parse(&format!("{HASH}.ls")).expect("ls key");
    s.state.store.put(&k, Bytes::from_static(b"{\"version\":1}"), "application/json").await.expect("put ls");
    (format!("/{nar_key}"), nar)
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_serves_get_head_and_ranges_with_the_right_headers() {
    let s = TestServer::start(Backend::Local).await;
    let (nar_path, nar) = put_objects(&s).await;
    let c = TestServer::client();

    let r = c.get(format!("{}/nix-cache-info", s.url)).send().await.expect("cache-info");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/x-nix-cache-info");
    assert_eq!(r.text().await.expect("body"), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n");

    let r = c.get(format!("{}/{HASH}.narinfo", s.url)).send().await.expect("narinfo");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/x-nix-narinfo");
    assert_eq!(r.headers()["cache-control"], "public, max-age=60");
    assert_eq!(r.text().await.expect("body"), "StorePath: x\n");

    let r = c.head(format!("{}/{HASH}.narinfo", s.url)).send().await.expect("head narinfo");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "13");

    let r = c.get(format!("{}/{HASH}.ls", s.url)).send().await.expect("ls");
    assert_eq!(r.headers()["content-type"], "application/json");

    let r = c.get(format!("{}{nar_path}", s.url)).send().await.expect("nar");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(r.headers()["content-type"], "application/zstd");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.bytes().await.expect("body").as_ref(), nar.as_slice());

    let r = c.head(format!("{}{nar_path}", s.url)).send().await.expect("head nar");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert!(r.bytes().await.expect("body").is_empty());

    let r = c.get(format!("{}{nar_path}", s.url)).header("range", "bytes=10-19").send().await.expect("range");
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &nar[10..20]);

    let r = c.get(format!("{}{nar_path}", s.url)).header("range", "bytes=-5").send().await.expect("suffix");
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 99995-99999/100000");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &nar[99_995..]);

    let r = c.get(format!("{}{nar_path}", s.url)).header("range", "bytes=99990-").send().await.expect("open");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &nar[99_990..]);

    let r = c.get(format!("{}{nar_path}", s.url)).header("range", "bytes=100000-").send().await.expect("416");
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100000");

    // multi-range is served whole (allowed by RFC 9110)
    let r = c.get(format!("{}{nar_path}", s.url)).header("range", "bytes=0-1,5-6").send().await.expect("multi");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), 100_000);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_serves_build_logs_and_realisations() {
    let s = TestServer::start(Backend::Local).await;
    let c = TestServer::client();
    let log_key = format!("log/{HASH}-hello.drv");
    let real_key = format!("realisations/sha256:{}!out.doi", "ab".repeat(32));
    for (k, body) in [(&log_key, "building hello\n"), (&real_key, "{\"id\":\"x\"}")] {
        let (_, key) = ObjectKey::parse(k).expect("key");
        s.state.store.put(&key, Bytes::from(body.to_owned()), "text/plain").await.expect("put");
    }
    let r = c.get(format!("{}/{log_key}", s.url)).send().await.expect("log");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff", "a log is never sniffed into HTML");
    assert_eq!(r.headers()["content-length"], "15");
    assert_eq!(r.text().await.expect("body"), "building hello\n");
    // Nix may percent-encode the `!`
    let r = c.get(format!("{}/{}", s.url, real_key.replace('!', "%21"))).send().await.expect("realisation");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = c.get(format!("{}/realisations/sha256:{}!out.doi", s.url, "cd".repeat(32))).send().await.expect("absent");
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{}/log/{HASH}-absent.drv", s.url)).send().await.expect("absent log");
    assert_eq!(r.status(), 404);
    let text = c.get(format!("{}/metrics", s.url)).send().await.expect("metrics").text().await.expect("body");
    assert!(text.contains("route=\"log\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("route=\"realisation\",status=\"404\"} 1"), "{text}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_answers_404_for_absent_objects_and_anything_outside_the_layout() {
    let s = TestServer::start(Backend::Local).await;
    put_objects(&s).await;
    // something outside the cache directory that a traversal would reach
    std::fs::write(s.dir.path().join("secret.narinfo"), "secret").expect("write secret");
    let c = TestServer::client();
    let absent =
        c.get(format!("{}/{}.narinfo", s.url, "1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl")).send().await.expect("absent");
    assert_eq!(absent.status(), 404);
    assert_eq!(absent.headers()["cache-control"], "public, max-age=5");
    for bad in [
        "/../secret.narinfo",
        "/%2e%2e/secret.narinfo",
        "/..%2fsecret.narinfo",
        "/nar/../../secret.narinfo",
        "/log/..",
        "//etc/passwd",
        "/etc/passwd",
        "/0c0pcvxgzbblkhq7cwcs8z4vgp6xfjke.narinfo", // 'e' is not in the nix32 alphabet
        "/0c0pcvxgzbblkhq7cwcs8z4vgp6xfjk.narinfo",  // 31 characters
        "/nar/xyz.nar.zst",
        "/nar/1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9.nar.zst/../../x",
        "/api",
        "/favicon.ico",
        "/realisations/sha256:abc!out.doi",                           // short hash
        "/realisations/md5:abababababababababababababababab!out.doi", // not sha256
        "/realisations/sha256:ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB!out.doi", // upper-case hex
        "/realisations/sha256:abababababababababababababababababababababababababababababababab!.out.doi", // `.` first
        "/realisations/sha256:abababababababababababababababababababababababababababababababab!out",      // no .doi
        "/realisations/../secret.narinfo",
    ] {
        // raw HTTP: a client library would normalise `..` away before sending
        let (status, body) = raw_get(s.addr, bad).await;
        assert_eq!(status, 404, "{bad}");
        assert!(!body.contains("secret"), "{bad} leaked {body}");
    }
    let long = format!("{}/{}.narinfo", s.url, "a".repeat(5000));
    assert_eq!(c.get(&long).send().await.expect("long").status(), 404);
    // writes are not allowed on the proxy
    let r = c.put(format!("{}/{HASH}.narinfo", s.url)).body("x").send().await.expect("put");
    assert_eq!(r.status(), 405);
    let files = s.cache_files();
    assert_eq!(files.len(), 3, "{files:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_each_dependency_and_metrics_parse_as_prometheus_text() {
    let s = TestServer::start(Backend::Local).await;
    let c = TestServer::client();
    let r = c.get(format!("{}/health", s.url)).send().await.expect("health");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["db"], "ok");
    assert_eq!(v["store"], "ok");

    for _ in 0..3 {
        c.get(format!("{}/{HASH}.narinfo", s.url)).send().await.expect("miss");
    }
    let text = c.get(format!("{}/metrics", s.url)).send().await.expect("metrics").text().await.expect("body");
    let n = check_prometheus_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(n > 10, "{text}");
    assert!(text.contains("niks3_http_requests_total{route=\"narinfo\",status=\"404\"} 3"), "{text}");
    assert!(text.contains("niks3_http_requests_total{route=\"health\",status=\"200\"} 1"), "{text}");
    assert!(check_prometheus_text("bad metric 1\n").is_err());
    assert!(check_prometheus_text("# TYPE x counter\nx abc\n").is_err());

    // PostgreSQL down → 503 naming the database
    s.pg.stop().expect("stop PostgreSQL");
    let r = c.get(format!("{}/health", s.url)).send().await.expect("health");
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["db"], "unreachable", "which dependency, never the error text (it names sockets and hosts)");
    assert_eq!(v["store"], "ok");
    s.shutdown().await;
}
