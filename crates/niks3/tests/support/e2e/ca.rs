//! Content-addressed derivations for the end-to-end tests: a graph of them whose builders refuse to run a
//! second time, and a build into a fresh store that must substitute it.

use super::World;
use std::path::{Path, PathBuf};

/// a: floating CA; b: floating CA referring to a; c: input-addressed (deferred) referring to b. Every builder
/// fails once `marker` (a path as Nix sees it) exists, so a second realisation of any of them is a build, not
/// a substitution. Needs `experimental-features = ca-derivations`.
pub fn graph(marker: &Path) -> String {
    format!(
        r#"{{ salt }}:
let
  ca = {{ __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }};
  mk = name: attrs: script: derivation ({{
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("if [ -e {marker} ]; then echo 'REBUILT ${{name}}' >&2; exit 1; fi; " + script) ];
  }} // attrs);
in rec {{
  a = mk "e2e-ca-a" ca "echo a ${{salt}} > $out";
  b = mk "e2e-ca-b" ca "echo b ${{a}} > $out";
  c = mk "e2e-ia-c" {{}} "echo c ${{b}} > $out";
}}
"#,
        marker = marker.display()
    )
}

/// `nix-build` of `attr` of `expr_file` (a host path) into a fresh chroot store `name`, substituting from
/// `url` only, signatures required: whether it succeeded, what it printed, and the store's host directory.
pub fn build_in_fresh_store(
    w: &World,
    expr_file: &Path,
    attr: &str,
    url: &str,
    public_key: &str,
    name: &str,
) -> (bool, String, PathBuf) {
    let store = w.nix.chroot_store(name).expect("chroot store");
    let out = w
        .nix
        .command("nix-build")
        .arg("--no-out-link")
        .arg(w.nix.nix_path(expr_file))
        .args(["--argstr", "salt", w.nix.salt(), "-A", attr])
        .arg("--store")
        .arg(w.nix.nix_path(&store))
        .args(["--option", "substituters", url])
        .args(["--option", "trusted-public-keys", public_key])
        .args(["--option", "require-sigs", "true"])
        .output()
        .expect("nix-build");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text, store)
}
