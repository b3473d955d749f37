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
    Spawn {
        /// The command that was run.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `nix` failed; `stderr` is what it said (e.g. a path is not valid).
    #[error("{program} failed for {paths:?}: {stderr}")]
    Failed {
        /// The command that was run.
        program: String,
        /// The paths it was asked about.
        paths: Vec<String>,
        /// What it printed on stderr (truncated).
        stderr: String,
    },
    /// `nix` printed something we could not understand.
    #[error("unexpected output from {program}: {reason}")]
    Parse {
        /// The command that was run.
        program: String,
        /// What is wrong with it.
        reason: String,
    },
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
    /// order: a path comes after all of its references. `nix path-info --json --recursive`, in batches of
    /// [`PATH_INFO_BATCH`] arguments (Nix 2.8's `path-info` reads no path list from stdin, and one command
    /// line with tens of thousands of paths exceeds the kernel's argument limit: E2BIG).
    pub async fn closure(&self, store_dir: &StoreDir, paths: &[StorePath]) -> Result<Vec<PathInfo>, PathInfoError> {
        self.closure_batched(store_dir, paths, PATH_INFO_BATCH).await
    }

    /// [`NixCli::closure`] with at most `batch` paths per `nix path-info` command line. Each batch asks only
    /// for paths no earlier batch's closure already holds, so a shared closure is read once; the results
    /// are merged. An invalid path fails the whole call, naming the batch it was in.
    pub async fn closure_batched(
        &self,
        store_dir: &StoreDir,
        paths: &[StorePath],
        batch: usize,
    ) -> Result<Vec<PathInfo>, PathInfoError> {
        let batch = batch.max(1);
        let mut merged: std::collections::HashMap<StorePath, PathInfo> = std::collections::HashMap::new();
        let mut rest = paths;
        while !rest.is_empty() {
            let mut args: Vec<String> = Vec::with_capacity(batch.min(rest.len()));
            let mut taken = 0;
            for p in rest {
                if args.len() == batch {
                    break;
                }
                taken += 1;
                if !merged.contains_key(p) {
                    args.push(store_dir.display(p));
                }
            }
            rest = &rest[taken..];
            if args.is_empty() {
                continue;
            }
            let mut cmd = self.command("nix");
            // Only the local store is asked: for a path that is not valid here, Nix 2.8 would otherwise query
            // the configured substituters (network, DNS stalls) before saying so.
            cmd.args(["path-info", "--json", "--recursive", "--extra-experimental-features", "nix-command"]);
            cmd.args(["--option", "substituters", "", "--"]);
            cmd.args(&args);
            let stdout = run(cmd, "nix path-info", &args).await?;
            for info in parse_path_info_json(&stdout, store_dir)? {
                merged.entry(info.path.clone()).or_insert(info);
            }
        }
        topo_sort(merged.into_values().collect())
    }
    /// The outputs of a derivation (`nix-store --query --outputs`), used when the hook got no OUT_PATHS.
    pub async fn derivation_outputs(
        &self,
        store_dir: &StoreDir,
        drv: &StorePath,
    ) -> Result<Vec<StorePath>, PathInfoError> {
        let args = vec![store_dir.display(drv)];
        let mut cmd = self.command("nix-store");
        cmd.args(["--query", "--outputs", "--"]).args(&args);
        let stdout = run(cmd, "nix-store --query --outputs", &args).await?;
        let text =
            String::from_utf8(stdout).map_err(|_| parse_err("nix-store --query --outputs", "output is not UTF-8"))?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| store_dir.parse_path(l).map_err(|e| parse_err("nix-store --query --outputs", &e.to_string())))
            .collect()
    }
    /// The build log of `drv` (`nix-store --read-log`), or `None` when Nix has none.
    pub async fn build_log(&self, store_dir: &StoreDir, drv: &StorePath) -> Result<Option<Vec<u8>>, PathInfoError> {
        let args = vec![store_dir.display(drv)];
        let mut cmd = self.command("nix-store");
        cmd.args(["--read-log", "--"]).args(&args);
        match run(cmd, "nix-store --read-log", &args).await {
            Ok(log) => Ok(Some(log)),
            // Nix 2.8: "error: build log of derivation '…' is not available"
            Err(PathInfoError::Failed { stderr, .. }) if stderr.contains("is not available") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn command(&self, program: &str) -> tokio::process::Command {
        let exe = match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut cmd = tokio::process::Command::new(exe);
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    }
}

/// Paths per `nix path-info` command line: store paths are ~60–100 bytes, so a batch stays far below the
/// kernel's 2 MiB argument limit (and its 128 KiB limit per argument is never approached).
pub const PATH_INFO_BATCH: usize = 4096;

/// Longest stderr kept in an error (Nix can be chatty; the first lines say what went wrong).
const MAX_STDERR: usize = 4096;

pub(crate) async fn run(
    mut cmd: tokio::process::Command,
    program: &str,
    paths: &[String],
) -> Result<Vec<u8>, PathInfoError> {
    let out = cmd.output().await.map_err(|source| PathInfoError::Spawn { program: program.to_owned(), source })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.len() > MAX_STDERR {
            let mut cut = MAX_STDERR;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
            stderr.push_str(" …");
        }
        if stderr.is_empty() {
            stderr = out.status.to_string();
        }
        return Err(PathInfoError::Failed { program: program.to_owned(), paths: paths.to_vec(), stderr });
    }
    Ok(out.stdout)
}

fn parse_err(program: &str, reason: &str) -> PathInfoError {
    PathInfoError::Parse { program: program.to_owned(), reason: reason.to_owned() }
}

/// One entry of `nix path-info --json` (Nix 2.8 prints an array of these).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathInfo {
    path: String,
    /// Absent (with `valid: false`) for paths that are not valid.
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    ca: Option<String>,
    valid: Option<bool>,
}

/// Parses the JSON `nix path-info --json` prints; narHash may be SRI or `sha256:…`.
pub fn parse_path_info_json(json: &[u8], store_dir: &StoreDir) -> Result<Vec<PathInfo>, PathInfoError> {
    const P: &str = "nix path-info";
    let raw: Vec<RawPathInfo> = serde_json::from_slice(json).map_err(|e| parse_err(P, &format!("bad JSON: {e}")))?;
    raw.into_iter()
        .map(|r| {
            let path = store_dir.parse_path(&r.path).map_err(|e| parse_err(P, &e.to_string()))?;
            if r.valid == Some(false) {
                return Err(parse_err(P, &format!("{} is not valid in the local store", r.path)));
            }
            let nar_hash = r.nar_hash.ok_or_else(|| parse_err(P, &format!("{} has no narHash", r.path)))?;
            let nar_hash = Sha256Hash::parse(&nar_hash).map_err(|e| parse_err(P, &e.to_string()))?;
            let nar_size = r.nar_size.ok_or_else(|| parse_err(P, &format!("{} has no narSize", r.path)))?;
            let mut references = r
                .references
                .iter()
                .map(|x| store_dir.parse_path(x))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| parse_err(P, &e.to_string()))?;
            references.sort();
            references.dedup();
            let deriver = match r.deriver {
                Some(d) if !d.is_empty() => Some(store_dir.parse_path(&d).map_err(|e| parse_err(P, &e.to_string()))?),
                _ => None,
            };
            Ok(PathInfo { path, nar_hash, nar_size, references, deriver, ca: r.ca.filter(|c| !c.is_empty()) })
        })
        .collect()
}

/// Orders `infos` so that every path comes after its references (self-references ignored); ties are
/// broken by path so the order is deterministic. A reference outside the set, or a cycle, is an error.
pub fn topo_sort(mut infos: Vec<PathInfo>) -> Result<Vec<PathInfo>, PathInfoError> {
    use std::collections::{BTreeSet, HashMap};
    const P: &str = "nix path-info";
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    infos.dedup_by(|a, b| a.path == b.path);
    let index: HashMap<&StorePath, usize> = infos.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();
    let mut missing_deps = vec![0usize; infos.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); infos.len()];
    for (i, info) in infos.iter().enumerate() {
        for r in info.references.iter().filter(|r| **r != info.path) {
            let &j = index.get(r).ok_or_else(|| {
                parse_err(
                    P,
                    &format!("{} refers to {}, which is not in the closure", info.path.basename(), r.basename()),
                )
            })?;
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
        return Err(parse_err(P, "the references form a cycle"));
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

    #[test]
    fn parses_nix_2_8_json_with_both_hash_forms() {
        let json = br#"[{"path":"/nix/store/0i6zbjd8w6w1hwxg3m5fv8dqpbs21ybb-app","narHash":"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","narSize":384,"references":["/nix/store/1gblm7dp4jv2qq7yqwhy7ag1cf4dkk3z-tree","/nix/store/0i6zbjd8w6w1hwxg3m5fv8dqpbs21ybb-app"],"deriver":"/nix/store/7x26q5k0yjfyp5m6f2q2vx2l9d4i57j2-app.drv","registrationTime":1,"ultimate":true},
            {"path":"/nix/store/1gblm7dp4jv2qq7yqwhy7ag1cf4dkk3z-tree","narHash":"sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73","narSize":8,"references":[],"ca":"fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"}]"#;
        let infos = parse_path_info_json(json, &StoreDir::default()).expect("parses");
        assert_eq!(infos[0].nar_hash, infos[1].nar_hash);
        assert_eq!(infos[0].references.len(), 2);
        assert!(infos[0].deriver.as_ref().is_some_and(StorePath::is_derivation));
        assert!(infos[1].ca.is_some());
        let sorted = topo_sort(infos).expect("sorts");
        assert_eq!(sorted[0].path.name(), "tree");
        let invalid = br#"[{"path":"/nix/store/0i6zbjd8w6w1hwxg3m5fv8dqpbs21ybb-app","valid":false}]"#;
        assert!(parse_path_info_json(invalid, &StoreDir::default()).is_err());
        assert!(parse_path_info_json(b"not json", &StoreDir::default()).is_err());
    }
}
