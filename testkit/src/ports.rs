//! Free TCP ports for the servers the tests start, chosen outside the kernel's ephemeral range.
//!
//! Why not `bind("127.0.0.1:0")` and hand the port on: the kernel takes that port from its ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default), the same range every outgoing
//! connection's local port comes from. In the time between closing the probe and the server binding it, any
//! of the hundreds of connections the parallel tests open may take it; CI once saw a Garage that never
//! answered on its port. A port below that range is never handed out for an outgoing connection, so only
//! another server of ours can take it, and those pick at random among 12 000.

use std::net::TcpListener;
use std::ops::Range;

/// Below the kernel's default ephemeral range, above the well-known and most registered service ports.
const RANGE: Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that nothing listens on right now and that the kernel will not give to an outgoing
/// connection. `None` only if 200 random tries all found a port in use.
pub fn free_port() -> Option<u16> {
    (0..200).map(|_| rand::random::<u16>() % (RANGE.end - RANGE.start) + RANGE.start).find(|&port| {
        // Bound and closed at once: a listener left in TIME_WAIT does not block the server's own bind (std
        // sets SO_REUSEADDR on listeners).
        TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
}

/// `n` distinct free ports (a server with several listeners must not get the same port twice).
pub fn free_ports(n: usize) -> Option<Vec<u16>> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    for _ in 0..200 {
        if ports.len() == n {
            break;
        }
        let port = free_port()?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    (ports.len() == n).then_some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let ports = free_ports(3).expect("three free ports");
        assert_eq!(ports.len(), 3);
        for (i, p) in ports.iter().enumerate() {
            assert!(RANGE.contains(p), "{p}");
            assert!(!ports[..i].contains(p), "{ports:?}");
            TcpListener::bind(("127.0.0.1", *p)).expect("still free");
        }
    }
}
