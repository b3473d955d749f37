//! OIDC (docs/api.md "OIDC"): JWTs issued by a real OpenID provider (testkit's `oidc-provider`) are
//! verified against its published keys and given scopes by the rules of `--oidc-config`; every kind of
//! bad token gets the same 401; the key cache refetches on rotation (rate-limited) and keeps verifying
//! while the issuer is down; an OIDC subject owns its upload sessions, has its own request rate and is
//! audited (pushes and GC runs) by name and claims; `niks3 push` sends a JWT from a file, the environment,
//! or GitHub Actions' token endpoint.

use crate::support::gc::hash_part;
use crate::support::http::{Backend, TOKEN, TestServer};
use base64::Engine as _;
use niks3_nix::hash::Sha256Hash;
use niks3_server::oidc::Oidc;
use niks3_server::oidc::config::OidcConfig;
use niks3_server::oidc::jwks::KeyTiming;
use niks3_testkit::nix::NixEnv;
use niks3_testkit::oidc::{OidcClient, OidcProvider};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const AUD: &str = "https://cache.test";
/// Tokens of the CI jobs the tests play: a push to main, a pull request, another organisation's repo.
const MAIN: &str = r#"{"repository": "org/app", "ref": "refs/heads/main", "event_name": "push"}"#;
const PR: &str = r#"{"repository": "org/app", "ref": "refs/heads/main", "event_name": "pull_request"}"#;
const OTHER: &str = r#"{"repository": "evil/app", "ref": "refs/heads/main", "event_name": "push"}"#;

fn rules_toml(issuer: &str) -> String {
    format!(
        r#"
[[issuers]]
issuer = "{issuer}"
audience = "{AUD}"
[[issuers.rules]]
claims = {{ event_name = "pull_request" }}
scopes = []
[[issuers.rules]]
claims = {{ repository = "org/*", ref = "refs/heads/main" }}
scopes = ["push"]
"#
    )
}

/// A server trusting what `path` lists, refetching keys at most once a second (the default is 30 s).
async fn server(path: &Path, adjust: impl FnOnce(&mut niks3_server::http::HttpState)) -> TestServer {
    let config = OidcConfig::load(path).expect("OIDC config");
    let timing = KeyTiming { min_refetch: Duration::from_secs(1), ..KeyTiming::default() };
    TestServer::start_adjusted(Backend::Local, move |st| {
        st.oidc = Some(Arc::new(Oidc::new(config, timing)));
        adjust(st);
    })
    .await
}

async fn post(s: &TestServer, token: &str, route: &str, body: &Value) -> (u16, Value) {
    let r = s.post_api_as(token, route, body).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A push of one made-up path `n` (the announce opens a session; nothing is uploaded).
fn push_of(n: usize) -> Value {
    let path = format!("/nix/store/{}-oidc", hash_part(2000 + n));
    let nar = Sha256Hash::digest(format!("nar {n}").as_bytes()).to_nix_string();
    json!({ "roots": [path], "paths": [{ "path": path, "nar_hash": nar, "nar_size": 100, "references": [] }] })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("part");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).expect("base64")).expect("json")
}

/// `token` with its header replaced by `header` (payload and signature kept).
fn with_header(token: &str, header: &Value) -> String {
    let rest = token.split_once('.').expect("parts").1;
    format!("{}.{rest}", b64(header.to_string().as_bytes()))
}

async fn assert_refused(s: &TestServer, token: &str, what: &str) {
    let (st, e) = post(s, token, "push", &push_of(999)).await;
    assert_eq!(st, 401, "{what}: {e}");
    assert_eq!(e["error"], "missing, invalid or expired API token", "{what}: never why");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwts_of_a_trusted_issuer_get_the_scopes_of_their_rules_and_every_forgery_is_refused() {
    let clients = [
        OidcClient::new("main", MAIN),
        OidcClient::new("pr", PR),
        OidcClient::new("other", OTHER),
        OidcClient { ttl: 1, ..OidcClient::new("short", MAIN) },
    ];
    let mut p = OidcProvider::start(&clients).expect("start the OpenID provider");
    let stranger = OidcProvider::start(&[OidcClient::new("main", MAIN)]).expect("start an untrusted provider");
    // A trusted issuer that is down before the server ever fetched its keys.
    let mut gone = OidcProvider::start(&[OidcClient::new("any", MAIN)]).expect("start a third provider");
    let gone_token = gone.token("any", AUD).expect("token");
    gone.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("oidc.toml");
    let toml = format!(
        "leeway_seconds = 1\n{}\n[[issuers]]\nissuer = \"{}\"\naudience = \"{AUD}\"\n[[issuers.rules]]\nscopes = [\"push\"]\n",
        rules_toml(&p.issuer()),
        gone.issuer()
    );
    std::fs::write(&cfg, toml).expect("config");
    let short = p.token("short", AUD).expect("short-lived token");
    let s = server(&cfg, |_| {}).await;

    // A push to main of an org/* repository may push; the keys are fetched once and then cached.
    let good = p.token("main", AUD).expect("token");
    let (st, plan) = post(&s, &good, "push", &push_of(1)).await;
    assert_eq!(st, 200, "{plan}");
    assert_eq!(post(&s, &good, "push", &push_of(2)).await.0, 200);
    assert_eq!(p.jwks_fetches().expect("count"), 1, "the JWKS is cached");

    // Valid tokens whose claims earn nothing: 403 naming the scope, and who asked.
    let who = |sub: &str| format!("oidc:{}#{sub}", p.issuer());
    for (client, why) in [("pr", "a pull request matches the nothing rule"), ("other", "no rule matches")] {
        let (st, e) = post(&s, &p.token(client, AUD).expect("token"), "push", &push_of(3)).await;
        assert_eq!(st, 403, "{why}: {e}");
        let msg = e["error"].as_str().unwrap_or_default();
        assert!(msg.contains("needs the push scope") && msg.contains(&who(client)), "{why}: {msg}");
        assert!(msg.contains("scopes: none"), "{why}: {msg}");
    }

    // Every bad token: the same 401.
    assert_refused(&s, &p.token("main", "urn:another-service").expect("token"), "wrong audience").await;
    assert_refused(&s, &stranger.token("main", AUD).expect("token"), "untrusted issuer").await;
    let header = part(&good, 0);
    let unsigned = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), good.split('.').nth(1).expect("payload"));
    assert_refused(&s, &unsigned, "alg none").await;
    assert_refused(&s, &with_header(&good, &json!({"alg": "none", "kid": header["kid"]})), "alg none, kid").await;
    // HS256 "signed" with what an attacker can guess: the issuer's public key (algorithm confusion).
    let jwks: Value = serde_json::from_str(&p.get("/jwks").expect("jwks")).expect("json");
    let modulus = jwks["keys"][0]["n"].as_str().expect("RSA modulus").to_owned();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = header["kid"].as_str().map(str::to_owned);
    for secret in [modulus.as_bytes().to_vec(), jwks["keys"][0].to_string().into_bytes(), b"secret".to_vec()] {
        let forged = jsonwebtoken::encode(
            &hs,
            &part(&good, 1),
            &jsonwebtoken::EncodingKey::from_secret(&secret).expect("HMAC key"),
        )
        .expect("encode");
        assert_refused(&s, &forged, "HS256 with a guessed secret").await;
    }
    // Another job's signature under main's claims.
    let other = p.token("other", AUD).expect("token");
    let theirs: Vec<&str> = other.split('.').collect();
    let ours: Vec<&str> = good.split('.').collect();
    assert_refused(&s, &format!("{}.{}.{}", theirs[0], ours[1], theirs[2]), "payload swapped").await;
    let altered = format!("{}.{}.{}x", ours[0], ours[1], &ours[2][..ours[2].len() - 1]);
    assert_refused(&s, &altered, "signature altered").await;
    // Expired: the short token lived 1 s, the leeway is 1 s; times are whole seconds (its iat rounded
    // down, the server's clock too), so 3 s after it was issued it is past for sure.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_refused(&s, &short, "expired").await;
    // A kid the issuer never had: one refetch (the cache may be stale), then refused; the next ones are
    // refused from the cache without asking the issuer again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let nowhere = with_header(&good, &json!({"alg": "RS256", "typ": "at+jwt", "kid": "nowhere"}));
    let before = p.jwks_fetches().expect("count");
    for _ in 0..3 {
        assert_refused(&s, &nowhere, "unknown kid").await;
    }
    assert_eq!(p.jwks_fetches().expect("count"), before + 1, "one refetch for the unknown kid, rate-limited");
    // The trusted issuer whose keys were never fetched is down: 503, retry later (not "invalid").
    let (st, e) = post(&s, &gone_token, "push", &push_of(4)).await;
    assert_eq!(st, 503, "{e}");

    // The issuer rotates its key: a token with the new kid makes the server refetch, and the old key
    // is gone from its cache with the new JWKS.
    p.rotate_keys().expect("rotate");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = p.token("main", AUD).expect("token");
    assert_ne!(part(&rotated, 0)["kid"], header["kid"], "a new key");
    assert_eq!(post(&s, &rotated, "push", &push_of(5)).await.0, 200, "refetched on the new kid");
    assert_eq!(p.jwks_fetches().expect("count"), 1);
    assert_refused(&s, &good, "signed with the withdrawn key").await;

    // The issuer goes down: what the cache holds still verifies.
    p.stop();
    let (st, e) = post(&s, &rotated, "push", &push_of(6)).await;
    assert_eq!(st, 200, "cached keys while the issuer is down: {e}");
    s.shutdown().await;
}

/// Answers GitHub Actions' ID-token request the way GitHub does (`{"value": <jwt>}` for a GET with the
/// request token as Bearer and `audience=` in the query), with a token of the real provider for that
/// audience. Serves `n` requests.
fn github_token_endpoint(p: &OidcProvider, request_token: &str, n: usize) -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/token?api-version=2.0", l.local_addr().expect("addr"));
    let main = |aud: &str| p.token("main", aud).expect("token");
    // The provider answers from this thread; the tokens for the audiences the test uses are made now.
    let tokens: Vec<(String, String)> = [AUD, "urn:other"].iter().map(|a| ((*a).to_owned(), main(a))).collect();
    let expected = format!("bearer {request_token}");
    let h = std::thread::spawn(move || {
        for conn in l.incoming().take(n) {
            let mut conn = conn.expect("accept");
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("request line");
            let mut authorized = false;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if line.trim().is_empty() {
                    break;
                }
                authorized |= line.trim().to_ascii_lowercase() == format!("authorization: {expected}");
            }
            let aud = request_line
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.split("audience=").nth(1))
                .map(|a| a.split('&').next().unwrap_or_default().replace("%3A", ":").replace("%2F", "/"))
                .unwrap_or_default();
            let token = tokens.iter().find(|(a, _)| *a == aud).map(|(_, t)| t.clone());
            let (status, body) = match (authorized, token) {
                (true, Some(t)) => ("200 OK", json!({ "value": t }).to_string()),
                (false, _) => ("401 Unauthorized", "{}".to_owned()),
                (true, None) => ("400 Bad Request", "{}".to_owned()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, h)
}

/// One way of handing `niks3 push` its JWT: a name, the arguments, the environment.
type Run<'a> = (&'a str, Vec<String>, Vec<(&'a str, String)>);

#[tokio::test(flavor = "multi_thread")]
async fn an_oidc_subject_pushes_with_niks3_push_owns_its_sessions_and_is_audited() {
    let p = OidcProvider::start(&[OidcClient::new("main", MAIN)]).expect("start the OpenID provider");
    let dir = tempfile::tempdir().expect("tempdir");
    // The same rules as JSON this time.
    let cfg = dir.path().join("oidc.json");
    std::fs::write(
        &cfg,
        json!({ "issuers": [{ "issuer": p.issuer(), "audience": AUD, "rules": [
            { "claims": { "event_name": "pull_request" }, "scopes": [] },
            { "claims": { "repository": "org/*", "ref": "refs/heads/main" }, "scopes": ["push"] },
        ]}]})
        .to_string(),
    )
    .expect("config");
    let s = server(&cfg, |st| st.limits.max_sessions_per_token = 2).await;
    let env = NixEnv::new().expect("nix env");
    let built = env.build_script("oidc-pushed", "echo ${salt} > $out").expect("build");
    let name = format!("oidc:{}#main", p.issuer());

    // niks3 push with the JWT in a file, then in NIKS3_OIDC_TOKEN, then fetched from GitHub Actions'
    // endpoint for --oidc-audience.
    let jwt = p.token("main", AUD).expect("token");
    let jwt_file = dir.path().join("jwt");
    std::fs::write(&jwt_file, format!("{jwt}\n")).expect("jwt file");
    let (url, endpoint) = github_token_endpoint(&p, "gh-request-token", 2);
    let runs: Vec<Run<'_>> = vec![
        ("file", vec!["--oidc-token-file".to_owned(), jwt_file.to_string_lossy().into_owned()], vec![]),
        ("env", vec![], vec![("NIKS3_OIDC_TOKEN", jwt.clone())]),
        (
            "github",
            vec!["--oidc-audience".to_owned(), AUD.to_owned()],
            vec![
                ("ACTIONS_ID_TOKEN_REQUEST_URL", url.clone()),
                ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token".to_owned()),
            ],
        ),
    ];
    for (how, args, envs) in runs {
        let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
        cmd.args(["push", "--server", &s.url]).args(&args).arg(&built);
        cmd.env_remove("NIKS3_AUTH_TOKEN").env_remove("NIKS3_AUTH_TOKEN_FILE").env("HOME", dir.path());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run niks3 push")).await.expect("join");
        assert!(out.status.success(), "push ({how}): {}", String::from_utf8_lossy(&out.stderr));
    }
    // A GitHub token for another audience is refused by the server.
    let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
    cmd.args(["push", "--server", &s.url, "--oidc-audience", "urn:other"]).arg(&built);
    cmd.env("ACTIONS_ID_TOKEN_REQUEST_URL", &url).env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run niks3 push")).await.expect("join");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    endpoint.join().expect("endpoint");

    // The audit trail names the subject and the claims its rule matched.
    let out = s.cli_on_db("audit", &["--who", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trail = String::from_utf8(out.stdout).expect("utf-8");
    assert!(trail.contains(&built) && trail.contains("\"published\":1"), "{trail}");
    assert!(trail.contains("\"matched_claims\":{\"ref\":\"refs/heads/main\",\"repository\":\"org/app\"}"), "{trail}");

    // Sessions: the seed token's are not the subject's, nor the other way round.
    let (st, seed_plan) = post(&s, TOKEN, "push", &push_of(1)).await;
    assert_eq!(st, 200, "{seed_plan}");
    let (st, oidc_plan) = post(&s, &jwt, "push", &push_of(2)).await;
    assert_eq!(st, 200, "{oidc_plan}");
    let (_, a) = post(&s, &jwt, "abort", &json!({ "uploads": seed_plan["uploads"] })).await;
    assert_eq!(a["aborted_uploads"], 0, "the subject cannot end the seed's session: {a}");
    let (_, a) = post(&s, TOKEN, "abort", &json!({ "uploads": oidc_plan["uploads"] })).await;
    assert_eq!(a["aborted_uploads"], 0, "nor the seed the subject's: {a}");
    // And its open sessions are limited like a scoped token's (2 here).
    assert_eq!(post(&s, &jwt, "push", &push_of(3)).await.0, 200);
    let (st, e) = post(&s, &jwt, "push", &push_of(4)).await;
    assert_eq!(st, 429, "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains(&name) && m.contains("2 upload sessions")), "{e}");
    let (_, a) = post(&s, &jwt, "abort", &json!({ "uploads": oidc_plan["uploads"] })).await;
    assert_eq!(a["aborted_uploads"], 1, "its own session: {a}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oidc_subject_past_its_request_rate_gets_429_and_others_go_on_and_its_gc_runs_are_audited() {
    // Not on main: the push rule does not match it, the GC rule after it does.
    const OPS: &str = r#"{"repository": "org/ops", "ref": "refs/tags/nightly", "event_name": "schedule"}"#;
    let clients = [OidcClient::new("main", MAIN), OidcClient::new("main-2", MAIN), OidcClient::new("gc-job", OPS)];
    let p = OidcProvider::start(&clients).expect("start the OpenID provider");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("oidc.toml");
    let gc_rule = "[[issuers.rules]]\nclaims = { repository = \"org/ops\" }\nscopes = [\"gc\"]\n";
    std::fs::write(&cfg, format!("{}{gc_rule}", rules_toml(&p.issuer()))).expect("config");
    let s = server(&cfg, |st| st.api_rate = niks3_server::http::api::rate::ApiRate::new(3)).await;
    let who = |sub: &str| format!("oidc:{}#{sub}", p.issuer());

    // Three requests in the minute, then 429 with Retry-After — for a fresh JWT of the same subject too:
    // the budget is the subject's, not the token's.
    let main = p.token("main", AUD).expect("token");
    for n in 0..3 {
        assert_eq!(post(&s, &main, "push", &push_of(10 + n)).await.0, 200, "request {n}");
    }
    for jwt in [main, p.token("main", AUD).expect("another token")] {
        let r = s.post_api_as(&jwt, "push", &push_of(20)).await;
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
        assert!((1..=21).contains(&wait), "one request back within 60/3 s: {wait}");
        let e: Value = r.json().await.expect("json");
        let msg = e["error"].as_str().unwrap_or_default();
        assert!(msg.contains(&who("main")) && msg.contains("more than 3 API requests in a minute"), "{e}");
    }
    // Another subject with the same claims, and a scoped token, each have their own budget.
    let (st, e) = post(&s, &p.token("main-2", AUD).expect("token"), "push", &push_of(21)).await;
    assert_eq!(st, 200, "another subject: {e}");
    let token = s.create_token("builder", &["push"], &[]);
    assert_eq!(post(&s, &token, "push", &push_of(22)).await.0, 200, "a token");

    // A GC run by an OIDC subject is audited with its issuer, subject and the claims its rule matched.
    let gc = json!({ "older_than_secs": 30 * 86_400, "failed_uploads_older_than_secs": 6 * 3600 });
    let (st, e) = post(&s, &p.token("gc-job", AUD).expect("token"), "gc", &gc).await;
    assert_eq!(st, 200, "{e}");
    let out = s.cli_on_db("audit", &["--who", &who("gc-job")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trail = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(trail.lines().count(), 2, "the header and the run:\n{trail}");
    let detail: Value = serde_json::from_str(&trail[trail.find('{').expect("detail")..]).expect("json detail");
    assert_eq!(detail["oidc"]["issuer"], p.issuer(), "{trail}");
    assert_eq!(detail["oidc"]["subject"], "gc-job", "{trail}");
    assert_eq!(detail["oidc"]["matched_claims"], json!({ "repository": "org/ops" }), "{trail}");
    assert!(detail["figures"].is_object(), "{trail}");
    s.shutdown().await;
}
