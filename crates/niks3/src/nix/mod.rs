//! The Nix formats, owned by us and tested against the real `nix` binary: nixbase32, hashes, store paths,
//! NAR (writer and reader/listing), narinfo, realisations, fingerprints and ed25519 signatures, and reading path
//! metadata from the local Nix store.
//!
//! This module does no network I/O and knows nothing of S3 or PostgreSQL.

pub mod base32;
pub mod build_log;
pub mod content_address;
pub mod daemon;
pub mod hash;
pub mod listing;
pub mod nar;
pub mod narinfo;
pub mod pathinfo;
pub mod realisation;
pub mod signing;
pub mod store_path;
