//! Several servers sharing one bucket and database (docs/deployment.md): a builder's drainer pushes to
//! one and moves on to the next when it does not answer, so one dead server never stops a builder's
//! uploads.
//!
//! Failover is per push, not per request: a push's session lives in the database every server shares,
//! but its relay URLs name the server that planned them, so a push that fails half way is pushed again
//! whole through the next server (pushes are idempotent: what the first server published is not sent
//! again). The server that last answered stays the current one; the list is not a load balancer (put
//! one in front of the servers for that) but a way around the one that is down.

use crate::push::Pusher;
use crate::{ApiClient, ClientError};
use niks3_local::drain::{Process, Work};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Pushes through the first server of a list that answers.
#[derive(Debug)]
pub struct Failover {
    pushers: Vec<Pusher>,
    /// Index of the server that answered last (where the next push starts).
    current: AtomicUsize,
}

impl Failover {
    /// One pusher per server, tried in the order given. `make` builds a server's pusher from its client.
    pub fn new(clients: Vec<ApiClient>, make: impl Fn(ApiClient) -> Pusher) -> Result<Self, ClientError> {
        if clients.is_empty() {
            return Err(ClientError::Config("no server to push to".to_owned()));
        }
        Ok(Failover { pushers: clients.into_iter().map(make).collect(), current: AtomicUsize::new(0) })
    }

    /// The servers, in the order they are tried.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.pushers.iter().map(|p| p.api.base())
    }
}

impl ClientError {
    /// True when another server may succeed where this one failed: a request got no answer (no
    /// connection, a timeout, a reset) or a 502/503/504 (a proxy in front of a dead server, a server
    /// without its database). A presigned upload to S3 failing the same way counts too: trying the next
    /// server costs one more attempt, and telling the two apart would need the URL, which is a secret.
    /// A refusal (4xx) or a bad local path would be the same everywhere.
    pub fn server_unavailable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => matches!(*status, 502..=504),
            _ => false,
        }
    }
}

impl Process for Failover {
    type Error = ClientError;

    async fn process(&self, works: &[Work]) -> Result<(), ClientError> {
        let n = self.pushers.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let pusher = &self.pushers[at];
            match pusher.process(works).await {
                Ok(()) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if n > 1 && e.server_unavailable() => {
                    let next = self.pushers[(at + 1) % n].api.base();
                    tracing::warn!("{} did not answer ({e}); trying {next}", pusher.api.base());
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        // Every server was tried; the drainer retries the entry with backoff.
        Err(last.unwrap_or_else(|| ClientError::Config("no server to push to".to_owned())))
    }

    fn is_transient(error: &ClientError) -> bool {
        error.is_transient()
    }

    fn nix_environment(error: &ClientError) -> Option<&niks3_local::nix::PathInfoError> {
        error.nix_environment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> ClientError {
        ClientError::Status { what: "POST /api/v1/push".to_owned(), status, message: String::new() }
    }

    #[test]
    fn only_a_server_that_did_not_answer_sends_the_push_elsewhere() {
        for s in [502, 503, 504] {
            assert!(status(s).server_unavailable(), "{s}");
        }
        // A refusal, a conflict (push again: the next attempt goes to the same server) or a server bug
        // would be the same on every server.
        for s in [400, 401, 403, 409, 413, 500] {
            assert!(!status(s).server_unavailable(), "{s}");
        }
        assert!(!ClientError::BadPath("x".to_owned()).server_unavailable());
    }

    #[test]
    fn no_server_is_a_configuration_error() {
        let e = Failover::new(Vec::new(), |_| unreachable!("no client to make a pusher of")).expect_err("empty");
        assert!(e.to_string().contains("no server"), "{e}");
    }
}
