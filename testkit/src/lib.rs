//! Starts the real things niks3's tests need, each torn down on drop: a throwaway PostgreSQL cluster
//! ([`postgres`]) or a primary with a streaming standby for failover tests ([`postgres_pair`]), a single-node
//! Garage S3 server ([`garage`]) or a three-node Garage cluster with replication factor 3 for fault tests
//! ([`garage_cluster`]), and a private, offline Nix configuration ([`nix`]) for the host's Nix 2.8 or the Nix
//! 2.26 of a Debian trixie chroot ([`chroot`]), single-user or with its own `nix-daemon` ([`nix_daemon`]),
//! a real OpenID provider issuing JWTs ([`oidc`]), and a fault-injecting HTTP proxy to put in front of Garage
//! ([`fault_proxy`]: 503 SlowDown, 429, resets, cut answers, flipped bytes, latency), on ports no outgoing
//! connection can take ([`ports`]). The
//! single servers start in well under a second on a quiet machine, the pair and the cluster in one to three.
//! No mocks: these are the real programs.

#![forbid(unsafe_code)]

pub mod chroot;
pub mod fault_proxy;
pub mod garage;
pub mod garage_cluster;
pub mod nix;
pub mod nix_daemon;
pub mod oidc;
pub mod ports;
pub mod postgres;
pub mod postgres_pair;
