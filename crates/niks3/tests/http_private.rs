//! `--private` (docs/api.md "Private caches"): every read route needs a token with the read scope, sent
//! by real Nix from its netrc-file (HTTP Basic) or as a Bearer token; the landing page shows the netrc
//! lines and `/health` only ok or not; a refusal says which scope is missing and nothing about tokens.

use crate::support::http::{Backend, TOKEN, TestServer};
use base64::Engine as _;
use niks3_testkit::nix::NixEnv;

async fn get(s: &TestServer, path: &str, auth: Option<String>) -> (u16, String, String) {
    let mut rb = TestServer::client().get(format!("{}{path}", s.url));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.expect("GET");
    let status = r.status().as_u16();
    let cc = r.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let www = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, format!("{www}\n{cc}"), r.text().await.expect("body"))
}

fn basic(user: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_cache_is_read_with_a_read_token_from_nixs_netrc_and_by_nobody_else() {
    let s = TestServer::start_private(Backend::Local).await;
    let env = NixEnv::new().expect("nix env");
    let out = env.build_script("private-path", "echo secret sauce ${salt} > $out").expect("build");
    let (ok, log) = s.push_with_cli(&env, &out).await;
    assert!(ok, "pushing to a private cache works as before: {log}");
    let read = s.create_token("reader", &["read"], &[]);
    let push = s.create_token("pusher", &["push"], &[]);
    let narinfo = format!("/{}.narinfo", &out[11..43]);

    // Anonymous: every read route is refused, with the scheme Nix answers to.
    for path in [
        "/nix-cache-info",
        narinfo.as_str(),
        "/metrics",
        "/nar/00000000000000000000000000000000000000000000000000000.nar.zst",
    ] {
        let (st, head, body) = get(&s, path, None).await;
        assert_eq!(st, 401, "{path}: {body}");
        assert!(head.starts_with("Basic realm=\"niks3\""), "{path}: {head}");
        assert!(body.contains("needs a token with the read scope"), "{path}: {body}");
    }
    // A wrong token reads exactly like no token; a push token is told which scope it lacks.
    let wrong = get(&s, &narinfo, Some(basic("nix", &"x".repeat(40)))).await;
    assert_eq!((wrong.0, &wrong.2), (401, &get(&s, &narinfo, None).await.2), "nothing said about the token");
    let (st, _, body) = get(&s, &narinfo, Some(format!("Bearer {push}"))).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("pusher") && body.contains("needs the read scope"), "{body}");
    // A read token, as HTTP Basic (any user name) or Bearer; admin reads too. Never cached by a proxy.
    for auth in [basic("nix", &read), basic("", &read), format!("Bearer {read}"), basic("ops", TOKEN)] {
        let (st, head, body) = get(&s, &narinfo, Some(auth.clone())).await;
        assert_eq!(st, 200, "{auth:?}: {body}");
        assert!(body.contains(&format!("StorePath: {out}")), "{body}");
        assert!(head.contains("\nprivate,"), "a shared cache must not keep it: {head}");
    }
    // The landing page: open, with the netrc lines and nothing secret; /health: ok, no details.
    let (st, _, page) = get(&s, "/", None).await;
    assert_eq!(st, 200);
    assert!(page.contains("Private cache") && page.contains("netrc-file = /etc/nix/netrc"), "{page}");
    assert!(page.contains("password &lt;read token&gt;") && !page.contains(&read) && !page.contains(TOKEN));
    let (st, _, health) = get(&s, "/health", None).await;
    assert_eq!((st, health.trim()), (200, r#"{"status":"ok"}"#));

    // Real Nix: anonymous substitution fails; with the read token in its netrc-file it substitutes, with
    // signatures required.
    let key = s.key.public().to_nix_string();
    let err = env.substitute(&s.url, "anonymous", &[&out], &key).expect_err("anonymous nix copy must fail");
    // Nix 2.8 words the 401 on nix-cache-info this way.
    assert!(err.contains("does not appear to be a binary cache") || err.contains("401"), "{err}");
    let host = s.url.trim_start_matches("http://").split(':').next().expect("host").to_owned();
    let netrc = s.dir.path().join("netrc");
    std::fs::write(&netrc, format!("machine {host}\nlogin nix\npassword {read}\n")).expect("netrc");
    let netrc_arg = env.nix_path(&netrc).display().to_string();
    let store = env
        .substitute_with(&s.url, "with-netrc", &[&out], &key, &["--option", "netrc-file", &netrc_arg])
        .expect("nix copy with the read token in netrc-file");
    let copied = std::fs::read_to_string(store.join(out.trim_start_matches('/'))).expect("substituted path");
    assert!(copied.starts_with("secret sauce"), "{copied}");
    s.shutdown().await;
}
