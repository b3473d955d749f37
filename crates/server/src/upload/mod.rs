//! The upload pipeline: spool drainer and uploader. For each output: its closure from the local store,
//! one DB query for what the cache lacks, then per missing path (dependencies first) NAR → sha256 check
//! against Nix's NarHash → zstd → store, then the signed narinfo; plus listing, build log, realisations
//! and `nix-cache-info`. Never touches HTTP.
//!
//! Rooms:
//! - [`publish`]: the step shared with the push API — sign and write a narinfo once its NAR is stored,
//!   and record the objects in the database.
//! - [`nar_stream`]: the single pass over a store path (NAR → NarHash → zstd → FileHash → bounded chunk
//!   channel, with the `.ls` listing parsed from the same bytes on a side thread).
//! - [`pipeline`]: uploads the closures of local store paths (the [`pipeline::Uploader`]).
//! - [`realisations`]: uploads the realisations of content-addressed derivation outputs (and those of
//!   their inputs the cache lacks), each after everything it points to.
//! - [`retry`]: jittered, capped exponential backoff for transient outages.

pub mod pipeline;
pub mod publish;
pub mod realisations;

/// NARs compressed at once when `--jobs` is not given (`niks3 serve`, `push` and `drain` alike): one per
/// core, 2 when the count is unknown.
pub(crate) fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

use crate::db::DbError;
use niks3_local::nar_stream::NarStreamError;
use niks3_local::nix::PathInfoError;
use niks3_nix::store_path::StorePath;
use niks3_storage::{ObjectKey, StorageError};

/// Why uploading a store path (or a closure) failed. [`UploadError::is_transient`] tells the drainer
/// whether to keep the entry and retry later, or to quarantine it.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The object store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Nix could not tell us about a path (not valid, vanished, nix missing, …).
    #[error(transparent)]
    PathInfo(#[from] PathInfoError),
    /// The NAR serialised from disk does not match what Nix recorded (the path was modified after it was
    /// built), or serialising it failed. Nothing was published.
    #[error(transparent)]
    NarStream(#[from] NarStreamError),
    /// The path is gone from the local store (deleted, e.g. by a GC, before it could be uploaded).
    #[error("{path} is no longer in the local store (deleted before it could be uploaded)")]
    Vanished {
        /// The store path (full).
        path: String,
    },
    /// A narinfo would have been published while one of its references is not in the cache; refusing
    /// keeps the invariant "every narinfo has all its references".
    #[error("refusing to publish {}: its reference {} is not in the cache", .path.basename(), .reference.basename())]
    MissingReference {
        /// The path being published.
        path: StorePath,
        /// The reference that is absent.
        reference: StorePath,
    },
    /// A realisation would have been published while its output's narinfo or a realisation it depends on
    /// is not in the cache (a GC race: a retry uploads them again).
    #[error("refusing to publish realisation {id}: {missing} is not in the cache")]
    RealisationIncomplete {
        /// The realisation's id (`sha256:…!out`).
        id: String,
        /// The key that is absent.
        missing: ObjectKey,
    },
    /// A different realisation with the same id is already in the cache: the first one published stays
    /// (a realisation is never replaced, or a push could repoint a derivation output at other content).
    #[error(
        "realisation {id} is already in the cache pointing at {cached}, not {pushed}; realisations are never replaced"
    )]
    RealisationConflict {
        /// The realisation's id (`sha256:…!out`).
        id: String,
        /// The output path (and dependencies) of the cached realisation.
        cached: String,
        /// The output path (and dependencies) of the one pushed.
        pushed: String,
    },
    /// The realisations of a derivation's inputs do not account for a realisation it depends on.
    #[error("realisation {id} of {drv} depends on {dependent}, which no input derivation's realisation provides")]
    RealisationUnresolved {
        /// The derivation (full path).
        drv: String,
        /// The realisation that needs it.
        id: String,
        /// The dependent realisation not found.
        dependent: String,
    },
    /// A key built from parsed parts was refused (cannot happen for parts Nix reported; kept explicit).
    #[error(transparent)]
    Key(#[from] niks3_storage::key::KeyError),
    /// A background task died (panic or cancellation).
    #[error("internal task failure: {0}")]
    Task(String),
}

impl UploadError {
    /// The Nix store query behind this error, when the store could not be read (see
    /// [`PathInfoError::is_environment`]): the drainer reports it on `/health` and `/metrics`.
    pub fn nix_environment(&self) -> Option<&PathInfoError> {
        match self {
            UploadError::PathInfo(e) if e.is_environment() => Some(e),
            _ => None,
        }
    }

    /// True when retrying later may succeed (S3 or PostgreSQL unreachable). False when the input itself
    /// is bad (path invalid, vanished or modified): the entry is quarantined instead of retried forever.
    pub fn is_transient(&self) -> bool {
        match self {
            UploadError::Storage(e) => e.is_transient(),
            UploadError::Db(e) => e.is_transient(),
            // A store niks3 cannot read (Nix missing, daemon down, an answer in an unknown format) is an
            // environment problem, not the entry's fault. A reference vanishing from the cache between our
            // query and the publish is a GC race: a retry recomputes what is missing and uploads it again.
            UploadError::PathInfo(e) => e.is_environment(),
            UploadError::MissingReference { .. } | UploadError::RealisationIncomplete { .. } => true,
            UploadError::NarStream(_)
            | UploadError::Vanished { .. }
            | UploadError::RealisationUnresolved { .. }
            | UploadError::RealisationConflict { .. }
            | UploadError::Key(_)
            | UploadError::Task(_) => false,
        }
    }
}
