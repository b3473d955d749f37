//! Pins (docs/configuration.md "Pins"): `niks3 pin add` (the real binary, on the server's database) keeps
//! a pushed closure through GC runs that forget every pushed root, and Nix still substitutes it; after
//! `niks3 pin remove` the next run collects it. Only a path the cache holds can be pinned, and the audit
//! trail says who pinned and unpinned what.

use crate::support::http::{Backend, TestServer};
use niks3_testkit::nix::NixEnv;
use serde_json::{Value, json};

/// `app` refers to `lib`; `other` is pushed but not pinned; `never` is built and never pushed.
const EXPR: &str = r#"{ salt }: let
  mk = name: script: derivation {
    inherit name salt; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
  lib = mk "pin-lib" "echo lib ${salt} > $out";
in {
  app = mk "pin-app" "echo ${lib} > $out";
  other = mk "pin-other" "echo other ${salt} > $out";
  never = mk "pin-never" "echo never ${salt} > $out";
}"#;

/// Runs the real `niks3 pin <args>` on the server's database: whether it succeeded, its stdout, its stderr.
fn pin(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = s.cli_on_db("pin", args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn narinfo(path: &str) -> String {
    format!("{}.narinfo", &path["/nix/store/".len()..][..32])
}

/// A GC run that forgets every pushed closure and deletes what is unreachable at once.
async fn gc_everything(s: &TestServer) -> Value {
    let body = json!({ "older_than_secs": 0, "failed_uploads_older_than_secs": 3600, "force": true });
    let r = s.post_api("gc", &body).await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("figures")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_closure_outlives_its_pushes_until_it_is_unpinned() {
    let s = TestServer::start(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let [app, other, never] = ["app", "other", "never"].map(|a| env.build(EXPR, a).expect("build").remove(0));
    let lib = env.run(env.command("nix-store").args(["-q", "--references", &app])).expect("references");
    let lib = lib.trim().to_owned();
    assert!(lib.ends_with("-pin-lib"), "{lib}");
    let (ok, log) = s.push_with_cli_args(&env, &[&app, &other]).await;
    assert!(ok, "{log}");

    // Only what the cache holds, and only a store path.
    let (ok, _, err) = pin(&s, &["add", "release", &never]);
    assert!(!ok && err.contains("is not in the cache") && err.contains(&never), "{err}");
    let (ok, _, err) = pin(&s, &["add", "release", &format!("{app}/bin")]);
    assert!(!ok && err.contains("inside a store path"), "{err}");
    let (ok, _, err) = pin(&s, &["add", "no spaces", &app]);
    assert!(!ok && err.contains("invalid pin name"), "{err}");
    let (ok, list, err) = pin(&s, &["list"]);
    assert!(ok && list == "no pins\n", "the refusals pinned nothing: {list}{err}");

    let (ok, out, err) = pin(&s, &["add", "release", &app]);
    assert!(ok && out.contains(&format!("pinned {app} as \"release\"")), "{out}{err}");
    let (ok, list, err) = pin(&s, &["list"]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows[1].starts_with("release ") && rows[1].contains("local:") && rows[1].ends_with(&app), "{list}");

    // Both pushed roots are forgotten; the pinned closure (app and lib) stays, the other goes.
    let f = gc_everything(&s).await;
    assert_eq!(f["old_closures_deleted"], 2, "{f}");
    let files = s.cache_files();
    assert!(files.contains(&narinfo(&app)) && files.contains(&narinfo(&lib)), "{files:?}");
    assert!(!files.contains(&narinfo(&other)), "{files:?}");
    env.substitute(&s.url, "client", &[&app], &s.key.public().to_nix_string()).expect("the pinned closure substitutes");

    let (ok, out, err) = pin(&s, &["remove", "release"]);
    assert!(ok && out.contains(&app), "{out}{err}");
    let (ok, _, err) = pin(&s, &["remove", "release"]);
    assert!(!ok && err.contains("no pin named \"release\""), "{err}");
    let f = gc_everything(&s).await;
    assert_eq!(f["old_closures_deleted"], 0, "{f}");
    let left: Vec<String> =
        s.cache_files().into_iter().filter(|f| f.ends_with(".narinfo") || f.starts_with("nar/")).collect();
    assert!(left.is_empty(), "unpinned, the closure is collected: {left:?}");

    // The trail: who pushed, pinned and unpinned the path, newest first.
    let out = s.cli_on_db("audit", &["--path", &app]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trail = String::from_utf8(out.stdout).expect("utf-8");
    let rows: Vec<&str> = trail.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{trail}");
    for (row, (who, action)) in rows.iter().zip([("local:", "unpin"), ("local:", "pin"), ("seed", "push")]) {
        // Columns: time, who (`local:<user>` may hold a space: `local:uid 0`), action, subject, detail.
        let ok =
            row[21..].starts_with(who) && row.contains(&format!("  {action} ")) && row.contains(&format!(" {app}  "));
        assert!(ok, "{action}:\n{trail}");
    }
    assert!(rows[0].contains("{\"name\":\"release\"}") && rows[1].contains("{\"name\":\"release\"}"), "{trail}");
    s.shutdown().await;
}
