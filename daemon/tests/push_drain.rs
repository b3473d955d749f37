//! `niks3 drain --once` (the real binary): a builder's spool emptied into a remote server over the push
//! API — entries acknowledged and GC roots removed only after the server published the closure,
//! garbage entries quarantined — and the result substitutes into a fresh store.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

mod http_support;

use http_support::{Backend, TOKEN, TestServer};
use niks3_testkit::nix::NixEnv;

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
    let spool = spool::Spool::open(&spool_dir).expect("spool");
    spool
        .enqueue(&spool::Entry { drv: Some(drv), outs: vec![out.clone()], realisations: vec![], queued: 1 })
        .expect("enqueue");
    spool::gcroots::add(&gcroots, &out).expect("gc root");
    std::fs::write(spool_dir.join("new").join("garbage-entry"), "this is not a spool entry").expect("garbage");
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");

    let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
    cmd.args(["drain", "--server", &s.url, "--auth-token-file"])
        .arg(&token_file)
        .arg("--spool-dir")
        .arg(&spool_dir)
        .arg("--gcroots-dir")
        .arg(&gcroots)
        .arg("--once");
    let res = tokio::task::spawn_blocking(move || cmd.output().expect("run niks3 drain")).await.expect("join");
    let log = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(res.status.success(), "{log}");

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

    let chroot = env.chroot_store("client").expect("chroot");
    let copy = env
        .command("nix")
        .args(["copy", "--from", &s.url, "--to"])
        .arg(&chroot)
        .args(["--option", "trusted-public-keys", &s.key.public().to_nix_string(), &out])
        .output()
        .expect("nix copy");
    assert!(copy.status.success(), "{}", String::from_utf8_lossy(&copy.stderr));
    assert!(chroot.join(dep.trim_start_matches('/')).exists());
    s.shutdown().await;
}
