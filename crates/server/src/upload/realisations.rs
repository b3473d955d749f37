//! Uploading realisations of content-addressed derivation outputs.
//!
//! A client substituting a realisation also substitutes every realisation it depends on
//! (`dependentRealisations`), and fails over to building if one is missing. So before a derivation's
//! realisations are published, the ones they depend on must be in the cache too. Those belong to input
//! derivations (direct or not): usually their own spool entries upload them, but they may not have been
//! processed yet, or may have been built before niks3 was installed. The ones the cache lacks are found by
//! walking the derivation graph down from the drv (`nix show-derivation`) and asking Nix for the
//! realisations of each level's derivations (`nix realisation info`), until all are found.
//!
//! Publishing order: dependencies first, each after its output's narinfo (see
//! [`crate::upload::publish::Publisher::publish_realisation`]), so a realisation is never visible before
//! what it points to.

use crate::db::{Db, DbError};
use crate::upload::UploadError;
use crate::upload::pipeline::Uploader;
use niks3_local::realisations::{CacheLookup, ResolveError, dependencies_first, resolve};
use niks3_nix::realisation::{DrvOutput, Realisation};
use niks3_nix::store_path::StorePath;
use niks3_storage::ObjectKey;
use std::collections::HashSet;

/// The server asks its database which realisations the cache holds.
impl CacheLookup for Db {
    type Error = DbError;
    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DbError> {
        Db::missing(self, keys).await
    }
}

impl From<ResolveError<DbError>> for UploadError {
    fn from(e: ResolveError<DbError>) -> Self {
        match e {
            ResolveError::PathInfo(e) => UploadError::PathInfo(e),
            ResolveError::Unresolved { drv, id, dependent } => {
                UploadError::RealisationUnresolved { drv, id, dependent }
            }
            ResolveError::Key(e) => UploadError::Key(e),
            ResolveError::Lookup(e) => UploadError::Db(e),
        }
    }
}

impl Uploader {
    /// Publishes `realisations` (of outputs of `drv`, whose out paths' closures are already uploaded) and
    /// every realisation they depend on that the cache lacks, dependencies first.
    pub(crate) async fn upload_realisations(
        &self,
        drv: &StorePath,
        realisations: &[Realisation],
    ) -> Result<(), UploadError> {
        let all = resolve(self.nix(), self.store_dir(), drv, realisations, self.db()).await?;
        // Out paths of dependents found in the graph are references of the given out paths, so normally
        // already uploaded; upload what is not (e.g. a dependent's own dependent, or after a GC).
        let given: HashSet<&DrvOutput> = realisations.iter().map(|r| &r.id).collect();
        let extra: Vec<StorePath> =
            all.values().filter(|r| !given.contains(&r.id)).map(|r| r.out_path.clone()).collect();
        if !extra.is_empty() {
            let keys: Vec<ObjectKey> = extra.iter().map(ObjectKey::narinfo).collect();
            let missing: HashSet<ObjectKey> = self.db().missing(&keys).await?.into_iter().collect();
            let extra: Vec<StorePath> =
                extra.into_iter().filter(|p| missing.contains(&ObjectKey::narinfo(p))).collect();
            self.upload_closure(&extra).await?;
        }
        // Realisations the cache holds another version of, and those depending on them (theirs would
        // name outputs the cache's version does not).
        let mut conflicting: HashSet<DrvOutput> = HashSet::new();
        for r in dependencies_first(&all) {
            if let Some(dep) = r.dependents.keys().find(|d| conflicting.contains(*d)) {
                tracing::warn!(realisation = %r.id, dependency = %dep, "not publishing a realisation whose dependency the cache holds in another version");
                conflicting.insert(r.id.clone());
                continue;
            }
            let signed = match self.publisher().publish_realisation(r, chrono::Utc::now()).await {
                Ok(s) => s,
                // The cache keeps the first realisation of an output (first writer wins): this machine
                // built something else for it (a non-deterministic build). Its closure is uploaded all
                // the same; the entry is done, not quarantined.
                Err(e @ UploadError::RealisationConflict { .. }) => {
                    tracing::warn!("{e}");
                    conflicting.insert(r.id.clone());
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!(
                realisation = %signed.id,
                out_path = %self.store_dir().display(&signed.out_path),
                "uploaded realisation"
            );
        }
        Ok(())
    }
}
