//! A client of the nix-daemon worker protocol: how niks3 reads the local Nix store on every Nix version.
//!
//! Why the protocol and not the `nix` command line: `nix path-info --json` changed shape in Nix 2.19 (an
//! array became an object keyed by path), `show-derivation` became `derivation show` with a new JSON, and
//! every query spawned a process that re-read the whole closure (~25 ms for one small path on Nix 2.8,
//! more on 2.26). The worker protocol is what every Nix client speaks to the daemon: versioned by a
//! handshake, unchanged for the operations used here from Nix 2.3 to 2.3x and Lix, and one long-lived
//! connection answers thousands of queries a second (measurements in docs/architecture.md).
//!
//! The connection is to a child `nix-daemon --stdio`, not to the daemon's socket directly: with a
//! running daemon (multi-user Nix, NixOS) that child forwards the bytes to it; without one (single-user
//! Nix) it serves the local store itself. Either way Nix's own settings (`NIX_REMOTE`, `store =`,
//! `NIX_DAEMON_SOCKET_PATH`) decide which store is read, exactly as for the `nix` command.
//!
//! Wire format: little-endian u64 numbers; strings as a u64 length, the bytes, zero padding to 8 bytes.
//! Every request is an op number and its arguments; the daemon answers with log messages ("stderr"),
//! ended by `STDERR_LAST` (then the result) or `STDERR_ERROR` (then the error).

use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout};

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// The protocol version we speak (0x123 = 1.35: the daemon reports its Nix version (1.33) and whether it trusts
/// us (1.35)). The connection uses the lower of ours and the daemon's.
const CLIENT_VERSION: u64 = 0x123;
/// Oldest daemon protocol we accept: 1.21 is Nix 2.3 (realisations need 1.31, Nix 2.4+).
const MIN_MINOR: u64 = 21;

const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_READ: u64 = 0x6461_7461;
const STDERR_WRITE: u64 = 0x6461_7416;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6378_7470;
const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
const STDERR_RESULT: u64 = 0x5253_4c54;

const OP_QUERY_PATH_INFO: u64 = 26;
const OP_QUERY_VALID_PATHS: u64 = 31;
const OP_QUERY_DERIVATION_OUTPUT_MAP: u64 = 41;

/// Longest string accepted from the daemon (a store path is < 512 bytes; error messages can be long).
const MAX_STRING: u64 = 16 << 20;
/// Most elements accepted in one list (references of one path, outputs of one derivation).
const MAX_LIST: u64 = 1 << 20;
/// How much of the child's stderr is kept to explain why it went away.
const MAX_STDERR: usize = 4096;

/// Why talking to the daemon failed. None of these is the fault of a path being asked about: the store
/// could not be read (see [`DaemonError::Remote`] for what the daemon itself refused).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `nix-daemon --stdio` could not be started (not installed, not on `PATH`).
    #[error("starting {program} --stdio: {source}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The connection broke (the daemon exited, the socket was refused or closed); `stderr` is what the
    /// child said before it went, if anything.
    #[error("{}", io_message(.during, .source, .stderr))]
    Io {
        /// What we were doing.
        during: &'static str,
        /// The I/O error.
        source: std::io::Error,
        /// The last words of `nix-daemon --stdio` on its stderr.
        stderr: String,
    },
    /// The daemon sent something this client does not understand.
    #[error("unexpected answer from the Nix daemon during {during}: {reason}")]
    Protocol {
        /// What we were doing.
        during: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The daemon speaks a protocol older than Nix 2.3.
    #[error("the Nix daemon speaks protocol 1.{minor}; niks3 needs 1.{MIN_MINOR} (Nix 2.3) or newer")]
    TooOld {
        /// The daemon's minor protocol version.
        minor: u64,
    },
    /// The daemon answered the request with an error (its message, as Nix would print it).
    #[error("the Nix daemon refused {during}: {message}")]
    Remote {
        /// The request.
        during: &'static str,
        /// Nix's error message.
        message: String,
    },
}

/// What the child said is the cause when it said anything (the I/O error is then only how we noticed,
/// and varies between runs: EOF or a broken pipe), so one cause reads the same every time.
fn io_message(during: &str, source: &std::io::Error, stderr: &str) -> String {
    if stderr.is_empty() {
        format!("connection to the Nix daemon lost during {during}: {source}")
    } else {
        format!("the Nix daemon connection closed during {during}; nix-daemon said: {stderr}")
    }
}

/// What a path's entry in the daemon's database says (`ValidPathInfo` without the path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawPathInfo {
    /// The deriver (full path), if recorded.
    pub deriver: Option<String>,
    /// NarHash as the daemon sends it: base16 without a prefix (every version so far); other forms are
    /// accepted by the caller's parser too.
    pub nar_hash: String,
    /// Direct references (full paths).
    pub references: Vec<String>,
    /// NarSize.
    pub nar_size: u64,
    /// Content address (`fixed:r:sha256:…`, `text:sha256:…`), if any.
    pub ca: Option<String>,
}

/// An open connection: a `nix-daemon --stdio` child and its pipes, after the handshake.
pub struct Connection {
    child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
    minor: u64,
    daemon_version: Option<String>,
    stderr: Said,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("pid", &self.child.id())
            .field("protocol", &format_args!("1.{}", self.minor))
            .field("daemon_version", &self.daemon_version)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts `program --stdio` (normally `nix-daemon`) and does the handshake. Secrets of niks3's own
    /// environment (`NIKS3_*`) are not passed on.
    pub async fn open(program: &std::path::Path) -> Result<Self, DaemonError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("--stdio").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        crate::child_env::scrub(&mut cmd);
        let mut child =
            cmd.spawn().map_err(|source| DaemonError::Spawn { program: program.display().to_string(), source })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(DaemonError::Protocol { during: "start", reason: "child pipes missing".to_owned() });
        };
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr_task = tokio::spawn(keep_stderr(stderr, std::sync::Arc::clone(&said)));
        let mut conn = Connection {
            child,
            to: BufWriter::new(stdin),
            from: BufReader::new(stdout),
            minor: 0,
            daemon_version: None,
            stderr: said,
        };
        if let Err(e) = conn.handshake().await {
            // A child that fails at start (missing library, wrong store setting) says why on stderr
            // and exits; wait a moment for those words so the error carries them.
            if let DaemonError::Io { during, source, .. } = e {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stderr_task).await;
                return Err(conn.io(during, source));
            }
            return Err(e);
        }
        Ok(conn)
    }

    /// The daemon's Nix version (protocol 1.33+, i.e. Nix 2.15+) or its protocol version.
    pub fn version(&self) -> String {
        match &self.daemon_version {
            Some(v) => format!("Nix {v} (protocol 1.{})", self.minor),
            None => format!("protocol 1.{}", self.minor),
        }
    }

    async fn handshake(&mut self) -> Result<(), DaemonError> {
        const H: &str = "the handshake";
        let mut w = Wire::new(&mut self.to);
        w.u64(WORKER_MAGIC_1).await;
        w.done().map_err(|e| self.io(H, e))?;
        self.flush(H).await?;
        let magic = self.read_u64(H).await?;
        if magic != WORKER_MAGIC_2 {
            return Err(DaemonError::Protocol { during: H, reason: format!("bad magic {magic:#x}") });
        }
        let server = self.read_u64(H).await?;
        if server >> 8 != 1 {
            return Err(DaemonError::Protocol { during: H, reason: format!("protocol major {}", server >> 8) });
        }
        self.minor = (server & 0xff).min(CLIENT_VERSION & 0xff);
        if self.minor < MIN_MINOR {
            return Err(DaemonError::TooOld { minor: self.minor });
        }
        let mut w = Wire::new(&mut self.to);
        w.u64(CLIENT_VERSION).await;
        w.u64(0).await; // obsolete CPU affinity (1.14+): none
        w.u64(0).await; // obsolete reserveSpace (1.11+)
        w.done().map_err(|e| self.io(H, e))?;
        self.flush(H).await?;
        if self.minor >= 33 {
            self.daemon_version = Some(self.read_string(H).await?);
        }
        if self.minor >= 35 {
            let _trusted = self.read_u64(H).await?;
        }
        self.read_stderr(H).await
    }

    /// Path info of each of `paths` (full store paths), in order; `None` for a path that is not valid.
    /// The requests are pipelined: all are sent before the answers are read (concurrently, so neither
    /// side's pipe buffer can fill up and stall the other).
    pub(crate) async fn query_path_infos(&mut self, paths: &[String]) -> Result<Vec<Option<RawPathInfo>>, DaemonError> {
        const Q: &str = "QueryPathInfo";
        let minor = self.minor;
        let Connection { to, from, stderr, .. } = self;
        let stderr = &*stderr;
        let requests = async {
            let mut w = Wire::new(to);
            for p in paths {
                w.u64(OP_QUERY_PATH_INFO).await;
                w.string(p.as_bytes()).await;
            }
            w.done()?;
            to.flush().await
        };
        // Stops at the first answer it cannot read: what follows would be misread (or never come).
        let receive = async {
            let mut r = Reader { from, minor };
            let mut out = Vec::with_capacity(paths.len());
            for _ in paths {
                match r.path_info().await {
                    Ok(info) => out.push(Ok(info)),
                    // The daemon reports a failed request and goes on with the next one.
                    Err(ReadError::Remote(message)) => out.push(Err(message)),
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        };
        tokio::pin!(requests, receive);
        let mut written = None;
        let received = loop {
            tokio::select! {
                r = &mut requests, if written.is_none() => written = Some(r),
                r = &mut receive => break r,
            }
        };
        let received = received.map_err(|e| read_error(stderr, Q, e))?;
        // Every answer came back, so the daemon read every request: the send side is done or about to be.
        let written = match written {
            Some(r) => r,
            None => requests.await,
        };
        written.map_err(|e| io_error(stderr, Q, e))?;
        let mut infos = Vec::with_capacity(received.len());
        for r in received {
            match r {
                Ok(info) => infos.push(info),
                // An invalid path on a daemon older than protocol 1.17 is an error, not an empty answer.
                Err(message) if message.contains("is not valid") => infos.push(None),
                Err(message) => return Err(DaemonError::Remote { during: Q, message }),
            }
        }
        Ok(infos)
    }

    /// Which of `paths` are valid in the store (no substitution).
    pub(crate) async fn query_valid_paths(&mut self, paths: &[String]) -> Result<Vec<String>, DaemonError> {
        const Q: &str = "QueryValidPaths";
        let mut w = Wire::new(&mut self.to);
        w.u64(OP_QUERY_VALID_PATHS).await;
        w.strings(paths).await;
        if self.minor >= 27 {
            w.u64(0).await; // substitute: no
        }
        w.done().map_err(|e| self.io(Q, e))?;
        self.flush(Q).await?;
        self.read_stderr(Q).await?;
        let minor = self.minor;
        let r = Reader { from: &mut self.from, minor }.strings().await;
        r.map_err(|e| self.read_error(Q, e))
    }

    /// The outputs of derivation `drv` and their paths as the store knows them (`None` for a floating
    /// content-addressed output that was never built here).
    pub(crate) async fn derivation_output_map(
        &mut self,
        drv: &str,
    ) -> Result<Vec<(String, Option<String>)>, DaemonError> {
        const Q: &str = "QueryDerivationOutputMap";
        let mut w = Wire::new(&mut self.to);
        w.u64(OP_QUERY_DERIVATION_OUTPUT_MAP).await;
        w.string(drv.as_bytes()).await;
        w.done().map_err(|e| self.io(Q, e))?;
        self.flush(Q).await?;
        self.read_stderr(Q).await?;
        let minor = self.minor;
        let mut r = Reader { from: &mut self.from, minor };
        let res = async {
            let n = r.count().await?;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.string().await?;
                let path = r.string().await?;
                out.push((name, Some(path).filter(|p| !p.is_empty())));
            }
            Ok(out)
        }
        .await;
        res.map_err(|e| self.read_error(Q, e))
    }

    /// Stops the child (also done on drop).
    pub async fn close(mut self) {
        let _ = self.child.kill().await;
    }

    async fn flush(&mut self, during: &'static str) -> Result<(), DaemonError> {
        let r = self.to.flush().await;
        r.map_err(|e| self.io(during, e))
    }

    async fn read_u64(&mut self, during: &'static str) -> Result<u64, DaemonError> {
        let minor = self.minor;
        let r = Reader { from: &mut self.from, minor }.u64().await;
        r.map_err(|e| self.read_error(during, e))
    }

    async fn read_string(&mut self, during: &'static str) -> Result<String, DaemonError> {
        let minor = self.minor;
        let r = Reader { from: &mut self.from, minor }.string().await;
        r.map_err(|e| self.read_error(during, e))
    }

    async fn read_stderr(&mut self, during: &'static str) -> Result<(), DaemonError> {
        let minor = self.minor;
        let r = Reader { from: &mut self.from, minor }.stderr().await;
        r.map_err(|e| self.read_error(during, e))
    }

    fn io(&self, during: &'static str, source: std::io::Error) -> DaemonError {
        io_error(&self.stderr, during, source)
    }

    fn read_error(&self, during: &'static str, e: ReadError) -> DaemonError {
        read_error(&self.stderr, during, e)
    }
}

type Said = std::sync::Arc<std::sync::Mutex<String>>;

fn io_error(said: &Said, during: &'static str, source: std::io::Error) -> DaemonError {
    let stderr = said.lock().map(|s| s.trim().to_owned()).unwrap_or_default();
    DaemonError::Io { during, source, stderr }
}

fn read_error(said: &Said, during: &'static str, e: ReadError) -> DaemonError {
    match e {
        ReadError::Io(source) => io_error(said, during, source),
        ReadError::Protocol(reason) => DaemonError::Protocol { during, reason },
        ReadError::Remote(message) => DaemonError::Remote { during, message },
    }
}

/// Collects the child's stderr (capped), to explain a connection that broke.
async fn keep_stderr(mut stderr: tokio::process::ChildStderr, said: std::sync::Arc<std::sync::Mutex<String>>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut s) = said.lock() {
            s.push_str(&String::from_utf8_lossy(&buf[..n]));
            if s.len() > MAX_STDERR {
                let mut cut = s.len() - MAX_STDERR;
                while !s.is_char_boundary(cut) {
                    cut += 1;
                }
                s.drain(..cut);
            }
        }
    }
}

/// Writes requests into a buffer; the first error is kept and reported by [`Wire::done`] so that a
/// request is written with one `?`.
struct Wire<'a, W> {
    to: &'a mut W,
    error: Option<std::io::Error>,
}

impl<'a, W: AsyncWrite + Unpin> Wire<'a, W> {
    fn new(to: &'a mut W) -> Self {
        Wire { to, error: None }
    }

    async fn bytes(&mut self, b: &[u8]) {
        if self.error.is_none()
            && let Err(e) = self.to.write_all(b).await
        {
            self.error = Some(e);
        }
    }

    async fn u64(&mut self, n: u64) {
        self.bytes(&n.to_le_bytes()).await;
    }

    async fn string(&mut self, s: &[u8]) {
        self.u64(s.len() as u64).await;
        self.bytes(s).await;
        let pad = (8 - s.len() % 8) % 8;
        self.bytes(&[0u8; 8][..pad]).await;
    }

    async fn strings(&mut self, items: &[String]) {
        self.u64(items.len() as u64).await;
        for s in items {
            self.string(s.as_bytes()).await;
        }
    }

    fn done(self) -> Result<(), std::io::Error> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

enum ReadError {
    Io(std::io::Error),
    Protocol(String),
    Remote(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

struct Reader<'a, R> {
    from: &'a mut R,
    minor: u64,
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    async fn u64(&mut self) -> Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.from.read_exact(&mut b).await?;
        Ok(u64::from_le_bytes(b))
    }

    async fn count(&mut self) -> Result<usize, ReadError> {
        let n = self.u64().await?;
        if n > MAX_LIST {
            return Err(ReadError::Protocol(format!("a list of {n} elements")));
        }
        Ok(n as usize)
    }

    async fn bytes(&mut self) -> Result<Vec<u8>, ReadError> {
        let len = self.u64().await?;
        if len > MAX_STRING {
            return Err(ReadError::Protocol(format!("a string of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.from.read_exact(&mut buf).await?;
        let pad = (8 - len % 8) % 8;
        let mut zeros = [0u8; 8];
        self.from.read_exact(&mut zeros[..pad as usize]).await?;
        Ok(buf)
    }

    async fn string(&mut self) -> Result<String, ReadError> {
        String::from_utf8(self.bytes().await?).map_err(|_| ReadError::Protocol("a string that is not UTF-8".to_owned()))
    }

    async fn strings(&mut self) -> Result<Vec<String>, ReadError> {
        let n = self.count().await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.string().await?);
        }
        Ok(out)
    }

    /// Log fields of an activity or result: a count, then (type, value) pairs.
    async fn skip_fields(&mut self) -> Result<(), ReadError> {
        let n = self.count().await?;
        for _ in 0..n {
            match self.u64().await? {
                0 => {
                    self.u64().await?;
                }
                1 => {
                    self.bytes().await?;
                }
                t => return Err(ReadError::Protocol(format!("log field of type {t}"))),
            }
        }
        Ok(())
    }

    /// Reads log messages up to `STDERR_LAST`; `STDERR_ERROR` becomes [`ReadError::Remote`].
    async fn stderr(&mut self) -> Result<(), ReadError> {
        loop {
            match self.u64().await? {
                STDERR_LAST => return Ok(()),
                STDERR_NEXT => {
                    self.bytes().await?;
                }
                STDERR_ERROR => return Err(self.error().await?),
                STDERR_START_ACTIVITY => {
                    self.u64().await?; // id
                    self.u64().await?; // level
                    self.u64().await?; // type
                    self.bytes().await?; // text
                    self.skip_fields().await?;
                    self.u64().await?; // parent
                }
                STDERR_STOP_ACTIVITY => {
                    self.u64().await?;
                }
                STDERR_RESULT => {
                    self.u64().await?; // activity
                    self.u64().await?; // type
                    self.skip_fields().await?;
                }
                m @ (STDERR_READ | STDERR_WRITE) => {
                    return Err(ReadError::Protocol(format!("data transfer message {m:#x} for a query")));
                }
                m => return Err(ReadError::Protocol(format!("unknown message {m:#x}"))),
            }
        }
    }

    /// The error after `STDERR_ERROR`: a structured error (1.26+) or a message and a status.
    async fn error(&mut self) -> Result<ReadError, ReadError> {
        if self.minor < 26 {
            let message = self.string().await?;
            self.u64().await?; // exit status
            return Ok(ReadError::Remote(message));
        }
        let kind = self.string().await?;
        if kind != "Error" {
            return Err(ReadError::Protocol(format!("error of kind {kind:?}")));
        }
        self.u64().await?; // verbosity
        self.bytes().await?; // name (unused)
        let message = self.string().await?;
        if self.u64().await? != 0 {
            return Err(ReadError::Protocol("error with a position".to_owned()));
        }
        let traces = self.count().await?;
        let mut text = message;
        for _ in 0..traces {
            if self.u64().await? != 0 {
                return Err(ReadError::Protocol("trace with a position".to_owned()));
            }
            let hint = self.string().await?;
            text.push_str("; ");
            text.push_str(&hint);
        }
        Ok(ReadError::Remote(strip_ansi(&text)))
    }

    /// One QueryPathInfo answer.
    async fn path_info(&mut self) -> Result<Option<RawPathInfo>, ReadError> {
        self.stderr().await?;
        if self.minor >= 17 && self.u64().await? == 0 {
            return Ok(None);
        }
        let deriver = Some(self.string().await?).filter(|d| !d.is_empty());
        let nar_hash = self.string().await?;
        let references = self.strings().await?;
        self.u64().await?; // registration time
        let nar_size = self.u64().await?;
        let mut ca = None;
        if self.minor >= 16 {
            self.u64().await?; // ultimate
            let n = self.count().await?;
            for _ in 0..n {
                self.bytes().await?; // signatures: the cache signs with its own keys
            }
            ca = Some(self.string().await?).filter(|c| !c.is_empty());
        }
        Ok(Some(RawPathInfo { deriver, nar_hash, references, nar_size, ca }))
    }
}

/// Nix colours its messages for terminals; a log line or a reason file wants plain text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_removed() {
        assert_eq!(
            strip_ansi("path '\u{1b}[35;1m/nix/store/x\u{1b}[0m' is not valid"),
            "path '/nix/store/x' is not valid"
        );
    }

    #[tokio::test]
    async fn strings_are_padded_to_eight_bytes_and_read_back() {
        let mut buf = Vec::new();
        let mut w = Wire::new(&mut buf);
        w.strings(&[String::new(), "abc".to_owned(), "12345678".to_owned()]).await;
        assert!(w.done().is_ok());
        assert_eq!(buf.len(), 8 + 8 + (8 + 8) + (8 + 8));
        let mut from: &[u8] = &buf;
        let got = Reader { from: &mut from, minor: 35 }.strings().await;
        assert!(matches!(got, Ok(ref v) if v == &["", "abc", "12345678"]));
    }

    #[tokio::test]
    async fn oversized_strings_and_lists_are_refused_before_allocating() {
        let huge = (MAX_STRING + 1).to_le_bytes();
        let mut from: &[u8] = &huge;
        assert!(matches!(Reader { from: &mut from, minor: 35 }.string().await, Err(ReadError::Protocol(_))));
        let many = (MAX_LIST + 1).to_le_bytes();
        let mut from: &[u8] = &many;
        assert!(matches!(Reader { from: &mut from, minor: 35 }.strings().await, Err(ReadError::Protocol(_))));
    }

    #[tokio::test]
    async fn a_structured_error_becomes_the_daemons_message() {
        let mut buf = Vec::new();
        let mut w = Wire::new(&mut buf);
        w.u64(STDERR_NEXT).await;
        w.string(b"a log line").await;
        w.u64(STDERR_ERROR).await;
        w.string(b"Error").await;
        w.u64(0).await;
        w.string(b"Error").await;
        w.string(b"path '/nix/store/x' is not valid").await;
        w.u64(0).await;
        w.u64(1).await;
        w.u64(0).await;
        w.string(b"while asking").await;
        assert!(w.done().is_ok());
        let mut from: &[u8] = &buf;
        match (Reader { from: &mut from, minor: 35 }).stderr().await {
            Err(ReadError::Remote(m)) => assert_eq!(m, "path '/nix/store/x' is not valid; while asking"),
            _ => panic!("expected the daemon's error"),
        }
    }
}
