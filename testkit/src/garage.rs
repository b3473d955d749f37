//! A throwaway single-node Garage S3 server (as `bench_garage` in bench/lib.sh starts one too):
//! sqlite metadata in a temp directory, free localhost ports, one key and one default bucket, SigV4
//! enforced, region `garage`. [`Garage::stop`] and [`Garage::resume`] kill and restart the same server (same
//! directory, ports and data) for outage tests; dropping a [`Garage`] kills it and removes its directory.
//!
//! The pieces every Garage process needs (its config file, spawning it with a log, waiting for its S3 API,
//! running the `garage` CLI against it) live in [`Node`], which the three-node
//! [`GarageCluster`](crate::garage_cluster::GarageCluster) shares.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for the S3 API to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) single-node Garage with one bucket and one key.
pub struct Garage {
    /// Declared before `dir` so that it is killed before its directory is removed.
    node: Node,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    /// The S3 region Garage enforces (`garage`).
    pub region: String,
    /// The default bucket, readable and writable with the key below.
    pub bucket: String,
    /// Access key id (`GK…`).
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl fmt::Debug for Garage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Garage")
            .field("dir", &self.dir.path())
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("running", &self.node.is_running())
            .finish_non_exhaustive()
    }
}

/// Why Garage could not be started or driven.
#[derive(Debug)]
pub struct GarageError(pub String);

impl fmt::Display for GarageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GarageError {}

pub(crate) fn err(msg: impl Into<String>) -> GarageError {
    GarageError(msg.into())
}

/// `garage` on PATH, else `~/.cargo/bin/garage`.
pub(crate) fn find_binary() -> Result<PathBuf, GarageError> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("garage")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/garage"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        err("garage not found on PATH nor in ~/.cargo/bin (cargo install garage --locked --version 2.5.0 \
             --no-default-features --features bundled-libs,sqlite)")
    })
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

/// A fresh S3 key pair in the format Garage accepts for `key import` (`GK` + 24 hex digits, 64 hex digits).
pub(crate) fn new_key_pair() -> (String, String) {
    (format!("GK{}", random_hex(12)), random_hex(32))
}

impl Garage {
    /// Starts a fresh server with its own directory, ports, key and bucket `niks3-test`.
    ///
    /// A server that does not come up (another test's server took a port between our probe and its bind) is
    /// tried again with new ports, twice at most; the last error names its log and quotes its end.
    pub fn start() -> Result<Self, GarageError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once() {
                Ok(g) => return Ok(g),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| err("garage did not start")))
    }

    fn start_once() -> Result<Self, GarageError> {
        let binary = find_binary()?;
        let dir =
            tempfile::Builder::new().prefix("niks3-garage-").tempdir().map_err(|e| err(format!("temp dir: {e}")))?;
        let node = Node::create(&binary, dir.path().to_owned())?;
        node.write_config(&NodeConfig { replication_factor: 1, rpc_secret: &random_hex(32), bootstrap_peers: &[] })?;
        let (access_key, secret_key) = new_key_pair();
        let mut g = Garage {
            endpoint: node.endpoint(),
            dir,
            node,
            region: "garage".to_owned(),
            bucket: "niks3-test".to_owned(),
            access_key,
            secret_key,
        };
        g.resume()?;
        Ok(g)
    }

    /// The server's directory (config, data, `garage.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True while the server process runs.
    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    /// Kills the server (an abrupt outage); data and ports are kept for [`Garage::resume`].
    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// Starts the server again on the same directory and ports (after [`Garage::stop`]) and waits until it
    /// answers. A no-op when it is running.
    pub fn resume(&mut self) -> Result<(), GarageError> {
        if self.node.is_running() {
            return Ok(());
        }
        self.node.spawn(
            &["--single-node", "--default-bucket"],
            &[
                ("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key),
                ("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key),
                ("GARAGE_DEFAULT_BUCKET", &self.bucket),
                ("RUST_LOG", "garage=warn"),
            ],
        )?;
        self.node.wait_s3(&self.bucket, START_TIMEOUT)
    }

    /// Runs the `garage` CLI against this server (e.g. `["bucket", "list"]`); returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, GarageError> {
        self.node.cli(args)
    }

    /// Creates another bucket that the same key may read and write.
    pub fn create_bucket(&self, name: &str) -> Result<(), GarageError> {
        self.node.cli(&["bucket", "create", name])?;
        self.node.cli(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.access_key])?;
        Ok(())
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.node.kill();
    }
}

/// What differs between the config files of a lone server and of a cluster's nodes.
pub(crate) struct NodeConfig<'a> {
    /// 1 for a lone server, 3 for the cluster.
    pub replication_factor: u8,
    /// Shared by all nodes of a cluster (64 hex digits).
    pub rpc_secret: &'a str,
    /// `<node id>@127.0.0.1:<rpc port>` of the other nodes: dialled at once on start, so a restarted node
    /// rejoins in well under a second instead of waiting for its peers' 30-second reconnect timer.
    pub bootstrap_peers: &'a [String],
}

/// One Garage server process and its directory (`garage.toml`, `meta/`, `data/`, `garage.log`, all
/// kept across kills), with its own free ports. Killed on drop; the directory belongs to the caller.
pub(crate) struct Node {
    dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
    s3_port: u16,
    rpc_port: u16,
    admin_port: u16,
}

impl Node {
    /// Makes `dir/meta` and `dir/data` and picks three free ports; writes no config yet.
    pub(crate) fn create(binary: &Path, dir: PathBuf) -> Result<Self, GarageError> {
        for sub in ["meta", "data"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| err(format!("create {}: {e}", path.display())))?;
        }
        let ports = crate::ports::free_ports(3).ok_or_else(|| err("no three free ports on 127.0.0.1"))?;
        Ok(Node {
            dir,
            binary: binary.to_owned(),
            child: None,
            s3_port: ports[0],
            rpc_port: ports[1],
            admin_port: ports[2],
        })
    }

    /// (Re)writes `garage.toml`; read by the server at its next start and by every CLI call.
    pub(crate) fn write_config(&self, c: &NodeConfig<'_>) -> Result<(), GarageError> {
        let peers: Vec<String> = c.bootstrap_peers.iter().map(|p| format!("\"{p}\"")).collect();
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = {rf}
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"
bootstrap_peers = [{peers}]
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            meta = self.dir.join("meta").display(),
            data = self.dir.join("data").display(),
            rf = c.replication_factor,
            rpc_port = self.rpc_port,
            secret = c.rpc_secret,
            peers = peers.join(", "),
            s3_port = self.s3_port,
            admin_port = self.admin_port,
        );
        let path = self.config_path();
        std::fs::write(&path, toml).map_err(|e| err(format!("write {}: {e}", path.display())))
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }

    /// The server's stdout and stderr, appended to across restarts.
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    /// `http://127.0.0.1:<s3 port>`
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `127.0.0.1:<rpc port>`, the address other nodes dial.
    pub(crate) fn rpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rpc_port)
    }

    /// True while we hold the process (between [`Node::spawn`] and [`Node::kill`], or until
    /// [`Node::check_alive`] finds it gone).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts `garage server <args>` with `envs`, logging to [`Node::log_path`]; does not wait.
    pub(crate) fn spawn(&mut self, args: &[&str], envs: &[(&str, &str)]) -> Result<(), GarageError> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| err(format!("open {}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| err(format!("dup {}: {e}", log_path.display())))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process with SIGKILL (no shutdown, like a crash) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An error if the process has exited on its own (it is then forgotten), naming its log.
    pub(crate) fn check_alive(&mut self) -> Result<(), GarageError> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            return Err(err(format!("garage exited with {status}; {}", self.log_excerpt())));
        }
        Ok(())
    }

    /// Polls `/<bucket>` on the S3 port until Garage answers 200 or 403 (unsigned request: the API is up);
    /// kills the process and names its log if it does not within `timeout`.
    pub(crate) fn wait_s3(&mut self, bucket: &str, timeout: Duration) -> Result<(), GarageError> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.s3_port));
        loop {
            self.check_alive()?;
            if let Some(code) = http_status(addr, &format!("/{bucket}"))
                && (code == 200 || code == 403)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(err(format!(
                    "garage did not answer on {} within {timeout:?}; {}",
                    self.endpoint(),
                    self.log_excerpt()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// "see <log>" and the log's last lines: the directory may be gone by the time someone reads the error.
    fn log_excerpt(&self) -> String {
        let path = self.log_path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("see {} which ends:\n{tail}", path.display())
    }

    /// Runs the `garage` CLI with this node's config (it talks to this node over RPC); returns its stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<String, GarageError> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| err(format!("run garage {args:?}: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "garage -c {} {args:?} failed ({}): {}",
                self.config_path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status code of an unsigned GET of `path`, or `None` if nothing answers yet.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}
