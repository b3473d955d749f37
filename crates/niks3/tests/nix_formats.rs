//! Our NAR writer/reader, listings and narinfos against the real `nix` (2.8): byte-identical NARs for random
//! trees, `.ls` listings equal to what `nix copy … write-nar-listing=true` writes, and narinfos written by
//! `nix copy --to file://` that parse and re-serialise to the same bytes.

use niks3_nix::hash::Sha256Hash;
use niks3_nix::listing::listing_json;
use niks3_nix::nar::{NarNode, dump_path, dump_path_tree, read_tree};
use niks3_nix::narinfo::NarInfo;
use niks3_nix::signing::PublicKey;
use niks3_nix::store_path::StoreDir;
use niks3_testkit::nix::NixEnv;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A file tree to create on disk.
#[derive(Debug, Clone)]
enum Tree {
    /// `mode`: permission bits; only the owner's execute bit (0o100) survives in a NAR.
    File {
        contents: Vec<u8>,
        mode: u32,
    },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Tree>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(String::into_bytes),
        // spaces, newlines, dots, dashes
        "[a-zA-Z .\n-]{1,10}".prop_map(String::into_bytes),
        // any bytes but NUL: mostly not UTF-8
        proptest::collection::vec(1u8..=255, 1..12),
    ]
    .prop_filter("valid file name", |n| !n.contains(&b'/') && n != b"." && n != b"..")
}

fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => Just(Vec::new()),
        // larger than the 64 KiB copy buffer, and not a multiple of 8
        1 => (64 * 1024usize..200_000).prop_map(|n| (0..n).map(|i| (i * 31 % 251) as u8).collect()),
    ]
}

fn link_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z./]{1,20}".prop_map(String::into_bytes),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"/nix/store".to_vec()),
        Just(b"does/not/exist".to_vec()),
        proptest::collection::vec(1u8..=255, 1..30),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        // executable for the owner or not, with other bits that NAR must ignore
        (contents(), proptest::sample::select(vec![0o644, 0o600, 0o655, 0o611, 0o755, 0o700, 0o744, 0o500, 0o444]))
            .prop_map(|(contents, mode)| Tree::File { contents, mode }),
        link_target().prop_map(Tree::Link),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| proptest::collection::btree_map(name(), inner, 0..6).prop_map(Tree::Dir))
}

fn materialise(path: &Path, t: &Tree) {
    match t {
        Tree::File { contents, mode } => {
            std::fs::write(path, contents).expect("write file");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        Tree::Link(target) => std::os::unix::fs::symlink(OsStr::from_bytes(target), path).expect("symlink"),
        Tree::Dir(entries) => {
            std::fs::create_dir(path).expect("mkdir");
            for (name, child) in entries {
                materialise(&path.join(OsStr::from_bytes(name)), child);
            }
        }
    }
}

/// Checks that `node` (read back from `nar`) describes `t` exactly, file contents included.
fn assert_same(nar: &[u8], node: &NarNode, t: &Tree) {
    match (node, t) {
        (NarNode::Regular { size, executable, nar_offset }, Tree::File { contents, mode }) => {
            assert_eq!(*size, contents.len() as u64);
            assert_eq!(*executable, mode & 0o100 != 0);
            let start = usize::try_from(*nar_offset).expect("offset fits");
            assert_eq!(&nar[start..start + contents.len()], contents.as_slice());
        }
        (NarNode::Symlink { target }, Tree::Link(t)) => assert_eq!(target, t),
        (NarNode::Directory { entries }, Tree::Dir(want)) => {
            assert_eq!(entries.len(), want.len());
            for ((name, child), (want_name, want_child)) in entries.iter().zip(want) {
                assert_eq!(name, want_name);
                assert_same(nar, child, want_child);
            }
        }
        (got, want) => panic!("node {got:?} does not match {want:?}"),
    }
}

fn nix_dump(env: &NixEnv, path: &Path) -> Vec<u8> {
    let out = env.command("nix-store").arg("--dump").arg(path).output().expect("run nix-store --dump");
    assert!(out.status.success(), "nix-store --dump: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn nix_hash_path(env: &NixEnv, path: &Path) -> String {
    let mut cmd = env.command("nix");
    cmd.args(["hash", "path", "--base32"]).arg(path);
    env.run(&mut cmd).expect("nix hash path").trim().to_owned()
}

fn our_dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let n = dump_path(path, &mut out).expect("dump_path");
    assert_eq!(n, out.len() as u64, "dump_path returns the byte count");
    // The tree the writer reports (the upload pipeline's listing) is the tree the reader parses back.
    let mut again = Vec::new();
    let (n_again, tree) = dump_path_tree(path, &mut again).expect("dump_path_tree");
    assert_eq!((n_again, &again), (n, &out), "dump_path_tree writes the same bytes");
    assert_eq!(tree, read_tree(&mut out.as_slice()).expect("read back"), "writer's tree = reader's tree");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Our NAR of a random tree is byte-identical to `nix-store --dump`, hashes like `nix hash path`, and
    /// reads back to the same tree.
    #[test]
    fn nar_of_random_trees_is_byte_identical_to_nix(t in tree()) {
        let env = NixEnv::new().expect("nix env");
        let root = env.dir().join("root");
        materialise(&root, &t);
        let ours = our_dump(&root);
        let theirs = nix_dump(&env, &root);
        prop_assert!(ours == theirs, "NAR differs from nix-store --dump ({} vs {} bytes)", ours.len(), theirs.len());
        prop_assert_eq!(Sha256Hash::digest(&ours).to_nix32(), nix_hash_path(&env, &root));
        let node = read_tree(&mut ours.as_slice()).expect("read_tree of our own NAR");
        assert_same(&ours, &node, &t);
    }
}

/// One fixed tree with every awkward case at once: deep nesting, empty dirs and files, executables,
/// dangling and directory symlinks, names with spaces, newlines and non-UTF-8 bytes, a file bigger than
/// the copy buffer.
#[test]
fn nar_of_awkward_tree_is_byte_identical_to_nix() {
    let env = NixEnv::new().expect("nix env");
    let root = env.dir().join("root");
    let mut deep = Tree::File { contents: b"bottom".to_vec(), mode: 0o755 };
    for i in 0..200 {
        deep = Tree::Dir(BTreeMap::from([(format!("d{i}").into_bytes(), deep)]));
    }
    let t = Tree::Dir(BTreeMap::from([
        (b"deep".to_vec(), deep),
        (b"empty dir".to_vec(), Tree::Dir(BTreeMap::new())),
        (b"empty".to_vec(), Tree::File { contents: Vec::new(), mode: 0o677 }),
        (b"empty-exe".to_vec(), Tree::File { contents: Vec::new(), mode: 0o500 }),
        (b"big".to_vec(), Tree::File { contents: (0..300_007u32).map(|i| (i % 253) as u8).collect(), mode: 0o644 }),
        (b"new\nline".to_vec(), Tree::File { contents: b"x".to_vec(), mode: 0o644 }),
        (b"\xff\xfe latin\xe9".to_vec(), Tree::File { contents: b"y".to_vec(), mode: 0o755 }),
        (b"dangling".to_vec(), Tree::Link(b"/nonexistent/target".to_vec())),
        (b"to-dir".to_vec(), Tree::Link(b"empty dir".to_vec())),
        (b"to-parent".to_vec(), Tree::Link(b"..".to_vec())),
        (b"B".to_vec(), Tree::File { contents: b"upper sorts first".to_vec(), mode: 0o644 }),
    ]));
    materialise(&root, &t);
    let ours = our_dump(&root);
    assert!(ours == nix_dump(&env, &root), "NAR differs from nix-store --dump");
    assert_eq!(Sha256Hash::digest(&ours).to_nix32(), nix_hash_path(&env, &root));
    assert_same(&ours, &read_tree(&mut ours.as_slice()).expect("read back"), &t);
}

/// The `.ls` Nix wrote for `path` in the file:// cache at `cache`, parsed (non-UTF-8 bytes decoded lossily,
/// as our listing does).
fn nix_listing(env: &NixEnv, cache: &Path, path: &str) -> serde_json::Value {
    let mut cmd = env.command("nix");
    cmd.args(["copy", "--to", &format!("file://{}?compression=none&write-nar-listing=true", cache.display()), path]);
    env.run(&mut cmd).expect("nix copy with listing");
    let hash = StoreDir::default().parse_path(path).expect("store path").hash_part().to_owned();
    let bytes = std::fs::read(cache.join(format!("{hash}.ls"))).expect("nix wrote a .ls");
    serde_json::from_str(&String::from_utf8_lossy(&bytes)).expect("nix's listing is JSON")
}

fn our_listing(path: &str) -> serde_json::Value {
    let nar = our_dump(Path::new(path));
    listing_json(&read_tree(&mut nar.as_slice()).expect("read_tree")).expect("a listing")
}

/// A derivation that builds an awkward tree; our listing of its output equals the one Nix writes.
#[test]
fn listing_of_built_tree_equals_nix() {
    let env = NixEnv::new().expect("nix env");
    let out = env
        .build_script(
            "awkward-tree",
            r#"set -e
/bin/mkdir -p $out/bin "$out/with space/empty" $out/a/b/c/d/e/f
echo "$salt" > $out/a/b/c/d/e/f/deep
printf '#!/bin/sh\necho hi\n' > $out/bin/tool
/bin/chmod +x $out/bin/tool
: > $out/empty
/bin/ln -s bin/tool $out/link-to-file
/bin/ln -s bin $out/link-to-dir
/bin/ln -s /nonexistent $out/dangling
printf 'x' > "$out/$(printf 'new\nline')"
printf 'y' > "$out/$(printf 'caf\351')"
/bin/dd if=/dev/zero of=$out/big bs=1000 count=150 2>/dev/null
"#,
        )
        .expect("build awkward tree");
    let cache = env.dir().join("cache");
    assert_eq!(our_listing(&out), nix_listing(&env, &cache, &out));
    // The NAR Nix put in the cache is the one we write.
    let info = NarInfo::parse(
        &std::fs::read_to_string(
            cache.join(format!("{}.narinfo", StoreDir::default().parse_path(&out).expect("store path").hash_part())),
        )
        .expect("narinfo"),
        &StoreDir::default(),
    )
    .expect("nix's narinfo parses");
    let ours = our_dump(Path::new(&out));
    assert_eq!(Sha256Hash::digest(&ours), info.nar_hash);
    assert_eq!(ours.len() as u64, info.nar_size);
    assert!(ours == std::fs::read(cache.join(&info.url)).expect("nar file"), "NAR file differs");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random trees added to the store (`nix-store --add`): our listing equals Nix's `.ls`.
    #[test]
    fn listing_of_random_store_paths_equals_nix(t in tree()) {
        let env = NixEnv::new().expect("nix env");
        let root = env.dir().join("tree");
        materialise(&root, &t);
        let mut cmd = env.command("nix-store");
        cmd.arg("--add").arg(&root);
        let path = env.run(&mut cmd).expect("nix-store --add").trim().to_owned();
        let cache = env.dir().join("cache");
        prop_assert_eq!(our_listing(&path), nix_listing(&env, &cache, &path));
    }
}

/// Narinfos `nix copy --to file://` writes (several compressions, signed and unsigned) parse, keep their
/// fields, re-serialise byte for byte, and their signatures verify with the key Nix made.
#[test]
fn narinfos_written_by_nix_round_trip() {
    let env = NixEnv::new().expect("nix env");
    let expr = r#"{ salt }: rec {
        hello = derivation { name = "hello"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
                             args = [ "-c" "echo hello $salt > $out" ]; };
        app = derivation { name = "app"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
                           args = [ "-c" "/bin/mkdir $out; echo ${hello} > $out/ref; echo $out > $out/self" ]; };
    }"#;
    let app = env.build(expr, "app").expect("build").remove(0);
    let sec = env.dir().join("nix.sec");
    let mut cmd = env.command("nix");
    cmd.args(["key", "generate-secret", "--key-name", "nixmade-1"]);
    std::fs::write(&sec, env.run(&mut cmd).expect("nix key generate-secret")).expect("write key");
    let mut cmd = env.command("nix");
    cmd.args(["key", "convert-secret-to-public"]).stdin(std::fs::File::open(&sec).expect("open key"));
    let public = PublicKey::parse(&env.run(&mut cmd).expect("convert-secret-to-public")).expect("nix public key");

    let dir = StoreDir::default();
    for compression in ["none", "xz", "zstd", "bzip2"] {
        for signed in [false, true] {
            let cache = env.dir().join(format!("cache-{compression}-{signed}"));
            let mut url = format!("file://{}?compression={compression}", cache.display());
            if signed {
                url = format!("{url}&secret-key={}", sec.display());
            }
            env.run(env.command("nix").args(["copy", "--to", &url, &app])).expect("nix copy");
            let mut seen = 0;
            for entry in std::fs::read_dir(&cache).expect("cache dir") {
                let p = entry.expect("dir entry").path();
                if p.extension() != Some(OsStr::new("narinfo")) {
                    continue;
                }
                seen += 1;
                let text = std::fs::read_to_string(&p).expect("narinfo");
                let ni = NarInfo::parse(&text, &dir).expect("nix's narinfo parses");
                assert_eq!(ni.to_text(&dir), text, "re-serialised {p:?} differs");
                assert_eq!(ni.compression, compression);
                assert!(cache.join(&ni.url).is_file(), "URL {} exists", ni.url);
                assert_eq!(ni.verify(std::slice::from_ref(&public), &dir), signed, "{p:?}");
                if ni.store_path.name() == "app" {
                    assert_eq!(ni.references.len(), 2, "app refers to hello and itself");
                    assert!(ni.deriver.as_ref().is_some_and(niks3_nix::store_path::StorePath::is_derivation));
                }
            }
            assert_eq!(seen, 2, "app and hello");
        }
    }
}
