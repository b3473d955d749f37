//! Slow-loris and descriptor exhaustion (security review, finding 8), against the real listener: half-sent
//! requests and idle connections are closed after the header timeout, connections past the limit are closed
//! at once, and a well-behaved client is served again as soon as the slow ones are gone.

use niks3_server::http::listener::{Limits, serve};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use warp::Filter;

async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let routes = warp::any().map(|| warp::reply::Reply::into_response("ok"));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(warp::service(routes), listener, limits, async move {
        let _ = rx.await;
    }));
    (addr, stop, task)
}

/// A complete GET on a fresh connection; `None` if the server closed it without answering.
fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out).filter(|o| !o.is_empty())
}

/// Reads until the server closes the connection (EOF or reset); how long that took.
fn time_to_close(mut s: TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).ok()?;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if start.elapsed() < within => return Some(start.elapsed()),
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed_and_the_server_serves_again() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: 8,
    };
    let (addr, stop, task) = start(limits).await;
    let result = tokio::task::spawn_blocking(move || {
        assert!(get(addr).is_some_and(|r| r.starts_with("HTTP/1.1 200")), "served before the attack");
        // 8 slow-loris connections (half a request each) and 12 more past the limit.
        let mut slow = Vec::new();
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).expect("connect");
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
            slow.push(s);
        }
        // While they hold every slot, a new client is turned away at once (not left hanging).
        let start = Instant::now();
        let turned_away = get(addr);
        assert!(start.elapsed() < Duration::from_secs(1), "a refused client waits {:?}", start.elapsed());
        assert!(turned_away.is_none(), "the limit of 8 was not enforced: {turned_away:?}");
        // Every slow connection is closed by the server within the header timeout (plus slack).
        for s in slow {
            let closed = time_to_close(s, Duration::from_secs(5));
            assert!(closed.is_some(), "a half-sent request was kept open past 5 s");
        }
        // An idle connection (nothing sent at all) is closed too.
        let idle = TcpStream::connect(addr).expect("connect");
        assert!(time_to_close(idle, Duration::from_secs(5)).is_some(), "an idle connection was kept open");
        // So is a keep-alive connection left open after its request was answered.
        let mut kept = TcpStream::connect(addr).expect("connect");
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        assert!(time_to_close(kept, Duration::from_secs(5)).is_some(), "an idle keep-alive connection was kept open");
        // And the server serves again.
        assert!(get(addr).is_some_and(|r| r.starts_with("HTTP/1.1 200")), "served after the attack");
    })
    .await;
    let _ = stop.send(());
    let _ = task.await;
    result.expect("attack thread");
}
