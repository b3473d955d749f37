//! The hook runs as root inside nix-daemon but writes into a spool owned by the less-privileged `niks3`
//! account. Whatever that account does to the spool, even while the hook runs, the hook must not chown or
//! write anything outside it (security review 2026-12, finding #1): it refuses, says so in one line, and
//! exits 0. The spool owner here is `nobody`, racing from a real unprivileged process.

use crate::support::hook::{files, run_hook, stderr};
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OUT: &str = "/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test";
/// `nobody` and `nogroup` on Debian (and NixOS).
const NOBODY: u32 = 65534;

/// A spool owned by `nobody` next to things root owns and `nobody` must never get at through the hook:
/// a 0600 file and an empty 0700 directory inside a 0700 directory.
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let base = tempfile::tempdir().expect("tempdir");
        // nobody must reach the spool; the victims stay behind a root-only directory
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod base");
        let scene = Scene { base };
        niks3_spool::Spool::open(&scene.spool()).expect("set up the spool");
        for sub in ["", "tmp", "new", "claimed", "quarantine"] {
            std::os::unix::fs::chown(scene.spool().join(sub), Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
        }
        std::fs::create_dir(scene.base.path().join("root-only")).expect("mkdir root-only");
        std::fs::set_permissions(scene.base.path().join("root-only"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod root-only");
        std::fs::write(scene.victim_file(), "root's secret\n").expect("write victim");
        std::fs::set_permissions(scene.victim_file(), std::fs::Permissions::from_mode(0o600)).expect("chmod victim");
        std::fs::create_dir(scene.victim_dir()).expect("mkdir victim dir");
        std::fs::set_permissions(scene.victim_dir(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        scene
    }
    fn spool(&self) -> PathBuf {
        self.base.path().join("spool")
    }
    fn roots(&self) -> PathBuf {
        self.base.path().join("gcroots")
    }
    fn victim_file(&self) -> PathBuf {
        self.base.path().join("root-only/secret")
    }
    fn victim_dir(&self) -> PathBuf {
        self.base.path().join("root-only/dir")
    }

    /// The spool's path the long way round (`w/../` 700 times): the same directory, but every lookup of
    /// it takes the kernel a few hundred microseconds instead of one. That widens the gap between two
    /// path-based calls of the hook enough for a racer on a busy two-core machine to hit it within a few
    /// hundred runs, as the review's racer did on its machine; the hook's code is unchanged by it.
    fn slow_spool(&self) -> PathBuf {
        let w = self.base.path().join("w");
        let _ = std::fs::create_dir(&w);
        let mut p = w.into_os_string();
        for _ in 0..700 {
            p.push("/../w");
        }
        p.push("/../spool");
        PathBuf::from(p)
    }

    /// Runs the hook once, as Nix would after a build, checking the promises that hold whatever happens:
    /// exit 0, only `niks3-hook: ` lines. Returns stderr.
    fn hook(&self) -> String {
        self.hook_at(&self.spool())
    }

    /// [`Scene::hook`] with `NIKS3_SPOOL_DIR` set to `spool`.
    fn hook_at(&self, spool: &Path) -> String {
        let (sp, rt) = (spool.to_owned(), self.roots());
        let env = [
            ("NIKS3_SPOOL_DIR", sp.to_str().expect("utf-8")),
            ("NIKS3_GCROOTS_DIR", rt.to_str().expect("utf-8")),
            ("OUT_PATHS", OUT),
        ];
        let o = run_hook(&env);
        assert!(o.status.success(), "the hook must exit 0: {o:?}");
        let err = stderr(&o);
        assert!(err.lines().all(|l| l.starts_with("niks3-hook: ")), "{err}");
        err
    }

    /// Fails the test if anything of root's changed: the file's owner, group or mode, or anything put
    /// into the root-only directories.
    fn assert_victims_untouched(&self, after: &str) {
        let m = std::fs::symlink_metadata(self.victim_file()).expect("victim file");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o600), "victim file changed {after}");
        assert_eq!(std::fs::read_to_string(self.victim_file()).expect("read victim"), "root's secret\n");
        let d = std::fs::symlink_metadata(self.victim_dir()).expect("victim dir");
        assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (0, 0, 0o700), "victim dir changed {after}");
        let mut in_root_only: Vec<PathBuf> = files(&self.base.path().join("root-only"));
        in_root_only.extend(files(&self.victim_dir()));
        assert_eq!(in_root_only, vec![self.victim_dir(), self.victim_file()], "root wrote outside the spool {after}");
    }
}

#[test]
fn symlinked_tmp_or_new_get_nothing_from_the_hook() {
    for swapped in [&["tmp", "new"][..], &["tmp"], &["new"]] {
        let scene = Scene::new();
        for sub in swapped {
            let p = scene.spool().join(sub);
            std::fs::remove_dir(&p).expect("rmdir");
            std::os::unix::fs::symlink(scene.victim_dir(), &p).expect("symlink");
        }
        let err = scene.hook();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let sub = swapped[0];
        let want = format!(
            "niks3-hook: spool unusable (refusing {}: it is a symlink, not a directory); NOT queued: {OUT}\n",
            scene.spool().join(sub).display()
        );
        assert_eq!(err, want, "with {swapped:?} symlinked");
        scene.assert_victims_untouched(&format!("with {swapped:?} symlinked"));
        assert!(files(&scene.roots()).is_empty(), "no GC root left for a path that was not queued");
    }
}

#[test]
fn a_symlinked_spool_dir_gets_nothing_from_the_hook() {
    // The spool's parent (/var/lib/niks3) belongs to the spool owner too, who could replace the spool.
    let scene = Scene::new();
    std::fs::rename(scene.spool(), scene.base.path().join("real-spool")).expect("rename");
    for sub in ["tmp", "new"] {
        std::fs::create_dir(scene.victim_dir().join(sub)).expect("mkdir");
    }
    std::os::unix::fs::symlink(scene.victim_dir(), scene.spool()).expect("symlink");
    let want = format!(
        "niks3-hook: spool unusable (refusing {}: it is a symlink, not a directory); NOT queued: {OUT}\n",
        scene.spool().display()
    );
    assert_eq!(scene.hook(), want);
    // a trailing slash would make the kernel follow the symlink
    let mut slash = scene.spool().into_os_string();
    slash.push("/");
    assert_eq!(scene.hook_at(Path::new(&slash)), want, "NIKS3_SPOOL_DIR with a trailing slash");
    assert!(files(&scene.victim_dir().join("tmp")).is_empty() && files(&scene.victim_dir().join("new")).is_empty());
}

#[test]
fn a_fifo_as_tmp_or_new_does_not_block_the_hook() {
    // Opening a FIFO for reading waits for a writer: the hook opens its directories with O_NONBLOCK and
    // would otherwise hang the build that ran it.
    for sub in ["tmp", "new"] {
        let scene = Scene::new();
        let p = scene.spool().join(sub);
        std::fs::remove_dir(&p).expect("rmdir");
        assert!(Command::new("mkfifo").arg(&p).status().expect("mkfifo").success());
        let mut child = Command::new(crate::support::hook::hook_bin())
            .env_clear()
            .env("NIKS3_SPOOL_DIR", scene.spool())
            .env("NIKS3_GCROOTS_DIR", scene.roots())
            .env("OUT_PATHS", OUT)
            .stderr(Stdio::piped())
            .spawn()
            .expect("run niks3-hook");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the hook blocked on {sub}/ being a FIFO");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let o = child.wait_with_output().expect("hook output");
        assert!(o.status.success());
        let want = format!("refusing {}: it is a FIFO, not a directory", p.display());
        assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    }
}

/// How the racer attacks; see [`racer`].
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// The review's race: `tmp/` missing; the racer keeps renaming whatever `tmp` is away and putting a
    /// symlink to the victim file in its place, so that a root `mkdir tmp; chown tmp` chowns the victim.
    ChownThroughTmp,
    /// `tmp/` and `new/` keep flipping between real directories and symlinks to the victim directory, so
    /// that a root hook that checks, then uses a path, writes its entry into the victim directory.
    FlipTmpAndNew,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::ChownThroughTmp => "chown",
            Attack::FlipTmpAndNew => "flip",
        }
    }
}

/// Starts this test binary again as `nobody`, running only [`racer`], against the scene's spool.
fn start_racer(scene: &Scene, attack: Attack) -> Child {
    let target = match attack {
        Attack::ChownThroughTmp => scene.victim_file(),
        Attack::FlipTmpAndNew => scene.victim_dir(),
    };
    let exe = std::env::current_exe().expect("current test binary");
    let child = Command::new(&exe)
        .args(["hook_vs_spool_owner::racer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("NIKS3_TEST_RACER_SPOOL", scene.spool())
        .env("NIKS3_TEST_RACER_ATTACK", attack.name())
        .env("NIKS3_TEST_RACER_TARGET", target)
        .current_dir(scene.spool())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} as nobody (it must be world-executable): {e}", exe.display()));
    // the racer announces itself with a file it creates, which also proves it runs as nobody
    let ready = scene.spool().join(".racer-ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the racer did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(std::fs::metadata(&ready).expect("marker").uid(), NOBODY, "the racer runs as nobody");
    child
}

/// Kills the racer when the test ends, pass or fail.
struct Racer(Child);

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the hook as root in a loop while the racer attacks, until `RUNS` runs or `TIME` have passed,
/// checking root's files after every run.
fn race(attack: Attack) {
    const RUNS: usize = 1500;
    const TIME: Duration = Duration::from_secs(8);
    let scene = Scene::new();
    if let Attack::ChownThroughTmp = attack {
        std::fs::remove_dir(scene.spool().join("tmp")).expect("rmdir tmp");
    }
    let _racer = Racer(start_racer(&scene, attack));
    let start = Instant::now();
    let (mut runs, mut queued) = (0, 0);
    let slow = scene.slow_spool();
    while runs < RUNS && start.elapsed() < TIME {
        let err = scene.hook_at(&slow);
        runs += 1;
        queued += usize::from(err.is_empty());
        scene.assert_victims_untouched(&format!("after {runs} hook runs ({attack:?})"));
    }
    eprintln!("{attack:?}: {runs} hook runs in {:?}, {queued} queued, root's files untouched", start.elapsed());
    assert!(runs >= 100, "too few runs to mean anything: {runs}");
}

/// One test for both attacks, one after the other: on two cores, two racers and two hook loops at once
/// would mostly measure the scheduler.
#[test]
fn a_racing_spool_owner_never_gets_root_to_chown_or_write_outside_the_spool() {
    race(Attack::ChownThroughTmp);
    race(Attack::FlipTmpAndNew);
}

/// Not a test of its own: the spool owner's side of the races above, run by them as `nobody` in a child
/// process (this binary, with only this test selected). Without their environment it does nothing.
#[test]
#[ignore = "the racer process of the race tests, which start it"]
fn racer() {
    let (Some(spool), Some(attack), Some(target)) = (
        std::env::var_os("NIKS3_TEST_RACER_SPOOL").map(PathBuf::from),
        std::env::var("NIKS3_TEST_RACER_ATTACK").ok(),
        std::env::var_os("NIKS3_TEST_RACER_TARGET").map(PathBuf::from),
    ) else {
        return;
    };
    let _ = std::fs::create_dir(spool.join(".gone"));
    std::fs::write(spool.join(".racer-ready"), "").expect("the racer cannot write the spool");
    // Several threads: on a busy machine one of them is more likely to be running at the moment that
    // matters. They give up by themselves should the test that started them die without killing them.
    let deadline = Instant::now() + Duration::from_mins(2);
    let threads: Vec<_> = (0..RACER_THREADS)
        .map(|t| {
            let (spool, attack, target) = (spool.clone(), attack.clone(), target.clone());
            std::thread::spawn(move || attack_until(&spool, &attack, &target, t, deadline))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Threads of the racer process.
const RACER_THREADS: usize = 3;

/// One racer thread's loop; `t` tells the threads' leftovers apart.
fn attack_until(spool: &Path, attack: &str, target: &Path, t: usize, deadline: Instant) {
    let mut kept = 0u64;
    let mut aside = |name: &str| put_aside(spool, name, &format!(".racer-kept-{t}-"), &mut kept);
    let tmp = spool.join("tmp");
    while Instant::now() < deadline {
        for _ in 0..1000 {
            if attack == "chown" {
                // `tmp` is absent for a moment; a directory root makes then is renamed away at once
                // (over the empty `.gone`), and a symlink to the victim takes its place
                let _ = std::fs::remove_file(&tmp);
                if std::fs::rename(&tmp, spool.join(".gone")).is_err() && tmp.is_dir() {
                    // `.gone` holds a file the hook wrote: keep it, start a fresh one
                    aside(".gone");
                    let _ = std::fs::create_dir(spool.join(".gone"));
                    aside("tmp");
                }
                let _ = std::os::unix::fs::symlink(target, &tmp);
            } else {
                for sub in ["tmp", "new"] {
                    aside(sub);
                    let _ = std::os::unix::fs::symlink(target, spool.join(sub));
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(spool.join(sub));
                    let _ = std::fs::create_dir(spool.join(sub));
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Moves `spool/name` out of the way: a symlink or an empty directory is removed, a directory with
/// something in it (at most one per hook run) kept as `<prefix><n>`, so nothing piles up.
fn put_aside(spool: &Path, name: &str, prefix: &str, kept: &mut u64) {
    let p = spool.join(name);
    if std::fs::remove_file(&p).is_ok() || std::fs::remove_dir(&p).is_ok() || !p.exists() {
        return;
    }
    *kept += 1;
    let mut keep = OsString::from(prefix);
    keep.push(kept.to_string());
    let _ = std::fs::rename(&p, spool.join(keep));
}
