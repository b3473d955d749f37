//! The NixOS module (nixos/module.nix) drives `niks3` only through environment variables and flags.
//! These tests check that the binary built from this tree accepts every one of them: the module is
//! evaluated with `nixos/tests/evaluator/eval-nixos-module` on the examples in nixos/examples (and a variant
//! with a remote database), the `NIKS3_*` variables and the `--flags` of each unit's `ExecStart` are
//! collected, and `niks3 <subcommand> --help` must list them; then each unit's command line and
//! environment are run for real (paths moved into a scratch directory, nothing listening) and must not
//! be rejected as a usage error.
//!
//! A subcommand whose arguments are not implemented yet (its help lacks its main flag) is reported and
//! skipped, so that the skeleton does not fail; once it exists, every mismatch fails.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A systemd service the module produced that runs niks3.
struct Unit {
    name: String,
    /// `serve`, `gc` or `drain`.
    subcommand: String,
    /// ExecStart's arguments after the subcommand.
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("crates/niks3 is inside the workspace")
}

/// The evaluator vendored in the repository (the real nixpkgs lib and stand-ins for the rest of NixOS).
fn eval_tool() -> PathBuf {
    workspace().join("nixos/tests/evaluator/eval-nixos-module")
}

/// Evaluates the module with `config` and returns the tool's JSON.
fn evaluate(config: &Path) -> Value {
    let out = Command::new(eval_tool())
        .arg(workspace().join("nixos/module.nix"))
        .arg(config)
        .output()
        .expect("run eval-nixos-module");
    assert!(out.status.success(), "evaluating {} failed: {}", config.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("eval-nixos-module prints JSON")
}

fn configs(scratch: &Path) -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(workspace().join("nixos/examples"))
        .expect("nixos/examples exists")
        .map(|e| e.expect("read nixos/examples").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .collect();
    configs.sort();
    let variant = scratch.join("remote-db.nix");
    std::fs::write(
        &variant,
        r#"{ ... }: { services.niks3 = {
          enable = true;
          database.urlFile = "/run/secrets/db-url";
          signKeyFiles = [ "/run/secrets/k1.sec" "/run/secrets/k2.sec" ];
          apiTokenFile = "/run/secrets/token";
          jobs = 2;
          hook = { enable = true; serverUrl = "http://other:5751"; tokenFile = "/run/secrets/token"; };
        }; }"#,
    )
    .expect("write the variant config");
    configs.push(variant);
    configs
}

fn units(v: &Value) -> Vec<Unit> {
    let mut units = Vec::new();
    let Some(services) = v["systemd"]["services"].as_object() else { return units };
    for (name, s) in services {
        let exec = s["serviceConfig"]["ExecStart"].as_str().unwrap_or_default();
        let mut words = exec.split_whitespace();
        let Some(bin) = words.next() else { continue };
        if !bin.ends_with("/bin/niks3") {
            continue;
        }
        let subcommand = words.next().expect("ExecStart names a subcommand").to_owned();
        let args = words.map(str::to_owned).collect();
        let env = s["environment"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        units.push(Unit { name: name.clone(), subcommand, args, env });
    }
    units
}

fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_niks3")).args([subcommand, "--help"]).output().expect("run niks3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The flag that shows a subcommand's arguments are implemented.
fn implemented(subcommand: &str, help: &str) -> bool {
    let sentinel = match subcommand {
        "serve" => "--http-addr",
        "gc" => "--older-than",
        "drain" => "--spool-dir",
        other => panic!("the module runs an unknown subcommand `niks3 {other}`"),
    };
    help.contains(sentinel)
}

#[test]
fn every_variable_and_flag_the_module_uses_is_accepted_by_the_cli() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut missing = Vec::new();
    let mut checked = 0;
    for config in configs(scratch.path()) {
        for unit in units(&evaluate(&config)) {
            let help = help(&unit.subcommand);
            if !implemented(&unit.subcommand, &help) {
                eprintln!("skip {}: `niks3 {} --help` has no arguments yet", unit.name, unit.subcommand);
                continue;
            }
            for name in unit.env.keys().filter(|k| k.starts_with("NIKS3_")) {
                checked += 1;
                if !help.contains(&format!("env: {name}")) {
                    missing.push(format!("{} ({}): variable {name}", unit.name, config.display()));
                }
            }
            for arg in unit.args.iter().filter(|a| a.starts_with("--")) {
                let flag = arg.split('=').next().unwrap_or(arg);
                checked += 1;
                if !help.contains(flag) {
                    missing.push(format!("{} ({}): flag {flag}", unit.name, config.display()));
                }
            }
        }
    }
    assert!(missing.is_empty(), "the module uses what `niks3 --help` does not list:\n{}", missing.join("\n"));
    eprintln!("{checked} variables and flags checked");
}

/// Moves every absolute path of the unit into `scratch` (so nothing on the host is touched), points
/// `%d` / `${CREDENTIALS_DIRECTORY}` at a directory of dummy credentials, and servers at a closed port.
fn localise(value: &str, scratch: &Path, creds: &Path) -> String {
    let value = value
        .replace("%d", &creds.display().to_string())
        .replace("${CREDENTIALS_DIRECTORY}", &creds.display().to_string());
    if value.starts_with("http://") || value.starts_with("https://") {
        return "http://127.0.0.1:9".to_owned();
    }
    if value.starts_with('/') && !value.starts_with(&creds.display().to_string()) {
        return scratch.join(value.trim_start_matches('/')).display().to_string();
    }
    value
}

#[test]
fn unit_command_lines_are_not_usage_errors() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let creds = scratch.path().join("credentials");
    std::fs::create_dir_all(&creds).expect("mkdir credentials");
    for name in ["api-token", "db-url", "s3-access-key", "s3-secret-key"] {
        std::fs::write(creds.join(name), "niks3-test-credential-0123456789abcdef0123456789").expect("write credential");
    }
    std::fs::write(creds.join("db-url"), "host=/nonexistent user=niks3 dbname=niks3").expect("write db-url");
    for (i, name) in ["sign-key-0", "sign-key-1"].iter().enumerate() {
        // A valid `name:base64(64 bytes)` secret key.
        let key = format!("test-{i}:{}", "A".repeat(86) + "==");
        std::fs::write(creds.join(name), key).expect("write key");
    }
    let mut failures = Vec::new();
    for config in configs(scratch.path()) {
        for unit in units(&evaluate(&config)) {
            if !implemented(&unit.subcommand, &help(&unit.subcommand)) {
                eprintln!("skip {}: `niks3 {}` has no arguments yet", unit.name, unit.subcommand);
                continue;
            }
            let root = scratch.path().join(&unit.name);
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_niks3"));
            cmd.arg(&unit.subcommand)
                .args(unit.args.iter().map(|a| match a.split_once('=') {
                    Some((flag, v)) if flag.starts_with("--") => format!("{flag}={}", localise(v, &root, &creds)),
                    _ => localise(a, &root, &creds),
                }))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (k, v) in &unit.env {
                let v = match k.as_str() {
                    "NIKS3_HTTP_ADDR" => "127.0.0.1:0".to_owned(),
                    "NIKS3_DB" => "host=/nonexistent user=niks3 dbname=niks3".to_owned(),
                    _ => localise(v, &root, &creds),
                };
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn niks3");
            // A usage error exits at once; a unit that starts work (and then fails to reach the
            // database or the server, or keeps retrying) got past argument parsing.
            let deadline = Instant::now() + Duration::from_secs(3);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait for niks3") {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let stderr = child.stderr.take().map(|mut e| {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                s
            });
            let stderr = stderr.unwrap_or_default();
            if status.and_then(|s| s.code()) == Some(2) || stderr.contains("Usage:") {
                failures.push(format!("{} ({}):\n{stderr}", unit.name, config.display()));
            }
        }
    }
    assert!(failures.is_empty(), "niks3 rejected the module's command lines:\n{}", failures.join("\n"));
}
