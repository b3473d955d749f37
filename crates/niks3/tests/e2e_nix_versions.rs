//! The whole path through each Nix we support: the host's Nix 2.8 (Debian bookworm) and Nix 2.26 (the
//! Debian trixie chroot of `scripts/trixie-nix-chroot.sh`), each single-user and multi-user (a real
//! `nix-daemon` that runs the builds and the hook in its own environment). One test per cell does it all:
//!
//! - `nix-build` of a closure with odd content (names with spaces and unicode, symlinks, an executable, an
//!   empty file and directory) and of content-addressed derivations, through `niks3-hook`, into the spool;
//! - `niks3 serve` on its embedded PostgreSQL caches them, realisations included (one of them found only
//!   by walking the derivation graph: its own entries are dropped);
//! - that same Nix substitutes them into a fresh store through the read proxy, signatures required, the
//!   content-addressed graph without building anything, and reads the build log with `nix log`;
//! - `niks3 push` of a path no hook saw, and `niks3 drain --server` of a builder's spool.
//!
//! Without the chroot the 2.26 cells skip loudly, or fail under `CI=true`.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::ca::{build_in_fresh_store, graph};
use crate::support::e2e::{Backend, GRAPH, Mode, ODD_FILE, Server, World};
use niks3_testkit::chroot::Chroot;
use niks3_testkit::nix::NixEnv;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[test]
fn nix_2_8_single_user() {
    cell(None, Mode::SingleUser);
}

#[test]
fn nix_2_8_multi_user() {
    cell(None, Mode::MultiUser);
}

#[test]
fn nix_2_26_single_user() {
    if let Some(chroot) = Chroot::trixie_or_skip("nix_2_26_single_user").expect("trixie chroot") {
        cell(Some(&chroot), Mode::SingleUser);
    }
}

#[test]
fn nix_2_26_multi_user() {
    if let Some(chroot) = Chroot::trixie_or_skip("nix_2_26_multi_user").expect("trixie chroot") {
        cell(Some(&chroot), Mode::MultiUser);
    }
}

fn cell(chroot: Option<&Chroot>, mode: Mode) {
    let start = Instant::now();
    let nix = chroot.map_or_else(NixEnv::new, NixEnv::in_chroot).expect("nix env");
    nix.conf_extra("experimental-features = nix-command ca-derivations").expect("enable ca-derivations");
    let w = World::with_nix(nix, mode);
    let version = w.nix.nix_version().expect("nix --version");
    let cell = format!("Nix {version} {mode:?}");
    let (major, minor) = parse_version(&version);
    if chroot.is_some() {
        assert!((major, minor) >= (2, 19), "{cell}: the chroot's Nix should print path-info as a JSON object");
    }

    // Built before the server runs, the spool keeping what the hook queued: the odd closure and the
    // content-addressed graph stay for `niks3 serve`, `drained` goes to a builder's spool.
    let marker = w.dir.path().join("built-once");
    let ca_expr = graph(&w.nix.nix_path(&marker));
    let odd = w.build(GRAPH, "odd");
    let c_out = w.build(&ca_expr, "c");
    let drained = w.build(GRAPH, "drained");
    let queued = w.spool_entries("new").len();
    // odd, hello, a, b, c, drained, and the resolved copies of b and c that Nix builds too.
    assert!(queued >= 6, "{cell}: the hook queued {queued} entries");
    let builder_spool = move_entries_of(&w, &w.nix.deriver(&drained[0]).expect("deriver"));
    // b's entries (the original and the resolved) are dropped, as if b had been built before niks3 was
    // installed: its realisation must be found by walking c's input derivations.
    let dropped = drop_entries(&w, |drv| drv.ends_with("-e2e-ca-b.drv"));
    assert!(dropped >= 1, "{cell}: no entry for b");
    let pushed = add_odd_source(&w);

    let mut server = w.serve();
    w.wait_http(&server);
    let key = w.public_key();
    w.wait_uploaded(&odd, &server, Duration::from_secs(60));

    // The same Nix substitutes the odd closure byte for byte, signatures required.
    let url = w.url();
    let store = w.nix.substitute(&url, "fresh", &odd, &key).unwrap_or_else(|e| panic!("{cell}: {e}"));
    let in_fresh = store.join(odd[0].trim_start_matches('/'));
    let flake = std::fs::read_to_string(in_fresh.join(ODD_FILE)).expect("the unicode file substituted");
    assert_eq!(flake, format!("snow {}\n", w.nix.salt()), "{cell}");
    assert_eq!(dump(&w, None, &odd[0]), dump(&w, Some(&store), &odd[0]), "{cell}: NARs differ");

    // Its build log by output (both Nixes), by derivation (2.26; Nix 2.8 asks the cache for the .drv's
    // narinfo, and no cache has one); and `nix store verify` over the whole closure.
    w.verify_over_http(&url, &key, &odd[0], &odd[0], "building odd");
    let drv = w.nix.deriver(&odd[0]).expect("deriver");
    let by_drv = w.nix.command("nix").args(["log", "--store", &url, &drv]).output().expect("nix log");
    let by_drv_text = format!("{}{}", String::from_utf8_lossy(&by_drv.stdout), String::from_utf8_lossy(&by_drv.stderr));
    if (major, minor) >= (2, 26) {
        assert!(
            by_drv.status.success() && by_drv_text.contains("building odd"),
            "{cell}: nix log {drv}: {by_drv_text}"
        );
    } else {
        assert!(by_drv_text.contains("is not a valid store path"), "{cell}: nix log {drv}: {by_drv_text}");
    }

    // `niks3 push` of a path no hook saw; it then substitutes.
    let token = w.arg(&w.state().join("api-token"));
    w.niks3(&["push", "--server", &url, "--auth-token-file", &token, &pushed]);
    w.nix.substitute(&url, "pushed", &[&pushed], &key).unwrap_or_else(|e| panic!("{cell}: pushed path: {e}"));

    // `niks3 drain --server` of the builder's spool acknowledges its entry once the server has it.
    let drain_log = w.niks3(&[
        "drain",
        "--server",
        &url,
        "--auth-token-file",
        &token,
        "--spool-dir",
        &w.arg(&builder_spool),
        "--gcroots-dir",
        &w.arg(&w.gcroots()),
        "--once",
    ]);
    for sub in ["new", "claimed", "quarantine"] {
        let left = std::fs::read_dir(builder_spool.join(sub)).map_or(0, Iterator::count);
        assert_eq!(left, 0, "{cell}: the builder's spool has {left} entries in {sub}/:\n{drain_log}");
    }
    w.nix.substitute(&url, "drained", &drained, &key).unwrap_or_else(|e| panic!("{cell}: drained path: {e}"));

    // Everything the hook queued is in the cache, content-addressed outputs with their realisations
    // (checked last: this is where a Nix whose realisations the daemon cannot read fails).
    drained_cleanly(&w, &server, &cell);
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    let realisations = crate::support::e2e::check_realisations(cache);
    assert!(realisations >= 3, "{cell}: {realisations} realisations in the cache:\n{}", server.log_text());
    crate::support::e2e::check_local_invariant(cache);

    // The content-addressed graph substitutes through its realisations: the builders refuse to run again.
    std::fs::write(&marker, "").expect("marker");
    let ca_file = w.dir.path().join("ca.nix");
    std::fs::write(&ca_file, &ca_expr).expect("write ca expression");
    let (ok, log, ca_store) = build_in_fresh_store(&w, &ca_file, "c", &url, &key, "ca-fresh");
    assert!(ok && !log.contains("REBUILT"), "{cell}: nix-build of c from the cache built something:\n{log}");
    assert!(ca_store.join(c_out[0].trim_start_matches('/')).exists(), "{cell}: c not substituted:\n{log}");

    server.terminate();
    eprintln!("{cell}: {:.1} s", start.elapsed().as_secs_f64());
}

/// `(major, minor)` of a version like `2.26.3`.
fn parse_version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Waits until the server has taken every entry, and asserts that it quarantined none.
fn drained_cleanly(w: &World, server: &Server, cell: &str) {
    w.wait_drained(server);
    let reasons = w.quarantine_reasons();
    assert!(reasons.is_empty(), "{cell}: quarantined:\n{reasons}\n--- server log ---\n{}", server.log_text());
}

/// Moves the spool entries of `drv` from the world's spool into a new builder's spool and returns its
/// directory (the host's name).
fn move_entries_of(w: &World, drv: &str) -> PathBuf {
    let builder = w.dir.path().join("builder-spool");
    niks3_spool::Spool::open(&builder).expect("builder's spool");
    let mut moved = 0;
    for e in w.spool_entries("new") {
        let entry = niks3_spool::read_entry(&e).expect("spool entry");
        if entry.drv.as_deref() == Some(drv) {
            std::fs::rename(&e, builder.join("new").join(e.file_name().expect("name"))).expect("move entry");
            moved += 1;
        }
    }
    assert_eq!(moved, 1, "one entry for {drv}");
    builder
}

/// Removes the spool entries whose `drv=` satisfies `is_dropped`; returns how many.
fn drop_entries(w: &World, is_dropped: impl Fn(&str) -> bool) -> usize {
    let mut dropped = 0;
    for e in w.spool_entries("new") {
        let entry = niks3_spool::read_entry(&e).expect("spool entry");
        if entry.drv.as_deref().is_some_and(&is_dropped) {
            std::fs::remove_file(&e).expect("remove entry");
            dropped += 1;
        }
    }
    dropped
}

/// Adds a directory with odd names to the store with `nix-store --add` (no build, so no hook) and returns
/// its store path.
fn add_odd_source(w: &World) -> String {
    let src = w.dir.path().join("pushed-source");
    std::fs::create_dir_all(src.join("ünïcødé dir")).expect("mkdir");
    std::fs::write(src.join("ünïcødé dir").join("☃ file"), format!("pushed {}\n", w.nix.salt())).expect("write");
    std::fs::write(src.join("empty"), "").expect("write");
    std::os::unix::fs::symlink("ünïcødé dir/☃ file", src.join("link")).expect("symlink");
    let out = w.nix.run(w.nix.command("nix-store").arg("--add").arg(w.nix.nix_path(&src))).expect("nix-store --add");
    out.trim().to_owned()
}

/// The NAR of `path` in the world's store, or in the chroot store `store` (a host directory).
fn dump(w: &World, store: Option<&Path>, path: &str) -> Vec<u8> {
    let mut cmd = w.nix.command("nix");
    cmd.args(["store", "dump-path"]);
    if let Some(s) = store {
        cmd.arg("--store").arg(w.nix.nix_path(s));
    }
    let out = cmd.arg(path).output().expect("nix store dump-path");
    assert!(out.status.success(), "nix store dump-path {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
