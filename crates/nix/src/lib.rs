//! The Nix formats niks3 reads and writes, owned by us and tested against the real `nix`: nixbase32,
//! hashes, store paths, NAR (writer, reader and listing), narinfo, realisations, fingerprints and ed25519
//! signatures, and the dependency order of a closure.
//!
//! Pure on purpose: no tokio, no processes, no network. Reading the local Nix store is `niks3-local`'s
//! job, talking to S3 or PostgreSQL the server's; what is here can be tested byte for byte against files
//! Nix wrote, and used by anything that speaks the binary-cache formats.

#![forbid(unsafe_code)]

pub mod base32;
pub mod content_address;
pub mod hash;
pub mod listing;
pub mod nar;
pub mod narinfo;
pub mod pathinfo;
pub mod realisation;
pub mod signing;
pub mod store_path;
