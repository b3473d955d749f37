//! What the local Nix store knows about its paths (NarHash, NarSize, references, deriver, CA,
//! registration time), read with the `nix` command line so that it works with any Nix version's database.

use crate::nix::hash::Sha256Hash;
use crate::nix::store_path::{StoreDir, StorePath};
use std::path::PathBuf;

/// Why the local store could not be queried.
#[derive(Debug, thiserror::Error)]
pub enum PathInfoError {
    /// The `nix` command could not be started.
    #[error("running {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// `nix` failed; `stderr` is what it said (e.g. a path is not valid).
    #[error("{program} failed for {paths:?}: {stderr}")]
    Failed { program: String, paths: Vec<String>, stderr: String },
    /// `nix` printed something we could not understand.
    #[error("unexpected output from {program}: {reason}")]
    Parse { program: String, reason: String },
}

/// One valid path of the local store and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// The path.
    pub path: StorePath,
    /// NAR hash Nix registered when the path became valid.
    pub nar_hash: Sha256Hash,
    /// NAR size Nix registered.
    pub nar_size: u64,
    /// Direct references (sorted; may include the path itself).
    pub references: Vec<StorePath>,
    /// The deriver, if registered.
    pub deriver: Option<StorePath>,
    /// Content address, if any.
    pub ca: Option<String>,
}

/// Runs the Nix command-line tools; `bin_dir` lets tests and the NixOS module point at a specific Nix.
#[derive(Clone, Debug, Default)]
pub struct NixCli {
    /// Directory containing `nix` and `nix-store`; `None` means `$PATH`.
    pub bin_dir: Option<PathBuf>,
}

impl NixCli {
    /// The closures of `paths` (every path reachable through references, each once), in dependency
    /// order: a path comes after all of its references. One `nix path-info --json --recursive` call.
    pub async fn closure(&self, store_dir: &StoreDir, paths: &[StorePath]) -> Result<Vec<PathInfo>, PathInfoError> {
        todo!("{store_dir:?} {paths:?}")
    }
    /// The outputs of a derivation (`nix-store --query --outputs`), used when the hook got no OUT_PATHS.
    pub async fn derivation_outputs(&self, store_dir: &StoreDir, drv: &StorePath) -> Result<Vec<StorePath>, PathInfoError> {
        todo!("{store_dir:?} {drv:?}")
    }
    /// The build log of `drv` (`nix-store --read-log`), or `None` when Nix has none.
    pub async fn build_log(&self, store_dir: &StoreDir, drv: &StorePath) -> Result<Option<Vec<u8>>, PathInfoError> {
        todo!("{store_dir:?} {drv:?}")
    }
}
