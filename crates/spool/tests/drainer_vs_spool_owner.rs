//! The drainer's side of finding #1: should the daemon run as root in a spool another account owns,
//! that account must not steer it either. A `claimed/`, `quarantine/`, `tmp/` or `new/` swapped for a
//! symlink to a root-only directory gets an error, and nothing in that directory is written, moved in or
//! removed. (These tests run as root and plant the symlinks themselves, as the spool owner would.)

use niks3_spool::{Entry, Spool, SpoolError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn entry(i: u64) -> Entry {
    Entry { drv: None, outs: vec![format!("/nix/store/{i:032}-p{i}")], realisations: vec![], queued: i }
}

/// A spool and, next to it, a root-only directory holding one file.
struct Scene {
    tmp: tempfile::TempDir,
    spool: Spool,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&tmp.path().join("spool")).expect("open");
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir victim");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(victim.join("keep"), "root's\n").expect("write");
        Scene { tmp, spool }
    }
    fn victim(&self) -> PathBuf {
        self.tmp.path().join("victim")
    }
    /// Replaces the spool's subdirectory `sub` with a symlink to the victim directory, keeping the real
    /// one as `<sub>.real`.
    fn swap(&self, sub: &str) {
        let p = self.spool.dir().join(sub);
        std::fs::rename(&p, self.spool.dir().join(format!("{sub}.real"))).expect("move the real dir away");
        std::os::unix::fs::symlink(self.victim(), &p).expect("symlink");
    }
    /// Drops a file that is not an entry into `new/` and claims it, as the drainer would.
    fn claimed_garbage(&self) -> niks3_spool::Claimed {
        std::fs::write(self.spool.new_dir().join("00000000000000000001-0000000001-000001"), "garbage").expect("write");
        self.spool.claim(1).expect("claim").remove(0)
    }
    fn assert_victim_untouched(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.victim())
            .expect("victim")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["keep"], "the root-only directory changed");
        assert_eq!(std::fs::read_to_string(self.victim().join("keep")).expect("keep"), "root's\n");
    }
}

fn assert_refused_symlink(r: Result<impl std::fmt::Debug, SpoolError>, dir: &Path) {
    match r {
        Err(SpoolError::WrongType { path, found: "a symlink", expected: "a directory" }) => assert_eq!(path, dir),
        other => panic!("expected {} to be refused as a symlink, got {other:?}", dir.display()),
    }
}

#[test]
fn claim_and_reclaim_refuse_a_symlinked_claimed_dir() {
    let s = Scene::new();
    let queued = s.spool.enqueue(&entry(1)).expect("enqueue");
    s.swap("claimed");
    std::fs::write(s.victim().join("00000000000000000001-0000000001-000001"), "root's\n").expect("write");
    assert_refused_symlink(s.spool.claim(10), &s.spool.dir().join("claimed"));
    assert_refused_symlink(s.spool.reclaim(), &s.spool.dir().join("claimed"));
    assert!(queued.exists(), "the entry stays queued");
    std::fs::remove_file(s.victim().join("00000000000000000001-0000000001-000001")).expect("rm");
    s.assert_victim_untouched();
}

#[test]
fn ack_after_claimed_is_swapped_removes_nothing_outside_the_spool() {
    let s = Scene::new();
    s.spool.enqueue(&entry(1)).expect("enqueue");
    let claimed = s.spool.claim(1).expect("claim").remove(0);
    let name = claimed.path.file_name().expect("name").to_owned();
    s.swap("claimed");
    std::fs::rename(s.victim().join("keep"), s.victim().join(&name)).expect("a victim file with that name");
    assert_refused_symlink(s.spool.ack(&claimed), &s.spool.dir().join("claimed"));
    assert!(s.victim().join(&name).exists(), "ack unlinked a file outside the spool");
    std::fs::rename(s.victim().join(&name), s.victim().join("keep")).expect("rename back");
    s.assert_victim_untouched();
}

#[test]
fn quarantine_into_a_symlinked_quarantine_dir_writes_nothing_there() {
    let s = Scene::new();
    let claimed = s.claimed_garbage();
    s.swap("quarantine");
    assert_refused_symlink(s.spool.quarantine(&claimed, "garbage"), &s.spool.dir().join("quarantine"));
    assert!(claimed.path.exists(), "the entry stays claimed");
    s.assert_victim_untouched();
}

#[test]
fn stale_tmp_sweep_of_a_symlinked_tmp_removes_nothing() {
    let s = Scene::new();
    s.swap("tmp");
    assert_refused_symlink(s.spool.remove_stale_tmp(std::time::Duration::ZERO), &s.spool.dir().join("tmp"));
    s.assert_victim_untouched();
}

#[test]
fn requeue_into_a_symlinked_new_moves_nothing() {
    let s = Scene::new();
    let claimed = s.claimed_garbage();
    let q = s.spool.quarantine(&claimed, "garbage").expect("quarantine");
    s.swap("new");
    assert_refused_symlink(s.spool.requeue(&[]), &s.spool.dir().join("new"));
    assert!(q.exists(), "the entry stays quarantined");
    s.assert_victim_untouched();
}
