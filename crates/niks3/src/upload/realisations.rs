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

use crate::db::Db;
use crate::local::nix::LocalNix;
use crate::upload::UploadError;
use crate::upload::pipeline::Uploader;
use niks3_nix::realisation::{DrvOutput, Realisation};
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_storage::ObjectKey;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// How many levels of input derivations are searched for missing dependent realisations before giving up.
const MAX_DEPTH: usize = 64;

impl Uploader {
    /// Publishes `realisations` (of outputs of `drv`, whose out paths' closures are already uploaded) and
    /// every realisation they depend on that the cache lacks, dependencies first.
    pub async fn upload_realisations(&self, drv: &StorePath, realisations: &[Realisation]) -> Result<(), UploadError> {
        let all = resolve(self.nix(), self.store_dir(), drv, realisations, Some(self.db())).await?;
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

/// `realisations` (of outputs of `drv`) plus the realisations they transitively depend on that the cache
/// lacks, found in the realisations of `drv`'s input derivations, level by level. With `db`, dependents the
/// cache already has are not looked for; without (a client pushing to a remote server), every dependent
/// is resolved.
pub async fn resolve(
    nix: &LocalNix,
    store_dir: &StoreDir,
    drv: &StorePath,
    realisations: &[Realisation],
    db: Option<&Db>,
) -> Result<BTreeMap<DrvOutput, Realisation>, UploadError> {
    let mut all: BTreeMap<DrvOutput, Realisation> = realisations.iter().map(|r| (r.id.clone(), r.clone())).collect();
    // needed: dependent id → the id that needs it (for the error message)
    let mut needed: BTreeMap<DrvOutput, DrvOutput> = BTreeMap::new();
    add_needed(db, realisations, &all, &mut needed).await?;
    let mut frontier = vec![drv.clone()];
    let mut visited: HashSet<StorePath> = HashSet::from([drv.clone()]);
    let mut depth = 0;
    while !needed.is_empty() {
        let inputs: Vec<StorePath> = nix
            .input_derivations(store_dir, &frontier)
            .await?
            .into_iter()
            .filter(|d| visited.insert(d.clone()))
            .collect();
        depth += 1;
        if inputs.is_empty() || depth > MAX_DEPTH {
            let (dependent, by) = needed.into_iter().next().unwrap_or_else(|| unreachable!("checked non-empty"));
            return Err(UploadError::RealisationUnresolved {
                drv: store_dir.display(drv),
                id: by.to_string(),
                dependent: dependent.to_string(),
            });
        }
        let mut found = Vec::new();
        for input in &inputs {
            // An input built without ca-derivations (or substituted) may have no realisation: that is
            // only a problem if it was the one needed, which the loop reports when the graph runs out.
            match nix.realisations(store_dir, input).await {
                Ok(rs) => found.extend(rs.into_iter().filter(|r| needed.contains_key(&r.id))),
                Err(e) => tracing::debug!(drv = %store_dir.display(input), error = %e, "no realisations"),
            }
        }
        for r in &found {
            needed.remove(&r.id);
            all.insert(r.id.clone(), r.clone());
        }
        add_needed(db, &found, &all, &mut needed).await?;
        frontier = inputs;
    }
    Ok(all)
}

/// Adds to `needed` the dependents of `of` that are neither in `all` nor (with `db`) in the cache.
async fn add_needed(
    db: Option<&Db>,
    of: &[Realisation],
    all: &BTreeMap<DrvOutput, Realisation>,
    needed: &mut BTreeMap<DrvOutput, DrvOutput>,
) -> Result<(), UploadError> {
    let mut candidates: Vec<(DrvOutput, DrvOutput, ObjectKey)> = Vec::new();
    for r in of {
        for dep in r.dependents.keys() {
            if !all.contains_key(dep) && !needed.contains_key(dep) && *dep != r.id {
                let key = ObjectKey::realisation(&dep.drv_hash, &dep.output)?;
                candidates.push((dep.clone(), r.id.clone(), key));
            }
        }
    }
    if candidates.is_empty() {
        return Ok(());
    }
    let keys: Vec<ObjectKey> = candidates.iter().map(|(_, _, k)| k.clone()).collect();
    let missing: Option<HashSet<ObjectKey>> = match db {
        Some(db) => Some(db.missing(&keys).await?.into_iter().collect()),
        None => None,
    };
    for (dep, by, key) in candidates {
        if missing.as_ref().is_none_or(|m| m.contains(&key)) {
            needed.entry(dep).or_insert(by);
        }
    }
    Ok(())
}

/// The realisations ordered so that each comes after those of its dependents that are in the set.
pub fn dependencies_first(all: &BTreeMap<DrvOutput, Realisation>) -> Vec<&Realisation> {
    let mut order = Vec::with_capacity(all.len());
    let mut done: BTreeSet<&DrvOutput> = BTreeSet::new();
    // Depth-first with an explicit stack; dependents form a DAG (they are inputs), and `done` guards
    // against anything else.
    for start in all.keys() {
        let mut stack: Vec<(&DrvOutput, bool)> = vec![(start, false)];
        while let Some((id, expanded)) = stack.pop() {
            if done.contains(id) {
                continue;
            }
            let Some(r) = all.get(id) else { continue };
            if expanded {
                done.insert(id);
                order.push(r);
            } else {
                stack.push((id, true));
                for dep in r.dependents.keys() {
                    if !done.contains(dep) && dep != id {
                        stack.push((dep, false));
                    }
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use niks3_nix::hash::Sha256Hash;

    fn r(n: u8, deps: &[u8]) -> Realisation {
        let id = |n: u8| DrvOutput { drv_hash: Sha256Hash([n; 32]), output: "out".to_owned() };
        let path = |n: u8| StorePath::from_basename(&format!("{}-p{n}", "a".repeat(32))).expect("path");
        Realisation {
            id: id(n),
            out_path: path(n),
            signatures: BTreeSet::new(),
            dependents: deps.iter().map(|&d| (id(d), path(d))).collect(),
        }
    }

    #[test]
    fn dependencies_come_first() {
        // 9 -> 5 -> 1, 9 -> 1, 7 -> 5
        let all: BTreeMap<DrvOutput, Realisation> =
            [r(9, &[5, 1]), r(5, &[1]), r(1, &[]), r(7, &[5])].into_iter().map(|r| (r.id.clone(), r)).collect();
        let order: Vec<u8> = dependencies_first(&all).iter().map(|r| r.id.drv_hash.0[0]).collect();
        assert_eq!(order.len(), 4);
        let pos = |n: u8| order.iter().position(|&x| x == n).expect("present");
        assert!(pos(1) < pos(5) && pos(5) < pos(9) && pos(5) < pos(7), "{order:?}");
    }
}
