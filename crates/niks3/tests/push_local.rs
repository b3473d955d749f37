//! `niks3 push` (the real binary) from this machine's Nix store to a server with the local backend
//! (NARs relayed through the server), then a separate chroot store substitutes the closure with
//! `nix copy --from http://…` and signature checking on.
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TOKEN, TestServer};
use niks3_testkit::nix::NixEnv;
use std::process::Output;
use std::sync::atomic::Ordering;

/// The end-to-end tests' graph (`app` → `tree`, `hello`; `lonely` refers to nothing).
const EXPR: &str = crate::support::e2e::GRAPH;

async fn niks3(env: &NixEnv, args: Vec<String>) -> Output {
    let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
    cmd.args(&args).env_remove("NIKS3_AUTH_TOKEN").env_remove("NIKS3_SERVER_URL");
    tokio::task::spawn_blocking(move || cmd.output().expect("run niks3")).await.expect("join")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn pushed_closure_substitutes_into_a_fresh_store_with_signatures_required() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let app = env.build(EXPR, "app").expect("build app").remove(0);
    let tree = env.build(EXPR, "tree").expect("build tree").remove(0);
    let hello = env.build(EXPR, "hello").expect("build hello").remove(0);
    let token_file = s.dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    // like ./result: a symlink to the store path
    let result_link = s.dir.path().join("result");
    std::os::unix::fs::symlink(&app, &result_link).expect("symlink");
    let base = vec![
        "push".to_owned(),
        "--server".to_owned(),
        s.url.clone(),
        "--auth-token-file".to_owned(),
        token_file.display().to_string(),
    ];

    let mut dry = base.clone();
    dry.extend(["--dry-run".to_owned(), result_link.display().to_string()]);
    let out = niks3(&env, dry).await;
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for p in [&app, &tree, &hello] {
        assert!(listed.lines().any(|l| l == p), "dry run should list {p}: {listed}");
    }
    assert!(s.cache_files().is_empty(), "dry run wrote {:?}", s.cache_files());

    let mut push = base.clone();
    push.push(result_link.display().to_string());
    let out = niks3(&env, push.clone()).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pushed 3 paths"), "{}", text(&out));
    assert!(s.state.metrics.api_bytes_received.load(Ordering::Relaxed) > 0, "local backend relays through the server");
    let narinfos = s.cache_files().iter().filter(|f| f.ends_with(".narinfo")).count();
    assert_eq!(narinfos, 3, "{:?}", s.cache_files());

    // the file listing and the build log came along
    let files = s.cache_files();
    let tree_hash = &tree["/nix/store/".len().."/nix/store/".len() + 32];
    assert!(files.contains(&format!("{tree_hash}.ls")), "{files:?}");
    let tree_drv = env.deriver(&tree).expect("deriver");
    assert!(files.contains(&format!("log/{}", &tree_drv["/nix/store/".len()..])), "{files:?}");
    let narinfo_refs: Vec<String> = {
        let c = s.state.db.pool().get().await.expect("db");
        let row = c
            .query_one("SELECT refs FROM objects WHERE key = $1", &[&format!("{tree_hash}.narinfo")])
            .await
            .expect("narinfo row");
        row.get(0)
    };
    assert!(narinfo_refs.contains(&format!("{tree_hash}.ls")), "{narinfo_refs:?}");
    assert!(narinfo_refs.iter().any(|r| r.starts_with("log/")), "{narinfo_refs:?}");
    let ls = env.command("nix").args(["store", "ls", "--store", &s.url, "-R", &tree]).output().expect("nix store ls");
    assert!(ls.status.success(), "nix store ls: {}", text(&ls));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("bin/tool"), "{}", text(&ls));
    let log = env.command("nix").args(["log", "--store", &s.url, &tree]).output().expect("nix log");
    assert!(log.status.success(), "nix log: {}", text(&log));
    assert!(String::from_utf8_lossy(&log.stdout).contains("building tree"), "{}", text(&log));

    // idempotent: nothing is uploaded twice
    let received = s.state.metrics.api_bytes_received.load(Ordering::Relaxed);
    let out = niks3(&env, push).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pushed 0 paths"), "{}", text(&out));
    assert!(text(&out).contains("3 of 3 paths were already cached"), "{}", text(&out));
    assert_eq!(s.state.metrics.api_bytes_received.load(Ordering::Relaxed), received);

    // a third store substitutes the closure, checking our signatures
    let chroot = env.substitute(&s.url, "client", &[&app], &s.key.public().to_nix_string()).expect("nix copy");
    let valid = env
        .command("nix-store")
        .arg("--store")
        .arg(&chroot)
        .args(["--check-validity", &app, &tree, &hello])
        .output()
        .expect("check validity");
    assert!(valid.status.success(), "{}", text(&valid));
    let tool = chroot.join(tree.trim_start_matches('/')).join("bin/tool");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&tool).expect("tool").permissions());
    assert!(mode & 0o100 != 0, "executable bit survived");

    // with another key trusted, the same cache is refused
    let other = niks3_nix::signing::SecretKey::generate("other-1").expect("key").public().to_nix_string();
    let refused = env.substitute(&s.url, "client2", &[&hello], &other).expect_err("signed by another key");
    assert!(refused.contains("lacks a valid signature"), "{refused}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_fails_clearly_on_bad_token_bad_path_or_unreachable_server() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let lonely = env.build(EXPR, "lonely").expect("build").remove(0);
    let good = s.dir.path().join("token");
    std::fs::write(&good, TOKEN).expect("write");
    let wrong = s.dir.path().join("wrong");
    std::fs::write(&wrong, TOKEN.replace('a', "c")).expect("write");
    let short = s.dir.path().join("short");
    std::fs::write(&short, "too-short").expect("write");
    let run = |server: String, tok: &std::path::Path, path: &str| {
        vec![
            "push".to_owned(),
            "--server".to_owned(),
            server,
            "--auth-token-file".to_owned(),
            tok.display().to_string(),
            path.to_owned(),
        ]
    };
    let out = niks3(&env, run(s.url.clone(), &wrong, &lonely)).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("401"), "{}", text(&out));
    assert!(!text(&out).contains(TOKEN), "token leaked");
    let out = niks3(&env, run(s.url.clone(), &short, &lonely)).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("at least 36"), "{}", text(&out));
    let out = niks3(&env, run(s.url.clone(), &good, "/etc/passwd")).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("/etc/passwd"), "{}", text(&out));
    let out = niks3(&env, run(s.url.clone(), &good, &format!("{lonely}/nonexistent"))).await;
    assert!(!out.status.success());
    let port = crate::support::e2e::free_port();
    let out = niks3(&env, run(format!("http://127.0.0.1:{port}"), &good, &lonely)).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("POST /api/v1/push"), "{}", text(&out));
    assert!(s.cache_files().is_empty(), "{:?}", s.cache_files());
    s.shutdown().await;
}
