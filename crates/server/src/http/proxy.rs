//! The read proxy: serves the bucket layout (narinfo, NARs, listings, build logs, realisations) over
//! HTTP to stock Nix, from whichever backend is configured. Every request path goes through
//! [`ObjectKey::parse`]; anything that is not a key of the layout is a 404. NARs are streamed (with
//! `Range` support); narinfos, listings, logs and realisations are streamed too: nothing is read whole
//! into memory for a reader.

use super::{HttpState, Request, response};
use bytes::Bytes;
use futures::Stream;
use http::{StatusCode, header};
use niks3_storage::{ByteStream, ObjectKey, ObjectKind, StorageError};
use std::pin::Pin;
use std::task::{Context, Poll};
use warp::Reply;
use warp::reply::Response;

/// Longest request path we even try to parse (the longest valid key is far shorter).
const MAX_PATH_LEN: usize = 512;

/// Answers `GET/HEAD` of an object of the layout; returns the route label for the metrics too.
pub async fn handle(state: &HttpState, req: &Request) -> (&'static str, Response) {
    let Some(raw) = req.path.strip_prefix('/') else { return ("other", response::not_found()) };
    if raw.len() > MAX_PATH_LEN {
        return ("other", response::not_found());
    }
    let Some(decoded) = percent_decode(raw) else { return ("other", response::not_found()) };
    let Ok((kind, key)) = ObjectKey::parse(&decoded) else { return ("other", response::not_found()) };
    let head = req.method == http::Method::HEAD;
    match kind {
        ObjectKind::CacheInfo => ("cache-info", super::cacheinfo::handle(state, req)),
        ObjectKind::Nar => ("nar", serve_nar(state, &key, req.headers.get(header::RANGE), head).await),
        ObjectKind::NarInfo => ("narinfo", serve_small(state, &key, "text/x-nix-narinfo", head).await),
        ObjectKind::Listing => ("listing", serve_small(state, &key, "application/json", head).await),
        ObjectKind::Log => ("log", serve_small(state, &key, "text/plain; charset=utf-8", head).await),
        ObjectKind::Realisation => ("realisation", serve_small(state, &key, "application/json", head).await),
    }
}

/// Decodes `%XX` escapes; `None` for malformed escapes or a result that is not UTF-8 (no valid key is).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn serve_small(state: &HttpState, key: &ObjectKey, content_type: &str, head: bool) -> Response {
    if head {
        return match state.store.head(key).await {
            Ok(Some(meta)) => {
                let mut r = response::bytes(StatusCode::OK, content_type, response::CACHE_SHORT, Bytes::new(), true);
                r.headers_mut().insert(header::CONTENT_LENGTH, meta.size.into());
                response::set(&mut r, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
                r
            }
            Ok(None) => response::not_found(),
            Err(e) => response::store_failed(key.as_str(), &e),
        };
    }
    // Streamed like NARs, never read whole: a build log can be gigabytes, and each slow reader would
    // otherwise hold a copy in memory (security review, finding 4).
    let mut r = serve_whole(state, key, content_type, response::CACHE_SHORT).await;
    // A log is text a builder wrote: never let a browser sniff it into HTML.
    response::set(&mut r, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    r
}

/// 200 with the whole object streamed from the store (or 404 / 502).
async fn serve_whole(state: &HttpState, key: &ObjectKey, content_type: &str, cache_control: &str) -> Response {
    match state.store.get_stream(key, None).await {
        Ok(Some((meta, stream))) => {
            let mut r = stream_response(stream);
            r.headers_mut().insert(header::CONTENT_LENGTH, meta.size.into());
            response::set(&mut r, header::CONTENT_TYPE, content_type);
            response::set(&mut r, header::CACHE_CONTROL, cache_control);
            r
        }
        Ok(None) => response::not_found(),
        Err(e) => response::store_failed(key.as_str(), &e),
    }
}

/// What a `Range` header asks of an object of a given size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range (absent, malformed, or several ranges): send the whole object.
    Full,
    /// Bytes `start..=end`.
    Partial(u64, u64),
    /// The range lies outside the object: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header against an object of `size` bytes (RFC 9110 §14: one `bytes=` range;
/// malformed or multi-range headers are ignored, which the RFC allows).
///
/// Public for the fuzz target `fuzz/fuzz_targets/range_header.rs`, which feeds it arbitrary headers.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeRequest::Full };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeRequest::Full };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // suffix: the last `b` bytes
        let Ok(n) = b.parse::<u64>() else { return RangeRequest::Full };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else { return RangeRequest::Full };
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        let Ok(end) = b.parse::<u64>() else { return RangeRequest::Full };
        if end < start {
            return RangeRequest::Full;
        }
        end.min(size.saturating_sub(1))
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial(start, end)
}

fn nar_content_type(key: &ObjectKey) -> &'static str {
    if std::path::Path::new(key.as_str()).extension().is_some_and(|e| e == "nar") {
        "application/x-nix-archive"
    } else {
        "application/zstd"
    }
}

async fn serve_nar(state: &HttpState, key: &ObjectKey, range: Option<&http::HeaderValue>, head: bool) -> Response {
    let ctype = nar_content_type(key);
    let range = range.and_then(|v| v.to_str().ok());
    if head || range.is_some() {
        let size = match state.store.head(key).await {
            Ok(Some(meta)) => meta.size,
            Ok(None) => return response::not_found(),
            Err(e) => return response::store_failed(key.as_str(), &e),
        };
        let want = range.map_or(RangeRequest::Full, |r| parse_range(r, size));
        match want {
            RangeRequest::Unsatisfiable => {
                let mut r =
                    response::text(StatusCode::RANGE_NOT_SATISFIABLE, response::NO_STORE, "range not satisfiable");
                response::set(&mut r, header::CONTENT_RANGE, &format!("bytes */{size}"));
                return r;
            }
            RangeRequest::Full if head => {
                let mut r = response::bytes(StatusCode::OK, ctype, response::CACHE_IMMUTABLE, Bytes::new(), true);
                r.headers_mut().insert(header::CONTENT_LENGTH, size.into());
                response::set(&mut r, header::ACCEPT_RANGES, "bytes");
                return r;
            }
            RangeRequest::Partial(start, end) => {
                let mut r = if head {
                    Response::new(Bytes::new().into())
                } else {
                    match state.store.get_stream(key, Some((start, Some(end)))).await {
                        Ok(Some((_, stream))) => stream_response(stream),
                        Ok(None) => return response::not_found(),
                        Err(e) => return response::store_failed(key.as_str(), &e),
                    }
                };
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r.headers_mut().insert(header::CONTENT_LENGTH, (end - start + 1).into());
                response::set(&mut r, header::CONTENT_RANGE, &format!("bytes {start}-{end}/{size}"));
                response::set(&mut r, header::CONTENT_TYPE, ctype);
                response::set(&mut r, header::CACHE_CONTROL, response::CACHE_IMMUTABLE);
                response::set(&mut r, header::ACCEPT_RANGES, "bytes");
                return r;
            }
            RangeRequest::Full => {}
        }
    }
    let mut r = serve_whole(state, key, ctype, response::CACHE_IMMUTABLE).await;
    if r.status() == StatusCode::OK {
        response::set(&mut r, header::ACCEPT_RANGES, "bytes");
    }
    r
}

fn stream_response(stream: ByteStream) -> Response {
    warp::reply::stream(SyncStream(std::sync::Mutex::new(stream))).into_response()
}

/// warp wants a `Sync` body stream; a store stream is only `Send`. Polling goes through `get_mut`, so the
/// mutex is never locked: it only lends the type its `Sync`.
struct SyncStream(std::sync::Mutex<ByteStream>);

impl Stream for SyncStream {
    type Item = Result<Bytes, StorageError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().0.get_mut() {
            Ok(s) => s.as_mut().poll_next(cx),
            Err(poisoned) => poisoned.into_inner().as_mut().poll_next(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Partial(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Partial(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Partial(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), RangeRequest::Partial(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeRequest::Partial(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=9-3", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=x-3", 100), RangeRequest::Full);
    }

    #[test]
    fn percent_decoding_rejects_malformed_escapes() {
        assert_eq!(
            percent_decode("realisations/sha256:abc%21out.doi").as_deref(),
            Some("realisations/sha256:abc!out.doi")
        );
        assert_eq!(percent_decode("%2e%2e%2fetc").as_deref(), Some("../etc"));
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
