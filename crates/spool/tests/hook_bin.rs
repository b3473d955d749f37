//! The `niks3-hook` binary as Nix runs it: it queues what was built, roots it, reports every problem as
//! one `niks3-hook: …` line, and exits 0 no matter what, so a build never fails because of the cache.

use crate::support::hook::{Mounted, Nix, files, mount, run_hook, salt, stderr};
use niks3_spool::Entry;
use std::path::{Path, PathBuf};

const OUT: &str = "/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test";
const DEV: &str = "/nix/store/niym0l9w4bif3x5sa4580wbs4dyxzhla-hk-test-dev";

/// A spool dir (set up as the daemon or systemd-tmpfiles does) and a gcroots dir in a fresh temp dir.
struct Dirs {
    tmp: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().expect("tempdir");
        niks3_spool::Spool::open(&tmp.path().join("spool")).expect("set up the spool");
        Dirs { tmp }
    }
    fn spool(&self) -> PathBuf {
        self.tmp.path().join("spool")
    }
    fn roots(&self) -> PathBuf {
        self.tmp.path().join("gcroots")
    }
    fn env<'a>(spool: &'a str, roots: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![("NIKS3_SPOOL_DIR", spool), ("NIKS3_GCROOTS_DIR", roots)]
    }
    fn entries(&self) -> Vec<Entry> {
        files(&self.spool().join("new"))
            .iter()
            .map(|p| niks3_spool::read_entry(p).expect("hook wrote a valid entry"))
            .collect()
    }
    fn root_targets(&self) -> Vec<String> {
        files(&self.roots())
            .iter()
            .map(|l| std::fs::read_link(l).expect("root is a symlink").to_string_lossy().into_owned())
            .collect()
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_owned()
}

#[test]
fn hook_queues_out_paths_given_by_nix_and_roots_them() {
    // The hook reads the .drv even when OUT_PATHS is given (for outputs it has no path for): use a real one.
    let nix = Nix::new();
    let expr = nix.expr(
        "given.nix",
        &format!(
            r#"derivation {{ name = "hk-given"; salt = "{}"; system = builtins.currentSystem;
                builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }}"#,
            salt()
        ),
    );
    let drv = nix.run("nix-instantiate", &[expr.to_str().expect("utf-8")]);
    let d = Dirs::new();
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    let outs = format!("{OUT} {DEV}");
    env.extend([("DRV_PATH", drv.as_str()), ("OUT_PATHS", outs.as_str())]);
    let o = run_hook(&env);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "", "silent on success");
    assert!(o.stdout.is_empty());
    let entries = d.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].drv.as_deref(), Some(drv.as_str()));
    assert_eq!(entries[0].outs, vec![OUT.to_owned(), DEV.to_owned()]);
    assert!(entries[0].realisations.is_empty(), "an input-addressed .drv has every output path");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!(entries[0].queued <= now && entries[0].queued + 60 > now);
    let mut want = vec![DEV.to_owned(), OUT.to_owned()];
    want.sort();
    let mut got = d.root_targets();
    got.sort();
    assert_eq!(got, want, "one GC root per output");
    assert!(files(&d.spool().join("tmp")).is_empty());
}

#[test]
fn hook_reads_outputs_from_the_drv_when_out_paths_is_empty() {
    let nix = Nix::new();
    let expr = nix.expr(
        "multi.nix",
        &format!(
            r#"derivation {{ name = "hk-multi"; salt = "{}"; outputs = [ "out" "dev" "lib" ];
                system = builtins.currentSystem; builder = "/bin/sh";
                args = [ "-c" "echo \"quote\\\" backslash\\\\ newline\n\" > $out; echo > $dev; echo > $lib" ]; }}"#,
            salt()
        ),
    );
    let drv = nix.run("nix-instantiate", &[expr.to_str().expect("utf-8")]);
    let mut want: Vec<String> = nix.run("nix-store", &["-q", "--outputs", &drv]).lines().map(str::to_owned).collect();
    assert_eq!(want.len(), 3);

    let d = Dirs::new();
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    env.extend([("DRV_PATH", drv.as_str()), ("OUT_PATHS", "")]);
    let o = run_hook(&env);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "");
    let entries = d.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].drv.as_deref(), Some(drv.as_str()));
    let mut got = entries[0].outs.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "same outputs as nix-store -q --outputs");
    let mut roots = d.root_targets();
    roots.sort();
    assert_eq!(roots, want);

    // OUT_PATHS unset behaves the same as empty
    let d2 = Dirs::new();
    let (sp2, rt2) = (s(&d2.spool()), s(&d2.roots()));
    let mut env2 = Dirs::env(&sp2, &rt2);
    env2.push(("DRV_PATH", drv.as_str()));
    assert!(run_hook(&env2).status.success());
    assert_eq!(d2.entries()[0].outs.len(), 3);
}

#[test]
fn hook_rejects_invalid_paths_with_a_message_and_still_exits_zero() {
    let d = Dirs::new();
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    let outs = format!("/etc/passwd /nix/store/../etc/shadow {OUT} /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x");
    env.extend([("DRV_PATH", "/tmp/evil.drv"), ("OUT_PATHS", outs.as_str())]);
    let o = run_hook(&env);
    assert!(o.status.success(), "exit 0 even for garbage");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "one line per problem: {err}");
    assert!(lines.iter().all(|l| l.starts_with("niks3-hook: ")), "{err}");
    assert!(
        err.contains("DRV_PATH: invalid store path \"/tmp/evil.drv\": not inside the store dir /nix/store"),
        "{err}"
    );
    assert!(err.contains("\"/etc/passwd\""), "{err}");
    assert!(err.contains("\"/nix/store/../etc/shadow\""), "{err}");
    assert!(err.contains("not in Nix's base-32 alphabet"), "{err}");
    let entries = d.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0],
        Entry { drv: None, outs: vec![OUT.to_owned()], realisations: vec![], queued: entries[0].queued }
    );
    assert_eq!(d.root_targets(), vec![OUT.to_owned()]);

    // nothing valid at all: nothing queued, no roots, one clear line per problem plus the verdict
    let d = Dirs::new();
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    env.extend([("OUT_PATHS", "relative/path")]);
    let o = run_hook(&env);
    assert!(o.status.success());
    assert!(stderr(&o).contains("niks3-hook: no valid DRV_PATH or output path given by Nix; nothing queued"));
    assert!(d.entries().is_empty());
    assert!(!d.roots().exists());

    // no environment at all (run by hand)
    let o = run_hook(&[]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("nothing queued"), "{}", stderr(&o));
}

#[test]
fn hook_honours_a_custom_store_dir() {
    let d = Dirs::new();
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    let out = "/gnu/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test";
    let outs = format!("{out} {OUT}");
    env.extend([("NIKS3_NIX_STORE_DIR", "/gnu/store/"), ("OUT_PATHS", outs.as_str())]);
    let o = run_hook(&env);
    assert!(o.status.success());
    assert!(stderr(&o).contains("not inside the store dir /gnu/store"), "{}", stderr(&o));
    assert_eq!(d.entries()[0].outs, vec![out.to_owned()]);
}

#[test]
fn hook_queues_the_drv_alone_when_the_drv_cannot_be_read() {
    let d = Dirs::new();
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    let missing = "/nix/store/00000000000000000000000000000000-never-built.drv";
    env.extend([("DRV_PATH", missing), ("OUT_PATHS", " ")]);
    let o = run_hook(&env);
    assert!(o.status.success());
    assert!(stderr(&o).contains(&format!("niks3-hook: cannot read derivation {missing}")), "{}", stderr(&o));
    assert!(stderr(&o).contains("queueing the derivation only"));
    let entries = d.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].drv.as_deref(), Some(missing));
    assert!(entries[0].outs.is_empty());
}

#[test]
fn hook_hands_entries_to_the_spool_owner_and_nobody_else() {
    use std::os::unix::fs::MetadataExt;
    let d = Dirs::new();
    for sub in ["", "tmp", "new", "claimed", "quarantine"] {
        std::os::unix::fs::chown(d.spool().join(sub), Some(4242), Some(4343)).expect("chown (test runs as root)");
    }
    let (sp, rt) = (s(&d.spool()), s(&d.roots()));
    let mut env = Dirs::env(&sp, &rt);
    env.push(("OUT_PATHS", OUT));
    let o = run_hook(&env);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "");
    let queued = files(&d.spool().join("new"));
    assert_eq!(queued.len(), 1);
    let m = std::fs::metadata(&queued[0]).expect("entry");
    assert_eq!((m.uid(), m.gid()), (4242, 4343), "the entry belongs to the spool owner, who drains it");
    assert_eq!(m.mode() & 0o777, 0o640, "and is not readable by others");
}

#[test]
fn hook_creates_no_spool_subdirs_and_says_which_is_missing() {
    // The subdirs come from the spool owner (tmpfiles, the daemon): a root hook that mkdirs and chowns
    // in a directory someone else owns can be raced into chowning any file (review finding #1).
    for missing in ["tmp", "new"] {
        let d = Dirs::new();
        std::fs::remove_dir(d.spool().join(missing)).expect("rmdir");
        let (sp, rt) = (s(&d.spool()), s(&d.roots()));
        let mut env = Dirs::env(&sp, &rt);
        env.push(("OUT_PATHS", OUT));
        let o = run_hook(&env);
        assert!(o.status.success());
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        let want = format!("niks3-hook: spool unusable (open spool dir {sp}/{missing}: No such file or directory");
        assert!(err.starts_with(&want), "{err}");
        assert!(err.contains(&format!("NOT queued: {OUT}")), "{err}");
        assert!(!d.spool().join(missing).exists(), "{missing}/ was not created");
        assert!(files(&d.roots()).is_empty(), "no GC root for a path that was not queued");
    }
}

#[test]
fn hook_reports_a_garbage_or_truncated_drv_and_queues_the_drv_alone() {
    let d = Dirs::new();
    let store = d.tmp.path().join("store");
    std::fs::create_dir(&store).expect("mkdir store");
    let (sp, rt, st) = (s(&d.spool()), s(&d.roots()), s(&store));
    for (content, why) in [
        (&b"\x7fELF not a derivation"[..], "at byte 0: expected `Derive([`"),
        (&br#"Derive([("out","/nix/store/mszzps44c0d8dq4928m9byf"#[..], "file ends inside the outputs list"),
        (&b"Derive([(\"out\",\"\xff\",\"\",\"\")],"[..], "string is not UTF-8"),
    ] {
        let drv = store.join("92gvrkx5bkbxcwjgqdgql0hchrldma0l-bad.drv");
        std::fs::write(&drv, content).expect("write drv");
        let drv = s(&drv);
        let mut env = Dirs::env(&sp, &rt);
        env.extend([("NIKS3_NIX_STORE_DIR", st.as_str()), ("DRV_PATH", drv.as_str())]);
        let o = run_hook(&env);
        assert!(o.status.success());
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("niks3-hook: cannot parse derivation {drv}")), "{err}");
        assert!(err.contains(why), "{err:?} lacks {why:?}");
    }
    let entries = d.entries();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.outs.is_empty() && e.drv.is_some()));
}

#[test]
fn hook_reports_non_utf8_environment_and_exits_zero() {
    use std::os::unix::ffi::OsStrExt;
    let d = Dirs::new();
    let o = std::process::Command::new(crate::support::hook::hook_bin())
        .env_clear()
        .env("NIKS3_SPOOL_DIR", d.spool())
        .env("NIKS3_GCROOTS_DIR", d.roots())
        .env("OUT_PATHS", std::ffi::OsStr::from_bytes(b"/nix/store/\xff\xfe"))
        .output()
        .expect("run hook");
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(err.contains("niks3-hook: OUT_PATHS is not valid UTF-8, ignored"), "{err}");
    assert!(err.contains("nothing queued"), "{err}");
    assert!(d.entries().is_empty());
}

/// Runs the hook against a spool that cannot take the entry; checks exit 0, the message, and that no GC
/// root is left behind for a path nobody will ever upload.
fn assert_survives_unwritable_spool(spool_dir: &Path, expect_in_message: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let roots = tmp.path().join("gcroots");
    let (sp, rt) = (s(spool_dir), s(&roots));
    let outs = format!("{OUT} {DEV}");
    // No DRV_PATH: the spool is the point here, and a .drv that is not on this machine would add a line.
    let o = run_hook(&[("NIKS3_SPOOL_DIR", &sp), ("NIKS3_GCROOTS_DIR", &rt), ("OUT_PATHS", &outs)]);
    assert!(o.status.success(), "the build must not fail");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("niks3-hook: "), "{err}");
    assert!(err.contains(expect_in_message), "{err:?} lacks {expect_in_message:?}");
    assert!(err.contains(&format!("NOT queued: {OUT} {DEV}")), "{err}");
    assert!(files(&roots).is_empty(), "no GC roots left for paths that were not queued");
}

#[test]
fn hook_never_fails_the_build_when_spool_is_unwritable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // missing spool dir: niks3 not set up here
    assert_survives_unwritable_spool(&tmp.path().join("missing"), "No such file or directory");
    // a path under a regular file cannot be created, not even by root
    let file = tmp.path().join("file");
    std::fs::write(&file, "").expect("write");
    assert_survives_unwritable_spool(&file.join("spool"), "Not a directory");
    assert_survives_unwritable_spool(&file, "refusing");
    assert_survives_unwritable_spool(&file, "it is a regular file, not a directory");
}

#[test]
fn hook_never_fails_the_build_when_spool_is_read_only() {
    let (_tmp, spool) = fresh_spool();
    niks3_spool::Spool::open(&spool).expect("subdirs exist before the fs turns read-only");
    mount(&["--bind", &s(&spool), &s(&spool)]);
    let _guard = Mounted(spool.clone());
    mount(&["-o", "remount,bind,ro", &s(&spool)]);
    assert_survives_unwritable_spool(&spool, "Read-only file system");
}

#[test]
fn hook_never_fails_the_build_when_disk_is_full() {
    let (_tmp, spool) = fresh_spool();
    mount(&["-t", "tmpfs", "-o", "size=16k,nr_inodes=64", "tmpfs", &s(&spool)]);
    let _guard = Mounted(spool.clone());
    niks3_spool::Spool::open(&spool).expect("subdirs");
    // fill it up
    let mut i = 0;
    while std::fs::write(spool.join(format!("fill{i}")), vec![0u8; 4096]).is_ok() {
        i += 1;
        assert!(i < 1000, "tmpfs did not fill up");
    }
    let _ = std::fs::write(spool.join("last"), b"x");
    assert_survives_unwritable_spool(&spool, "cannot queue");
    assert!(files(&spool.join("new")).is_empty());
    assert!(files(&spool.join("tmp")).is_empty(), "the partial tmp file was removed");
}

/// Removes a gcroots dir under /nix/var/nix/gcroots even when the test fails.
struct RootsDir(PathBuf);

impl Drop for RootsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `nix-build`s `expr` (with `salt`) with niks3-hook as the post-build-hook writing to `d`'s spool and
/// `roots`, plus `extra` arguments; asserts the build succeeded without a word from the hook and returns
/// the built output.
fn build_through_hook(nix: &Nix, expr: &Path, salt: &str, d: &Dirs, roots: &RootsDir, extra: &[&str]) -> String {
    let out = nix
        .cmd("nix-build")
        .args(["--no-out-link", s(expr).as_str(), "--argstr", "salt", salt])
        .args(["--option", "post-build-hook", crate::support::hook::hook_bin()])
        .args(extra)
        .env("NIKS3_SPOOL_DIR", d.spool())
        .env("NIKS3_GCROOTS_DIR", &roots.0)
        .output()
        .expect("run nix-build");
    let build_err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nix-build failed: {build_err}");
    assert!(!build_err.contains("niks3-hook:"), "hook complained: {build_err}");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

#[test]
fn hook_in_a_real_nix_build_queues_every_built_derivation_and_its_roots_stop_gc() {
    let nix = Nix::new();
    let salt = salt();
    let expr = nix.expr(
        "chain.nix",
        r#"{ salt }:
        let mk = name: script: derivation { inherit name salt; system = builtins.currentSystem;
              builder = "/bin/sh"; args = [ "-c" script ]; };
            a = mk "hk-a" "echo a > $out";
            b = derivation { name = "hk-b"; inherit salt; outputs = [ "out" "doc" ];
              system = builtins.currentSystem; builder = "/bin/sh";
              args = [ "-c" "echo ${a} > $out; echo doc > $doc" ]; };
        in mk "hk-c" "echo ${b} ${b.doc} > $out"
        "#,
    );
    let d = Dirs::new();
    let roots = RootsDir(PathBuf::from(format!("/nix/var/nix/gcroots/niks3-test-{salt}")));
    let c_out = build_through_hook(&nix, &expr, &salt, &d, &roots, &[]);

    // what Nix built, according to Nix
    let c_drv = nix.run("nix-store", &["-q", "--deriver", &c_out]);
    let drvs: Vec<String> = nix
        .run("nix-store", &["-qR", &c_drv])
        .lines()
        .filter(|l| Path::new(l).extension().is_some_and(|e| e == "drv"))
        .map(str::to_owned)
        .collect();
    assert_eq!(drvs.len(), 3, "{drvs:?}");
    let mut entries = d.entries();
    assert_eq!(entries.len(), 3, "one entry per built derivation");
    entries.sort_by(|x, y| x.drv.cmp(&y.drv));
    let mut all_outs = Vec::new();
    for e in &entries {
        let drv = e.drv.as_ref().expect("drv recorded");
        assert!(drvs.contains(drv), "{drv} not one of {drvs:?}");
        let mut want: Vec<String> =
            nix.run("nix-store", &["-q", "--outputs", drv]).lines().map(str::to_owned).collect();
        let mut got = e.outs.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "outputs of {drv}");
        all_outs.extend(got);
    }
    assert_eq!(all_outs.len(), 4);
    assert!(all_outs.contains(&c_out));
    let mut rooted = files(&roots.0)
        .iter()
        .map(|l| std::fs::read_link(l).expect("symlink").to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    rooted.sort();
    all_outs.sort();
    assert_eq!(rooted, all_outs, "a GC root for every output");

    // the root keeps the path alive; without it, Nix deletes the path
    let del = nix.cmd("nix-store").args(["--delete", &c_out]).output().expect("run nix-store --delete");
    assert!(!del.status.success(), "nix-store --delete must refuse a rooted path");
    assert!(String::from_utf8_lossy(&del.stderr).contains("since it is still alive"), "{del:?}");
    assert!(Path::new(&c_out).exists());
    niks3_spool::gcroots::remove(&roots.0, &c_out).expect("remove root");
    nix.run("nix-store", &["--delete", &c_out]);
    assert!(!Path::new(&c_out).exists(), "deleted once the root is gone");
}

#[test]
fn hook_queues_floating_and_deferred_outputs_by_name_in_a_real_ca_build() {
    let nix = Nix::new();
    let salt = salt();
    let expr = nix.expr(
        "ca.nix",
        r#"{ salt }:
        let ca = { __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
            mk = name: attrs: script: derivation ({ inherit name salt; system = builtins.currentSystem;
              builder = "/bin/sh"; args = [ "-c" script ]; } // attrs);
            a = mk "hk-ca-a" ca "echo a > $out";
            b = mk "hk-ca-b" ca "echo ${a} > $out";
        in mk "hk-ia-c" {} "echo ${b} > $out"
        "#,
    );
    let d = Dirs::new();
    let roots = RootsDir(PathBuf::from(format!("/nix/var/nix/gcroots/niks3-test-{salt}")));
    let c_out = build_through_hook(
        &nix,
        &expr,
        &salt,
        &d,
        &roots,
        &["--option", "experimental-features", "nix-command ca-derivations"],
    );

    // Nix 2.8 runs the hook for a (floating, OUT_PATHS empty), for the resolved b (floating, empty) and
    // the original b (OUT_PATHS given), for the resolved c (its path in the .drv) and the original c
    // (deferred: no path in the .drv, OUT_PATHS given).
    let entries = d.entries();
    assert_eq!(entries.len(), 5, "{entries:?}");
    let name_of = |e: &Entry| {
        let drv = e.drv.as_deref().expect("drv");
        drv.rsplit_once('-').map(|(_, n)| n.to_owned()).expect("name")
    };
    let by = |name: &str, outs: usize| {
        entries.iter().filter(|e| name_of(e) == name && e.outs.len() == outs).collect::<Vec<_>>()
    };
    let a = by("a.drv", 0);
    assert_eq!(a.len(), 1, "{entries:?}");
    assert_eq!(a[0].realisations, vec!["out".to_owned()], "a's output is queued by name");
    assert_eq!(by("b.drv", 0).len(), 1, "resolved b: by name");
    assert_eq!(by("b.drv", 0)[0].realisations, vec!["out".to_owned()]);
    let b = by("b.drv", 1);
    assert_eq!(b.len(), 1, "original b: OUT_PATHS and the name");
    assert_eq!(b[0].realisations, vec!["out".to_owned()]);
    let c = by("c.drv", 1);
    assert_eq!(c.len(), 2, "{entries:?}");
    assert!(c.iter().all(|e| e.outs == vec![c_out.clone()]));
    let mut c_names: Vec<usize> = c.iter().map(|e| e.realisations.len()).collect();
    c_names.sort_unstable();
    assert_eq!(c_names, vec![0, 1], "only the original (deferred) c needs its realisation");
    // Known paths are rooted; outputs known only by name cannot be (the daemon roots them).
    let mut rooted = files(&roots.0)
        .iter()
        .map(|l| std::fs::read_link(l).expect("symlink").to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    rooted.sort();
    rooted.dedup();
    assert_eq!(rooted.len(), 2, "b's and c's outputs: {rooted:?}");
    assert!(rooted.contains(&c_out));
}

/// An empty `spool` directory in a fresh temporary directory (removed when the first value drops).
fn fresh_spool() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).expect("mkdir");
    (tmp, spool)
}
