//! narinfo files: the lenient parser, the writer, the fingerprint that is signed, signing and verifying.

use crate::hash::Sha256Hash;
use crate::signing::{PublicKey, SecretKey};
use crate::store_path::{StoreDir, StorePath};

/// Why a narinfo could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// A line is malformed or a field value invalid; `line` is 1-based.
    #[error("narinfo line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A mandatory field (StorePath, URL, NarHash, NarSize) is missing.
    #[error("narinfo lacks the mandatory field {0}")]
    Missing(&'static str),
}

/// The fields of a narinfo (see DESIGN.md). References are basenames, kept sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// The store path this describes.
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root, e.g. `nar/<nix32>.nar.zst`.
    pub url: String,
    /// `zstd`, `xz`, `none`, … as written by whoever made the NAR file.
    pub compression: String,
    /// Hash of the compressed file, when known.
    pub file_hash: Option<Sha256Hash>,
    /// Size of the compressed file, when known.
    pub file_size: Option<u64>,
    /// Hash of the uncompressed NAR: what Nix checks on import.
    pub nar_hash: Sha256Hash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Store paths this one refers to (sorted).
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known (a `.drv` store path).
    pub deriver: Option<StorePath>,
    /// Signatures, `name:base64`, one `Sig:` line each.
    pub sigs: Vec<String>,
    /// Content address (`CA:`), when the path is content-addressed.
    pub ca: Option<String>,
}

impl NarInfo {
    /// Parses leniently: unknown keys, blank lines and trailing newlines are ignored; StorePath must lie in
    /// `store_dir`.
    pub fn parse(text: &str, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        for (idx, raw_line) in text.lines().enumerate() {
            let line = idx + 1;
            let err = |reason: String| NarInfoError::Line { line, reason };
            let l = raw_line.strip_suffix('\r').unwrap_or(raw_line);
            if l.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = l.split_once(':') else {
                return Err(err(format!("expected `Key: value`, found {:?}", truncate(l))));
            };
            let value = value.strip_prefix(' ').unwrap_or(value);
            match key {
                "StorePath" => {
                    store_path = Some(store_dir.parse_path(value).map_err(|e| err(e.to_string()))?);
                }
                "URL" => {
                    if value.is_empty() || value.contains(char::is_whitespace) {
                        return Err(err(format!("invalid URL {:?}", truncate(value))));
                    }
                    url = Some(value.to_owned());
                }
                "Compression" => compression = Some(text_value(value).map_err(err)?.to_owned()),
                "FileHash" => file_hash = Some(Sha256Hash::parse(value).map_err(|e| err(e.to_string()))?),
                // Nix writes no FileSize when it is 0 (unknown), and so does `to_text`: 0 is absent.
                "FileSize" => file_size = Some(parse_u64(value).map_err(err)?).filter(|&n| n != 0),
                "NarHash" => nar_hash = Some(Sha256Hash::parse(value).map_err(|e| err(e.to_string()))?),
                "NarSize" => nar_size = Some(parse_u64(value).map_err(err)?),
                "References" => {
                    references = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(StorePath::from_basename)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| err(e.to_string()))?;
                }
                // Old Nix wrote "unknown-deriver"; like Nix, treat it (and an empty value) as absent.
                "Deriver" if !value.is_empty() && value != "unknown-deriver" => {
                    deriver = Some(StorePath::from_basename(value).map_err(|e| err(e.to_string()))?);
                }
                "Sig" => {
                    let value = text_value(value).map_err(err)?;
                    if !value.contains(':') {
                        return Err(err(format!("signature {:?} is not `name:base64`", truncate(value))));
                    }
                    sigs.push(value.to_owned());
                }
                "CA" if !value.is_empty() => ca = Some(text_value(value).map_err(err)?.to_owned()),
                _ => {}
            }
        }
        references.sort();
        references.dedup();
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::Missing("NarSize"));
        }
        Ok(NarInfo {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            // Nix's default when the field is absent.
            compression: compression.filter(|c| !c.is_empty()).unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references,
            deriver,
            sigs,
            ca,
        })
    }
    /// Serialises in Nix's field order (StorePath, URL, Compression, FileHash, FileSize, NarHash, NarSize,
    /// References, Deriver, Sig…, CA), each line ending in `\n`.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = writeln!(s, "StorePath: {}", store_dir.display(&self.store_path));
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", h.to_nix_string());
        }
        if let Some(n) = self.file_size.filter(|&n| n != 0) {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash.to_nix_string());
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<String> = self.sorted_references().iter().map(StorePath::basename).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.basename());
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }
    /// `1;<store path>;<sha256:nix32 NarHash>;<NarSize>;<comma-joined full reference paths>`.
    pub(crate) fn fingerprint(&self, store_dir: &StoreDir) -> String {
        let refs: Vec<String> = self.sorted_references().iter().map(|r| store_dir.display(r)).collect();
        format!(
            "1;{};{};{};{}",
            store_dir.display(&self.store_path),
            self.nar_hash.to_nix_string(),
            self.nar_size,
            refs.join(",")
        )
    }
    /// Adds (or replaces) the signature by `key`.
    pub fn sign(&mut self, key: &SecretKey, store_dir: &StoreDir) {
        let sig = key.sign(self.fingerprint(store_dir).as_bytes());
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|s| !s.starts_with(&prefix));
        self.sigs.push(sig);
    }
    /// True when some `Sig` line is a valid signature by one of `keys`.
    pub fn verify(&self, keys: &[PublicKey], store_dir: &StoreDir) -> bool {
        let fp = self.fingerprint(store_dir);
        self.sigs.iter().any(|sig| keys.iter().any(|k| k.verify(fp.as_bytes(), sig)))
    }

    /// References in Nix's order (sorted), whatever order the field holds them in.
    fn sorted_references(&self) -> Vec<StorePath> {
        let mut refs = self.references.clone();
        refs.sort();
        refs.dedup();
        refs
    }
}

fn parse_u64(value: &str) -> Result<u64, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{:?} is not a number", truncate(value)));
    }
    value.parse().map_err(|e| format!("{:?}: {e}", truncate(value)))
}

/// A free-text value (Compression, Sig, CA) without control characters: a line ending in `\r\r\n` would
/// otherwise keep a `\r` that `to_text` writes back as a CRLF line end, which the next parse strips, so
/// the narinfo would not survive its own round trip (what the `narinfo` fuzz target checks).
fn text_value(value: &str) -> Result<&str, String> {
    if value.contains(char::is_control) {
        return Err(format!("control character in the value {:?}", truncate(value)));
    }
    Ok(value)
}

/// At most 100 characters of `s`, for error messages about arbitrary input.
fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape `nix copy --to file://…?compression=xz` writes (Nix 2.8); hashes and signature made up.
    const NIX_NARINFO: &str = "\
StorePath: /nix/store/0i6zbjd8w6w1hwxg3m5fv8dqpbs21ybb-e2e-app
URL: nar/1k5c4a6mnwzpq5xbbvqjq3kf7wg88a3lmlaf6w6cvyhqh3sxd6ln.nar.xz
Compression: xz
FileHash: sha256:1k5c4a6mnwzpq5xbbvqjq3kf7wg88a3lmlaf6w6cvyhqh3sxd6ln
FileSize: 272
NarHash: sha256:0vx7ri3rfnw9ypcbm4bvj2ly4f2l0cnl9ll3p3m5xgmnawsgdifr
NarSize: 384
References: 1gblm7dp4jv2qq7yqwhy7ag1cf4dkk3z-e2e-tree 8y0hxmv4pfbyfnqjdl7kyk7lqhq0l8am-e2e-hello
Deriver: 7x26q5k0yjfyp5m6f2q2vx2l9d4i57j2-e2e-app.drv
Sig: demo-1:placeholder
";

    fn sample() -> NarInfo {
        NarInfo::parse(NIX_NARINFO, &StoreDir::default()).expect("sample parses")
    }

    #[test]
    fn parses_and_reserialises_byte_identically() {
        let ni = sample();
        assert_eq!(ni.store_path.name(), "e2e-app");
        assert_eq!(ni.compression, "xz");
        assert_eq!(ni.file_size, Some(272));
        assert_eq!(ni.nar_size, 384);
        assert_eq!(ni.references.len(), 2);
        assert_eq!(ni.deriver.as_ref().map(StorePath::name), Some("e2e-app.drv"));
        assert_eq!(ni.to_text(&StoreDir::default()), NIX_NARINFO);
    }

    #[test]
    fn fingerprint_is_what_nix_signs() {
        let ni = sample();
        assert_eq!(
            ni.fingerprint(&StoreDir::default()),
            "1;/nix/store/0i6zbjd8w6w1hwxg3m5fv8dqpbs21ybb-e2e-app;\
             sha256:0vx7ri3rfnw9ypcbm4bvj2ly4f2l0cnl9ll3p3m5xgmnawsgdifr;384;\
             /nix/store/1gblm7dp4jv2qq7yqwhy7ag1cf4dkk3z-e2e-tree,/nix/store/8y0hxmv4pfbyfnqjdl7kyk7lqhq0l8am-e2e-hello"
        );
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let dir = StoreDir::default();
        let key = SecretKey::generate("k-1").expect("key");
        let other = SecretKey::generate("k-2").expect("key");
        let mut ni = sample();
        ni.sigs.clear();
        assert!(!ni.verify(&[key.public()], &dir));
        ni.sign(&key, &dir);
        ni.sign(&key, &dir);
        assert_eq!(ni.sigs.len(), 1, "re-signing replaces");
        assert!(ni.verify(&[key.public()], &dir));
        assert!(!ni.verify(&[other.public()], &dir));
        let reparsed = NarInfo::parse(&ni.to_text(&dir), &dir).expect("reparse");
        assert!(reparsed.verify(&[other.public(), key.public()], &dir));
        let mut tampered = reparsed.clone();
        tampered.nar_size += 1;
        assert!(!tampered.verify(&[key.public()], &dir));
        let mut tampered = reparsed;
        tampered.references.pop();
        assert!(!tampered.verify(&[key.public()], &dir));
    }

    #[test]
    fn other_store_dirs_are_honoured() {
        let gnu = StoreDir::new("/gnu/store").expect("store dir");
        let text = NIX_NARINFO.replace("/nix/store/", "/gnu/store/");
        let ni = NarInfo::parse(&text, &gnu).expect("parses in /gnu/store");
        assert_eq!(ni.to_text(&gnu), text);
        assert!(ni.fingerprint(&gnu).starts_with("1;/gnu/store/0i6zbjd8w6w1hwxg3m5fv8dqpbs21ybb-e2e-app;"));
        assert!(ni.fingerprint(&gnu).ends_with(",/gnu/store/8y0hxmv4pfbyfnqjdl7kyk7lqhq0l8am-e2e-hello"));
        let err = NarInfo::parse(&text, &StoreDir::default()).expect_err("wrong store");
        assert!(err.to_string().contains("not in the Nix store"), "{err}");
        // A signature binds the store dir: valid in one, invalid when read as another.
        let key = SecretKey::generate("k-1").expect("key");
        let mut signed = ni;
        signed.sign(&key, &gnu);
        assert!(signed.verify(&[key.public()], &gnu));
        assert!(!signed.verify(&[key.public()], &StoreDir::default()));
    }

    #[test]
    fn lenient_about_unknown_keys_blank_lines_and_crlf() {
        let text = format!("\n{}Foo: bar\nSystem: x86_64-linux\n\n\n", NIX_NARINFO.replace('\n', "\r\n"));
        assert_eq!(NarInfo::parse(&text, &StoreDir::default()).expect("lenient"), sample());
        let no_compression = NIX_NARINFO.replace("Compression: xz\n", "");
        assert_eq!(NarInfo::parse(&no_compression, &StoreDir::default()).expect("default").compression, "bzip2");
        let no_refs = NIX_NARINFO.replace(
            "References: 1gblm7dp4jv2qq7yqwhy7ag1cf4dkk3z-e2e-tree 8y0hxmv4pfbyfnqjdl7kyk7lqhq0l8am-e2e-hello",
            "References: ",
        );
        let ni = NarInfo::parse(&no_refs, &StoreDir::default()).expect("empty references");
        assert!(ni.references.is_empty());
        assert!(ni.to_text(&StoreDir::default()).contains("\nReferences: \n"));
    }

    #[test]
    fn rejects_bad_narinfos_with_line_numbers() {
        let dir = StoreDir::default();
        for (bad, needle) in [
            (NIX_NARINFO.replace("NarSize: 384", "NarSize: x"), "line 7"),
            (NIX_NARINFO.replace("NarSize: 384", "NarSize: -1"), "line 7"),
            (NIX_NARINFO.replace("NarHash: sha256:0", "NarHash: sha256:e"), "line 6"),
            (NIX_NARINFO.replace("/nix/store/0i6", "/gnu/store/0i6"), "line 1"),
            (NIX_NARINFO.replace("-e2e-tree", "-e2e/tree"), "line 8"),
            (NIX_NARINFO.replace("Deriver: ", "Deriver: x"), "line 9"),
            (NIX_NARINFO.replace("Sig: demo-1:placeholder", "junk without colon"), "line 10"),
            (NIX_NARINFO.replace("NarSize: 384\n", ""), "NarSize"),
            (NIX_NARINFO.replace("NarSize: 384", "NarSize: 0"), "NarSize"),
            (NIX_NARINFO.replace("NarHash", "NotHash"), "NarHash"),
            (NIX_NARINFO.replace("URL", "URI"), "URL"),
            (NIX_NARINFO.replace("StorePath", "Path"), "StorePath"),
            (String::new(), "NarSize"),
        ] {
            let err = NarInfo::parse(&bad, &dir).expect_err(&bad);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    /// Inputs that failed the `narinfo` fuzz target's check: what parses survives `to_text` and a second
    /// parse unchanged.
    #[test]
    fn what_parses_round_trips_through_to_text() {
        let dir = StoreDir::default();
        let file_size_0 = NIX_NARINFO.replace("FileSize: 272", "FileSize: 0");
        let ni = NarInfo::parse(&file_size_0, &dir).expect("FileSize 0 is unknown, not an error");
        assert_eq!(ni.file_size, None);
        assert_eq!(NarInfo::parse(&ni.to_text(&dir), &dir), Ok(ni));
        for (from, to) in [
            ("Sig: demo-1:placeholder", "Sig: demo-1:placeholder\r\r\r"),
            ("Compression: xz", "Compression: xz\r\r\r"),
            ("Sig: demo-1:placeholder", "Sig: demo-1:place\x01holder"),
            ("Sig: demo-1:placeholder", "Sig: demo-1:placeholder\nCA: fixed:\tr:sha256:0"),
        ] {
            let text = NIX_NARINFO.replace(from, to);
            let err = NarInfo::parse(&text, &dir).expect_err(&text);
            assert!(err.to_string().contains("control character"), "{err}");
        }
        // One CR before the LF is a CRLF line end, as before.
        let crlf = NIX_NARINFO.replace('\n', "\r\n");
        assert_eq!(NarInfo::parse(&crlf, &dir), Ok(sample()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = NarInfo::parse(&s, &StoreDir::default());
        }

        #[test]
        fn truncations_and_byte_flips_never_panic(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let mut bytes = NIX_NARINFO.as_bytes().to_vec();
            if flip < bytes.len() {
                bytes[flip] ^= 1 << bit;
            }
            bytes.truncate(cut);
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(ni) = NarInfo::parse(&text, &StoreDir::default()) {
                // Whatever parses re-serialises to something that parses to the same thing.
                let again = NarInfo::parse(&ni.to_text(&StoreDir::default()), &StoreDir::default());
                proptest::prop_assert_eq!(again.expect("own output parses"), ni);
            }
        }
    }
}
