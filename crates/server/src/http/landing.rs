//! The landing page `/`: what a person needs to use this cache — its name, the substituter URL, the
//! public keys, copy-paste `nix.conf` and NixOS snippets and `nix copy` commands. Plain HTML, no
//! JavaScript; every configured value is escaped (HTML, and Nix string syntax inside Nix snippets), so a
//! hostile cache name or URL cannot inject markup.

use super::{HttpState, Request, response};
use bytes::Bytes;
use http::StatusCode;
use std::fmt::Write as _;
use warp::reply::Response;

/// Answers `GET/HEAD /`.
pub fn handle(state: &HttpState, req: &Request) -> Response {
    let keys: Vec<String> = state.public_keys.iter().map(niks3_nix::signing::PublicKey::to_nix_string).collect();
    let page = render(&state.cache_name, &state.cache_url, &keys, state.private);
    response::bytes(
        StatusCode::OK,
        "text/html; charset=utf-8",
        "public, max-age=60",
        Bytes::from(page),
        req.method == http::Method::HEAD,
    )
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for the inside of a double-quoted Nix string (`"`, `\`, `${`).
pub(crate) fn escape_nix_string(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace("${", "\\${")
}

/// Quotes a word for a POSIX shell command line (single quotes), for the copy-paste commands.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=+@,".contains(c)) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The whole page for a cache named `name` at `url` with public `keys`; a private cache's page also
/// says how a client presents its read token.
pub fn render(name: &str, url: &str, keys: &[String], private: bool) -> String {
    let h = escape_html;
    let keys_space = keys.join(" ");
    let mut nix_keys = String::new();
    for k in keys {
        let _ = write!(nix_keys, " \"{}\"", escape_nix_string(k));
    }
    let mut key_items = String::new();
    for k in keys {
        let _ = writeln!(key_items, "<li><code>{}</code></li>", h(k));
    }
    if keys.is_empty() {
        key_items.push_str("<li>(no signing key configured)</li>\n");
    }
    let nixconf = format!("extra-substituters = {url}\nextra-trusted-public-keys = {keys_space}\n");
    let nixos = format!(
        "nix.settings = {{\n  extra-substituters = [ \"{}\" ];\n  extra-trusted-public-keys = [{} ];\n}};\n",
        escape_nix_string(url),
        nix_keys
    );
    let private_section = if private {
        let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or_default();
        let netrc = format!(
            "# /etc/nix/netrc (root-only), with a read token the cache's operator made for you\n\
             # (niks3 token create --name you --scope read):\n\
             machine {host}\nlogin nix\npassword <read token>\n\n\
             # nix.conf (or nix.settings.netrc-file on NixOS):\nnetrc-file = /etc/nix/netrc\n"
        );
        format!(
            "<h2>Private cache</h2>\n<p>Reading this cache needs a token with the read scope, which Nix \
             sends from its netrc file:</p>\n<pre>{}</pre>\n",
            h(&netrc)
        )
    } else {
        String::new()
    };
    let qurl = shell_quote(url);
    let qkeys = shell_quote(&keys_space);
    let copy = format!(
        "# fetch a path (and its closure) from this cache into the local store\n\
         nix copy --from {qurl} \\\n  --option trusted-public-keys {qkeys} \\\n  /nix/store/…-name\n\n\
         # one-off build using this cache\n\
         nix-build --option extra-substituters {qurl} \\\n  --option extra-trusted-public-keys {qkeys} …\n\n\
         # push a path and its closure to this cache, with a push token the cache's operator made\n\
         # for you (niks3 token create --name you --scope push; revocable, one per machine)\n\
         niks3 push --server {qurl} --auth-token-file ./push-token ./result\n"
    );
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — Nix binary cache</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #1d2330; }}
h1 {{ margin-bottom: 0; }}
.sub {{ color: #5a6272; margin-top: .2rem; }}
pre, code {{ font-family: ui-monospace, monospace; font-size: .92rem; }}
pre {{ background: #f3f5f8; border: 1px solid #dde2ea; border-radius: 6px; padding: .8rem 1rem; overflow-x: auto; }}
ul {{ padding-left: 1.2rem; }}
footer {{ margin-top: 2.5rem; color: #7a8190; font-size: .85rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="sub">A Nix binary cache served by niks3.</p>
<h2>Substituter URL</h2>
<pre>{url_h}</pre>
{private_section}
<h2>Public keys</h2>
<ul>
{key_items}</ul>
<h2>nix.conf</h2>
<pre>{nixconf_h}</pre>
<h2>NixOS</h2>
<pre>{nixos_h}</pre>
<h2>Commands</h2>
<pre>{copy_h}</pre>
<footer>Health: <a href="/health">/health</a> · Metrics: <a href="/metrics">/metrics</a> · Cache info: <a href="/nix-cache-info">/nix-cache-info</a></footer>
</body>
</html>
"#,
        title = h(name),
        url_h = h(url),
        nixconf_h = h(&nixconf),
        nixos_h = h(&nixos),
        copy_h = h(&copy),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_and_urls_cannot_inject_markup() {
        let page = render(
            "<script>alert(1)</script>",
            "http://x/\"><img src=x onerror=alert(1)>${builtins.x}",
            &["k-1:<b>".to_owned()],
            true,
        );
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // inside the NixOS snippet the URL is a Nix string: `"` and `${` are escaped there too
        assert!(page.contains(r"\&quot;&gt;&lt;img"));
        assert!(page.contains(r"\${builtins.x}"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("http://a:1"), "http://a:1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
