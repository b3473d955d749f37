//! The landing page: the snippets a user copies are right, hostile configuration values are escaped, and
//! a real headless Chromium renders it (the screenshot is written to `NIKS3_LANDING_SCREENSHOT` when set,
//! which is how docs/landing.png is made).
#![allow(clippy::many_single_char_names)] // s(erver), c(lient), r(esponse), v(alue): the tests read better short

use crate::support::http::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn landing_page_shows_keys_and_snippets_and_escapes_hostile_values() {
    let name = r#"<script>alert("name")</script>"#;
    let url = r#"https://cache.example.org/"><img src=x onerror=alert(1)>"#;
    let s = TestServer::start_with(Backend::Local, None, name, Some(url)).await;
    let r = TestServer::client().get(format!("{}/", s.url)).send().await.expect("get /");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let page = r.text().await.expect("body");
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt;"), "{page}");
    let key = s.key.public().to_nix_string();
    assert!(page.contains(&key), "public key shown");
    assert!(page.contains(&format!("extra-trusted-public-keys = {key}")), "{page}");
    assert!(page.contains("nix copy --from"), "{page}");
    // API disabled (no token): its routes are absent
    let r = TestServer::client().post(format!("{}/api/v1/push", s.url)).send().await.expect("post");
    assert_eq!(r.status(), 404);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn landing_page_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].iter().find_map(|c| which(c)) else {
        eprintln!("SKIP: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let s = TestServer::start_with(Backend::Local, None, "cache.example.org", Some("https://cache.example.org")).await;
    let out_dir = tempfile::tempdir().expect("tempdir");
    let png = std::env::var_os("NIKS3_LANDING_SCREENSHOT")
        .map_or_else(|| out_dir.path().join("landing.png"), std::path::PathBuf::from);
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = std::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1000,1400",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("{}/", s.url));
    let res = tokio::task::spawn_blocking(move || cmd.output().expect("run chromium")).await.expect("join");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert!(bytes.len() > 20_000, "a rendered page, not a blank one ({} bytes)", bytes.len());
    s.shutdown().await;
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(cmd)).find(|p| p.is_file())
}
