//! Keys and signatures cross-verify with the real `nix` (2.8): `niks3 key generate` keys work with
//! `nix store sign`; signatures Nix makes verify in niks3; a binary cache written entirely by niks3 (our
//! NARs, our signed narinfos) substitutes into a fresh store with signature checking on, and tampered
//! narinfos are rejected by both Nix and niks3.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use niks3_local::nix::LocalNix;
use niks3_nix::hash::HashingWriter;
use niks3_nix::nar::dump_path;
use niks3_nix::narinfo::NarInfo;
use niks3_nix::pathinfo::PathInfo;
use niks3_nix::signing::{PublicKey, SecretKey};
use niks3_nix::store_path::StoreDir;
use niks3_testkit::nix::NixEnv;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

const APP_EXPR: &str = include_str!("fixtures/nix_signing_app.nix");

fn niks3(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_niks3")).args(args).output().expect("run niks3")
}

#[test]
fn niks3_key_generate_writes_nix_compatible_files_and_refuses_to_overwrite() {
    let env = NixEnv::new().expect("nix env");
    let sec = env.dir().join("k.sec");
    let publ = env.dir().join("k.pub");
    let (s, p) = (sec.to_str().expect("utf8"), publ.to_str().expect("utf8"));
    let out = niks3(&["key", "generate", "--name", "niks3-test-1", "--secret-out", s, "--public-out", p]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sec_text = std::fs::read_to_string(&sec).expect("secret written");
    let pub_text = std::fs::read_to_string(&publ).expect("public written");
    assert!(!sec_text.ends_with('\n') && !pub_text.ends_with('\n'), "no trailing newline, like nix");
    assert_eq!(std::fs::metadata(&sec).expect("stat").permissions().mode() & 0o777, 0o600);
    assert!(sec_text.starts_with("niks3-test-1:") && pub_text.starts_with("niks3-test-1:"));
    // Nix derives the same public key from our secret key.
    let mut cmd = env.command("nix");
    cmd.args(["key", "convert-secret-to-public"]).stdin(std::fs::File::open(&sec).expect("open"));
    assert_eq!(env.run(&mut cmd).expect("nix converts our key"), pub_text);
    // `niks3 key public` prints it too, and the secret never appears on stdout/stderr.
    let out = niks3(&["key", "public", s]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pub_text);
    let secret_b64 = sec_text.split_once(':').expect("colon").1;
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret_b64));
    // Never overwrite: both files keep their contents.
    let again = niks3(&["key", "generate", "--name", "other", "--secret-out", s, "--public-out", p]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&sec).expect("still there"), sec_text);
    let p2 = env.dir().join("k2.pub");
    let again =
        niks3(&["key", "generate", "--name", "o", "--secret-out", s, "--public-out", p2.to_str().expect("utf8")]);
    assert!(!again.status.success());
    assert!(!p2.exists(), "nothing written when one target exists");
    // A broken key file: a clear error naming the file, without its contents.
    let junk = env.dir().join("junk.sec");
    std::fs::write(&junk, "name:bm90IGEga2V5").expect("write");
    let out = niks3(&["key", "public", junk.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.sec") && !err.contains("bm90IGEga2V5"), "{err}");
}

/// `nix store sign -k <niks3 key>` signs; the signature (propagated into a `nix copy` narinfo) verifies
/// in niks3. And a key made by `nix key generate-secret` signs narinfos niks3 verifies.
#[test]
fn signatures_made_by_nix_verify_in_niks3() {
    let env = NixEnv::new().expect("nix env");
    let sec = env.dir().join("k.sec");
    let publ = env.dir().join("k.pub");
    let out = niks3(&[
        "key",
        "generate",
        "--name",
        "ours-1",
        "--secret-out",
        sec.to_str().expect("utf8"),
        "--public-out",
        publ.to_str().expect("utf8"),
    ]);
    assert!(out.status.success());
    let ours_pub = PublicKey::parse(&std::fs::read_to_string(&publ).expect("pub")).expect("our public key");
    let hello = env.build(APP_EXPR, "hello").expect("build").remove(0);
    env.run(env.command("nix").args(["store", "sign", "-k", sec.to_str().expect("utf8"), &hello]))
        .expect("nix store sign with a niks3 key");

    let nix_sec = env.dir().join("nix.sec");
    let key_text = env.run(env.command("nix").args(["key", "generate-secret", "--key-name", "nix-1"])).expect("keygen");
    std::fs::write(&nix_sec, &key_text).expect("write");
    let nix_key = SecretKey::parse(&key_text).expect("niks3 reads nix's secret key");

    let cache = env.dir().join("cache");
    let url = format!("file://{}?compression=none&secret-key={}", cache.display(), nix_sec.display());
    env.run(env.command("nix").args(["copy", "--to", &url, &hello])).expect("nix copy");
    let dir = StoreDir::default();
    let hash = dir.parse_path(&hello).expect("path").hash_part().to_owned();
    let ni = NarInfo::parse(&std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).expect("read"), &dir)
        .expect("parse");
    assert_eq!(ni.sigs.len(), 2, "{:?}", ni.sigs);
    assert!(ni.verify(std::slice::from_ref(&ours_pub), &dir), "nix store sign -k <niks3 key>");
    assert!(ni.verify(&[nix_key.public()], &dir), "secret-key=<nix key>");
    // Our own signature with Nix's key is byte-identical to Nix's (ed25519 is deterministic).
    let mut ours = ni.clone();
    ours.sigs.clear();
    ours.sign(&nix_key, &dir);
    assert!(ni.sigs.contains(&ours.sigs[0]), "{:?} not in {:?}", ours.sigs, ni.sigs);
}

/// Writes a file:// binary cache for `infos` with our NAR writer and our signed narinfos (compression
/// none); `tamper` may edit a narinfo's text before it is written.
fn write_cache(dir: &Path, infos: &[PathInfo], key: &SecretKey, tamper: &dyn Fn(&str, String) -> String) {
    let store_dir = StoreDir::default();
    std::fs::create_dir_all(dir.join("nar")).expect("mkdir");
    std::fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").expect("write");
    for info in infos {
        let tmp = dir.join("nar/tmp");
        let mut w = HashingWriter::new(std::fs::File::create(&tmp).expect("create"));
        dump_path(&store_dir.path_of(&info.path), &mut w).expect("dump");
        let (hash, size, _) = w.finish();
        assert_eq!((hash, size), (info.nar_hash, info.nar_size), "our NAR matches Nix's registered NarHash");
        let url = format!("nar/{}.nar", hash.to_nix32());
        std::fs::rename(&tmp, dir.join(&url)).expect("rename");
        let mut ni = NarInfo {
            store_path: info.path.clone(),
            url,
            compression: "none".to_owned(),
            file_hash: Some(hash),
            file_size: Some(size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            sigs: Vec::new(),
            ca: info.ca.clone(),
        };
        ni.sign(key, &store_dir);
        let text = tamper(info.path.name(), ni.to_text(&store_dir));
        std::fs::write(dir.join(format!("{}.narinfo", info.path.hash_part())), text).expect("write narinfo");
    }
}

fn file_url(cache: &Path) -> String {
    format!("file://{}", cache.display())
}

#[tokio::test]
async fn a_cache_written_by_niks3_substitutes_with_signatures_checked() {
    let env = NixEnv::new().expect("nix env");
    let app = env.build(APP_EXPR, "app").expect("build").remove(0);
    let dir = StoreDir::default();
    let infos = LocalNix::default().closure(&dir, &[dir.parse_path(&app).expect("path")]).await.expect("closure");
    assert_eq!(infos.len(), 3);
    let key = SecretKey::generate("niks3-cache-1").expect("key");
    let public = key.public().to_nix_string();

    let good = env.dir().join("good");
    write_cache(&good, &infos, &key, &|_, t| t);
    let store = env.substitute(&file_url(&good), "good", &[&app], &public).expect("nix accepts our cache");
    let mut check = env.command("nix-store");
    check.arg("--store").arg(&store).arg("--check-validity");
    for i in &infos {
        check.arg(dir.display(&i.path));
    }
    env.run(&mut check).expect("whole closure valid in the chroot store");
    assert!(store.join(&app[1..]).join("uses-tree").is_file());

    // A wrong key: rejected.
    let other = SecretKey::generate("niks3-cache-1").expect("key");
    let err = env.substitute(&file_url(&good), "wrongkey", &[&app], &other.public().to_nix_string()).expect_err("key");
    assert!(err.contains("lacks a valid signature"), "{err}");

    // Tampered NarHash (still a valid hash) or Sig: Nix and niks3 both reject.
    let flip_nar_hash = |name: &str, text: String| {
        if name != "hello" {
            return text;
        }
        let i = text.find("NarHash: sha256:").expect("NarHash") + "NarHash: sha256:".len() + 10;
        let mut b = text.into_bytes();
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).expect("ascii")
    };
    let flip_sig = |name: &str, text: String| {
        if name != "hello" {
            return text;
        }
        let (head, sig_line) = text.split_once("Sig: ").expect("Sig");
        let (sig, rest) = sig_line.split_once('\n').expect("line");
        let (kname, b64) = sig.split_once(':').expect("name");
        let mut raw = B64.decode(b64).expect("b64");
        raw[5] ^= 1;
        format!("{head}Sig: {kname}:{}\n{rest}", B64.encode(raw))
    };
    for (label, tamper) in [("narhash", &flip_nar_hash as &dyn Fn(&str, String) -> String), ("sig", &flip_sig)] {
        let cache = env.dir().join(format!("tampered-{label}"));
        write_cache(&cache, &infos, &key, tamper);
        let hello = infos.iter().find(|i| i.path.name() == "hello").expect("hello in closure");
        let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", hello.path.hash_part()))).expect("read");
        let ni = NarInfo::parse(&text, &dir).expect("still parses");
        assert!(!ni.verify(&[key.public()], &dir), "{label}: niks3 must reject");
        let err = env
            .substitute(&file_url(&cache), label, &[dir.display(&hello.path)], &public)
            .expect_err("nix accepted a tampered narinfo");
        assert!(err.contains("lacks a valid signature"), "{label}: {err}");
    }
}
