//! `NixCli::closure` asks `nix path-info` in batches, so that a push or drain of tens of thousands of
//! paths never exceeds the kernel's argument limit (E2BIG): with a tiny batch size injected, several real
//! `nix path-info` runs give the same closure as one, and an invalid path in a later batch is a clear error
//! naming that batch.

use niks3::nix::pathinfo::{NixCli, PathInfoError};
use niks3::nix::store_path::{StoreDir, StorePath};
use niks3_testkit::nix::NixEnv;
use std::collections::HashSet;

const EXPR: &str = r#"{ salt }: rec {
    mk = name: script: derivation { inherit name salt; system = builtins.currentSystem; builder = "/bin/sh";
                                    args = [ "-c" script ]; };
    a = mk "batch-a" "echo a $salt > $out";
    b = mk "batch-b" "echo b $salt > $out";
    c = mk "batch-c" "echo ${a} > $out";
    d = mk "batch-d" "echo d $salt > $out";
    e = mk "batch-e" "echo ${b} ${d} > $out";
    f = mk "batch-f" "echo f $salt > $out";
    g = mk "batch-g" "echo ${c} > $out";
}"#;

fn sp(dir: &StoreDir, p: &str) -> StorePath {
    dir.parse_path(p).expect("store path")
}

#[tokio::test]
async fn several_small_batches_give_the_same_closure_as_one() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let cli = NixCli::default();
    let mut roots = Vec::new();
    for attr in ["a", "b", "c", "d", "e", "f", "g"] {
        roots.push(sp(&dir, &env.build(EXPR, attr).expect("build").remove(0)));
    }
    let one = cli.closure_batched(&dir, &roots, 1000).await.expect("one batch");
    let paths =
        |infos: &[niks3::nix::pathinfo::PathInfo]| -> Vec<StorePath> { infos.iter().map(|i| i.path.clone()).collect() };
    assert_eq!(one.len(), 7);
    for batch in [1, 2, 3] {
        let batched = cli.closure_batched(&dir, &roots, batch).await.expect("batched");
        assert_eq!(batched, one, "batch size {batch}: same infos in the same (dependency) order");
    }
    // Dependencies first, whatever batch each came from.
    let mut seen = HashSet::new();
    for info in cli.closure_batched(&dir, &roots, 2).await.expect("batched") {
        assert!(info.references.iter().all(|r| *r == info.path || seen.contains(r)), "{}", info.path.basename());
        seen.insert(info.path);
    }
    assert_eq!(paths(&one).iter().collect::<HashSet<_>>().len(), 7);

    // 60 000 arguments (about 3 MB of command line, past the 2 MiB limit of one exec) still work.
    let many: Vec<StorePath> = roots.iter().cycle().take(60_000).cloned().collect();
    let all = cli.closure(&dir, &many).await.expect("60 000 arguments");
    assert_eq!(all, one);
}

#[tokio::test]
async fn an_invalid_path_in_a_later_batch_names_that_batch() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let cli = NixCli::default();
    let a = sp(&dir, &env.build(EXPR, "a").expect("build").remove(0));
    let b = sp(&dir, &env.build(EXPR, "b").expect("build").remove(0));
    let f = sp(&dir, &env.build(EXPR, "f").expect("build").remove(0));
    let missing = sp(&dir, "/nix/store/00000000000000000000000000000000-not-there");
    let err = cli
        .closure_batched(&dir, &[a, b, f.clone(), missing.clone()], 2)
        .await
        .expect_err("the second batch has an invalid path");
    let PathInfoError::Failed { stderr, paths, .. } = &err else { panic!("expected Failed, got {err:?}") };
    assert!(stderr.contains("is not valid"), "{stderr}");
    assert_eq!(paths, &vec![dir.display(&f), dir.display(&missing)], "the failing batch is named");
    assert!(err.to_string().contains("not-there"), "{err}");
}
