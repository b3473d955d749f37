//! Reading realisations, and the derivation graph they hang off, from the local Nix store: the `nix`
//! command line, because a realisation's id needs the derivation's hash modulo, which only Nix computes.

use super::nix::{LocalNix, PathInfoError};
use niks3_nix::realisation::Realisation;
use niks3_nix::store_path::{StoreDir, StorePath};
use std::collections::{BTreeMap, BTreeSet};

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
    pub async fn input_derivations(
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
