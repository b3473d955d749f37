//! The three-node Garage cluster: one bucket served by every node, quorum writes and reads with a node
//! down, a restarted node healed, and the per-key write counts the fault tests rely on. S3 requests go
//! through `curl --aws-sigv4`, so the testkit needs no S3 client.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use niks3_testkit::garage_cluster::{GarageCluster, PutCount};

/// Signed S3 requests with curl against one node of `c`.
struct S3<'a> {
    c: &'a GarageCluster,
}

impl S3<'_> {
    /// A curl command signed with the cluster's key; the payload is declared unsigned (Garage accepts it).
    fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "--aws-sigv4", &format!("aws:amz:{}:s3", self.c.region), "--user"])
            .arg(format!("{}:{}", self.c.access_key, self.c.secret_key))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        cmd
    }

    fn url(&self, node: usize, key: &str, query: &str) -> String {
        format!("{}/{}/{key}{query}", self.c.endpoint(node), self.c.bucket)
    }

    /// Runs `cmd`; returns (HTTP status, body, response headers).
    fn run(mut cmd: Command) -> (u16, Vec<u8>, String) {
        let head = tempfile::NamedTempFile::new().expect("temp file");
        let out = cmd.arg("-D").arg(head.path()).arg("-w").arg("\n%{http_code}").output().expect("run curl");
        assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut body = out.stdout;
        let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
        let code = std::str::from_utf8(&body[split + 1..]).expect("utf-8").trim().parse().expect("status");
        body.truncate(split);
        (code, body, std::fs::read_to_string(head.path()).expect("read headers"))
    }

    fn put(&self, node: usize, key: &str, body: &[u8]) -> u16 {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), body).expect("write body");
        let mut cmd = self.curl();
        cmd.arg("-T").arg(file.path()).arg(self.url(node, key, ""));
        Self::run(cmd).0
    }

    fn get(&self, node: usize, key: &str) -> (u16, Vec<u8>) {
        let mut cmd = self.curl();
        cmd.arg(self.url(node, key, ""));
        let (code, body, _) = Self::run(cmd);
        (code, body)
    }

    /// A multipart upload of `parts` through `node`: create, one PUT per part, complete.
    fn multipart(&self, node: usize, key: &str, parts: &[&[u8]]) {
        let mut cmd = self.curl();
        cmd.args(["-X", "POST"]).arg(self.url(node, key, "?uploads="));
        let (code, body, _) = Self::run(cmd);
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(code, 200, "create multipart upload: {body}");
        let upload_id = between(&body, "<UploadId>", "</UploadId>").expect("UploadId in the answer");
        let mut complete = String::from("<CompleteMultipartUpload>");
        for (i, part) in parts.iter().enumerate() {
            let file = tempfile::NamedTempFile::new().expect("temp file");
            std::fs::write(file.path(), part).expect("write part");
            let mut cmd = self.curl();
            cmd.arg("-T").arg(file.path()).arg(self.url(
                node,
                key,
                &format!("?partNumber={}&uploadId={upload_id}", i + 1),
            ));
            let (code, _, head) = Self::run(cmd);
            assert_eq!(code, 200, "upload part {}", i + 1);
            let etag = head
                .lines()
                .find_map(|l| l.strip_prefix("etag: ").or_else(|| l.strip_prefix("ETag: ")))
                .expect("ETag header")
                .trim();
            write!(complete, "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>", i + 1).expect("write");
        }
        complete.push_str("</CompleteMultipartUpload>");
        let mut cmd = self.curl();
        cmd.args(["-X", "POST", "--data-binary", &complete]).arg(self.url(
            node,
            key,
            &format!("?uploadId={upload_id}"),
        ));
        let (code, body, _) = Self::run(cmd);
        assert_eq!(code, 200, "complete multipart upload: {}", String::from_utf8_lossy(&body));
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    Some(&s[from..from + s[from..].find(end)?])
}

/// `n` pseudo-random bytes (above Garage's 3 KiB inline threshold they are stored as data blocks).
fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

fn start() -> GarageCluster {
    let t = Instant::now();
    let c = GarageCluster::start().expect("start garage cluster");
    eprintln!("garage cluster up in {:?} ({})", t.elapsed(), c.dir().display());
    c
}

fn logs(c: &GarageCluster) -> String {
    (0..3).map(|i| c.log_path(i).display().to_string()).collect::<Vec<_>>().join(", ")
}

#[test]
fn an_object_written_through_one_node_is_read_through_every_node_and_counted_once() {
    let c = start();
    let s3 = S3 { c: &c };
    assert_eq!(c.endpoints().len(), 3);
    let small = b"hello from node 0".to_vec();
    let big = bytes(200_000);
    assert_eq!(s3.put(0, "nar/small.nar", &small), 200, "logs: {}", logs(&c));
    assert_eq!(s3.put(1, "nar/big.nar", &big), 200, "logs: {}", logs(&c));
    for node in 0..3 {
        assert_eq!(s3.get(node, "nar/small.nar"), (200, small.clone()), "node {node}");
        assert_eq!(s3.get(node, "nar/big.nar"), (200, big.clone()), "node {node}");
    }
    assert_eq!(s3.get(2, "nar/absent.nar").0, 404);

    s3.multipart(2, "nar/multi.nar", &[&bytes(5 * 1024 * 1024), b"tail"]);
    assert_eq!(s3.get(0, "nar/multi.nar").1.len(), 5 * 1024 * 1024 + 4);

    let counts = c.put_counts().expect("put counts");
    assert_eq!(counts.get("nar/small.nar"), Some(&PutCount { puts: 1, ..PutCount::default() }), "{counts:?}");
    assert_eq!(counts.get("nar/big.nar"), Some(&PutCount { puts: 1, ..PutCount::default() }), "{counts:?}");
    assert_eq!(
        counts.get("nar/multi.nar"),
        Some(&PutCount { puts: 0, parts: 2, completes: 1, failed: 0 }),
        "{counts:?}"
    );
    assert_eq!(counts.len(), 3, "reads and the missing key are not writes: {counts:?}");
    assert!(counts.values().all(|c| c.object_writes() == 1));
}

#[test]
fn with_one_node_killed_writes_and_reads_go_on_and_the_restarted_node_heals() {
    let mut c = start();
    let body = bytes(100_000);
    {
        let s3 = S3 { c: &c };
        assert_eq!(s3.put(0, "before.nar", &body), 200);
    }
    c.kill(2);
    assert!(!c.is_running(2));
    {
        let s3 = S3 { c: &c };
        assert_eq!(s3.put(0, "while-down.nar", &body), 200, "quorum 2 of 3; logs: {}", logs(&c));
        assert_eq!(s3.get(1, "while-down.nar"), (200, body.clone()));
        assert_eq!(s3.get(1, "before.nar"), (200, body.clone()));
    }
    assert!(c.wait_healthy(Duration::from_secs(1)).is_err(), "a killed node is not healthy");

    let t = Instant::now();
    c.restart(2).expect("restart node 2");
    c.wait_healthy(Duration::from_secs(30)).expect("healthy after restart");
    eprintln!("node 2 back and cluster healthy in {:?}", t.elapsed());
    assert_eq!(c.table_items(0, "object").expect("stats"), 2);
    assert_eq!(c.table_items(2, "object").expect("stats"), 1, "node 2 missed the write while it was down");

    let t = Instant::now();
    c.repair().expect("repair");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.table_items(2, "object").expect("stats") < 2 {
        assert!(Instant::now() < deadline, "node 2's object table not healed in 20 s; logs: {}", logs(&c));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("node 2's object table healed {:?} after repair", t.elapsed());

    // Node 2 now holds the object's metadata: with node 0 gone, nodes 1 and 2 still make a quorum and
    // node 2 serves it.
    c.kill(0);
    let s3 = S3 { c: &c };
    assert_eq!(s3.get(2, "while-down.nar"), (200, body.clone()), "logs: {}", logs(&c));
    assert_eq!(s3.get(2, "before.nar"), (200, body));
    let counts = c.put_counts().expect("put counts");
    assert_eq!(counts.get("while-down.nar").map(PutCount::object_writes), Some(1), "{counts:?}");
    assert!(Path::new(&c.log_path(2)).exists());
}
