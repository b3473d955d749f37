//! A fault-injecting HTTP/1.1 proxy to put in front of an S3 server (a testkit [`crate::garage::Garage`]):
//! point the client's endpoint at [`FaultProxy::url`] and it forwards every request to the upstream,
//! except that, at the rates [`Faults`] sets, it answers 503 `SlowDown` or 429 itself (with
//! `Retry-After` and S3's XML error body), resets the connection, cuts the response body short, flips a
//! byte of the request body on its way up, or waits before forwarding. It counts what it did
//! ([`FaultCounts`]).
//!
//! The request head goes upstream as it came (the `Host` header included: SigV4 signs it), except that
//! `Connection: close` is asked of the upstream, so each request has its own upstream connection and its
//! answer ends at EOF; the answer is relayed byte for byte (its framing included), so the client's
//! connection to the proxy stays keep-alive. Request bodies need a `Content-Length` (S3 clients send
//! one); a chunked request body is answered 501.
//!
//! std threads, no async runtime: testkit stays free of tokio, and a test proxy carrying a few hundred
//! requests does not need one. `socket2` (already in the lock file through tokio) only to set a zero
//! linger time, which turns a close into a reset; std cannot yet.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Largest request or response head the proxy reads (S3 heads are a few KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Rates (0.0..=1.0, per request) of what the proxy does instead of forwarding faithfully. The rates of
/// 503, 429, reset and truncation are exclusive (one draw picks at most one); the byte flip is drawn
/// on its own and applies to requests with a body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Answer 503 `SlowDown` without forwarding.
    pub slow_down_503: f64,
    /// Answer 429 without forwarding.
    pub too_many_429: f64,
    /// Reset the connection after reading the request head (the request never reaches the upstream).
    pub reset: f64,
    /// Forward, then relay only half of the answer's body and close the connection.
    pub truncate_response: f64,
    /// Flip one byte of the request body before forwarding (the upstream should refuse it: `Content-MD5`
    /// or a checksum header).
    pub flip_request_byte: f64,
    /// Wait this long before handling each request.
    pub latency: Duration,
    /// The `Retry-After` (seconds) sent with 503 and 429.
    pub retry_after_secs: u32,
}

/// What the proxy did, counted since it started.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Requests read.
    pub requests: AtomicU64,
    /// Requests forwarded to the upstream (flipped and truncated ones included).
    pub forwarded: AtomicU64,
    /// 503 `SlowDown` answers.
    pub slow_down_503: AtomicU64,
    /// 429 answers.
    pub too_many_429: AtomicU64,
    /// Connections reset.
    pub resets: AtomicU64,
    /// Answers cut short.
    pub truncated: AtomicU64,
    /// Request bodies with a flipped byte.
    pub flipped: AtomicU64,
    /// Of those, the upstream's answer status (so a test can see the store refused them).
    pub flipped_statuses: Mutex<Vec<u16>>,
}

impl FaultCounts {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} requests: {} forwarded, {} × 503, {} × 429, {} resets, {} truncated, {} flipped (upstream said {:?})",
            l(&self.requests),
            l(&self.forwarded),
            l(&self.slow_down_503),
            l(&self.too_many_429),
            l(&self.resets),
            l(&self.truncated),
            l(&self.flipped),
            self.flipped_statuses.lock().unwrap_or_else(PoisonError::into_inner)
        )
    }
}

/// Why the proxy could not start.
#[derive(Debug)]
pub struct FaultProxyError(pub String);

impl std::fmt::Display for FaultProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FaultProxyError {}

/// A running proxy; stops accepting when dropped (connections already open finish their request).
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    counts: Arc<FaultCounts>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a port the kernel picks, held from bind to drop) and forwards to `upstream`
    /// (`host:port`), faithfully until [`FaultProxy::set_faults`] says otherwise.
    pub fn start(upstream: &str) -> Result<Self, FaultProxyError> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| FaultProxyError(format!("upstream {upstream:?} is not host:port: {e}")))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| FaultProxyError(format!("binding the fault proxy on 127.0.0.1: {e}")))?;
        let addr = listener.local_addr().map_err(|e| FaultProxyError(format!("fault proxy address: {e}")))?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let counts = Arc::new(FaultCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, c, s) = (Arc::clone(&faults), Arc::clone(&counts), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("fault-proxy".to_owned())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (f, c) = (Arc::clone(&f), Arc::clone(&c));
                    let _ = std::thread::Builder::new()
                        .name("fault-proxy-conn".to_owned())
                        .spawn(move || serve_connection(conn, upstream, &f, &c));
                }
            })
            .map_err(|e| FaultProxyError(format!("starting the fault proxy thread: {e}")))?;
        Ok(Self { addr, faults, counts, stop })
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the S3 client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the fault rates (applies to requests read from now on).
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// What the proxy does with one request (besides a byte flip, drawn on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SlowDown,
    TooMany,
    Reset,
    Truncate,
    None,
}

impl Fault {
    /// The fault a uniform `draw` in [0, 1) falls on, the rates laid end to end.
    fn pick(f: &Faults, draw: f64) -> Fault {
        let mut edge = 0.0;
        for (rate, fault) in [
            (f.slow_down_503, Fault::SlowDown),
            (f.too_many_429, Fault::TooMany),
            (f.reset, Fault::Reset),
            (f.truncate_response, Fault::Truncate),
        ] {
            edge += rate;
            if draw < edge {
                return fault;
            }
        }
        Fault::None
    }
}

/// One parsed request head.
struct Head {
    raw: Vec<u8>,
    method: String,
    content_length: usize,
    chunked: bool,
}

/// Reads a head (up to and including the blank line); `None` at a clean EOF before any byte.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.take(MAX_HEAD as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "head cut short"))
            };
        }
        raw.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(raw));
        }
        if raw.len() > MAX_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "head too large"));
        }
    }
}

fn parse_request_head(raw: Vec<u8>) -> Head {
    let text = String::from_utf8_lossy(&raw);
    let method = text.split_whitespace().next().unwrap_or_default().to_owned();
    let mut content_length = 0;
    let mut chunked = false;
    for line in text.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    Head { raw, method, content_length, chunked }
}

/// The head with `Connection: close` instead of whatever connection header it had.
fn upstream_head(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len() + 20);
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            out.push_str("Connection: close\r\n\r\n");
            break;
        }
        if trimmed.split_once(':').is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection")) {
            continue;
        }
        out.push_str(line);
    }
    out.into_bytes()
}

fn error_answer(status: u16, reason: &str, code: &str, retry_after: u32) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nRetry-After: {retry_after}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves requests on one client connection until it closes or a fault ends it.
fn serve_connection(client: TcpStream, upstream: SocketAddr, faults: &Mutex<Faults>, counts: &FaultCounts) {
    let Ok(write_half) = client.try_clone() else { return };
    let mut writer = write_half;
    let mut reader = BufReader::new(client);
    loop {
        let Ok(Some(raw)) = read_head(&mut reader) else { return };
        let head = parse_request_head(raw);
        FaultCounts::bump(&counts.requests);
        let f = *faults.lock().unwrap_or_else(PoisonError::into_inner);
        if !f.latency.is_zero() {
            std::thread::sleep(f.latency);
        }
        if head.chunked {
            let _ = writer.write_all(&error_answer(501, "Not Implemented", "NotImplemented", 0));
            return;
        }
        let fault = Fault::pick(&f, rand::random());
        if let Fault::SlowDown | Fault::TooMany = fault {
            // Read the body first, so the client's write completes and it reads the answer.
            let mut body = vec![0; head.content_length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let answer = if fault == Fault::SlowDown {
                FaultCounts::bump(&counts.slow_down_503);
                error_answer(503, "Slow Down", "SlowDown", f.retry_after_secs)
            } else {
                FaultCounts::bump(&counts.too_many_429);
                error_answer(429, "Too Many Requests", "SlowDown", f.retry_after_secs)
            };
            if writer.write_all(&answer).is_err() {
                return;
            }
            continue;
        }
        if fault == Fault::Reset {
            FaultCounts::bump(&counts.resets);
            // A zero linger time makes close() send RST: a reset, not an orderly close.
            let _ = socket2::SockRef::from(&writer).set_linger(Some(Duration::ZERO));
            return;
        }
        let truncate = fault == Fault::Truncate;
        let mut body = vec![0; head.content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let flipped = !body.is_empty() && rand::random::<f64>() < f.flip_request_byte;
        if flipped {
            let i = rand::random::<usize>() % body.len();
            body[i] ^= 0x20;
            FaultCounts::bump(&counts.flipped);
        }
        let Ok(answer) = forward(upstream, &head, &body) else {
            let _ = writer.write_all(&error_answer(502, "Bad Gateway", "BadGateway", 0));
            return;
        };
        FaultCounts::bump(&counts.forwarded);
        if flipped {
            let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok());
            counts.flipped_statuses.lock().unwrap_or_else(PoisonError::into_inner).push(status.unwrap_or(0));
        }
        let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |p| p + 4);
        if truncate && answer.len() > head_end + 1 && head.method != "HEAD" {
            FaultCounts::bump(&counts.truncated);
            let cut = head_end + (answer.len() - head_end) / 2;
            let _ = writer.write_all(&answer[..cut]);
            let _ = writer.flush();
            return;
        }
        if writer.write_all(&answer).is_err() {
            return;
        }
        let closes = String::from_utf8_lossy(&answer[..head_end]).lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            })
        });
        if closes {
            return;
        }
    }
}

/// Sends one request upstream on a fresh connection and reads the whole answer (to EOF).
fn forward(upstream: SocketAddr, head: &Head, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(10))?;
    up.set_read_timeout(Some(Duration::from_mins(2)))?;
    up.write_all(&upstream_head(&head.raw))?;
    up.write_all(body)?;
    up.flush()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_asked_to_close_and_other_headers_stay() {
        let head = b"PUT /b/k HTTP/1.1\r\nHost: 127.0.0.1:3900\r\nconnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
        let out = String::from_utf8(upstream_head(head)).unwrap_or_default();
        assert_eq!(out, "PUT /b/k HTTP/1.1\r\nHost: 127.0.0.1:3900\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
        let parsed = parse_request_head(head.to_vec());
        assert_eq!((parsed.method.as_str(), parsed.content_length, parsed.chunked), ("PUT", 3, false));
    }
}
