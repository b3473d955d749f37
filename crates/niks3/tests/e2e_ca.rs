//! Content-addressed derivations end to end: `nix-build` (ca-derivations) with the real hook → spool →
//! `niks3 serve` uploads the outputs and their realisations → a fresh store with ca-derivations substitutes
//! the whole graph through the read proxy without building anything (the builders refuse to run a second
//! time), checking narinfo signatures. Then GC removes realisations with their outputs and never leaves one
//! whose narinfo is gone.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::ca::{build_in_fresh_store, graph};
use crate::support::e2e::{Backend, Server, World};
use niks3_nix::realisation::Realisation;
use niks3_nix::signing::PublicKey;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn world() -> World {
    enable_ca(World::local())
}

fn enable_ca(w: World) -> World {
    w.nix.conf_extra("experimental-features = nix-command ca-derivations").expect("enable ca-derivations");
    w
}

/// The `.drv` paths of a, b, c as evaluated (the originals, not the resolved ones Nix also builds).
fn drvs(w: &World, expr: &str) -> Vec<String> {
    let file = w.dir.path().join("ca-graph.nix");
    std::fs::write(&file, expr).expect("write expr");
    ["a", "b", "c"]
        .iter()
        .map(|attr| {
            let f = file.to_str().expect("utf-8");
            w.nix
                .run(w.nix.command("nix-instantiate").args([f, "--argstr", "salt", w.nix.salt(), "-A", attr]))
                .expect("nix-instantiate")
                .trim()
                .to_owned()
        })
        .collect()
}

/// Nix's own realisation of each output of `drv` in the builder's store.
fn local_realisations(w: &World, drv: &str) -> Vec<Realisation> {
    let json =
        w.nix.run(w.nix.command("nix").args(["realisation", "info", "--json", drv])).expect("nix realisation info");
    let v: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json");
    v.iter().map(|r| Realisation::from_json(r.to_string().as_bytes()).expect("realisation")).collect()
}

fn doi_path(cache: &Path, r: &Realisation) -> PathBuf {
    cache.join("realisations").join(format!("{}.doi", r.id))
}

fn drained(w: &World, server: &Server) {
    w.wait_drained(server);
    assert!(w.spool_entries("quarantine").is_empty(), "quarantined:\n{}", server.log_text());
}

#[test]
fn ca_outputs_and_realisations_substitute_into_a_fresh_store_without_building() {
    let w = world();
    let marker = w.dir.path().join("built-once");
    let expr = graph(&marker);
    let server = w.serve();
    let public_key = w.public_key();
    let c_out = w.build(&expr, "c");
    drained(&w, &server);
    let Backend::Local(cache) = &w.backend else { unreachable!() };

    // Every realisation Nix registered for the original a, b, c is in the cache, with Nix's JSON shape,
    // the same id, out path and dependents, and our signature.
    let key = PublicKey::parse(&public_key).expect("public key");
    let drvs = drvs(&w, &expr);
    let mut outs = Vec::new();
    for drv in &drvs {
        let local = local_realisations(&w, drv);
        assert_eq!(local.len(), 1, "{drv}");
        let r = &local[0];
        let path = doi_path(cache, r);
        let body =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), server.log_text()));
        let in_cache = Realisation::from_json(body.as_bytes()).expect("parse .doi");
        assert_eq!(in_cache.to_json(), body, "compact, keys sorted, as Nix dumps it");
        assert!(body.starts_with(r#"{"dependentRealisations":{"#), "{body}");
        assert_eq!((&in_cache.id, &in_cache.out_path, &in_cache.dependents), (&r.id, &r.out_path, &r.dependents));
        assert!(in_cache.verify(std::slice::from_ref(&key)), "signed by the cache key: {body}");
        assert!(w.has_narinfo(&format!("/nix/store/{}", r.out_path.basename())), "narinfo of {:?}", r.out_path);
        // The read proxy serves it as JSON.
        let url = format!("{}/realisations/{}.doi", w.url(), r.id);
        let got = std::process::Command::new("curl")
            .args(["-sf", "-w", "\n%{content_type}", &url.replace('!', "%21")])
            .output()
            .expect("curl");
        let got = String::from_utf8_lossy(&got.stdout).into_owned();
        assert_eq!(got, format!("{body}\napplication/json"), "{url}");
        outs.push(format!("/nix/store/{}", r.out_path.basename()));
    }
    assert_eq!(outs[2], c_out[0]);
    // b's realisation names a's, c's names b's.
    let dep_of = |i: usize| local_realisations(&w, &drvs[i]).remove(0).dependents.into_values().collect::<Vec<_>>();
    assert_eq!(
        dep_of(1).iter().map(niks3_nix::store_path::StorePath::basename).collect::<Vec<_>>(),
        vec![outs[0].trim_start_matches("/nix/store/")]
    );
    assert_eq!(
        dep_of(2).iter().map(niks3_nix::store_path::StorePath::basename).collect::<Vec<_>>(),
        vec![outs[1].trim_start_matches("/nix/store/")]
    );
    // The GC roots the daemon added for the resolved outputs are gone with the entries.
    let roots_gone = crate::support::e2e::wait_for(Duration::from_secs(10), || {
        std::fs::read_dir(w.gcroots()).map_or(true, |d| d.count() == 0)
    });
    assert!(roots_gone, "GC roots left behind");

    // From now on any build fails. A fresh store substitutes c (and through the realisations b and a)
    // from the read proxy, signatures required.
    std::fs::write(&marker, "").expect("marker");
    let file = w.dir.path().join("ca-graph.nix");
    w.wait_http(&server);
    let (ok, log, store) = build_in_fresh_store(&w, &file, "c", &w.url(), &public_key, "fresh");
    assert!(ok, "nix-build in a fresh store failed:\n{log}");
    assert!(!log.contains("REBUILT"), "something was built:\n{log}");
    assert!(log.contains(&c_out[0]), "{log}");
    for out in &outs {
        assert!(store.join(out.trim_start_matches('/')).exists(), "{out} not substituted into the fresh store");
    }
    let content = std::fs::read_to_string(store.join(c_out[0].trim_start_matches('/'))).expect("c");
    assert_eq!(content.trim(), format!("c {}", outs[1]));
    // a, b and c as evaluated, plus the b that Nix resolved (built from a's output path), which is floating
    // too and was queued by its own hook run.
    assert_eq!(crate::support::e2e::check_realisations(cache), 4);
    crate::support::e2e::check_local_invariant(cache);

    // The same with another trusted key: c's narinfo is refused, so Nix falls back to building, which fails.
    // (a and b are content-addressed: Nix 2.8 accepts their narinfos without a signature, since the path
    // itself proves the content, and it does not check realisation signatures when substituting.)
    let other = "other-1:E+qMd1hoNRkB6JA0pLyjqzcS4bb6qclIWzGuUNfZVYk=";
    let (ok, log, _) = build_in_fresh_store(&w, &file, "c", &w.url(), other, "wrong-key");
    assert!(!ok, "substituted with an untrusted key:\n{log}");
    assert!(log.contains("is not signed by any of the keys in 'trusted-public-keys'"), "{log}");

    // A corrupt realisation is refused: Nix reports it and falls back to building (which fails here).
    let a_doi = doi_path(cache, &local_realisations(&w, &drvs[0]).remove(0));
    std::fs::write(&a_doi, b"{\"id\": 42").expect("corrupt a's .doi");
    let (ok, log, _) = build_in_fresh_store(&w, &file, "a", &w.url(), &public_key, "corrupt");
    assert!(!ok, "a corrupt realisation was used:\n{log}");
    assert!(log.contains("parse error") || log.contains("corrupt"), "{log}");
    drop(server);
}

#[test]
fn realisations_of_inputs_the_cache_lacks_are_found_through_the_derivation_graph() {
    let w = world();
    let marker = w.dir.path().join("built-once");
    let expr = graph(&marker);
    // Built while no daemon runs; then only c's original entry is kept, as if a and b had been built
    // before niks3 was installed.
    let c_out = w.build(&expr, "c");
    let drvs = drvs(&w, &expr);
    let mut kept = 0;
    for e in w.spool_entries("new") {
        let entry = niks3_spool::read_entry(&e).expect("entry");
        if entry.drv.as_deref() == Some(drvs[2].as_str()) {
            kept += 1;
        } else {
            std::fs::remove_file(&e).expect("remove entry");
        }
    }
    assert_eq!(kept, 1, "one entry for the original c");
    let server = w.serve();
    drained(&w, &server);
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    for drv in &drvs {
        let r = local_realisations(&w, drv).remove(0);
        assert!(doi_path(cache, &r).is_file(), "{} missing:\n{}", r.id, server.log_text());
    }
    assert!(w.has_narinfo(&c_out[0]));
    crate::support::e2e::check_local_invariant(cache);
    crate::support::e2e::check_realisations(cache);
}

#[test]
fn bad_ca_entries_are_quarantined_with_a_clear_reason() {
    let w = world();
    let ia = w.nix.build_script("e2e-ia-plain", "echo plain > $out").expect("build");
    let ia_drv = w.nix.deriver(&ia).expect("deriver");
    for e in w.spool_entries("new") {
        std::fs::remove_file(e).expect("remove hook entry");
    }
    niks3_spool::gcroots::remove(&w.gcroots(), &ia).expect("remove the hook's root");
    w.enqueue_raw("0001-no-drv", format!("niks3-spool-v1\nout={ia}\nrealisation=out\nqueued=1\n").as_bytes());
    w.enqueue_raw("0002-bad-name", format!("niks3-spool-v1\ndrv={ia_drv}\nrealisation=a/b\nqueued=1\n").as_bytes());
    w.enqueue_raw(
        "0003-no-such-output",
        format!("niks3-spool-v1\ndrv={ia_drv}\nrealisation=dev\nqueued=1\n").as_bytes(),
    );
    let server = w.serve();
    w.wait_drained(&server);
    let mut reasons: Vec<String> = std::fs::read_dir(w.spool().join("quarantine"))
        .expect("quarantine")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "reason"))
        .map(|p| std::fs::read_to_string(p).expect("reason"))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}\n{}", server.log_text());
    let all = reasons.join("\n");
    for why in ["there is no drv=", "realisation= value: output name has a character other than", "\"dev\""] {
        assert!(all.contains(why), "no reason mentions {why:?}: {all}");
    }
    // Nothing was uploaded for them, and no GC root is left behind.
    let Backend::Local(cache) = &w.backend else { unreachable!() };
    assert!(std::fs::read_dir(cache.join("realisations")).map_or(0, Iterator::count) == 0);
    assert!(std::fs::read_dir(w.gcroots()).map_or(true, |d| d.count() == 0));
}

#[test]
fn ca_realisations_land_in_garage_and_substitute_through_the_read_proxy() {
    let w = enable_ca(World::s3());
    let marker = w.dir.path().join("built-once");
    let expr = graph(&marker);
    let server = w.serve();
    w.wait_http(&server);
    let public_key = w.public_key();
    let key = PublicKey::parse(&public_key).expect("public key");
    let c_out = w.build(&expr, "c");
    drained(&w, &server);
    for drv in &drvs(&w, &expr) {
        let r = local_realisations(&w, drv).remove(0);
        let url = format!("{}/realisations/{}.doi", w.url(), r.id).replace('!', "%21");
        let got = std::process::Command::new("curl").args(["-sf", &url]).output().expect("curl");
        assert!(got.status.success(), "{url}:\n{}", server.log_text());
        let in_bucket = Realisation::from_json(&got.stdout).expect("parse .doi");
        assert_eq!((&in_bucket.id, &in_bucket.out_path), (&r.id, &r.out_path));
        assert!(in_bucket.verify(std::slice::from_ref(&key)));
    }
    std::fs::write(&marker, "").expect("marker");
    let file = w.dir.path().join("ca-graph.nix");
    let (ok, log, store) = build_in_fresh_store(&w, &file, "c", &w.url(), &public_key, "fresh");
    assert!(ok, "nix-build in a fresh store failed:\n{log}");
    assert!(!log.contains("REBUILT"), "{log}");
    assert!(store.join(c_out[0].trim_start_matches('/')).exists());
}
