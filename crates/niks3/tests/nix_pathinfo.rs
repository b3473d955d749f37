//! `LocalNix` against the real local Nix store: closures in dependency order (self-references included),
//! derivation outputs, build logs, and clear errors for paths Nix does not know.

use niks3_local::nix::{LocalNix, PathInfoError};
use niks3_nix::hash::{HashingWriter, Sha256Hash};
use niks3_nix::nar::dump_path;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_testkit::nix::NixEnv;
use std::collections::HashSet;

const EXPR: &str = include_str!("fixtures/nix_pathinfo.nix");

fn sp(dir: &StoreDir, p: &str) -> StorePath {
    dir.parse_path(p).expect("store path")
}

#[tokio::test]
async fn closure_is_complete_and_in_dependency_order() {
    let env = NixEnv::new().expect("nix env");
    let top = env.build(EXPR, "top").expect("build").remove(0);
    let dir = StoreDir::default();
    let cli = LocalNix::default();
    let infos = cli.closure(&dir, &[sp(&dir, &top)]).await.expect("closure");

    // Same set as `nix-store -qR`.
    let want: HashSet<String> = env
        .run(env.command("nix-store").args(["-qR", &top]))
        .expect("nix-store -qR")
        .lines()
        .map(str::to_owned)
        .collect();
    let got: HashSet<String> = infos.iter().map(|i| dir.display(&i.path)).collect();
    assert_eq!(got, want);
    assert_eq!(infos.len(), 5, "top, multi (out+doc), selfref, leaf");

    // Every reference comes earlier (a self-reference is allowed).
    let mut seen = HashSet::new();
    for info in &infos {
        for r in &info.references {
            assert!(
                r == &info.path || seen.contains(r),
                "{} before its reference {}",
                info.path.basename(),
                r.basename()
            );
        }
        seen.insert(info.path.clone());
    }
    assert_eq!(infos.last().map(|i| dir.display(&i.path)), Some(top.clone()));
    let selfref = infos.iter().find(|i| i.path.name() == "selfref").expect("selfref");
    assert!(selfref.references.contains(&selfref.path), "self-reference kept");

    // The metadata is Nix's: our NAR of each path hashes to its NarHash, the deriver is a .drv.
    for info in &infos {
        let mut w = HashingWriter::new(std::io::sink());
        dump_path(&dir.path_of(&info.path), &mut w).expect("dump");
        let (hash, size, _) = w.finish();
        assert_eq!((hash, size), (info.nar_hash, info.nar_size), "{}", info.path.basename());
        assert!(info.deriver.as_ref().is_some_and(StorePath::is_derivation));
    }
    let q_hash = env.run(env.command("nix-store").args(["-q", "--hash", &top])).expect("nix-store -q --hash");
    assert_eq!(Sha256Hash::parse(q_hash.trim()).expect("hash"), infos[infos.len() - 1].nar_hash);

    // Several roots at once, overlapping: each path once.
    let leaf = env.build(EXPR, "leaf").expect("build").remove(0);
    let both = cli.closure(&dir, &[sp(&dir, &leaf), sp(&dir, &top)]).await.expect("closure");
    assert_eq!(both.len(), 5);
    assert!(cli.closure(&dir, &[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn derivation_outputs_and_build_logs() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let cli = LocalNix::default();
    let mut multi = env.build(EXPR, "multi").expect("build");
    multi.extend(env.build(EXPR, "multi.doc").expect("build doc"));
    assert_eq!(multi.len(), 2, "out and doc");
    let drv = sp(&dir, &env.deriver(&multi[0]).expect("deriver"));
    let mut outs: Vec<String> =
        cli.derivation_outputs(&dir, &drv).await.expect("outputs").iter().map(|p| dir.display(p)).collect();
    outs.sort();
    let mut want = multi.clone();
    want.sort();
    assert_eq!(outs, want);

    let leaf = env.build(EXPR, "leaf").expect("build").remove(0);
    let leaf_drv = sp(&dir, &env.deriver(&leaf).expect("deriver"));
    let log = cli.build_log(&dir, &leaf_drv).await.expect("read log").expect("leaf has a log");
    assert!(
        String::from_utf8_lossy(&log).contains(&format!("leaf {}", env.salt())),
        "{}",
        String::from_utf8_lossy(&log)
    );

    // A derivation that was instantiated but never built has no log.
    let expr = r#"{ salt }: derivation { name = "never-built"; inherit salt; system = builtins.currentSystem;
                                         builder = "/bin/sh"; args = [ "-c" "exit 1" ]; }"#;
    let file = env.dir().join("never.nix");
    std::fs::write(&file, expr).expect("write");
    let drv =
        env.run(env.command("nix-instantiate").arg(&file).args(["--argstr", "salt", env.salt()])).expect("instantiate");
    assert_eq!(cli.build_log(&dir, &sp(&dir, drv.trim())).await.expect("no error"), None);
}

#[tokio::test]
async fn unknown_paths_and_missing_nix_are_clear_errors() {
    let dir = StoreDir::default();
    let missing = sp(&dir, "/nix/store/00000000000000000000000000000000-not-there");
    let err = LocalNix::default().closure(&dir, std::slice::from_ref(&missing)).await.expect_err("invalid path");
    let PathInfoError::NotValid { path } = &err else { panic!("expected NotValid, got {err:?}") };
    assert_eq!(path, &dir.display(&missing));
    assert!(!err.is_environment(), "an invalid path is the entry's problem");

    let nowhere = LocalNix::new(Some("/nonexistent/bin".into()));
    let err = nowhere.closure(&dir, &[missing]).await.expect_err("no nix");
    assert!(err.is_environment(), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/bin/nix-daemon"), "{err}");
}

#[tokio::test]
async fn a_huge_build_log_is_cut_at_the_limit_not_read_whole() {
    // Security review finding 4: a build controls its log's size; 3 MiB stands in for the review's 1 GB.
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let out = env
        .build_script(
            "huge-log",
            "i=0; while [ $i -lt 3000 ]; do printf '%01023d\\n' $i; i=$((i+1)); done; echo done > $out",
        )
        .expect("build");
    let drv = sp(&dir, &env.deriver(&out).expect("deriver"));
    let whole = LocalNix::default().build_log(&dir, &drv).await.expect("read").expect("log");
    assert!(whole.len() >= 3000 * 1024, "{}", whole.len());
    let mut limited = LocalNix::default();
    limited.max_log_bytes = 1 << 20;
    let cut = limited.build_log(&dir, &drv).await.expect("read").expect("log");
    let text = String::from_utf8_lossy(&cut);
    assert!(cut.len() < (1 << 20) + 100, "{}", cut.len());
    assert!(text.ends_with("[niks3: this build log was cut at 1048576 bytes]\n"), "{}", &text[text.len() - 80..]);
    assert_eq!(&cut[..1 << 20], &whole[..1 << 20]);
}
