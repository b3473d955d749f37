//! Reading realisations, and the derivation graph they hang off, from the local Nix store: the `nix`
//! command line, because a realisation's id needs the derivation's hash modulo, which only Nix computes.
//!
//! A client substituting a realisation also substitutes every realisation it depends on
//! (`dependentRealisations`), and fails over to building if one is missing. So before a derivation's
//! realisations are published, the ones they depend on must be in the cache too: [`resolve`] finds the
//! ones the cache lacks by walking the derivation graph down from the drv (`nix show-derivation`) and
//! asking Nix for the realisations of each level's derivations (`nix realisation info`), and
//! [`dependencies_first`] orders them for publishing. Both the server and `niks3 push` use them.

use super::nix::{LocalNix, PathInfoError};
use niks3_nix::realisation::{DrvOutput, Realisation};
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_storage::ObjectKey;
use niks3_storage::key::KeyError;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;

/// How many levels of input derivations are searched for missing dependent realisations before giving up.
const MAX_DEPTH: usize = 64;

impl LocalNix {
    /// The realisations Nix registered for every output of `drv` (`nix realisation info --json`); fails
    /// if an output of `drv` was never built here. Only the local store is asked.
    ///
    /// Nix 2.13 changed how a derivation's outputs are named on the command line: `<drv>^*` (2.13+; a bare
    /// `<drv>` now means the `.drv` file itself, which has no realisation) against a bare `<drv>` (before;
    /// `^` is then "not a valid URL"). The newer form is tried first and the answer remembered.
    pub async fn realisations(&self, store_dir: &StoreDir, drv: &StorePath) -> Result<Vec<Realisation>, PathInfoError> {
        use std::sync::atomic::Ordering;
        const P: &str = "nix realisation info";
        let full = store_dir.display(drv);
        let caret = format!("{full}^*");
        let old_syntax = self.old_installable_syntax.load(Ordering::Relaxed);
        let stdout = match self.realisation_info(if old_syntax { &full } else { &caret }).await {
            Err(PathInfoError::Failed { stderr, .. }) if !old_syntax && stderr.contains("is not a valid URL") => {
                self.old_installable_syntax.store(true, Ordering::Relaxed);
                self.realisation_info(&full).await?
            }
            other => other?,
        };
        let raw: Vec<serde_json::Value> = serde_json::from_slice(&stdout)
            .map_err(|e| PathInfoError::Parse { program: P.to_owned(), reason: format!("bad JSON: {e}") })?;
        raw.into_iter()
            // Entries without an id are plain paths (`opaquePath`), not realisations.
            .filter(|v| v.get("id").is_some())
            .map(|v| {
                Realisation::from_json_value(v)
                    .map_err(|e| PathInfoError::Parse { program: P.to_owned(), reason: e.to_string() })
            })
            .collect()
    }

    async fn realisation_info(&self, installable: &str) -> Result<Vec<u8>, PathInfoError> {
        let args = vec![installable.to_owned()];
        let mut cmd = self.command("nix");
        cmd.args(["realisation", "info", "--json", "--extra-experimental-features", "nix-command ca-derivations"]);
        cmd.args(["--option", "substituters", "", "--"]).args(&args);
        super::nix::run(cmd, "nix realisation info", &args).await
    }

    /// The input derivations of each of `drvs` (`nix show-derivation`, which Nix 2.15+ keeps as an alias of
    /// `nix derivation show`; only the keys of `inputDrvs` are read, the same in every version), merged and
    /// sorted.
    pub(crate) async fn input_derivations(
        &self,
        store_dir: &StoreDir,
        drvs: &[StorePath],
    ) -> Result<Vec<StorePath>, PathInfoError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Drv {
            #[serde(default)]
            input_drvs: BTreeMap<String, serde_json::Value>,
        }
        const P: &str = "nix show-derivation";
        if drvs.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<String> = drvs.iter().map(|d| store_dir.display(d)).collect();
        let mut cmd = self.command("nix");
        cmd.args(["show-derivation", "--extra-experimental-features", "nix-command"]);
        cmd.args(["--option", "substituters", "", "--"]).args(&args);
        let stdout = super::nix::run(cmd, P, &args).await?;
        let parsed: BTreeMap<String, Drv> = serde_json::from_slice(&stdout)
            .map_err(|e| PathInfoError::Parse { program: P.to_owned(), reason: format!("bad JSON: {e}") })?;
        let mut inputs = BTreeSet::new();
        for drv in parsed.values() {
            for p in drv.input_drvs.keys() {
                let path = store_dir
                    .parse_path(p)
                    .map_err(|e| PathInfoError::Parse { program: P.to_owned(), reason: e.to_string() })?;
                inputs.insert(path);
            }
        }
        Ok(inputs.into_iter().collect())
    }
}

/// What the cache already holds, asked while resolving so that realisations it has are not looked for.
pub trait CacheLookup: Sync {
    /// Why the cache could not be asked.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Those of `keys` the cache does not hold.
    fn missing(&self, keys: &[ObjectKey]) -> impl Future<Output = Result<Vec<ObjectKey>, Self::Error>> + Send;
}

/// A cache that cannot be asked (a client pushing to a remote server): every key counts as missing.
pub struct AssumeNothing;

impl CacheLookup for AssumeNothing {
    type Error = std::convert::Infallible;
    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, Self::Error> {
        Ok(keys.to_vec())
    }
}

/// Why the realisations a realisation depends on could not all be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError<E: std::error::Error + 'static> {
    /// The local Nix store could not be read.
    #[error(transparent)]
    PathInfo(#[from] PathInfoError),
    /// A dependent realisation is in no input derivation's realisations, within the depth searched.
    #[error("realisation {id} of {drv} depends on {dependent}, which no input derivation's realisation provides")]
    Unresolved {
        /// The derivation pushed (full path).
        drv: String,
        /// The realisation that needs the missing one.
        id: String,
        /// The one not found.
        dependent: String,
    },
    /// A dependent's id makes no valid object key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The cache could not be asked what it holds.
    #[error("asking the cache which realisations it holds: {0}")]
    Lookup(#[source] E),
}

/// `realisations` (of outputs of `drv`) plus the realisations they transitively depend on that the cache
/// lacks, found in the realisations of `drv`'s input derivations, level by level. Dependents `cache` says
/// it holds are not looked for (a server asks its database; a client pushing to a remote server passes
/// [`AssumeNothing`] and resolves every dependent).
pub async fn resolve<C: CacheLookup>(
    nix: &LocalNix,
    store_dir: &StoreDir,
    drv: &StorePath,
    realisations: &[Realisation],
    cache: &C,
) -> Result<BTreeMap<DrvOutput, Realisation>, ResolveError<C::Error>> {
    let mut all: BTreeMap<DrvOutput, Realisation> = realisations.iter().map(|r| (r.id.clone(), r.clone())).collect();
    // needed: dependent id → the id that needs it (for the error message)
    let mut needed: BTreeMap<DrvOutput, DrvOutput> = BTreeMap::new();
    add_needed(cache, realisations, &all, &mut needed).await?;
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
            return Err(ResolveError::Unresolved {
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
        add_needed(cache, &found, &all, &mut needed).await?;
        frontier = inputs;
    }
    Ok(all)
}

/// Adds to `needed` the dependents of `of` that are neither in `all` nor in the cache.
async fn add_needed<C: CacheLookup>(
    cache: &C,
    of: &[Realisation],
    all: &BTreeMap<DrvOutput, Realisation>,
    needed: &mut BTreeMap<DrvOutput, DrvOutput>,
) -> Result<(), ResolveError<C::Error>> {
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
    let missing: HashSet<ObjectKey> = cache.missing(&keys).await.map_err(ResolveError::Lookup)?.into_iter().collect();
    for (dep, by, key) in candidates {
        if missing.contains(&key) {
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
