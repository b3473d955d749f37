//! Build logs read from Nix's log files are byte for byte what `nix-store --read-log` prints, for Nix 2.8
//! (host) and 2.26 (trixie chroot), bzip2-compressed (Nix's default) or not; a derivation never built has
//! none; a log directory out of sight falls back to the command.
//!
//! The readers here get a `bin_dir` where no Nix exists, so a log they return cannot have come from the
//! command.

use niks3_local::build_log::{DEFAULT_LOG_DIR, LogDir};
use niks3_local::nix::LocalNix;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_testkit::chroot::Chroot;
use niks3_testkit::nix::NixEnv;
use std::path::{Path, PathBuf};

/// Several lines, bytes that are not UTF-8, a tab, and a last line without a newline (backslashes doubled
/// for the Nix string).
const SCRIPT: &str = r"echo first line; printf 'tab\\there\\n'; printf 'bytes \\377\\376\\n'; echo $salt; printf 'no newline'; echo ok > $out";

fn expr(compress: &str) -> String {
    format!(
        r#"{{ salt }}: derivation {{ name = "log-{compress}"; inherit salt; system = builtins.currentSystem;
            builder = "/bin/sh"; args = [ "-c" "{SCRIPT}" ]; }}"#
    )
}

/// Only the files: no Nix behind `bin_dir`.
fn files_only(log_dir: PathBuf) -> LocalNix {
    LocalNix::new(Some("/nonexistent/bin".into())).with_log_dir(log_dir)
}

fn drv_of(env: &NixEnv, out: &str) -> StorePath {
    StoreDir::default().parse_path(&env.deriver(out).expect("deriver")).expect("drv path")
}

fn read_log_command(env: &NixEnv, drv: &StorePath) -> Vec<u8> {
    let out = env
        .command("nix-store")
        .args(["--read-log", &StoreDir::default().display(drv)])
        .output()
        .expect("nix-store --read-log");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Builds the logging derivation with `compress-build-log = <compress>` and checks the direct read
/// against `nix-store --read-log`, and that the file is where (and as) Nix said it would be.
async fn same_as_nix_store(env: &NixEnv, log_dir: &Path) {
    for (compress, suffix) in [("true", ".bz2"), ("false", "")] {
        let out = env
            .build_with(&expr(compress), "", &["--option", "compress-build-log", compress])
            .expect("build")
            .remove(0);
        let drv = drv_of(env, &out);
        let base = drv.basename();
        let file = log_dir.join("drvs").join(&base[..2]).join(format!("{}{suffix}", &base[2..]));
        assert!(file.is_file(), "compress-build-log = {compress}: {} exists", file.display());

        let direct = files_only(log_dir.to_path_buf())
            .build_log(&StoreDir::default(), &drv)
            .await
            .expect("read")
            .expect("a log");
        let want = read_log_command(env, &drv);
        assert_eq!(direct, want, "compress-build-log = {compress}");
        let text = String::from_utf8_lossy(&direct);
        assert!(text.contains("first line\n") && text.contains(env.salt()), "{text}");
        assert!(direct.windows(2).any(|w| w == b"\xff\xfe") && direct.ends_with(b"no newline"), "{text}");
    }

    // Instantiated, never built: no log, and no error.
    let never = env.dir().join("never.nix");
    std::fs::write(
        &never,
        r#"{ salt }: derivation { name = "never-built"; inherit salt; system = builtins.currentSystem;
                                 builder = "/bin/sh"; args = [ "-c" "exit 1" ]; }"#,
    )
    .expect("write");
    let drv = env
        .run(env.command("nix-instantiate").arg(env.nix_path(&never)).args(["--argstr", "salt", env.salt()]))
        .expect("instantiate");
    let drv = StoreDir::default().parse_path(drv.trim()).expect("drv");
    let log = files_only(log_dir.to_path_buf()).build_log(&StoreDir::default(), &drv).await.expect("no error");
    assert_eq!(log, None);
}

#[tokio::test]
async fn nix_2_8_logs_read_from_files_equal_nix_store_read_log() {
    let env = NixEnv::new().expect("nix env");
    same_as_nix_store(&env, Path::new(DEFAULT_LOG_DIR)).await;
}

#[tokio::test]
async fn nix_2_26_logs_read_from_files_equal_nix_store_read_log() {
    let Some(chroot) =
        Chroot::trixie_or_skip("nix_2_26_logs_read_from_files_equal_nix_store_read_log").expect("trixie chroot")
    else {
        return;
    };
    let env = NixEnv::in_chroot(&chroot).expect("nix env");
    same_as_nix_store(&env, &env.host_path(Path::new(DEFAULT_LOG_DIR))).await;
}

#[tokio::test]
async fn nix_log_dir_is_where_nix_writes_and_where_the_log_is_read() {
    let env = NixEnv::new().expect("nix env");
    let logs = tempfile::tempdir().expect("tempdir");
    let file = env.dir().join("custom.nix");
    std::fs::write(&file, expr("custom")).expect("write");
    let out = env
        .run(env.command("nix-build").env("NIX_LOG_DIR", logs.path()).arg("--no-out-link").arg(&file).args([
            "--argstr",
            "salt",
            env.salt(),
        ]))
        .expect("build");
    let drv = drv_of(&env, out.trim());

    let located = LogDir::locate(Some(logs.path().as_os_str()), None).expect("usable");
    assert_eq!(located, logs.path());
    let direct = files_only(located).build_log(&StoreDir::default(), &drv).await.expect("read").expect("log");
    let want = env
        .command("nix-store")
        .env("NIX_LOG_DIR", logs.path())
        .args(["--read-log", &StoreDir::default().display(&drv)])
        .output()
        .expect("nix-store --read-log");
    assert_eq!(direct, want.stdout);
    // The default directory has no such log.
    let default = files_only(DEFAULT_LOG_DIR.into()).build_log(&StoreDir::default(), &drv).await.expect("read");
    assert_eq!(default, None);
}

#[tokio::test]
async fn a_log_dir_out_of_sight_falls_back_to_nix_store_read_log() {
    let env = NixEnv::new().expect("nix env");
    let out = env.build(&expr("fallback"), "").expect("build").remove(0);
    let drv = drv_of(&env, &out);
    let want = read_log_command(&env, &drv);

    // No `drvs` there: the command answers, the same bytes.
    let nowhere = LocalNix::default().with_log_dir("/nonexistent/logs".into());
    let got = nowhere.build_log(&StoreDir::default(), &drv).await.expect("read").expect("log");
    assert_eq!(got, want);

    // …and with no Nix to run either, an environment error, not "no log".
    let err = files_only("/nonexistent/logs".into())
        .build_log(&StoreDir::default(), &drv)
        .await
        .expect_err("no way to read it");
    assert!(err.is_environment(), "{err}");
    assert!(err.to_string().contains("nix-store --read-log"), "{err}");
}
