//! End to end with the local backend: `nix-build` with `post-build-hook = niks3-hook` → spool →
//! `niks3 serve` → the cache directory; stock Nix then substitutes the closure into a fresh store with
//! signatures required, reads the build log and verifies the cache.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{Backend, GRAPH, World};
use std::time::Duration;

#[test]
fn built_paths_land_in_the_local_cache_and_substitute_with_signatures() {
    let w = World::local();
    let mut server = w.serve();
    let public_key = w.public_key();
    let app = w.build(GRAPH, "app");
    let tree = w.build(GRAPH, "tree");
    w.wait_uploaded(&app, &server, Duration::from_secs(60));

    let Backend::Local(cache) = &w.backend else { unreachable!() };
    let cache_url = format!("file://{}", cache.display());
    // Every closure member has a signed narinfo whose NAR exists; nix-cache-info is there.
    let info = std::fs::read_to_string(cache.join("nix-cache-info")).expect("nix-cache-info");
    assert!(info.contains("StoreDir: /nix/store") && info.contains("WantMassQuery: 1"), "{info}");

    // A fresh store substitutes the whole closure through the read proxy, checking signatures; the
    // cache directory itself is a valid file:// cache too.
    w.wait_http(&server);
    let http = w.url();
    let store = w.nix.substitute(&http, "from-http", &app, &public_key).expect("substitute through the read proxy");
    let tool =
        std::fs::read_to_string(store.join(app[0].trim_start_matches('/')).join("uses-tree")).expect("uses-tree");
    assert_eq!(tool.trim(), format!("{}/bin/tool", tree[0]));
    w.nix.substitute(&cache_url, "from-file", &app, &public_key).expect("substitute from the cache directory");

    // The wrong key is refused.
    let other = "other-1:E+qMd1hoNRkB6JA0pLyjqzcS4bb6qclIWzGuUNfZVYk=";
    let err = w.nix.substitute(&http, "wrong-key", &app, other).expect_err("unsigned for that key");
    assert!(err.contains("lacks a valid signature"), "{err}");

    // nix store verify over the whole closure, the build log and the file listing, over HTTP.
    w.verify_over_http(&http, &public_key, &app[0], &tree[0], "building tree");
    let ls =
        w.nix.run(w.nix.command("nix").args(["store", "ls", "--store", &http, "-R", &tree[0]])).expect("nix store ls");
    assert!(ls.contains("bin/tool") && ls.contains("README-link"), "{ls}");

    // The metrics count the uploads.
    assert_eq!(metric(&http, "niks3_uploads_total{result=\"ok\"}"), 3, "three paths uploaded");

    // The spool is empty and the GC roots of the outputs are gone.
    let drained = crate::support::e2e::wait_for(Duration::from_secs(10), || {
        w.spool_entries("new").is_empty()
            && w.spool_entries("claimed").is_empty()
            && std::fs::read_dir(w.gcroots()).map_or(true, |d| d.count() == 0)
    });
    assert!(drained, "spool or GC roots not emptied:\n{}", server.log_text());
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
    // Each acknowledged entry (one per build) is timed from the hook queueing it to its closure published.
    assert_eq!(metric(&http, "niks3_queued_to_published_seconds_count"), 3, "three entries acknowledged");
    server.terminate();
}

#[test]
fn an_entry_naming_only_its_derivation_uploads_the_outputs() {
    let w = World::local();
    let out = w.nix.build_script("e2e-drv-only", "echo drv-only > $out").expect("build");
    let drv = w.nix.deriver(&out).expect("deriver");
    // Replace what the hook queued by an entry with no out= lines (as when Nix gives no OUT_PATHS and the
    // .drv could not be read at hook time).
    for e in w.spool_entries("new") {
        std::fs::remove_file(e).expect("remove hook entry");
    }
    w.enqueue_raw("0001-drv-only", format!("niks3-spool-v1\ndrv={drv}\nqueued=1\n").as_bytes());
    let server = w.serve();
    w.wait_uploaded(std::slice::from_ref(&out), &server, Duration::from_secs(60));
    w.wait_drained(&server);
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
}

/// The value of the `/metrics` line starting with `name` (and a space) on the server at `http`.
fn metric(http: &str, name: &str) -> u64 {
    let out = std::process::Command::new("curl").args(["-sf", &format!("{http}/metrics")]).output().expect("curl");
    let metrics = String::from_utf8_lossy(&out.stdout);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
}
