//! Everything behind `niks3 serve`: configuration, the PostgreSQL bookkeeping, the upload pipeline that
//! drains the spool into the bucket and publishes narinfos, the HTTP server (read proxy, push API, landing
//! page, health, metrics) and the garbage collector.
//!
//! Data flows one way: spool → `upload` → storage + `db`; `http` and `gc` call into those rooms. The
//! binary (`niks3`) only wires them together; tests build servers with the same constructors.

#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod gc;
pub mod http;
pub mod metrics;
pub mod oidc;
pub mod upload;
