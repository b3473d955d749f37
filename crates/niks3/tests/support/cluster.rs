//! A fleet for the multi-server tests (`e2e_cluster`): several real `niks3 serve` processes sharing one
//! PostgreSQL database (one server, or a primary with a streaming standby) and testkit's three-node
//! Garage cluster — server `i` talks to Garage node `i % 3` — and builders whose spools the real
//! `niks3 drain` empties into them, each builder listing the servers in its own order.

use super::e2e::{Server, free_port, http_status, niks3_bin, wait_for};
use super::http::TOKEN;
use niks3_nix::signing::SecretKey;
use niks3_storage::s3::{S3Config, S3Store};
use niks3_storage::{ObjectKey, Storage};
use niks3_testkit::garage_cluster::GarageCluster;
use niks3_testkit::nix::NixEnv;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Overlapping closures (see the file's comment).
pub const CLUSTER: &str = include_str!("../fixtures/cluster.nix");

/// Seconds a silent push keeps its leases in these tests (the default is 120): a push through a killed
/// server is taken over this long after it went quiet.
pub const LEASE_TIMEOUT_SECS: u64 = 4;

/// The servers, the database they share, the Garage cluster, the signing key.
pub struct Fleet {
    pub nix: NixEnv,
    pub garage: GarageCluster,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    pub public_key: String,
    ports: Vec<u16>,
    servers: Vec<Option<Server>>,
}

/// One builder: its spool and GC roots, and the roots queued in it.
pub struct Builder {
    pub name: String,
    pub spool: PathBuf,
    pub gcroots: PathBuf,
    pub roots: Vec<String>,
}

impl Fleet {
    /// Starts `n` servers on `db_url` and `garage` (one signing key and API token for all) and waits
    /// until each serves `nix-cache-info`.
    pub fn start(nix: NixEnv, garage: GarageCluster, db_url: String, n: usize) -> Fleet {
        let dir = nix.tempdir("niks3-fleet-").expect("tempdir");
        let key = SecretKey::generate("niks3-fleet-1").expect("key");
        write_secret(&dir.path().join("sign.key"), &key.to_nix_string());
        write_secret(&dir.path().join("token"), TOKEN);
        let public_key = key.public().to_nix_string();
        let ports = (0..n).map(|_| free_port()).collect();
        let mut fleet = Fleet { nix, garage, db_url, dir, public_key, ports, servers: (0..n).map(|_| None).collect() };
        for i in 0..n {
            fleet.start_server(i);
        }
        for i in 0..n {
            fleet.wait_http(i);
        }
        fleet
    }

    /// Server `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// Starts (or restarts, with the same port, state and database) server `i`.
    pub fn start_server(&mut self, i: usize) {
        let state = self.dir.path().join(format!("state-{i}"));
        let log = unique(&self.dir.path().join(format!("serve-{i}.log")));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = self.nix.command(niks3_bin());
        cmd.arg("serve")
            .arg("--no-spool")
            .arg("--state-dir")
            .arg(&state)
            .args(["--http-addr", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--db", &self.db_url])
            .args(["--s3-endpoint", &self.garage.endpoint(i % 3)])
            .args(["--s3-bucket", &self.garage.bucket, "--s3-region", &self.garage.region])
            .arg("--sign-key-file")
            .arg(self.dir.path().join("sign.key"))
            .arg("--api-token-file")
            .arg(self.dir.path().join("token"))
            .args(["--push-lease-timeout", &LEASE_TIMEOUT_SECS.to_string(), "--jobs", "2"])
            .env("NIKS3_S3_ACCESS_KEY", &self.garage.access_key)
            .env("NIKS3_S3_SECRET_KEY", &self.garage.secret_key)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file);
        self.servers[i] = Some(Server::spawn(cmd, log));
    }

    /// Waits until server `i` serves `nix-cache-info`.
    pub fn wait_http(&self, i: usize) {
        let url = format!("{}/nix-cache-info", self.url(i));
        let ok = wait_for(Duration::from_mins(1), || http_status(&url) == Some(200));
        assert!(ok, "server {i} never served nix-cache-info:\n{}", self.server_log(i));
    }

    /// Server `i`'s log so far.
    pub fn server_log(&self, i: usize) -> String {
        self.servers[i].as_ref().map(Server::log_text).unwrap_or_default()
    }

    /// Pushes server `i` announced and has not yet ended, from its log: `push announced` lines less
    /// `push completed` and `push aborted by the client` ones. A push that ended in an error and was not
    /// aborted still counts, so a caller relying on this checks the consequence too (a drainer failing
    /// over).
    pub fn pushes_in_flight(&self, i: usize) -> usize {
        let log = self.server_log(i);
        let ended = log.matches("push completed").count() + log.matches("push aborted by the client").count();
        log.matches("push announced").count().saturating_sub(ended)
    }

    /// Waits up to `timeout` until server `i` has a push in flight and leaves it frozen (SIGSTOP) with that
    /// push unfinished: the log is read again once the server is stopped, so the push cannot end between
    /// the look and whatever the caller does next (a kill). False if no push was caught in flight.
    pub fn freeze_mid_push(&self, i: usize, timeout: Duration) -> bool {
        let server = self.servers[i].as_ref().expect("server running");
        wait_for(timeout, || {
            if self.pushes_in_flight(i) == 0 {
                return false;
            }
            server.signal("STOP");
            let caught = self.pushes_in_flight(i) > 0;
            if !caught {
                server.signal("CONT");
            }
            caught
        })
    }

    /// Kills server `i` with SIGKILL (a crash: no shutdown, its sessions left behind).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            s.kill9();
        }
    }

    /// Builds `attrs` of [`CLUSTER`] and queues each output as its own spool entry in a new builder's
    /// spool (with the GC root the hook would add), as the post-build-hook would have.
    pub fn builder(&self, name: &str, attrs: &[&str]) -> Builder {
        let spool = self.dir.path().join(format!("{name}-spool"));
        let gcroots = self.dir.path().join(format!("{name}-gcroots"));
        let queue = niks3_spool::Spool::open(&spool).expect("spool");
        let mut roots = Vec::new();
        for attr in attrs {
            let out = self.nix.build(CLUSTER, attr).expect("nix-build").remove(0);
            let drv = self.nix.deriver(&out).expect("deriver");
            let entry = niks3_spool::Entry { drv: Some(drv), outs: vec![out.clone()], realisations: vec![], queued: 1 };
            queue.enqueue(&entry).expect("enqueue");
            niks3_spool::gcroots::add(&gcroots, &out).expect("gc root");
            roots.push(out);
        }
        Builder { name: name.to_owned(), spool, gcroots, roots }
    }

    /// Starts `niks3 drain --once` for `b`, listing the servers `order` in that order; its output goes to
    /// `<dir>/<builder>-drain.log`.
    pub fn spawn_drain(&self, b: &Builder, order: &[usize]) -> Drain {
        let log = unique(&self.dir.path().join(format!("{}-drain.log", b.name)));
        let file = std::fs::File::create(&log).expect("log");
        let mut cmd = self.nix.command(niks3_bin());
        cmd.arg("drain");
        for &i in order {
            cmd.args(["--server", &self.url(i)]);
        }
        cmd.arg("--auth-token-file")
            .arg(self.dir.path().join("token"))
            .arg("--spool-dir")
            .arg(&b.spool)
            .arg("--gcroots-dir")
            .arg(&b.gcroots)
            .args(["--once", "--jobs", "2"])
            .env_remove("NIKS3_SERVER_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file);
        Drain { child: cmd.spawn().expect("spawn niks3 drain"), log, name: b.name.clone() }
    }

    /// The bucket through Garage node `node`.
    pub fn storage(&self, node: usize) -> Storage {
        Storage::S3(
            S3Store::new(S3Config {
                endpoint: self.garage.endpoint(node),
                bucket: self.garage.bucket.clone(),
                region: self.garage.region.clone(),
                access_key: self.garage.access_key.clone(),
                secret_key: self.garage.secret_key.clone(),
                path_style: true,
                part_size: 8 << 20,
                max_requests: 16,
            })
            .expect("S3 store"),
        )
    }

    /// Checks the cache invariant through Garage node `node`: every narinfo is signed, its NAR exists
    /// and so do the narinfos of its references. Returns the narinfos' store path hashes.
    pub fn check_invariant(&self, node: usize) -> BTreeSet<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let store = self.storage(node);
            let keys: BTreeSet<String> = store.list("").await.expect("list the bucket").into_iter().collect();
            let mut narinfos = BTreeSet::new();
            for k in keys.iter().filter(|k| k.ends_with(".narinfo")) {
                let (_, key) = ObjectKey::parse(k).expect("a key niks3 writes");
                let body = store.get(&key).await.expect("get narinfo").expect("listed narinfo exists");
                let text = String::from_utf8(body.to_vec()).expect("utf-8 narinfo");
                let field = |f: &str| text.lines().find_map(|l| l.strip_prefix(f)).map_or("", str::trim).to_owned();
                assert!(keys.contains(&field("URL:")), "{k} points at a missing NAR {}", field("URL:"));
                for r in field("References:").split_whitespace() {
                    assert!(keys.contains(&format!("{}.narinfo", &r[..32])), "{k} lacks its reference {r}");
                }
                assert!(text.contains("\nSig: niks3-fleet-1:"), "{k} is not signed by the fleet's key");
                narinfos.insert(k.trim_end_matches(".narinfo").to_owned());
            }
            narinfos
        })
    }
}

/// A running `niks3 drain`.
pub struct Drain {
    child: Child,
    pub log: PathBuf,
    name: String,
}

impl Drain {
    /// Waits for it to exit (successfully) within `timeout`, else kills it and fails with its log.
    pub fn finish(mut self, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(status.success(), "{}'s niks3 drain exited with {status}:\n{log}", self.name);
                return log;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{}'s niks3 drain did not finish within {timeout:?}:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Builder {
    /// Asserts the spool is empty (every entry acknowledged, none quarantined) and the GC roots removed.
    pub fn assert_drained(&self) {
        for sub in ["new", "claimed", "quarantine"] {
            let left: Vec<_> = std::fs::read_dir(self.spool.join(sub)).expect("spool dir").flatten().collect();
            assert!(left.is_empty(), "{}: {sub}/ still has {left:?}", self.name);
        }
        let roots: Vec<_> = std::fs::read_dir(&self.gcroots).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(roots.is_empty(), "{}: GC roots left: {roots:?}", self.name);
    }
}

/// `path`, or `path` with a counter appended when it exists (restarted servers get a new log).
fn unique(path: &std::path::Path) -> PathBuf {
    (0..1000)
        .map(|n| if n == 0 { path.to_owned() } else { PathBuf::from(format!("{}.{n}", path.display())) })
        .find(|p| !p.exists())
        .expect("a free name")
}

/// Writes a secret file (mode 0600) as the servers read it.
fn write_secret(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("secret file");
    f.write_all(text.as_bytes()).expect("write secret");
}
