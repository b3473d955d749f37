//! Starts the real things niks3's tests need, each in well under a second and each torn down on drop:
//! a throwaway PostgreSQL cluster ([`postgres`]), a single-node Garage S3 server ([`garage`]) and a private,
//! offline Nix configuration ([`nix`]) for the host's Nix 2.8 or the Nix 2.26 of a Debian trixie chroot
//! ([`chroot`]), single-user or with its own `nix-daemon` ([`nix_daemon`]). No mocks: these are the real
//! programs.

#![forbid(unsafe_code)]

pub mod chroot;
pub mod garage;
pub mod garage_cluster;
pub mod nix;
pub mod nix_daemon;
pub mod postgres;
pub mod postgres_pair;
