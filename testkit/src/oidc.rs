//! A real OpenID provider on 127.0.0.1: the certified `oidc-provider` npm package, run by Node with the
//! configuration of `testkit/oidc/provider.mjs`. Tests get JWTs from it the way a CI job would get them
//! from its platform: each [`OidcClient`] stands for a job, with the claims its tokens carry; [`OidcProvider::token`]
//! runs the client_credentials grant with a resource indicator, which becomes the token's `aud`.
//!
//! For the server's key cache it can be stopped and resumed on the same port with the same keys
//! ([`OidcProvider::stop`], [`OidcProvider::resume`]), rotate its signing key ([`OidcProvider::rotate_keys`]),
//! and say how often its JWKS was fetched ([`OidcProvider::jwks_fetches`]).
//!
//! The package is installed (pinned, [`OIDC_PROVIDER_VERSION`]) into `$NIKS3_TEST_OIDC_PROVIDER_DIR`,
//! default `/var/cache/niks3-test/oidc-provider`, by `scripts/install-deps.sh --test`, or here on first
//! use when missing (under a lock, so parallel tests install it once).

use std::fmt;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `oidc-provider` release the tests run (also pinned in scripts/install-deps.sh).
pub const OIDC_PROVIDER_VERSION: &str = "9.13.3";
/// How long `start` waits for the provider to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT: &str = include_str!("../oidc/provider.mjs");

/// Why the provider could not be started or asked.
#[derive(Debug)]
pub struct OidcError(pub String);

impl fmt::Display for OidcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OidcError {}

fn err(msg: impl Into<String>) -> OidcError {
    OidcError(msg.into())
}

/// A client of the provider: one CI job and the claims its tokens carry.
#[derive(Clone, Debug)]
pub struct OidcClient {
    /// The client id; also the tokens' `sub`.
    pub id: String,
    /// The extra claims, as a JSON object (`{"repository": "org/app", "ref": "refs/heads/main"}`).
    pub claims_json: String,
    /// Lifetime of its tokens in seconds.
    pub ttl: u64,
}

impl OidcClient {
    /// A client whose tokens live 5 minutes.
    pub fn new(id: &str, claims_json: &str) -> Self {
        OidcClient { id: id.to_owned(), claims_json: claims_json.to_owned(), ttl: 300 }
    }
}

/// A running (or stopped) provider; killed and its directory removed on drop.
pub struct OidcProvider {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    clients: Vec<OidcClient>,
    secret: String,
    install_dir: PathBuf,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Where `oidc-provider` is installed.
pub fn install_dir() -> PathBuf {
    std::env::var_os("NIKS3_TEST_OIDC_PROVIDER_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/niks3-test/oidc-provider"), PathBuf::from)
}

/// Installs the pinned `oidc-provider` into `dir` unless it is there (idempotent; under `flock`).
pub fn ensure_installed(dir: &Path) -> Result<(), OidcError> {
    let installed = |d: &Path| {
        std::fs::read_to_string(d.join("node_modules/oidc-provider/package.json"))
            .is_ok_and(|p| p.contains(&format!("\"version\": \"{OIDC_PROVIDER_VERSION}\"")))
    };
    if installed(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    let pkg = dir.join("package.json");
    if !pkg.exists() {
        std::fs::write(&pkg, "{\"name\": \"niks3-test-oidc\", \"private\": true}\n")
            .map_err(|e| err(format!("writing {}: {e}", pkg.display())))?;
    }
    let out = Command::new("flock")
        .arg(dir.join(".install.lock"))
        .args(["npm", "install", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .arg(format!("oidc-provider@{OIDC_PROVIDER_VERSION}"))
        .output()
        .map_err(|e| err(format!("running npm (is Node installed? scripts/install-deps.sh --test): {e}")))?;
    if !out.status.success() || !installed(dir) {
        return Err(err(format!(
            "npm install oidc-provider@{OIDC_PROVIDER_VERSION} into {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl OidcProvider {
    /// Installs the package if needed and starts a provider with `clients` on a free port.
    pub fn start(clients: &[OidcClient]) -> Result<Self, OidcError> {
        let install_dir = install_dir();
        ensure_installed(&install_dir)?;
        let dir =
            tempfile::Builder::new().prefix("niks3-oidc-").tempdir().map_err(|e| err(format!("temp dir: {e}")))?;
        std::fs::write(dir.path().join("provider.mjs"), SCRIPT).map_err(|e| err(format!("writing the script: {e}")))?;
        let secret = hex::encode((0..24).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
        let mut p = OidcProvider {
            child: None,
            dir,
            port: crate::ports::free_port().ok_or_else(|| err("no free port on 127.0.0.1"))?,
            clients: clients.to_vec(),
            secret,
            install_dir,
        };
        p.spawn(false)?;
        Ok(p)
    }

    /// `http://127.0.0.1:<port>`: the `iss` of its tokens.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn write_config(&self, rotate: bool) -> Result<PathBuf, OidcError> {
        let clients: Vec<String> = self
            .clients
            .iter()
            .map(|c| {
                format!(
                    "{{\"client_id\": {}, \"client_secret\": {}, \"claims\": {}, \"ttl\": {}}}",
                    json_str(&c.id),
                    json_str(&self.secret),
                    c.claims_json,
                    c.ttl
                )
            })
            .collect();
        let keys = self.dir.path().join("keys.json");
        let cfg = format!(
            "{{\"port\": {}, \"keys_file\": {}, \"rotate\": {rotate}, \"clients\": [{}]}}",
            self.port,
            json_str(&keys.to_string_lossy()),
            clients.join(", ")
        );
        let path = self.dir.path().join("config.json");
        std::fs::write(&path, cfg).map_err(|e| err(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }

    fn spawn(&mut self, rotate: bool) -> Result<(), OidcError> {
        let cfg = self.write_config(rotate)?;
        let log_path = self.dir.path().join("provider.log");
        let log = std::fs::File::create(&log_path).map_err(|e| err(format!("creating the log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| err(format!("log: {e}")))?;
        let child = Command::new("node")
            .arg(self.dir.path().join("provider.mjs"))
            .arg(&cfg)
            .env("NIKS3_OIDC_PROVIDER_DIR", &self.install_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| err(format!("starting node (scripts/install-deps.sh --test): {e}")))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("listening "))
                && self.get("/.well-known/openid-configuration").is_ok()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                self.child = None;
                return Err(err(format!("the OIDC provider exited ({status}): {log}")));
            }
            if started.elapsed() > START_TIMEOUT {
                self.stop();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(err(format!("the OIDC provider did not serve within {START_TIMEOUT:?}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the provider (the issuer is down); [`OidcProvider::resume`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same keys.
    pub fn resume(&mut self) -> Result<(), OidcError> {
        self.stop();
        self.spawn(false)
    }

    /// Restarts it with a new signing key in place of the old one (a key rotation).
    pub fn rotate_keys(&mut self) -> Result<(), OidcError> {
        self.stop();
        self.spawn(true)
    }

    /// A JWT for `client` (its claims, `sub` = its id) with audience `audience`.
    pub fn token(&self, client: &str, audience: &str) -> Result<String, OidcError> {
        let body = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&resource={}",
            form_escape(client),
            form_escape(&self.secret),
            form_escape(audience)
        );
        let (status, text) = self.request("POST", "/token", Some(&body))?;
        if status != 200 {
            return Err(err(format!("POST /token for {client}: HTTP {status}: {text}")));
        }
        let start = text.find("\"access_token\":\"").ok_or_else(|| err(format!("no access_token in {text}")))? + 16;
        let end = text[start..].find('"').ok_or_else(|| err("unterminated access_token"))? + start;
        Ok(text[start..end].to_owned())
    }

    /// How many times its JWKS has been fetched since it (re)started.
    pub fn jwks_fetches(&self) -> Result<u64, OidcError> {
        let text = self.get("/test/jwks-count")?;
        text.trim_start_matches("{\"count\":")
            .trim_end_matches('}')
            .parse()
            .map_err(|e| err(format!("jwks-count {text:?}: {e}")))
    }

    /// The body of `GET path` (errors on a non-200).
    pub fn get(&self, path: &str) -> Result<String, OidcError> {
        match self.request("GET", path, None)? {
            (200, body) => Ok(body),
            (status, body) => Err(err(format!("GET {path}: HTTP {status}: {body}"))),
        }
    }

    fn request(&self, method: &str, path: &str, form: Option<&str>) -> Result<(u16, String), OidcError> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| err(format!("connect: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| err(e.to_string()))?;
        let body = form.unwrap_or("");
        let ctype = if form.is_some() { "Content-Type: application/x-www-form-urlencoded\r\n" } else { "" };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{ctype}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(|e| err(format!("send: {e}")))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| err(format!("read: {e}")))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status =
            text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| err(format!("bad answer {text:?}")))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    }
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
