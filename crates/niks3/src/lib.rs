//! niks3: a Nix binary cache that fills itself.
//!
//! The library holds one module per job; the `niks3` binary (`main.rs`, `cli/`) only wires them together.
//! Data flows one way: spool → `upload` → `store` + `db`; `http` and `gc` call into those rooms.

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod db;
pub mod gc;
pub mod http;
pub mod metrics;
pub mod upload;
