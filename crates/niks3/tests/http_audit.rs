//! The audit trail (docs/api.md "Audit trail"): a push, a GC run and token changes are recorded with who
//! did them, and `niks3 audit` (the real binary, on the server's database) lists and filters them.

use crate::support::http::{Backend, TestServer};
use niks3_testkit::nix::NixEnv;

fn audit(s: &TestServer, args: &[&str]) -> String {
    let out = s.cli_on_db("audit", args);
    assert!(out.status.success(), "niks3 audit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_gc_runs_and_token_changes_are_recorded_with_who_did_them() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let out = env.build_script("audited", "echo ${salt} > $out").expect("build");
    let push = s.create_token("builder-7", &["push"], &[]);
    let gc = s.create_token("gc-timer", &["gc"], &[]);
    let token_file = s.dir.path().join("builder-7.token");
    std::fs::write(&token_file, &push).expect("token file");
    let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
    cmd.args(["push", "--server", &s.url, "--auth-token-file"]).arg(&token_file).arg(&out);
    let res = tokio::task::spawn_blocking(move || cmd.output().expect("run niks3 push")).await.expect("join");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let gc_body = serde_json::json!({ "older_than_secs": 30 * 86_400, "failed_uploads_older_than_secs": 6 * 3600 });
    let r = s.post_api_as(&gc, "gc", &gc_body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert!(s.token_cli(&["revoke", "builder-7"]).status.success());

    let all = audit(&s, &[]);
    let lines: Vec<&str> = all.lines().collect();
    // Newest first: the revocation, the GC run, the push, then the two creations.
    assert!(lines[0].starts_with("TIME (UTC)"), "{all}");
    let row = |i: usize, who: &str, action: &str, subject: &str| {
        let l = lines[i];
        assert!(
            l.contains(who) && l.contains(action) && l.contains(subject),
            "row {i} is not {who} {action} {subject}:\n{all}"
        );
    };
    row(1, "local:", "token-revoke", "builder-7");
    row(2, "gc-timer", "gc", "objects_marked_for_deletion");
    row(3, "builder-7", "push", &out);
    row(4, "local:", "token-create", "gc-timer");
    row(5, "local:", "token-create", "builder-7");
    assert!(lines[3].contains("\"published\":1"), "{all}");
    assert!(lines[5].contains("\"scopes\":[\"push\"]"), "{all}");

    // Filters: who, the pushed path, since.
    let mine = audit(&s, &["--who", "builder-7"]);
    assert_eq!(mine.lines().count(), 2, "the header and the push:\n{mine}");
    let path = audit(&s, &["--path", &out]);
    assert!(path.lines().nth(1).is_some_and(|l| l.contains("builder-7") && l.contains("push")), "{path}");
    assert_eq!(path.lines().count(), 2, "{path}");
    assert_eq!(audit(&s, &["--since", "2099-01-01"]), "no audit entries match\n");
    assert_eq!(audit(&s, &["--since", "1h"]).lines().count(), 6);
    let bad = s.cli_on_db("audit", &["--since", "yesterday-ish"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a date"));
    s.shutdown().await;
}
