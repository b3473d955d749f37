//! Shared pieces of the HTTP tests: a real PostgreSQL (testkit), a real object store (local directory or
//! Garage) and the real warp server on a free loopback port, in-process.
#![allow(clippy::missing_panics_doc, reason = "test support: panics are test failures")]

use super::throttle::Throttle;
use niks3_api::token::ApiToken;
use niks3_nix::signing::SecretKey;
use niks3_server::db::Db;
use niks3_server::http::HttpState;
use niks3_server::metrics::Metrics;
use niks3_storage::Storage;
use niks3_storage::local::LocalStore;
use niks3_storage::s3::S3Store;
use niks3_testkit::fault_proxy::FaultProxy;
use niks3_testkit::garage::Garage;
use niks3_testkit::postgres::Postgres;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// A token long enough for the API.
pub const TOKEN: &str = "test-token-0123456789abcdefghijklmnopqrstuvwxyz";

/// Which backend the server uses.
pub enum Backend {
    /// A local directory.
    Local,
    /// A fresh Garage.
    Garage,
    /// A fresh Garage, the store uploading (and presigning) multipart parts of this many bytes.
    GarageWithPartSize(usize),
    /// A fresh Garage reached through a fault-injecting proxy (faithful until the test sets faults on
    /// [`TestServer::fault_proxy`]): the server's requests and the presigned URLs it hands out both go
    /// through it. The store retries quickly and allows at most `max_requests` requests at once.
    GarageBehindFaultProxy { max_requests: usize, retry: niks3_storage::throttle::RetryPolicy },
    /// A fresh Garage reached through a proxy that slows what is sent to it to this many bytes per second
    /// and counts it ([`Throttle`]): the server's requests and the presigned URLs it hands out both go
    /// through it, so a pusher's S3 bytes are counted and an upload lasts long enough to be killed.
    GarageThrottled(u64),
}

/// A running server and everything it stands on; dropping it stops them all.
pub struct TestServer {
    pub state: Arc<HttpState>,
    pub addr: SocketAddr,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub cache_dir: Option<PathBuf>,
    /// Held for its `Drop`: the S3 server of the S3 backend.
    _garage: Option<Garage>,
    /// The proxy in front of Garage ([`Backend::GarageBehindFaultProxy`]).
    pub fault_proxy: Option<FaultProxy>,
    /// The slowing, counting proxy in front of Garage ([`Backend::GarageThrottled`]).
    pub throttle: Option<Throttle>,
    /// The bucket reached directly, not through [`TestServer::throttle`] ([`Backend::GarageThrottled`]):
    /// what a test looks at without slowing or counting it.
    pub direct_s3: Option<S3Store>,
    pub pg: Postgres,
    pub key: SecretKey,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts PostgreSQL, the store, and the server with API token [`TOKEN`].
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_adjusted(backend, |_| {}).await
    }

    /// Like [`TestServer::start`] with a chosen token, cache name and cache URL.
    pub async fn start_with(
        backend: Backend,
        token: Option<ApiToken>,
        name: &str,
        cache_url: Option<&str>,
    ) -> TestServer {
        let name = name.to_owned();
        let cache_url = cache_url.map(str::to_owned);
        Self::start_adjusted(backend, move |st| {
            st.api_token = token;
            st.cache_name = name;
            if let Some(u) = cache_url {
                st.cache_url = u;
            }
        })
        .await
    }

    /// Like [`TestServer::start`] for a private cache (`--private`).
    pub async fn start_private(backend: Backend) -> TestServer {
        Self::start_adjusted(backend, |st| st.private = true).await
    }

    /// Like [`TestServer::start`] with `adjust` applied to the server's state (limits, flags) before it
    /// serves: what `niks3 serve`'s flags would set.
    pub async fn start_adjusted(backend: Backend, adjust: impl FnOnce(&mut HttpState)) -> TestServer {
        let pg = Postgres::start().expect("start PostgreSQL");
        let db = Db::connect(&pg.url()).await.expect("connect to PostgreSQL");
        let dir = tempfile::Builder::new().prefix("niks3-http-").tempdir().expect("tempdir");
        let mut fault_proxy = None;
        let (mut throttle, mut direct_s3) = (None, None);
        let (store, cache_dir, garage) = match backend {
            Backend::Local => {
                let cache = dir.path().join("cache");
                (Storage::Local(LocalStore::open(cache.clone()).expect("local store")), Some(cache), None)
            }
            Backend::Garage | Backend::GarageWithPartSize(_) => {
                let part_size = if let Backend::GarageWithPartSize(p) = backend { p } else { 8 << 20 };
                let g = Garage::start().expect("start Garage");
                let s = S3Store::new(super::s3_config(&g, part_size)).expect("S3 store");
                (Storage::S3(s), None, Some(g))
            }
            Backend::GarageBehindFaultProxy { max_requests, retry } => {
                let g = Garage::start().expect("start Garage");
                let proxy = FaultProxy::start(&g.endpoint).expect("start the fault proxy");
                let mut config = super::s3_config(&g, 8 << 20);
                config.endpoint = proxy.url();
                config.max_requests = max_requests;
                let s = S3Store::new(config).expect("S3 store").with_retry_policy(retry);
                fault_proxy = Some(proxy);
                (Storage::S3(s), None, Some(g))
            }
            Backend::GarageThrottled(bytes_per_sec) => {
                let g = Garage::start().expect("start Garage");
                let proxy = Throttle::start(g.endpoint.trim_start_matches("http://"), bytes_per_sec);
                direct_s3 = Some(S3Store::new(super::s3_config(&g, 8 << 20)).expect("S3 store"));
                let mut config = super::s3_config(&g, 8 << 20);
                config.endpoint.clone_from(&proxy.endpoint);
                throttle = Some(proxy);
                (Storage::S3(S3Store::new(config).expect("S3 store")), None, Some(g))
            }
        };
        let metrics = Arc::new(Metrics::default());
        if let Storage::S3(s3) = &store {
            metrics.watch_s3_throttle(Arc::clone(s3.throttle()));
        }
        let key = SecretKey::generate("niks3-test-1").expect("key");
        let sign = SecretKey::parse(&key.to_nix_string()).expect("key copy");
        let listener = niks3_server::http::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let url = format!("http://{addr}");
        // The constructor `niks3 serve` uses; only what a test chooses differs.
        let mut st = HttpState {
            cache_url: url.clone(),
            cache_name: "test cache".to_owned(),
            api_token: Some(ApiToken::new(TOKEN).expect("token")),
            ..HttpState::new(Arc::new(store), db, Arc::new(vec![sign]), metrics)
        };
        adjust(&mut st);
        let state = Arc::new(st);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(niks3_server::http::serve_listener(Arc::clone(&state), listener, async move {
            let _ = stop_rx.await;
        }));
        TestServer {
            state,
            addr,
            url,
            dir,
            cache_dir,
            _garage: garage,
            fault_proxy,
            throttle,
            direct_s3,
            pg,
            key,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Runs `niks3 token <args> --db <this server's database>` (the real binary).
    pub fn token_cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_on_db("token", args)
    }

    /// Runs `niks3 <command> <args> --db <this server's database>` (the real binary).
    pub fn cli_on_db(&self, command: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_niks3"))
            .arg(command)
            .args(args)
            .arg("--db")
            .arg(self.pg.url())
            .env_remove("NIKS3_DB_FILE")
            .env_remove("NIKS3_DB")
            .output()
            .expect("run niks3 token")
    }

    /// `niks3 token create --name NAME --scope …`; returns the printed secret.
    pub fn create_token(&self, name: &str, scopes: &[&str], extra: &[&str]) -> String {
        let mut args = vec!["create", "--name", name];
        for sc in scopes {
            args.extend(["--scope", sc]);
        }
        args.extend(extra);
        let out = self.token_cli(&args);
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout is the secret alone: {stdout:?}");
        lines[0].to_owned()
    }

    /// Runs the real `niks3 push --server <this server> <path>` (token [`TOKEN`] from a file) in `env`;
    /// whether it succeeded, and what it printed.
    pub async fn push_with_cli(&self, env: &niks3_testkit::nix::NixEnv, path: &str) -> (bool, String) {
        self.push_with_cli_args(env, &[path]).await
    }

    /// [`TestServer::push_with_cli`] with more arguments (flags, then paths).
    pub async fn push_with_cli_args(&self, env: &niks3_testkit::nix::NixEnv, args: &[&str]) -> (bool, String) {
        let token_file = self.dir.path().join("token");
        std::fs::write(&token_file, TOKEN).expect("token file");
        let mut cmd = env.command(env!("CARGO_BIN_EXE_niks3"));
        cmd.args(["push", "--server", &self.url, "--auth-token-file"]).arg(&token_file).args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run niks3")).await.expect("join");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// `POST <url>/api/v1/<route>` with the JSON `body` and the test token; the response, whatever its status.
    pub async fn post_api(&self, route: &str, body: &serde_json::Value) -> reqwest::Response {
        self.post_api_as(TOKEN, route, body).await
    }

    /// `POST /api/v1/<route>` with `body` as JSON and bearer `token`.
    pub async fn post_api_as(&self, token: &str, route: &str, body: &serde_json::Value) -> reqwest::Response {
        Self::client()
            .post(format!("{}/api/v1/{route}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /api/v1/{route}: {e}"))
    }

    /// A client (no default auth).
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().build().expect("client")
    }

    /// Every file under the local cache directory (empty for Garage).
    pub fn cache_files(&self) -> Vec<String> {
        let Some(root) = &self.cache_dir else { return Vec::new() };
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Announces `path`'s closure (one path, no references) with `token` and uploads its NAR through the relay
/// route; returns the server's plan and the body that completes the push.
pub async fn announce_and_upload(
    s: &TestServer,
    env: &niks3_testkit::nix::NixEnv,
    path: &str,
    token: &str,
) -> (serde_json::Value, serde_json::Value) {
    let info = env.command("nix").args(["path-info", "--json", path]).output().expect("path-info");
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    let wire = serde_json::json!({
        "path": path, "nar_hash": v[0]["narHash"], "nar_size": v[0]["narSize"], "references": [],
    });
    let c = TestServer::client();
    let auth = format!("Bearer {token}");
    let plan: serde_json::Value = c
        .post(format!("{}/api/v1/push", s.url))
        .header("authorization", &auth)
        .json(&serde_json::json!({ "roots": [path], "paths": [wire] }))
        .send()
        .await
        .expect("push")
        .json()
        .await
        .expect("plan");
    let dump = env.command("nix-store").args(["--dump", path]).output().expect("dump").stdout;
    let zst = zstd::encode_all(dump.as_slice(), 3).expect("zstd");
    let url = plan["missing_nars"][0]["upload_url"].as_str().expect("url");
    let up: serde_json::Value = c
        .put(format!("{}{url}", s.url))
        .header("authorization", &auth)
        .body(zst)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload answer");
    let done = serde_json::json!({
        "uploads": plan["uploads"], "roots": [path], "paths": [wire],
        "nars": [{ "nar_hash": wire["nar_hash"], "file_hash": up["file_hash"], "file_size": up["size"] }],
    });
    (plan, done)
}

/// A minimal check of the Prometheus text exposition format: every sample line is `name{labels} value`
/// with a valid metric name, balanced quoted labels and a float value; every sample's family has a TYPE.
pub fn check_prometheus_text(text: &str) -> Result<usize, String> {
    let mut types = std::collections::HashMap::new();
    let mut samples = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().ok_or(format!("line {n}: comment without metric name"))?;
            if kw == "TYPE" {
                let t = parts.next().ok_or(format!("line {n}: TYPE without type"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                    return Err(format!("line {n}: unknown type {t}"));
                }
                types.insert(name.to_owned(), t.to_owned());
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("line {n}: no value"))?;
        let name = &line[..name_end];
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let close = rest.rfind('}').ok_or(format!("line {n}: unclosed labels"))?;
            let labels = &rest[1..close];
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or(format!("line {n}: bad label {pair:?}"))?;
                if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || !v.starts_with('"') {
                    return Err(format!("line {n}: bad label {pair:?}"));
                }
            }
            rest = &rest[close + 1..];
        }
        let value = rest.trim();
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            return Err(format!("line {n}: bad value {value:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("line {n}: sample {name} has no TYPE"));
        }
        samples += 1;
    }
    Ok(samples)
}

/// A closure whose `big` is 12 MiB of random bytes (incompressible: above any test part size, so it goes
/// up as a multipart upload) and whose `top` refers to it. Build with a fresh `salt`.
pub const BIG_NAR_EXPR: &str = include_str!("../fixtures/big_nar.nix");
