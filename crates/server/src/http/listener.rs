//! Accepting connections so that no client, authenticated or not, can hold the server hostage.
//!
//! Why not `warp::serve`: it runs hyper without a timer, and hyper only enforces its header-read timeout
//! when it has one, so a client that sends half a request line and then nothing kept its connection (and a
//! file descriptor) forever; a few hundred such clients exhausted the descriptors, and then `/health`, the
//! read proxy and the spool drainer all failed with "Too many open files" (security review, finding 8).
//! Here the routes are the same warp filter, served by hyper-util's auto (HTTP/1 and HTTP/2) connection
//! builder with a Tokio timer, and:
//! - a request's headers must arrive within [`Limits::header_read_timeout`] of their first byte;
//! - a connection on which no byte moved for [`Limits::idle_timeout`] is closed (gracefully: a request in
//!   flight, such as a long GC call, is answered first) — this covers a client that connects and sends
//!   nothing, and a keep-alive connection left open, which hyper's header timeout does not;
//! - at most [`Limits::max_connections`] connections are open at once (by default half of the process's
//!   descriptor limit, at most 4096); a connection past that is closed at once, so the kernel's backlog
//!   never fills and the descriptors left serve the drainer and the database pool;
//! - shutdown stops accepting, lets requests in flight finish (for up to [`SHUTDOWN_GRACE`]), and closes
//!   idle connections.
//!
//! Request bodies are not timed here: a NAR upload over a slow link is legitimate. An exposed server belongs
//! behind a reverse proxy that limits bodies and rates (docs/nixos.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

/// How long shutdown waits for requests in flight before it gives up on them.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How many connections and how long for a request's headers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time from a connection's first byte (or the end of its previous request) to the end of the
    /// request's headers.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long is closed once no request is in flight.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 30 s for headers (hyper's own default when it has a timer), 60 s idle (Nix keeps connections to a
    /// substituter open between queries, a few seconds apart); connections from the descriptor limit.
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_mins(1),
            max_connections: default_max_connections(),
        }
    }
}

/// Half the soft `RLIMIT_NOFILE` (the other half is for the store, the database, the spool and Nix),
/// between 64 and 4096; 512 when the limit cannot be read.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<usize>().ok())
    });
    soft.map_or(512, |n| (n / 2).clamp(64, 4096))
}

/// Serves `service` (the warp filter as a service) on `listener` within `limits` until `shutdown`.
pub async fn serve<S>(
    service: S,
    listener: tokio::net::TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(limits.header_read_timeout));
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, _) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning; the connection limit
                    // makes this rare.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, max = limits.max_connections, "too many HTTP connections; closing new ones");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = Tracked::new(stream);
        let last_activity = io.clock();
        let builder = Arc::clone(&builder);
        let service = service.clone();
        let mut closing = closing.subscribe();
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(service),
            );
            tokio::pin!(conn);
            let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
            let mut asked_to_close = false;
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                        }
                        break;
                    }
                    _ = tick.tick(), if !asked_to_close => {
                        if last_activity.idle_for() >= idle_timeout {
                            conn.as_mut().graceful_shutdown();
                            asked_to_close = true;
                        }
                    }
                    _ = closing.changed(), if !asked_to_close => {
                        conn.as_mut().graceful_shutdown();
                        asked_to_close = true;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit until it ends: all permits back means all connections are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await.is_err() {
        tracing::warn!("HTTP requests still in flight after {}s; stopping anyway", SHUTDOWN_GRACE.as_secs());
    }
}

/// When a connection last moved a byte, readable from its watchdog.
#[derive(Clone)]
struct Clock {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Clock {
    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A TCP stream that records the time of every read or write that moved bytes.
struct Tracked {
    inner: tokio::net::TcpStream,
    clock: Clock,
}

impl Tracked {
    fn new(inner: tokio::net::TcpStream) -> Self {
        Tracked { inner, clock: Clock { epoch: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) } }
    }

    fn clock(&self) -> Clock {
        self.clock.clone()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_descriptors_for_everything_else() {
        let n = default_max_connections();
        assert!((64..=4096).contains(&n), "{n}");
    }
}
