//! A throwaway single-node Garage S3 server (as `bench_garage` in bench/lib.sh starts one too):
//! sqlite metadata in a temp directory, free localhost ports, one key and one default bucket, SigV4
//! enforced, region `garage`. [`Garage::stop`] and [`Garage::resume`] kill and restart the same server (same
//! directory, ports and data) for outage tests; dropping a [`Garage`] kills it and removes its directory.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for the S3 API to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) single-node Garage with one bucket and one key.
pub struct Garage {
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
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
    s3_port: u16,
}

impl fmt::Debug for Garage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Garage")
            .field("dir", &self.dir.path())
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("running", &self.child.is_some())
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

fn err(msg: impl Into<String>) -> GarageError {
    GarageError(msg.into())
}

/// `garage` on PATH, else `~/.cargo/bin/garage`.
fn find_binary() -> Result<PathBuf, GarageError> {
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

/// A port free right now on 127.0.0.1 (the OS picks it; it stays free long enough for Garage to bind).
fn free_port() -> Result<u16, GarageError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind a free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| err(format!("local addr: {e}")))
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

impl Garage {
    /// Starts a fresh server with its own directory, ports, key and bucket `niks3-test`.
    pub fn start() -> Result<Self, GarageError> {
        let binary = find_binary()?;
        let dir =
            tempfile::Builder::new().prefix("niks3-garage-").tempdir().map_err(|e| err(format!("temp dir: {e}")))?;
        let (s3_port, rpc_port, admin_port) = (free_port()?, free_port()?, free_port()?);
        let d = dir.path();
        for sub in ["meta", "data"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| err(format!("create {sub}: {e}")))?;
        }
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            meta = d.join("meta").display(),
            data = d.join("data").display(),
            secret = random_hex(32),
        );
        std::fs::write(d.join("garage.toml"), toml).map_err(|e| err(format!("write garage.toml: {e}")))?;
        let mut g = Garage {
            dir,
            binary,
            child: None,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: "garage".to_owned(),
            bucket: "niks3-test".to_owned(),
            access_key: format!("GK{}", random_hex(12)),
            secret_key: random_hex(32),
            s3_port,
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
        self.child.is_some()
    }

    /// Kills the server (an abrupt outage); data and ports are kept for [`Garage::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same directory and ports (after [`Garage::stop`]) and waits until it
    /// answers. A no-op when it is running.
    pub fn resume(&mut self) -> Result<(), GarageError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("garage.log"))
            .map_err(|e| err(format!("open garage.log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| err(format!("dup garage.log: {e}")))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir().join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls the bucket URL until Garage answers 200 or 403 (unsigned request: the API is up).
    fn wait_ready(&mut self) -> Result<(), GarageError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.s3_port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(err(format!(
                    "garage exited with {status}; see {}",
                    self.dir().join("garage.log").display()
                )));
            }
            if let Some(code) = http_status(addr, &format!("/{}", self.bucket))
                && (code == 200 || code == 403)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(err(format!(
                    "garage did not answer on {} within {START_TIMEOUT:?}; see {}",
                    self.endpoint,
                    self.dir().join("garage.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the `garage` CLI against this server (e.g. `["bucket", "list"]`); returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, GarageError> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir().join("garage.toml"))
            .args(args)
            .output()
            .map_err(|e| err(format!("run garage {args:?}: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("garage {args:?} failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates another bucket that the same key may read and write.
    pub fn create_bucket(&self, name: &str) -> Result<(), GarageError> {
        self.cli(&["bucket", "create", name])?;
        self.cli(&["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.access_key])?;
        Ok(())
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
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
