//! Checking what a push announces: every path, hash and reference parsed and checked, the closure
//! ordered dependencies first, and which of its paths the cache lacks.

use super::clip;
use crate::http::HttpState;
use crate::http::api::error::ApiError;
use niks3_api::protocol::PathInfoWire;
use niks3_nix::content_address;
use niks3_nix::hash::Sha256Hash;
use niks3_nix::pathinfo::{PathInfo, topo_sort};
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_storage::ObjectKey;
use std::collections::{HashMap, HashSet};

/// Longest `ca` value accepted (real ones are < 100 characters).
pub(super) const MAX_CA_LEN: usize = 1024;

/// Most distinct roots in one push: each becomes a GC closure, and a push is one tool invocation, not a
/// dump of a whole store (send many pushes for that).
pub const MAX_ROOTS: usize = 1024;

/// A validated closure: its roots and its paths, dependencies before dependents.
#[derive(Debug)]
pub struct ValidClosure {
    /// The roots, in request order, each once.
    pub roots: Vec<StorePath>,
    /// Every path, each after all of its references.
    pub paths: Vec<PathInfo>,
}

/// What one push request may carry.
#[derive(Clone, Copy, Debug)]
pub struct ClosureLimits {
    /// Most paths.
    pub max_paths: usize,
    /// Most roots (see [`MAX_ROOTS`]).
    pub max_roots: usize,
    /// Largest NarSize (larger NARs could not be uploaded anyway).
    pub max_nar_size: u64,
}

impl ClosureLimits {
    /// The limits of a server configured with `limits`.
    pub fn of(limits: &crate::http::api::ApiLimits) -> Self {
        ClosureLimits { max_paths: limits.max_paths, max_roots: MAX_ROOTS, max_nar_size: limits.max_nar_upload }
    }
}

/// Validates a closure sent by a client: paths in `store_dir`, hashes well-formed, NarSize in 1..=the
/// largest upload, no duplicates, every reference inside the request, no cycles, at most `max_paths`
/// paths and `max_roots` roots, roots among the paths, and every `ca` claim really determining its path
/// ([`content_address::check_store_path`]). Linear in the size of the request; CPU-bound, so callers on
/// the async workers run it through `spawn_blocking`. The error message names the offending input
/// (clipped).
pub fn validate_closure(
    store_dir: &StoreDir,
    roots: &[String],
    paths: &[PathInfoWire],
    limits: ClosureLimits,
) -> Result<ValidClosure, String> {
    if paths.is_empty() || roots.is_empty() {
        return Err("a push needs at least one root and one path".to_owned());
    }
    if paths.len() > limits.max_paths {
        return Err(format!("too many paths: {} (at most {} per request)", paths.len(), limits.max_paths));
    }
    if roots.len() > limits.max_roots {
        return Err(format!("too many roots: {} (at most {} per request)", roots.len(), limits.max_roots));
    }
    let parse = |p: &str, what: &str| {
        store_dir
            .parse_path(p)
            .map_err(|e| format!("{what} {:?} is not a valid store path: {}", clip(p), clip(&e.to_string())))
    };
    let mut infos: Vec<PathInfo> = Vec::with_capacity(paths.len());
    let mut index: HashMap<StorePath, usize> = HashMap::with_capacity(paths.len());
    for w in paths {
        let path = parse(&w.path, "path")?;
        let nar_hash = Sha256Hash::parse(&w.nar_hash)
            .map_err(|_| format!("NarHash of {} is not a sha256 hash: {:?}", path.basename(), clip(&w.nar_hash)))?;
        if w.nar_size == 0 {
            return Err(format!("NarSize of {} is 0", path.basename()));
        }
        if w.nar_size > limits.max_nar_size {
            return Err(format!(
                "NarSize of {} is {} bytes, above the largest NAR this server accepts ({} bytes)",
                path.basename(),
                w.nar_size,
                limits.max_nar_size
            ));
        }
        let mut references = Vec::with_capacity(w.references.len());
        for r in &w.references {
            references.push(parse(r, "reference")?);
        }
        references.sort();
        references.dedup();
        let deriver = match &w.deriver {
            Some(d) if !d.is_empty() => {
                let d = parse(d, "deriver")?;
                if !d.is_derivation() {
                    return Err(format!("deriver {} is not a .drv", d.basename()));
                }
                Some(d)
            }
            _ => None,
        };
        let ca = match &w.ca {
            Some(ca) if !ca.is_empty() => {
                if ca.len() > MAX_CA_LEN || ca.chars().any(char::is_control) {
                    return Err(format!("CA of {} is malformed", path.basename()));
                }
                content_address::check_store_path(store_dir, &path, ca, &references)
                    .map_err(|e| format!("CA of {} refused: {e}", path.basename()))?;
                Some(ca.clone())
            }
            _ => None,
        };
        if index.insert(path.clone(), infos.len()).is_some() {
            return Err(format!("path {} appears twice", path.basename()));
        }
        infos.push(PathInfo { path, nar_hash, nar_size: w.nar_size, references, deriver, ca });
    }
    for info in &infos {
        for r in &info.references {
            if !index.contains_key(r) {
                return Err(format!(
                    "{} references {}, which is not in the request (send the whole closure)",
                    info.path.basename(),
                    r.basename()
                ));
            }
        }
    }
    let mut root_paths = Vec::with_capacity(roots.len());
    let mut seen_roots = HashSet::with_capacity(roots.len());
    for r in roots {
        let p = parse(r, "root")?;
        if !index.contains_key(&p) {
            return Err(format!("root {} is not among the paths", p.basename()));
        }
        if seen_roots.insert(p.clone()) {
            root_paths.push(p);
        }
    }
    // Every reference is in the set (checked above), so the only order error left is a cycle.
    let paths = topo_sort(infos).map_err(|e| e.to_string())?;
    Ok(ValidClosure { roots: root_paths, paths })
}

/// Validates a request's closure on a blocking thread (it is linear but can be 100 000 paths).
pub(super) async fn validate_off_workers(
    state: &HttpState,
    roots: Vec<String>,
    paths: Vec<PathInfoWire>,
) -> Result<ValidClosure, ApiError> {
    let store_dir = state.store_dir.clone();
    let limits = ClosureLimits::of(&state.limits);
    let joined = tokio::task::spawn_blocking(move || validate_closure(&store_dir, &roots, &paths, limits)).await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::bad(e)),
        Err(e) => Err(ApiError::Internal(format!("validating the closure: {e}"))),
    }
}

/// The paths of `closure` whose narinfo the cache lacks. A path already published with another NarHash
/// is a conflict (409 naming it): a published narinfo is never replaced, and a pusher that believes its
/// content differs should know.
pub(super) async fn missing_paths<'a>(
    state: &HttpState,
    closure: &'a ValidClosure,
) -> Result<Vec<&'a PathInfo>, ApiError> {
    let narinfo_keys: Vec<ObjectKey> = closure.paths.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    let published = state.db.published_nars(&narinfo_keys).await.map_err(|e| ApiError::Database(e.to_string()))?;
    let mut missing = Vec::new();
    for (p, key) in closure.paths.iter().zip(&narinfo_keys) {
        match published.get(key.as_str()) {
            None => missing.push(p),
            Some(None) => {}
            Some(Some(nar)) if *nar == ObjectKey::nar(&p.nar_hash).as_str() => {}
            Some(Some(nar)) => {
                tracing::warn!(path = %p.path.basename(), cached = %nar, pushed = %p.nar_hash, "push of a cached path with another NarHash refused");
                return Err(ApiError::conflict(format!(
                    "{} is already in the cache with another NAR ({nar}), not {}; a published path is never replaced",
                    p.path.basename(),
                    p.nar_hash
                )));
            }
        }
    }
    Ok(missing)
}

/// Splits the missing paths into those to upload and those whose NAR is over the size limit: the
/// server's `--max-nar-size` or, if smaller, the one the push asked for (`asked`). The second are left
/// out of the push (docs/api.md "Size limit").
pub(super) fn skip_oversized<'a>(
    state: &HttpState,
    asked: Option<u64>,
    missing: Vec<&'a PathInfo>,
) -> (Vec<&'a PathInfo>, Vec<&'a PathInfo>) {
    let limit = match (state.limits.max_nar_size, asked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match limit {
        None => (missing, Vec::new()),
        Some(max) => missing.into_iter().partition(|p| p.nar_size <= max),
    }
}

#[cfg(test)]
mod tests {
    use super::super::complete::levels;
    use super::*;

    fn w(hash: &str, refs: &[&str]) -> PathInfoWire {
        PathInfoWire {
            path: format!("/nix/store/{hash}-p"),
            nar_hash: "sha256:1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9".to_owned(),
            nar_size: 120,
            references: refs.iter().map(|r| format!("/nix/store/{r}-p")).collect(),
            deriver: None,
            ca: None,
        }
    }

    fn lim(max_paths: usize) -> ClosureLimits {
        ClosureLimits { max_paths, max_roots: 4, max_nar_size: 1 << 20 }
    }

    const A: &str = "0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
    const B: &str = "1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
    const C: &str = "2c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";

    #[test]
    fn roots_are_capped_and_counted_as_sent() {
        let sd = StoreDir::default();
        let roots: Vec<String> = (0..5).map(|_| format!("/nix/store/{A}-p")).collect();
        let e = validate_closure(&sd, &roots, &[w(A, &[])], lim(10)).expect_err("5 roots, at most 4");
        assert!(e.contains("too many roots: 5 (at most 4"), "{e}");
        let c = validate_closure(&sd, &roots[..4], &[w(A, &[])], lim(10)).expect("duplicates count once");
        assert_eq!(c.roots.len(), 1);
    }

    #[test]
    fn closure_is_ordered_dependencies_first() {
        let sd = StoreDir::default();
        let paths = [w(A, &[A, B, C]), w(B, &[C]), w(C, &[])];
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &paths, lim(10)).expect("valid");
        let order: Vec<&str> = c.paths.iter().map(|p| p.path.hash_part()).collect();
        assert_eq!(order, [C, B, A]);
    }

    #[test]
    fn cycles_missing_references_and_too_many_paths_are_refused() {
        let sd = StoreDir::default();
        let root = [format!("/nix/store/{A}-p")];
        let e = validate_closure(&sd, &root, &[w(A, &[B]), w(B, &[A])], lim(10)).expect_err("cycle");
        assert!(e.contains("cycle"), "{e}");
        let e = validate_closure(&sd, &root, &[w(A, &[C])], lim(10)).expect_err("missing");
        assert!(e.contains("not in the request"), "{e}");
        let e = validate_closure(&sd, &root, &[w(A, &[]), w(B, &[])], lim(1)).expect_err("too many");
        assert!(e.contains("too many"), "{e}");
        let e = validate_closure(&sd, &[format!("/nix/store/{B}-p")], &[w(A, &[])], lim(10)).expect_err("root");
        assert!(e.contains("not among the paths"), "{e}");
    }

    #[test]
    fn levels_put_each_path_after_its_references_and_no_path_beside_one() {
        const D: &str = "3c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
        const E: &str = "4c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
        let sd = StoreDir::default();
        // A refers to itself, B and D; B to C; C and D to nothing. D is already cached (not in todo).
        let paths = [w(A, &[A, B, D]), w(B, &[C]), w(C, &[]), w(D, &[])];
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &paths, lim(10)).expect("valid");
        let todo: Vec<&PathInfo> = c.paths.iter().filter(|p| p.path.hash_part() != D).collect();
        let names: Vec<Vec<&str>> =
            levels(&c.paths, &todo).iter().map(|l| l.iter().map(|p| p.path.hash_part()).collect()).collect();
        assert_eq!(names, [vec![C], vec![B], vec![A]]);
        // Independent paths share a level.
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &[w(A, &[B, C]), w(B, &[]), w(C, &[])], lim(10))
            .expect("valid");
        let todo: Vec<&PathInfo> = c.paths.iter().collect();
        let sizes: Vec<usize> = levels(&c.paths, &todo).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1]);
        // Levels are heights in the whole closure, not among the missing paths: A stands on cached B
        // and C, so it is published after E, which stands on nothing, though both are missing.
        let paths = [w(A, &[B]), w(B, &[C]), w(C, &[]), w(E, &[])];
        let roots = [format!("/nix/store/{A}-p"), format!("/nix/store/{E}-p")];
        let c = validate_closure(&sd, &roots, &paths, lim(10)).expect("valid");
        let todo: Vec<&PathInfo> = c.paths.iter().filter(|p| [A, E].contains(&p.path.hash_part())).collect();
        let names: Vec<Vec<&str>> =
            levels(&c.paths, &todo).iter().map(|l| l.iter().map(|p| p.path.hash_part()).collect()).collect();
        assert_eq!(names, [vec![E], vec![A]]);
    }
}
