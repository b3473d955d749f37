//! `niks3 drain --once` (the real binary): a builder's spool emptied into a remote server over the push
//! API — entries acknowledged and GC roots removed only after the server published the closure,
//! garbage entries quarantined — and the result substitutes into a fresh store.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TOKEN, TestServer};
use niks3_testkit::nix::NixEnv;
use std::path::Path;

/// Runs `niks3 drain --once` (the real binary) from `spool_dir` into `s` with the test token, asserts it
/// succeeded and returns its stdout and stderr.
async fn drain_once(s: &TestServer, env: &NixEnv, spool_dir: &Path, gcroots: &Path) -> String {
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
    cmd.args(["drain", "--server", &s.url, "--auth-token-file"])
        .arg(&token_file)
        .arg("--spool-dir")
        .arg(spool_dir)
        .arg("--gcroots-dir")
        .arg(gcroots)
        .arg("--once");
    let res = tokio::task::spawn_blocking(move || cmd.output().expect("run niks3 drain")).await.expect("join");
    let log = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success(), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_pushes_spooled_outputs_acks_them_and_quarantines_garbage() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let expr = r#"{ salt }:
let mk = name: script: derivation { inherit name salt; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" script ]; };
in rec { dep = mk "drain-dep" ''echo dep ${salt} > $out''; out = mk "drain-out" ''echo ${dep} > $out''; }
"#;
    let out = env.build(expr, "out").expect("build").remove(0);
    let dep = env.build(expr, "dep").expect("build").remove(0);
    let drv = env.deriver(&out).expect("deriver");
    let spool_dir = s.dir.path().join("spool");
    let gcroots = s.dir.path().join("gcroots");
    let spool = niks3_spool::Spool::open(&spool_dir).expect("spool");
    spool
        .enqueue(&niks3_spool::Entry { drv: Some(drv), outs: vec![out.clone()], realisations: vec![], queued: 1 })
        .expect("enqueue");
    niks3_spool::gcroots::add(&gcroots, &out).expect("gc root");
    std::fs::write(spool_dir.join("new").join("garbage-entry"), "this is not a spool entry").expect("garbage");
    drain_once(&s, &env, &spool_dir, &gcroots).await;

    let left: Vec<_> = std::fs::read_dir(spool_dir.join("new")).expect("new").flatten().collect();
    assert!(left.is_empty(), "new/ still has {left:?}");
    let claimed: Vec<_> = std::fs::read_dir(spool_dir.join("claimed")).expect("claimed").flatten().collect();
    assert!(claimed.is_empty(), "claimed/ still has {claimed:?}");
    let quarantined: Vec<String> = std::fs::read_dir(spool_dir.join("quarantine"))
        .expect("quarantine")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(quarantined.iter().any(|n| n.starts_with("garbage-entry")), "{quarantined:?}");
    let roots: Vec<_> = std::fs::read_dir(&gcroots).expect("gcroots").flatten().collect();
    assert!(roots.is_empty(), "GC root not removed: {roots:?}");
    assert_eq!(s.cache_files().iter().filter(|f| f.ends_with(".narinfo")).count(), 2, "{:?}", s.cache_files());

    let chroot = env.substitute(&s.url, "client", &[&out], &s.key.public().to_nix_string()).expect("nix copy");
    assert!(chroot.join(dep.trim_start_matches('/')).exists());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_pushes_realisations_of_ca_outputs_and_the_server_checks_them() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    env.conf_extra("experimental-features = nix-command ca-derivations").expect("ca");
    let spool_dir = s.dir.path().join("spool");
    let gcroots = s.dir.path().join("gcroots");
    niks3_spool::Spool::open(&spool_dir).expect("spool");
    let hook_env = [("NIKS3_SPOOL_DIR", spool_dir.as_os_str()), ("NIKS3_GCROOTS_DIR", gcroots.as_os_str())];
    env.set_post_build_hook_with_env(&crate::support::e2e::hook_bin(), &hook_env).expect("hook");
    let expr = r#"{ salt }:
let ca = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  mk = name: attrs: script: derivation ({ inherit name salt; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" script ]; } // attrs);
in rec { a = mk "drain-ca-a" ca "echo a ${salt} > $out"; b = mk "drain-ca-b" ca "echo ${a} > $out"; }
"#;
    let b = env.build(expr, "b").expect("build").remove(0);
    // Only the original b's entry: a's realisation must be found through b's inputs and pushed first.
    for e in std::fs::read_dir(spool_dir.join("new")).expect("new").flatten() {
        let entry = niks3_spool::read_entry(&e.path()).expect("entry");
        if entry.outs != vec![b.clone()] {
            std::fs::remove_file(e.path()).expect("remove");
        }
    }
    let log = drain_once(&s, &env, &spool_dir, &gcroots).await;
    let quarantined = std::fs::read_dir(spool_dir.join("quarantine")).expect("quarantine").count();
    assert_eq!(quarantined, 0, "{log}");
    let dois: Vec<String> = s.cache_files().into_iter().filter(|f| f.starts_with("realisations/")).collect();
    assert_eq!(dois.len(), 2, "a's and b's realisations: {:?}\n{log}", s.cache_files());
    let cache = s.cache_dir.clone().expect("local cache");
    for f in &dois {
        let body = std::fs::read(cache.join(f)).expect("read .doi");
        let r = niks3_nix::realisation::Realisation::from_json(&body).expect("parse");
        assert!(r.verify(&[s.key.public()]), "signed by the server's key: {f}");
    }

    // A fresh store with ca-derivations substitutes b from the server without building.
    let file = s.dir.path().join("ca.nix");
    std::fs::write(&file, expr).expect("expr");
    let chroot = env.chroot_store("client").expect("chroot");
    let out = env
        .command("nix-build")
        .arg("--no-out-link")
        .arg(&file)
        .args(["--argstr", "salt", env.salt(), "-A", "b", "--store"])
        .arg(&chroot)
        .args(["--option", "substituters", &s.url])
        .args(["--option", "trusted-public-keys", &s.key.public().to_nix_string()])
        .output()
        .expect("nix-build");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(chroot.join(b.trim_start_matches('/')).exists());

    // The route refuses what it cannot check.
    let c = TestServer::client();
    let post = |body: serde_json::Value| {
        c.post(format!("{}/api/v1/realisations", s.url)).bearer_auth(TOKEN).json(&body).send()
    };
    let r = post(serde_json::json!({ "realisations": [ { "id": "nonsense" } ] })).await.expect("post");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("realisation 0"));
    let orphan = serde_json::json!({ "realisations": [ {
        "id": format!("sha256:{}!out", "ab".repeat(32)),
        "outPath": "0c6kzph7l0dcbfmjap64f0czdafn3b7x-nowhere",
        "dependentRealisations": {}, "signatures": [] } ] });
    let r = post(orphan).await.expect("post");
    assert_eq!(r.status(), 409, "a realisation whose narinfo is absent is refused");
    assert!(r.text().await.expect("body").contains("0c6kzph7l0dcbfmjap64f0czdafn3b7x.narinfo"));
    let unauth = c.post(format!("{}/api/v1/realisations", s.url)).json(&serde_json::json!({})).send().await;
    assert_eq!(unauth.expect("post").status(), 401);
    assert_eq!(s.cache_files().iter().filter(|f| f.starts_with("realisations/")).count(), 2, "nothing else written");
    s.shutdown().await;
}
