//! This machine: reading the local Nix store (the nix-daemon worker protocol, Nix's log files, the `nix`
//! command line), the one pass that turns a store path into a verified, compressed NAR stream, and the
//! drainer that empties the hook's spool. Both sides use it: `niks3 serve` drains into its own bucket,
//! a builder's `niks3 drain` and `niks3 push` send to a server. It never talks to the network itself.
//!
//! The only crate of the workspace with `unsafe` code, confined to one module ([`zstd_ring`]: zstd's
//! buffer-less C API); everything else here is safe Rust.

#![deny(unsafe_code)]

pub mod build_log;
pub mod child_env;
pub mod daemon;
pub mod drain;
pub mod nar_stream;
pub mod nix;
pub mod realisations;
pub mod retry;
pub mod zstd_ring;
