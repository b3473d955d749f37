//! A TCP proxy in front of a server (Garage) that slows what clients send to a given rate and counts it:
//! long enough a window to kill an upload at a chosen point, and the bytes a client really sent.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The proxy; it runs until the test process ends (its threads are detached).
pub struct Throttle {
    /// `http://127.0.0.1:<port>` of the proxy.
    pub endpoint: String,
    sent: Arc<AtomicU64>,
}

impl Throttle {
    /// Forwards `127.0.0.1:<new port>` to `upstream` (`host:port`), client-to-server bytes at most
    /// `bytes_per_sec` per connection.
    pub fn start(upstream: &str, bytes_per_sec: u64) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let sent = Arc::new(AtomicU64::new(0));
        let (upstream, counter) = (upstream.to_owned(), Arc::clone(&sent));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || pipe(client, server, Some((bytes_per_sec, &counter))));
                std::thread::spawn(move || pipe(s2, c2, None));
            }
        });
        Throttle { endpoint, sent }
    }

    /// Bytes clients sent through the proxy so far (headers included).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to` until either side ends, at most `limit.0` bytes per second, counted in `limit.1`.
fn pipe(mut from: TcpStream, mut to: TcpStream, limit: Option<(u64, &AtomicU64)>) {
    let mut buf = vec![0; 64 * 1024];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((rate, counter)) = limit {
            total += n as u64;
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
