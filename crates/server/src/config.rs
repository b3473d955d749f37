//! Configuration of `niks3 serve`: the flags (every one also an environment variable, the Docker/compose
//! and NixOS contract), resolved into a [`ServeConfig`] with the embedded defaults filled in.
//!
//! With no flags at all the server is usable: state in a local directory, a private PostgreSQL there, a
//! local object directory, and a signing key and an API token generated on first start (and reused
//! afterwards). Secrets are read from files, written with mode 0600, and never printed: `Debug` of
//! [`ServeArgs`] and [`ServeConfig`] redacts them.

use niks3_api::token::ApiToken;
use niks3_nix::signing::{KeyError, SecretKey};
use niks3_nix::store_path::{StoreDir, StorePathError};
use niks3_storage::s3::S3Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Multipart part size for S3 uploads (also the single-PUT threshold). The S3 backend holds two part
/// buffers per upload (one filling, one sending), so memory per parallel upload is about twice this.
pub(crate) const S3_PART_SIZE: usize = 8 << 20;

/// The flags of `niks3 serve` (see docs and `niks3 serve --help`).
#[derive(clap::Args, Clone, Default)]
#[allow(clippy::struct_excessive_bools, reason = "on/off command-line flags are bools")]
pub struct ServeArgs {
    /// State directory (keys, token, embedded PostgreSQL, local cache). Default: /var/lib/niks3 as root,
    /// else $XDG_STATE_HOME/niks3 or ~/.local/state/niks3.
    #[arg(long, env = "NIKS3_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Listen address of the read proxy, landing page and API; `:PORT` means all interfaces.
    #[arg(long, env = "NIKS3_HTTP_ADDR", default_value = "127.0.0.1:5751")]
    pub http_addr: String,
    /// Spool directory to drain (the hook's NIKS3_SPOOL_DIR). Default: <state-dir>/spool.
    #[arg(long, env = "NIKS3_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Do not drain a local spool (API-only server).
    #[arg(long, env = "NIKS3_NO_SPOOL")]
    pub no_spool: bool,
    /// Where the hook keeps GC roots for queued paths.
    #[arg(long, env = "NIKS3_GCROOTS_DIR", default_value = "/nix/var/nix/gcroots/niks3")]
    pub gcroots_dir: PathBuf,
    /// PostgreSQL connection string. Default: a private cluster in <state-dir>/postgres.
    #[arg(long, env = "NIKS3_DB", hide_env_values = true, conflicts_with = "db_file")]
    pub db: Option<String>,
    /// File holding the PostgreSQL connection string.
    #[arg(long, env = "NIKS3_DB_FILE")]
    pub db_file: Option<PathBuf>,
    /// Local directory for the cache's objects (instead of an S3 bucket). Default when no S3 bucket is
    /// given: <state-dir>/cache. `--store-dir` is its old name, kept as an alias; `--nix-store-dir` is
    /// the Nix store.
    #[arg(long, visible_alias = "store-dir", env = "NIKS3_STORAGE_DIR", conflicts_with = "s3_bucket")]
    pub storage_dir: Option<PathBuf>,
    /// S3 endpoint (`host:port` or a URL); empty for AWS.
    #[arg(long, env = "NIKS3_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 bucket; setting it selects the S3 backend.
    #[arg(long, env = "NIKS3_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 region.
    #[arg(long, env = "NIKS3_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Use https for an endpoint given without a scheme.
    #[arg(long, env = "NIKS3_S3_USE_SSL", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_use_ssl: bool,
    /// File holding the S3 access key id.
    #[arg(long, env = "NIKS3_S3_ACCESS_KEY_FILE")]
    pub s3_access_key_file: Option<PathBuf>,
    /// File holding the S3 secret key.
    #[arg(long, env = "NIKS3_S3_SECRET_KEY_FILE")]
    pub s3_secret_key_file: Option<PathBuf>,
    /// S3 access key id from the environment (`NIKS3_S3_ACCESS_KEY`; never a flag, so it cannot show up
    /// in the process list). Filled by [`ServeArgs::read_secret_env`].
    #[arg(skip)]
    pub s3_access_key: Option<String>,
    /// S3 secret key from the environment (`NIKS3_S3_SECRET_KEY`; never a flag).
    #[arg(skip)]
    pub s3_secret_key: Option<String>,
    /// Path-style bucket addressing (Garage, MinIO).
    #[arg(long, env = "NIKS3_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
    /// Most S3 requests in flight at once (uploads, parts, HEADs); the server lowers this while the store
    /// throttles (503 SlowDown, 429) and raises it back slowly. At least 1.
    #[arg(long, env = "NIKS3_S3_MAX_REQUESTS", default_value_t = 32)]
    pub s3_max_requests: usize,
    /// Most parts per multipart upload (S3's 10 000 when unset). For tests only: a small limit makes
    /// the part size grow from a NAR's size without uploading terabytes.
    #[arg(long, env = "NIKS3_S3_MAX_PARTS", hide = true)]
    pub s3_max_parts: Option<u64>,
    /// Signing key file (repeatable; env: colon-separated). Default: generated in <state-dir>/keys.
    #[arg(long = "sign-key-file", env = "NIKS3_SIGN_KEY_PATHS", value_delimiter = ':')]
    pub sign_key_files: Vec<PathBuf>,
    /// File holding the API token (at least 36 characters). Default: generated <state-dir>/api-token.
    #[arg(long, env = "NIKS3_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// The API token itself from the environment (`NIKS3_API_TOKEN`; never a flag).
    #[arg(skip)]
    pub api_token: Option<String>,
    /// Public substituter URL shown on the landing page. Default: http://<http-addr>.
    #[arg(long, env = "NIKS3_CACHE_URL")]
    pub cache_url: Option<String>,
    /// Priority announced in nix-cache-info (lower is preferred).
    #[arg(long, env = "NIKS3_PRIORITY", default_value_t = 30)]
    pub priority: u32,
    /// A private cache: reading it (narinfos, NARs, logs, nix-cache-info, /metrics) needs a token with the
    /// `read` scope, sent as the password of Nix's netrc-file entry or as a Bearer token.
    #[arg(long, env = "NIKS3_PRIVATE")]
    pub private: bool,
    /// OIDC: a TOML or JSON file of trusted issuers (URL, audience) and the rules mapping their tokens'
    /// claims to scopes (docs/api.md "OIDC"). CI jobs then push with their platform's JWT, no secret.
    #[arg(long, env = "NIKS3_OIDC_CONFIG")]
    pub oidc_config: Option<PathBuf>,
    /// API requests one token may send per minute (429 with Retry-After past it); 0: no limit.
    #[arg(long, env = "NIKS3_API_REQUESTS_PER_MINUTE", default_value_t = crate::http::api::rate::DEFAULT_PER_MINUTE)]
    pub api_requests_per_minute: u32,
    /// Upload sessions one scoped token may have open at once (429 past it); 0: no limit.
    #[arg(long, env = "NIKS3_MAX_UPLOAD_SESSIONS", default_value_t = 64)]
    pub max_upload_sessions: u32,
    /// Seconds a push may go without a sign of life before another push (through any server sharing the
    /// database) takes over the paths it was to upload (docs/deployment.md).
    #[arg(long, env = "NIKS3_PUSH_LEASE_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub push_lease_timeout: u64,
    /// The store directory, jobs and zstd level (shared with `push` and `drain`).
    #[command(flatten)]
    pub nar: NarArgs,
}

/// How NARs are read and made, the same flags for every subcommand that makes them (`serve`, `push`,
/// `drain`).
#[derive(clap::Args, Clone, Debug)]
pub struct NarArgs {
    /// The Nix store directory the paths are in.
    #[arg(long, env = "NIKS3_NIX_STORE_DIR", default_value = "/nix/store")]
    pub nix_store_dir: String,
    /// NARs compressed and uploaded at once (`drain`: also spool entries). Default: the number of cores.
    #[arg(long, env = "NIKS3_JOBS")]
    pub jobs: Option<usize>,
    /// zstd level of the NARs, 1-9. 3 is Nix's own; 2 takes ~35% less CPU for ~5% more bytes.
    #[arg(long, env = "NIKS3_COMPRESSION_LEVEL", default_value_t = niks3_local::nar_stream::DEFAULT_ZSTD_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=i64::from(niks3_local::nar_stream::MAX_ZSTD_LEVEL)))]
    pub compression_level: i32,
    /// Paths whose NAR is larger than this (bytes; K, M, G, T suffixes are powers of 1024) are not
    /// uploaded: each is skipped with one log line and counted in `/metrics`, its referrers are still
    /// uploaded (their narinfos name it; clients substitute or build it elsewhere) and the closure is
    /// recorded as incomplete. For `push`/`drain` it is this pusher's limit; the server applies the
    /// smaller of its own and the pusher's. Default: no limit.
    #[arg(long, env = "NIKS3_MAX_NAR_SIZE", value_parser = parse_byte_size)]
    pub max_nar_size: Option<u64>,
}

/// A byte count: digits, optionally followed by K, M, G or T (powers of 1024; a trailing `B` or `iB` is
/// accepted too, so `4G`, `4GiB` and `4294967296` are the same). Zero is refused: it would skip every path.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 4G, 512M, 1073741824)"))?;
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B').to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (K, M, G or T)")),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("a size of 0 would skip every path".to_owned());
    }
    Ok(bytes)
}

impl NarArgs {
    /// `--jobs`, or one per core; at least 1.
    pub fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(crate::upload::default_jobs).max(1)
    }

    /// `--nix-store-dir`, checked.
    pub fn store_dir(&self) -> Result<StoreDir, StorePathError> {
        StoreDir::new(&self.nix_store_dir)
    }
}

impl Default for NarArgs {
    fn default() -> Self {
        NarArgs {
            nix_store_dir: "/nix/store".to_owned(),
            jobs: None,
            compression_level: niks3_local::nar_stream::DEFAULT_ZSTD_LEVEL,
            max_nar_size: None,
        }
    }
}

impl ServeArgs {
    /// Takes the secrets that may come as values (for containers) from the environment only: a command-line
    /// flag would expose them in every process listing.
    #[must_use]
    pub fn read_secret_env(mut self) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        self.s3_access_key = self.s3_access_key.or_else(|| var("NIKS3_S3_ACCESS_KEY"));
        self.s3_secret_key = self.s3_secret_key.or_else(|| var("NIKS3_S3_SECRET_KEY"));
        self.api_token = self.api_token.or_else(|| var("NIKS3_API_TOKEN"));
        self
    }
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("ServeArgs")
            .field("state_dir", &self.state_dir)
            .field("http_addr", &self.http_addr)
            .field("spool_dir", &self.spool_dir)
            .field("no_spool", &self.no_spool)
            .field("gcroots_dir", &self.gcroots_dir)
            .field("db", &redact(&self.db))
            .field("db_file", &self.db_file)
            .field("storage_dir", &self.storage_dir)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_region", &self.s3_region)
            .field("s3_max_requests", &self.s3_max_requests)
            .field("s3_access_key", &redact(&self.s3_access_key))
            .field("s3_secret_key", &redact(&self.s3_secret_key))
            .field("sign_key_files", &self.sign_key_files)
            .field("api_token_file", &self.api_token_file)
            .field("api_token", &redact(&self.api_token))
            .field("cache_url", &self.cache_url)
            .field("priority", &self.priority)
            .field("oidc_config", &self.oidc_config)
            .field("nar", &self.nar)
            .finish_non_exhaustive()
    }
}

/// Why the configuration is unusable. Messages name files and flags, never secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing a file failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A flag's value is invalid.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag (without dashes).
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// A signing key could not be read or made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The Nix store directory is invalid.
    #[error("--nix-store-dir: {0}")]
    StoreDir(#[from] StorePathError),
    /// `--oidc-config` is unusable.
    #[error(transparent)]
    Oidc(#[from] crate::oidc::config::OidcConfigError),
    /// No state directory could be chosen.
    #[error("no state directory: pass --state-dir (HOME and XDG_STATE_HOME are unset)")]
    NoStateDir,
}

/// Where the bookkeeping lives.
#[derive(Clone)]
pub enum DbChoice {
    /// An external PostgreSQL (the connection string is a secret: not printed).
    Url(String),
    /// The private cluster in this directory (the state dir).
    Embedded(PathBuf),
}

impl std::fmt::Debug for DbChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbChoice::Url(_) => f.write_str("Url(<redacted>)"),
            DbChoice::Embedded(d) => f.debug_tuple("Embedded").field(d).finish(),
        }
    }
}

/// Where the objects live.
#[derive(Clone, Debug)]
pub enum StorageChoice {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket (secrets redacted by `S3Config`'s `Debug`).
    S3(S3Config),
}

/// `niks3 serve`'s resolved configuration.
#[derive(Debug)]
pub struct ServeConfig {
    /// The state directory (created mode 0711; keys and token inside are private).
    pub state_dir: PathBuf,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// The spool to drain, unless `--no-spool`.
    pub spool_dir: Option<PathBuf>,
    /// The hook's GC roots directory.
    pub gcroots_dir: PathBuf,
    /// PostgreSQL.
    pub db: DbChoice,
    /// Objects.
    pub store: StorageChoice,
    /// Signing keys (at least one), read once and shared by the pipeline and the push API (keys are
    /// not `Clone`, so that no copy of a secret is made by accident).
    pub sign_keys: std::sync::Arc<Vec<SecretKey>>,
    /// The key files in use (generated or given).
    pub sign_key_files: Vec<PathBuf>,
    /// True when the signing key was generated by this start.
    pub generated_key: bool,
    /// The API token.
    pub api_token: ApiToken,
    /// Where the API token is stored, when it came from a file (or was generated).
    pub api_token_file: Option<PathBuf>,
    /// True when the token was generated by this start.
    pub generated_token: bool,
    /// The public substituter URL.
    pub cache_url: String,
    /// The Nix store directory.
    pub nix_store_dir: StoreDir,
    /// `Priority` in nix-cache-info.
    pub priority: u32,
    /// Parallel NAR uploads.
    pub jobs: usize,
    /// Most parts per S3 multipart upload, when lower than S3's limit (tests, `--s3-max-parts`).
    pub s3_max_parts: Option<u64>,
    /// zstd level of uploaded NARs.
    pub compression_level: i32,
    /// How long a push's write leases outlive its last sign of life.
    pub push_lease_timeout: std::time::Duration,
    /// Paths with a larger NAR are not uploaded (`--max-nar-size`).
    pub max_nar_size: Option<u64>,
    /// Reading needs a `read` token.
    pub private: bool,
    /// The OIDC issuers and rules of `--oidc-config`, read and checked at start.
    pub oidc: Option<std::sync::Arc<crate::oidc::Oidc>>,
    /// API requests per token per minute (0: unlimited).
    pub api_requests_per_minute: u32,
    /// Open upload sessions per scoped token (0: unlimited).
    pub max_upload_sessions: u32,
}

/// Where the database is, for commands that only need it (`niks3 token`): the same flags, environment
/// variables and defaults as `niks3 serve`, resolved the same way ([`DbArgs::resolve`]).
#[derive(clap::Args, Clone, Default)]
pub struct DbArgs {
    /// State directory holding the embedded PostgreSQL (used when neither --db nor --db-file is given).
    /// Default: /var/lib/niks3 as root, else $XDG_STATE_HOME/niks3 or ~/.local/state/niks3.
    #[arg(long, env = "NIKS3_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// PostgreSQL connection string. Default: the private cluster in <state-dir>/postgres.
    #[arg(long, env = "NIKS3_DB", hide_env_values = true, conflicts_with = "db_file")]
    pub db: Option<String>,
    /// File holding the PostgreSQL connection string.
    #[arg(long, env = "NIKS3_DB_FILE")]
    pub db_file: Option<PathBuf>,
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("state_dir", &self.state_dir)
            .field("db", &self.db.as_ref().map(|_| "<redacted>"))
            .field("db_file", &self.db_file)
            .finish()
    }
}

impl DbArgs {
    /// The database `niks3 serve` with the same flags would use.
    pub fn resolve(&self) -> Result<DbChoice, ConfigError> {
        resolve_db(self.db.as_deref(), self.db_file.as_deref(), || resolve_state_dir(self.state_dir.as_deref()))
    }
}

/// The state directory (`--state-dir` or the default), created if needed, as an absolute path.
fn resolve_state_dir(arg: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let state_dir = match arg {
        Some(d) => d.to_owned(),
        None => default_state_dir()?,
    };
    // Traversable (not listable) by others: the embedded PostgreSQL runs as its own user when we are
    // root and needs to reach <state>/postgres; the secrets inside have their own 0600/0700 modes.
    create_dir(&state_dir, 0o711)?;
    std::fs::canonicalize(&state_dir).map_err(|source| ConfigError::Io { op: "resolving", path: state_dir, source })
}

/// `--db`, else the connection string in `--db-file`, else the embedded cluster in the state directory
/// (asked for only then).
fn resolve_db(
    db: Option<&str>,
    db_file: Option<&Path>,
    state_dir: impl FnOnce() -> Result<PathBuf, ConfigError>,
) -> Result<DbChoice, ConfigError> {
    Ok(match (db, db_file) {
        (Some(url), _) => DbChoice::Url(url.to_owned()),
        (None, Some(f)) => DbChoice::Url(read_secret(f, "db-file")?),
        (None, None) => DbChoice::Embedded(state_dir()?),
    })
}

/// `:5751` → all interfaces; otherwise a socket address (`host:port`, `[v6]:port`) or `localhost:port`.
pub(crate) fn parse_http_addr(input: &str) -> Result<SocketAddr, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid { flag: "http-addr", reason: format!("{input:?}: {reason}") };
    let full = if input.starts_with(':') { format!("0.0.0.0{input}") } else { input.to_owned() };
    if let Ok(a) = full.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = full.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(invalid("expected HOST:PORT, [V6]:PORT or :PORT"))
}

/// The host name (for key names and the default cache URL): the kernel's, else the configured one in
/// /etc/hostname, else `localhost`.
///
/// Why the second: the NixOS module runs the server with `ProcSubset=pid`, which hides /proc/sys, so the
/// kernel's name cannot be read there (without this, the generated key was named `localhost-1` under the
/// real systemd of nixos/tests/systemd-vm); NixOS writes networking.hostName to /etc/hostname.
pub(crate) fn hostname() -> String {
    hostname_from(&[Path::new("/proc/sys/kernel/hostname"), Path::new("/etc/hostname")])
}

/// The first non-empty first line of `files`, else `localhost`.
fn hostname_from(files: &[&Path]) -> String {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The default state directory: /var/lib/niks3 as root, else $XDG_STATE_HOME/niks3 or
/// ~/.local/state/niks3.
pub(crate) fn default_state_dir() -> Result<PathBuf, ConfigError> {
    if niks3_local::child_env::is_root() {
        return Ok(PathBuf::from("/var/lib/niks3"));
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("niks3"));
    }
    match std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/niks3")),
        None => Err(ConfigError::NoStateDir),
    }
}

fn read_secret(path: &Path, what: &'static str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(ConfigError::Invalid { flag: what, reason: format!("{} is empty", path.display()) });
    }
    Ok(value)
}

fn create_dir(path: &Path, mode: u32) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(|source| ConfigError::Io {
        op: "creating directory",
        path: path.to_owned(),
        source,
    })
}

/// Writes a new file with `mode`, failing if it exists (never overwrites a key or token).
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op, source| ConfigError::Io { op, path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io("creating", e))?;
    f.write_all(contents.as_bytes()).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    Ok(())
}

/// Loads the given keys, or the key generated earlier in `<state>/keys`, or generates one.
fn resolve_keys(args: &ServeArgs, state: &Path) -> Result<(Vec<SecretKey>, Vec<PathBuf>, bool), ConfigError> {
    if !args.sign_key_files.is_empty() {
        let keys = args.sign_key_files.iter().map(|f| SecretKey::from_file(f)).collect::<Result<Vec<_>, _>>()?;
        return Ok((keys, args.sign_key_files.clone(), false));
    }
    let dir = state.join("keys");
    create_dir(&dir, 0o700)?;
    let mut existing: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| ConfigError::Io { op: "listing", path: dir.clone(), source })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sec"))
        .collect();
    existing.sort();
    if let Some(first) = existing.first() {
        let key = SecretKey::from_file(first)?;
        return Ok((vec![key], vec![first.clone()], false));
    }
    let name = format!("{}-1", hostname());
    let key = SecretKey::generate(&name)?;
    let sec = dir.join(format!("{name}.sec"));
    let public = dir.join(format!("{name}.pub"));
    write_new(&public, &key.public().to_nix_string(), 0o644)?;
    write_new(&sec, &key.to_nix_string(), 0o600)?;
    Ok((vec![key], vec![sec], true))
}

/// The token from the flag, the file, `<state>/api-token`, or a new random one written there.
fn resolve_token(args: &ServeArgs, state: &Path) -> Result<(ApiToken, Option<PathBuf>, bool), ConfigError> {
    let (value, file, generated) = if let Some(v) = &args.api_token {
        (v.trim().to_owned(), None, false)
    } else if let Some(f) = &args.api_token_file {
        (read_secret(f, "api-token-file")?, Some(f.clone()), false)
    } else {
        let f = state.join("api-token");
        if f.exists() {
            (read_secret(&f, "api-token-file")?, Some(f), false)
        } else {
            let token: [u8; 32] = rand::random();
            let value = hex::encode(token);
            write_new(&f, &value, 0o600)?;
            (value, Some(f), true)
        }
    };
    // The same rules as every token the API accepts (length, no whitespace inside); the error never
    // shows the token.
    let token = ApiToken::new(&value)
        .map_err(|e| ConfigError::Invalid { flag: "api-token-file", reason: format!("{e}; refusing to start") })?;
    Ok((token, file, generated))
}

/// The substituter URL of a server listening on `addr` when no `--cache-url` is given (the host name
/// when it listens on all interfaces).
fn derived_cache_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("http://{}:{}", hostname(), addr.port()) } else { format!("http://{addr}") }
}

fn resolve_s3(args: &ServeArgs, bucket: &str) -> Result<S3Config, ConfigError> {
    let secret = |value: &Option<String>, file: &Option<PathBuf>, flag: &'static str| -> Result<String, ConfigError> {
        match (value, file) {
            (Some(v), _) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            (_, Some(f)) => read_secret(f, flag),
            _ => Err(ConfigError::Invalid { flag, reason: "required with --s3-bucket".to_owned() }),
        }
    };
    let access_key = secret(&args.s3_access_key, &args.s3_access_key_file, "s3-access-key-file")?;
    let secret_key = secret(&args.s3_secret_key, &args.s3_secret_key_file, "s3-secret-key-file")?;
    let endpoint = match args.s3_endpoint.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(e) if e.contains("://") => e.trim_end_matches('/').to_owned(),
        Some(e) => format!("{}://{}", if args.s3_use_ssl { "https" } else { "http" }, e.trim_end_matches('/')),
    };
    Ok(S3Config {
        endpoint,
        bucket: bucket.to_owned(),
        region: args.s3_region.clone(),
        access_key,
        secret_key,
        path_style: args.s3_path_style,
        part_size: S3_PART_SIZE,
        max_requests: args.s3_max_requests.max(1),
    })
}

impl ServeConfig {
    /// Resolves the flags: picks defaults, creates the state directory, reads secrets, and generates
    /// the signing key and API token on first start.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let state_dir = resolve_state_dir(args.state_dir.as_deref())?;
        let http_addr = parse_http_addr(&args.http_addr)?;
        let nix_store_dir = args.nar.store_dir()?;
        let spool_dir =
            if args.no_spool { None } else { Some(args.spool_dir.clone().unwrap_or_else(|| state_dir.join("spool"))) };
        let db = resolve_db(args.db.as_deref(), args.db_file.as_deref(), || Ok(state_dir.clone()))?;
        let store = match (&args.s3_bucket, &args.storage_dir) {
            (Some(bucket), _) if !bucket.trim().is_empty() => StorageChoice::S3(resolve_s3(args, bucket.trim())?),
            (_, Some(dir)) => StorageChoice::Local(dir.clone()),
            _ => StorageChoice::Local(state_dir.join("cache")),
        };
        let (sign_keys, sign_key_files, generated_key) = resolve_keys(args, &state_dir)?;
        let (api_token, api_token_file, generated_token) = resolve_token(args, &state_dir)?;
        let cache_url = match &args.cache_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => derived_cache_url(http_addr),
        };
        let jobs = args.nar.jobs();
        Ok(Self {
            state_dir,
            http_addr,
            spool_dir,
            gcroots_dir: args.gcroots_dir.clone(),
            db,
            store,
            sign_keys: std::sync::Arc::new(sign_keys),
            sign_key_files,
            generated_key,
            api_token,
            api_token_file,
            generated_token,
            cache_url,
            nix_store_dir,
            priority: args.priority,
            jobs,
            s3_max_parts: args.s3_max_parts,
            compression_level: args.nar.compression_level,
            push_lease_timeout: std::time::Duration::from_secs(args.push_lease_timeout),
            max_nar_size: args.nar.max_nar_size,
            private: args.private,
            oidc: match &args.oidc_config {
                Some(f) => Some(std::sync::Arc::new(crate::oidc::Oidc::load(f)?)),
                None => None,
            },
            api_requests_per_minute: args.api_requests_per_minute,
            max_upload_sessions: args.max_upload_sessions,
        })
    }

    /// Records the address the HTTP listener really bound (`--http-addr 127.0.0.1:0` gets a free port from
    /// the kernel), so that the banner, the logs and the landing page name a URL that works. A cache URL
    /// derived from the listen address follows it; one given with `--cache-url` is kept.
    pub fn bound_to(&mut self, addr: SocketAddr) {
        if self.cache_url == derived_cache_url(self.http_addr) {
            self.cache_url = derived_cache_url(addr);
        }
        self.http_addr = addr;
    }

    /// The `niks3-hook` binary to put in `post-build-hook`: next to this executable, else on `PATH`.
    pub(crate) fn hook_path() -> PathBuf {
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            let beside = dir.join("niks3-hook");
            if beside.exists() {
                return beside;
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join("niks3-hook");
                if candidate.exists() {
                    return candidate;
                }
            }
        }
        PathBuf::from("niks3-hook")
    }

    /// What to tell the operator on start: the public keys, the token file, the substituter URL and the
    /// nix.conf lines that make this machine use (and fill) the cache. No secret appears in it.
    pub fn startup_banner(&self) -> String {
        use std::fmt::Write as _;
        let keys: Vec<String> = self.sign_keys.iter().map(|k| k.public().to_nix_string()).collect();
        let mut out = String::new();
        let _ = writeln!(out, "niks3 is serving the cache at {}", self.cache_url);
        for k in &keys {
            let _ = writeln!(out, "  public key: {k}");
        }
        match &self.api_token_file {
            Some(f) => {
                let _ = writeln!(
                    out,
                    "  API token file: {}{}",
                    f.display(),
                    if self.generated_token { " (generated)" } else { "" }
                );
            }
            None => {
                let _ = writeln!(out, "  API token: from NIKS3_API_TOKEN");
            }
        }
        if let Some(spool) = &self.spool_dir {
            let _ = writeln!(out, "  spool: {}", spool.display());
        }
        let _ = writeln!(out, "Add to nix.conf (or nix.settings on NixOS):");
        let _ = writeln!(out, "  extra-substituters = {}", self.cache_url);
        let _ = writeln!(out, "  extra-trusted-public-keys = {}", keys.join(" "));
        if let Some(spool) = &self.spool_dir {
            let _ = writeln!(out, "  post-build-hook = {}", Self::hook_path().display());
            let custom = spool != Path::new("/var/lib/niks3/spool");
            if nix_daemon_running() {
                // Multi-user Nix: nix-daemon runs the hook, as root, with the daemon's environment (not the
                // environment of whoever started the build), and reads the hook only from its own nix.conf.
                let _ = writeln!(
                    out,
                    "  (in /etc/nix/nix.conf: nix-daemon runs the hook; restart nix-daemon after editing)"
                );
                if custom {
                    let _ = writeln!(
                        out,
                        "Give nix-daemon the spool: `systemctl edit nix-daemon`, add\n  [Service]\n  Environment=NIKS3_SPOOL_DIR={}\nthen `systemctl restart nix-daemon`.",
                        spool.display()
                    );
                }
            } else if custom {
                let _ =
                    writeln!(out, "  (and run nix with NIKS3_SPOOL_DIR={} so the hook queues here)", spool.display());
            }
        }
        out
    }
}

/// True when builds go through a nix-daemon (multi-user Nix): `NIX_REMOTE=daemon` or the daemon's
/// socket exists where Nix looks for it (`NIX_DAEMON_SOCKET_PATH`, else the default).
fn nix_daemon_running() -> bool {
    if std::env::var("NIX_REMOTE").is_ok_and(|r| r == "daemon" || r.starts_with("unix://")) {
        return true;
    }
    let socket = std::env::var_os("NIX_DAEMON_SOCKET_PATH")
        .map_or_else(|| PathBuf::from("/nix/var/nix/daemon-socket/socket"), PathBuf::from);
    std::os::unix::fs::FileTypeExt::is_socket(&match std::fs::metadata(&socket) {
        Ok(m) => m.file_type(),
        Err(_) => return false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addr_forms() {
        assert_eq!(parse_http_addr(":5751").expect("all interfaces"), "0.0.0.0:5751".parse().expect("addr"));
        assert_eq!(parse_http_addr("127.0.0.1:80").expect("v4"), "127.0.0.1:80".parse().expect("addr"));
        assert_eq!(parse_http_addr("[::1]:5751").expect("v6"), "[::1]:5751".parse().expect("addr"));
        assert_eq!(parse_http_addr("localhost:9").expect("localhost"), "127.0.0.1:9".parse().expect("addr"));
        for bad in ["", "5751", "host", ":x", "1.2.3.4:99999"] {
            let err = parse_http_addr(bad).expect_err(bad).to_string();
            assert!(err.contains("--http-addr"), "{err}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1073741824"), Ok(1 << 30));
        for same in ["4G", "4g", "4GiB", "4 GB", "4096M"] {
            assert_eq!(parse_byte_size(same), Ok(4 << 30), "{same}");
        }
        assert_eq!(parse_byte_size("1T"), Ok(1 << 40));
        for bad in ["", "G", "0", "0G", "4X", "-1", "1.5G", "99999999999999999999", "17179869184T"] {
            let err = parse_byte_size(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn hostname_falls_back_to_etc_hostname_when_proc_sys_is_hidden() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hidden = dir.path().join("proc-sys-kernel-hostname"); // absent, as under ProcSubset=pid
        let etc = dir.path().join("etc-hostname");
        std::fs::write(&etc, "cache-host\n").expect("write");
        assert_eq!(hostname_from(&[&hidden, &etc]), "cache-host");
        let kernel = dir.path().join("kernel");
        std::fs::write(&kernel, "kernel-name\n").expect("write");
        assert_eq!(hostname_from(&[&kernel, &etc]), "kernel-name");
        std::fs::write(&etc, "\n").expect("write");
        assert_eq!(hostname_from(&[&hidden, &etc]), "localhost");
    }

    #[test]
    fn short_token_refused_and_secret_not_in_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = ServeArgs { api_token: Some("too-short-secret-value".to_owned()), ..ServeArgs::default() };
        let err = resolve_token(&args, dir.path()).expect_err("short token").to_string();
        assert!(err.contains("at least 36"), "{err}");
        assert!(!err.contains("too-short-secret-value"), "{err}");
    }

    #[test]
    fn token_generated_once_with_mode_0600_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let args = ServeArgs::default();
        let (t1, f1, gen1) = resolve_token(&args, dir.path()).expect("generate");
        let f1 = f1.expect("file");
        assert!(gen1);
        assert_eq!(std::fs::metadata(&f1).expect("stat").permissions().mode() & 0o777, 0o600);
        let (t2, _, gen2) = resolve_token(&args, dir.path()).expect("reuse");
        assert!(!gen2);
        assert_eq!(t1.expose_secret(), t2.expose_secret());
        assert!(!format!("{t1:?}").contains(t1.expose_secret()));
    }

    #[test]
    fn empty_secret_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "\n").expect("write");
        let args = ServeArgs { api_token_file: Some(f.clone()), ..ServeArgs::default() };
        let err = resolve_token(&args, dir.path()).expect_err("empty").to_string();
        assert!(err.contains("is empty") && err.contains("token"), "{err}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let args = ServeArgs {
            db: Some("postgres://u:hunter2@h/db".to_owned()),
            s3_secret_key: Some("s3cr3t-value".to_owned()),
            api_token: Some("tok-tok-tok".to_owned()),
            ..ServeArgs::default()
        };
        let dbg = format!("{args:?}");
        for s in ["hunter2", "s3cr3t-value", "tok-tok-tok"] {
            assert!(!dbg.contains(s), "{dbg}");
        }
        assert!(!format!("{:?}", DbChoice::Url("postgres://u:hunter2@h/db".to_owned())).contains("hunter2"));
    }

    #[test]
    fn s3_endpoint_scheme_follows_use_ssl() {
        let args = ServeArgs {
            s3_endpoint: Some("garage.local:3900".to_owned()),
            s3_access_key: Some("GKid".to_owned()),
            s3_secret_key: Some("secret".to_owned()),
            s3_use_ssl: false,
            s3_region: "garage".to_owned(),
            ..ServeArgs::default()
        };
        assert_eq!(resolve_s3(&args, "b").expect("s3").endpoint, "http://garage.local:3900");
        let ssl = ServeArgs { s3_use_ssl: true, ..args.clone() };
        assert_eq!(resolve_s3(&ssl, "b").expect("s3").endpoint, "https://garage.local:3900");
        let missing = ServeArgs { s3_secret_key: None, ..args };
        let err = resolve_s3(&missing, "b").expect_err("no secret").to_string();
        assert!(err.contains("s3-secret-key-file"), "{err}");
    }

    #[test]
    fn resolve_reads_db_file_and_given_keys_and_generates_nothing_it_was_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate("given-1").expect("key");
        let key_file = dir.path().join("given.sec");
        std::fs::write(&key_file, key.to_nix_string()).expect("write key");
        let db_file = dir.path().join("db");
        std::fs::write(&db_file, "host=/run/postgresql dbname=niks3\n").expect("write db");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t".repeat(40)).expect("write token");
        let args = ServeArgs {
            state_dir: Some(dir.path().join("state")),
            http_addr: ":5751".to_owned(),
            db_file: Some(db_file),
            sign_key_files: vec![key_file],
            api_token_file: Some(token_file),
            priority: 40,
            ..ServeArgs::default()
        };
        let c = ServeConfig::resolve(&args).expect("resolve");
        assert!(matches!(&c.db, DbChoice::Url(u) if u == "host=/run/postgresql dbname=niks3"));
        assert!(!c.generated_key && !c.generated_token);
        assert_eq!(c.sign_keys[0].public(), key.public());
        assert!(!dir.path().join("state/keys").exists() && !dir.path().join("state/api-token").exists());
        assert!(matches!(&c.store, StorageChoice::Local(d) if d.ends_with("state/cache")));
        assert_eq!(c.http_addr.port(), 5751);
        assert!(c.cache_url.starts_with("http://") && c.cache_url.ends_with(":5751"), "{}", c.cache_url);
        assert!(c.startup_banner().contains(&key.public().to_nix_string()));

        let missing = ServeArgs { db_file: Some(dir.path().join("nope")), ..args };
        let err = ServeConfig::resolve(&missing).expect_err("missing db file").to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
