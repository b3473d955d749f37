//! The push routes (docs/api.md), a file per step:
//! - `validate.rs`: what a push announces is parsed and checked, the closure ordered dependencies first;
//! - `announce.rs`: `POST /api/v1/push` claims the closure's keys (one upload session) and answers which
//!   paths are missing and where each missing NAR goes (a presigned `PUT` bound to the file, a presigned
//!   multipart upload, or the relay route `PUT /api/v1/uploads/{id}/nar/{nix32}` in `../relay.rs`);
//! - `complete.rs`: `POST /api/v1/complete` completes the multipart uploads, checks every missing NAR is
//!   stored, publishes the narinfos a level of the closure at a time and ends the session;
//! - `abort.rs`: `POST /api/v1/abort` ends sessions a client gave up on;
//! - `touch.rs`: `POST /api/v1/touch`, a pusher's heartbeat, keeps its sessions' leases;
//! - `sessions.rs`: what the upload routes ask of a session (owned, claimed, planned, its multiparts).
//!
//! The server trusts nothing it is sent: every path, hash and reference is parsed and checked, keys are
//! only ever built from validated parts, and a NAR can only be written under a key its session claimed.
//! Every failure is an [`super::error::ApiError`].

mod abort;
mod announce;
mod complete;
mod sessions;
mod touch;
mod validate;

pub use abort::abort;
pub use announce::announce;
pub use complete::complete;
pub(super) use sessions::{nar_upload_target, planned_nar, refuse_unclaimed};
pub use touch::touch;
pub use validate::{ClosureLimits, MAX_ROOTS, ValidClosure, validate_closure};

/// Shortens attacker-controlled text before it goes into an error message.
pub(super) fn clip(s: &str) -> String {
    super::error::clip(s, 200)
}
