//! `niks3-hook`: Nix's `post-build-hook` for niks3. Queues the outputs of the derivation Nix just built
//! into the local spool and adds a GC root for each, then exits.
//!
//! Promises (a build must never suffer for the cache): always exits 0, never touches the network, never
//! waits on the daemon, never runs another program, finishes in about a millisecond. Every problem is
//! reported as one line `niks3-hook: …` on stderr, which Nix shows in the build output.
//!
//! Environment: `DRV_PATH`, `OUT_PATHS` (space-separated; empty in Nix 2.8, then the outputs are read from
//! the `.drv`; outputs the `.drv` has no path for — floating content-addressed or deferred — are queued by
//! name as `realisation=` for the daemon to resolve; they cannot get a GC root here), `NIKS3_SPOOL_DIR` (default `/var/lib/niks3/spool`; it, `tmp/` and `new/` must exist and not be symlinks: the hook creates no directory in the spool), `NIKS3_GCROOTS_DIR`
//! (default `/nix/var/nix/gcroots/niks3`, created if missing), `NIKS3_NIX_STORE_DIR` (default `/nix/store`).

#![forbid(unsafe_code)]

use niks3_spool::{Entry, Spool, drv, gcroots, store_path};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const DEFAULT_SPOOL_DIR: &str = "/var/lib/niks3/spool";
const DEFAULT_GCROOTS_DIR: &str = "/nix/var/nix/gcroots/niks3";
const DEFAULT_STORE_DIR: &str = "/nix/store";

fn main() {
    std::panic::set_hook(Box::new(|info| {
        say(&format!("internal error, nothing queued for this build: {info}"));
    }));
    let _ = std::panic::catch_unwind(run);
    std::process::exit(0);
}

/// Writes one `niks3-hook: …` line to stderr; a closed stderr is ignored (the build must go on).
fn say(msg: &str) {
    let line = format!("niks3-hook: {}\n", msg.replace(['\n', '\r'], " "));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Reads a variable; unset or empty gives `None`, non-UTF-8 is reported and treated as unset.
fn var(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            say(&format!("{name} is not valid UTF-8, ignored"));
            None
        }
    }
}

fn run() {
    let store_dir_setting = var("NIKS3_NIX_STORE_DIR").unwrap_or_else(|| DEFAULT_STORE_DIR.to_owned());
    let store_dir = match store_path::normalise_store_dir(&store_dir_setting) {
        Ok(d) => d,
        Err(e) => return say(&format!("NIKS3_NIX_STORE_DIR: {e}; nothing queued")),
    };
    let spool_dir = PathBuf::from(var("NIKS3_SPOOL_DIR").unwrap_or_else(|| DEFAULT_SPOOL_DIR.to_owned()));
    let gcroots_dir = PathBuf::from(var("NIKS3_GCROOTS_DIR").unwrap_or_else(|| DEFAULT_GCROOTS_DIR.to_owned()));

    let drv = var("DRV_PATH").and_then(|d| match store_path::validate(store_dir, &d) {
        Ok(base) if base.rsplit_once('.').is_some_and(|(_, ext)| ext == "drv") => Some(d),
        Ok(_) => {
            say(&format!("DRV_PATH {d:?} does not end in .drv, ignored"));
            None
        }
        Err(e) => {
            say(&format!("DRV_PATH: {e}, ignored"));
            None
        }
    });

    // The .drv is read even when OUT_PATHS is given: an output whose path it lacks (floating
    // content-addressed, or input-addressed but deferred because it depends on one) needs its realisation
    // uploaded, and only the daemon can ask Nix for it.
    let out_paths = var("OUT_PATHS").unwrap_or_default();
    let drv_outputs = drv.as_ref().and_then(|d| match drv::read_outputs(Path::new(d)) {
        Ok(outputs) => Some(outputs),
        Err(e) if out_paths.trim().is_empty() => {
            say(&format!("{e}; queueing the derivation only"));
            None
        }
        Err(e) => {
            say(&format!("{e}; queueing OUT_PATHS without content-addressed realisations"));
            None
        }
    });
    let mut realisations: Vec<String> = Vec::new();
    let mut outs: Vec<String> = Vec::new();
    for o in drv_outputs.iter().flatten().filter(|o| o.path.is_empty()) {
        match niks3_spool::check_output_name(&o.name) {
            Ok(()) if realisations.contains(&o.name) => {}
            Ok(()) => realisations.push(o.name.clone()),
            Err(e) => say(&format!("output {:?} of the derivation: {e}, skipped", o.name)),
        }
    }
    if out_paths.trim().is_empty() {
        // Nix 2.8 passes an empty OUT_PATHS: the outputs are in the .drv (those it has a path for).
        for o in drv_outputs.into_iter().flatten().filter(|o| !o.path.is_empty()) {
            push_valid(&mut outs, store_dir, o.path, "output in .drv");
        }
    } else {
        for p in out_paths.split_ascii_whitespace() {
            push_valid(&mut outs, store_dir, p.to_owned(), "OUT_PATHS");
        }
    }
    if drv.is_none() && outs.is_empty() {
        return say("no valid DRV_PATH or output path given by Nix; nothing queued");
    }

    let spool = match Spool::open_existing(&spool_dir) {
        Ok(s) => s,
        Err(e) => return say(&format!("spool unusable ({e}); NOT queued: {}", describe(drv.as_ref(), &outs))),
    };

    // Roots first: the daemon may process the entry the instant it appears, and removes the roots then.
    let mut created = Vec::new();
    for out in &outs {
        match gcroots::ensure(&gcroots_dir, out) {
            Ok(true) => created.push(out),
            Ok(false) => {}
            Err(e) => say(&format!("cannot add GC root ({e}); {out} may be garbage-collected before upload")),
        }
    }
    let queued = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let entry = Entry { drv: drv.clone(), outs: outs.clone(), realisations, queued };
    if let Err(e) = spool.enqueue(&entry) {
        say(&format!("cannot queue ({e}); NOT queued: {}", describe(drv.as_ref(), &outs)));
        for out in created {
            let _ = gcroots::remove(&gcroots_dir, out);
        }
    }
}

/// Adds `path` to `outs` if it is a valid store path not already there; reports it otherwise.
fn push_valid(outs: &mut Vec<String>, store_dir: &str, path: String, source: &str) {
    match store_path::validate(store_dir, &path) {
        Ok(_) if outs.contains(&path) => {}
        Ok(_) => outs.push(path),
        Err(e) => say(&format!("{source}: {e}, skipped")),
    }
}

fn describe(drv: Option<&String>, outs: &[String]) -> String {
    if outs.is_empty() { drv.cloned().unwrap_or_default() } else { outs.join(" ") }
}
