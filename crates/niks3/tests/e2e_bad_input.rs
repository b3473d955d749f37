//! Bad input never corrupts the cache and never blocks the queue: garbage and truncated spool files,
//! paths outside the store or with a malformed name, a path deleted before upload, and a path modified
//! after it was built (its NAR no longer matches Nix's NarHash) each end up quarantined with a reason
//! file and one log line, while a good path queued alongside is uploaded.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{Backend, World, wait_for};
use std::time::Duration;

#[test]
fn bad_entries_are_quarantined_with_a_reason_and_nothing_reaches_the_cache() {
    let w = World::local();
    // Build while the daemon is down: the hook queues, nothing is processed yet.
    let good = w.nix.build_script("e2e-good", "echo good > $out").expect("build good");
    let vanish = w.nix.build_script("e2e-vanish", "echo vanish > $out").expect("build vanish");
    let corrupt = w.nix.build_script("e2e-corrupt", "echo original > $out").expect("build corrupt");
    assert_eq!(w.spool_entries("new").len(), 3, "the hook queued one entry per build");

    // The path vanishes from the store before the daemon gets to it.
    w.nix.run(w.nix.command("nix-store").args(["--delete", &vanish])).expect("nix-store --delete");
    // The path is modified after it was built: Nix's database still has the old NarHash.
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&corrupt).expect("open store file as root");
        f.write_all(b"tampered\n").expect("tamper");
    }
    let nar_hash = w.nix.run(w.nix.command("nix-store").args(["-q", "--hash", &corrupt])).expect("hash");

    w.enqueue_raw("0001-garbage", b"\x00\x01 this is not a spool entry\n");
    w.enqueue_raw("0002-truncated", b"niks3-spool-v1\nout=/nix/sto");
    w.enqueue_raw("0003-outside", b"niks3-spool-v1\nout=/tmp/niks3-evil-path\nqueued=1\n");
    w.enqueue_raw("0004-badname", b"niks3-spool-v1\nout=/nix/store/eeee-too-short-hash\nqueued=1\n");

    let server = w.serve();
    let settled = wait_for(Duration::from_secs(60), || {
        w.spool_entries("new").is_empty() && w.spool_entries("claimed").is_empty() && w.has_narinfo(&good)
    });
    assert!(settled, "queue not settled:\n{}", server.log_text());

    // Six quarantined entries, each with a reason saying what was wrong.
    let quarantined = w.spool_entries("quarantine");
    assert_eq!(quarantined.len(), 6, "{quarantined:?}\n{}", server.log_text());
    let reasons: Vec<String> = quarantined
        .iter()
        .map(|p| {
            let mut r = p.clone().into_os_string();
            r.push(".reason");
            std::fs::read_to_string(&r).unwrap_or_else(|e| panic!("reason file {r:?}: {e}"))
        })
        .collect();
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(has("line 1: is not the version line"), "garbage: {reasons:#?}");
    assert!(has("truncated"), "truncated: {reasons:#?}");
    assert!(has("/tmp/niks3-evil-path"), "outside the store: {reasons:#?}");
    assert!(has("eeee-too-short-hash"), "bad name: {reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains(&vanish) && r.contains("no longer in the local store")),
        "vanished: {reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains(&corrupt) && r.contains("does not match Nix's record")),
        "modified: {reasons:#?}"
    );
    // The entry is moved before its log line is written: wait for the sixth line, then count exactly.
    wait_for(Duration::from_secs(10), || server.log_text().matches("quarantined spool entry").count() >= 6);
    let log = server.log_text();
    assert_eq!(log.matches("quarantined spool entry").count(), 6, "one log line per entry:\n{log}");

    // The good path is in; the bad ones are not, not even their NAR.
    assert!(w.has_narinfo(&good));
    assert!(!w.has_narinfo(&vanish) && !w.has_narinfo(&corrupt), "{log}");
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    let nix32 = nar_hash.trim().trim_start_matches("sha256:");
    assert!(!cache.join(format!("nar/{nix32}.nar.zst")).exists(), "the corrupt NAR must not be visible");
    let nars = std::fs::read_dir(cache.join("nar")).map_or(0, Iterator::count);
    assert_eq!(nars, 1, "only the good path's NAR is stored");
}
