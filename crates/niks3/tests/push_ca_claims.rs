//! Review #2 (the `ca` part): a push claiming a content address must be telling the truth. The server
//! recomputes each content-addressed path from its `ca` and references the way Nix does and refuses a
//! claim that names another path. Checked against paths the real Nix made: `builtins.toFile` (text:),
//! `builtins.path` (fixed:r:sha256, "source") and flat fixed-output derivations (fixed:sha256, fixed:sha1).

use crate::support::http::{Backend, TestServer};
use niks3_client::push::to_wire;
use niks3_local::nix::LocalNix;
use niks3_nix::content_address::{CaError, check_store_path};
use niks3_nix::store_path::StoreDir;
use niks3_testkit::nix::NixEnv;
use serde_json::json;

fn expr(src_dir: &str) -> String {
    format!(
        r#"{{ salt }}:
let
  text = builtins.toFile "ca-text-${{salt}}" "hello ${{salt}}\n";
  src = builtins.path {{ path = {src_dir}; name = "ca-src-${{salt}}"; }};
  fod = algo: let content = "fod-${{algo}}-${{salt}}"; in derivation {{
    name = "ca-fod-${{algo}}-${{salt}}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "printf '%s' '${{content}}' > $out" ];
    outputHashMode = "flat"; outputHashAlgo = algo; outputHash = builtins.hashString algo content; }};
in derivation {{
  name = "ca-user"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ${{text}} ${{src}} ${{fod "sha256"}} ${{fod "sha1"}} > $out" ];
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn content_addresses_real_nix_made_are_accepted_and_false_ones_refused() {
    let env = NixEnv::new().expect("nix env");
    let src = env.dir().join("ca-src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/file"), format!("source {}\n", env.salt())).expect("write");
    let user = env.build(&expr(&src.display().to_string()), "").expect("build").remove(0);
    let dir = StoreDir::default();
    let infos = LocalNix::default().closure(&dir, &[dir.parse_path(&user).expect("path")]).await.expect("closure");

    // Every kind is there, and every claim Nix made checks out.
    let cas: Vec<&str> = infos.iter().filter_map(|i| i.ca.as_deref()).collect();
    for prefix in ["text:sha256:", "fixed:r:sha256:", "fixed:sha256:", "fixed:sha1:"] {
        assert!(cas.iter().any(|c| c.starts_with(prefix)), "no {prefix} path in {cas:?}");
    }
    for i in infos.iter().filter(|i| i.ca.is_some()) {
        let ca = i.ca.as_deref().unwrap_or_default();
        check_store_path(&dir, &i.path, ca, &i.references).unwrap_or_else(|e| panic!("{ca} of {:?}: {e}", i.path));
    }

    // False claims: another path's content address, or a claim on an input-addressed path.
    let text = infos.iter().find(|i| i.ca.as_deref().is_some_and(|c| c.starts_with("text:"))).expect("text");
    let source = infos.iter().find(|i| i.ca.as_deref().is_some_and(|c| c.starts_with("fixed:r:"))).expect("src");
    let e = check_store_path(&dir, &text.path, source.ca.as_deref().unwrap_or_default(), &text.references);
    assert!(e.is_err(), "the source's CA accepted for the text file");
    let e = check_store_path(&dir, &source.path, text.ca.as_deref().unwrap_or_default(), &source.references);
    assert!(matches!(e, Err(CaError::Mismatch { .. })), "{e:?}");
    let top = infos.iter().find(|i| i.ca.is_none()).expect("input-addressed path");
    let e = check_store_path(&dir, &top.path, source.ca.as_deref().unwrap_or_default(), &[]);
    assert!(matches!(e, Err(CaError::Mismatch { .. })), "{e:?}");

    // Through the API: the real closure is accepted (dry run), the forged claim refused with a 400.
    let s = TestServer::start(Backend::Local).await;
    let mut paths: Vec<_> = infos.iter().map(|i| to_wire(&dir, i)).collect();
    let r = s.post_api("push", &json!({ "roots": [user], "paths": paths, "dry_run": true })).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let forged = paths.iter_mut().find(|w| w.path == user).expect("user");
    forged.ca = source.ca.clone();
    let r = s.post_api("push", &json!({ "roots": [user], "paths": paths, "dry_run": true })).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.expect("body");
    assert!(text.contains("CA of") && text.contains("refused"), "{text}");
    s.shutdown().await;
}
