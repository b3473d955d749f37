//! A valid store path's metadata ([`PathInfo`]: NarHash, NarSize, references, deriver, CA) and the
//! dependency order of a set of them: a cache must publish a path only after everything it refers to,
//! or a client could fetch a narinfo whose references are not there yet.
//!
//! Reading this metadata from a local store is `niks3-local`'s job; this crate only holds the shape.

use crate::hash::Sha256Hash;
use crate::store_path::StorePath;

/// Why a set of paths has no dependency order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    /// A path refers to one outside the set, so the set is not a closure.
    #[error("{path} refers to {reference}, which is not in the closure")]
    NotInClosure {
        /// The referring path (base name).
        path: String,
        /// The reference outside the set (base name).
        reference: String,
    },
    /// The references form a cycle (Nix never registers one, apart from self-references).
    #[error("the references form a cycle")]
    Cycle,
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

/// Orders `infos` so that every path comes after its references (self-references ignored); ties are
/// broken by path so the order is deterministic. A reference outside the set, or a cycle, is an error.
pub fn topo_sort(infos: Vec<PathInfo>) -> Result<Vec<PathInfo>, OrderError> {
    order(infos, true)
}

/// [`topo_sort`] of a part of a closure: references outside `infos` (paths already elsewhere) are
/// ignored. A cycle is an error.
pub fn dependency_order(infos: Vec<PathInfo>) -> Result<Vec<PathInfo>, OrderError> {
    order(infos, false)
}

fn order(mut infos: Vec<PathInfo>, closed: bool) -> Result<Vec<PathInfo>, OrderError> {
    use std::collections::{BTreeSet, HashMap};
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    infos.dedup_by(|a, b| a.path == b.path);
    let index: HashMap<&StorePath, usize> = infos.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();
    let mut missing_deps = vec![0usize; infos.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); infos.len()];
    for (i, info) in infos.iter().enumerate() {
        for r in info.references.iter().filter(|r| **r != info.path) {
            let Some(&j) = index.get(r) else {
                if closed {
                    return Err(OrderError::NotInClosure {
                        path: info.path.basename().clone(),
                        reference: r.basename().clone(),
                    });
                }
                continue;
            };
            missing_deps[i] += 1;
            dependents[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..infos.len()).filter(|&i| missing_deps[i] == 0).collect();
    let mut order = Vec::with_capacity(infos.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            missing_deps[d] -= 1;
            if missing_deps[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() != infos.len() {
        return Err(OrderError::Cycle);
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(c: char, name: &str) -> StorePath {
        StorePath::from_basename(&format!("{}-{name}", c.to_string().repeat(32))).expect("valid")
    }

    fn info(p: &StorePath, refs: &[&StorePath]) -> PathInfo {
        PathInfo {
            path: p.clone(),
            nar_hash: Sha256Hash([0; 32]),
            nar_size: 8,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            ca: None,
        }
    }

    #[test]
    fn topo_sort_puts_dependencies_first_and_ignores_self_references() {
        let (a, b, c, d) = (sp('a', "a"), sp('b', "b"), sp('c', "c"), sp('d', "d"));
        // a -> b -> c, a -> d, c -> c (self), d -> c
        let infos = vec![info(&a, &[&b, &d]), info(&c, &[&c]), info(&b, &[&c]), info(&d, &[&c])];
        let order: Vec<StorePath> = topo_sort(infos).expect("sortable").into_iter().map(|i| i.path).collect();
        assert_eq!(order, vec![c, b, d, a]);
    }

    #[test]
    fn topo_sort_rejects_dangling_references_and_cycles() {
        let (a, b) = (sp('a', "a"), sp('b', "b"));
        assert!(topo_sort(vec![info(&a, &[&b])]).expect_err("dangling").to_string().contains("not in the closure"));
        assert!(topo_sort(vec![info(&a, &[&b]), info(&b, &[&a])]).expect_err("cycle").to_string().contains("cycle"));
    }
}
