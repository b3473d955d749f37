//! The integration tests of this crate, in one binary: one module per subject (named as the files were
//! before: `e2e_*`, `gc_*`, …), sharing one [`support`] module. One binary links once instead of once per
//! file. Run one file's tests with `cargo test -p CRATE --test it MODULE::`.

mod db_bookkeeping;
mod db_embedded;
mod e2e_bad_input;
mod e2e_ca;
mod e2e_cluster;
mod e2e_durability;
mod e2e_embedded;
mod e2e_local;
mod e2e_nix_unreadable;
mod e2e_nix_versions;
mod e2e_s3;
mod gc_bench;
mod gc_never_breaks_a_closure;
mod gc_phases;
mod gc_realisations;
mod gc_s3;
mod http_api_auth;
mod http_api_gc;
mod http_api_limits;
mod http_api_tokens;
mod http_audit;
mod http_connections;
mod http_landing;
mod http_oidc;
mod http_private;
mod http_proxy;
mod nix_build_log;
mod nix_daemon_protocol;
mod nix_formats;
mod nix_pathinfo;
mod nix_signing;
mod nixos_eval;
mod push_api_security;
mod push_ca_claims;
mod push_drain;
mod push_garage;
mod push_local;
mod push_multipart;
mod push_relay_zstd_bomb;
mod serve_bound_port;
mod store_local;
mod store_s3;
mod support;
mod upload_walk;
