//! Measures what reading a closure from the local Nix store costs, both ways niks3 could do it: the
//! worker protocol over one `nix-daemon --stdio` ([`LocalNix::closure`]) and one `nix path-info --json
//! --recursive` process per query (what niks3 did before 2026-12). Prints milliseconds per query.
//!
//! `cargo run --release --example store_query -- [ROUNDS] /nix/store/…-x …`

#[path = "support/args.rs"]
mod cli_args;

use niks3_local::nix::LocalNix;
use niks3_nix::store_path::StoreDir;
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rounds, roots) = cli_args::rounds_and_paths(20)?;
    let dir = StoreDir::default();
    let args: Vec<String> = roots.iter().map(|r| dir.display(r)).collect();
    let nix = LocalNix::default();
    let start = Instant::now();
    let closure = nix.closure(&dir, &roots).await?;
    let first = start.elapsed();
    let start = Instant::now();
    for _ in 0..rounds {
        nix.closure(&dir, &roots).await?;
    }
    let warm = start.elapsed() / rounds.max(1) as u32;
    let start = Instant::now();
    for _ in 0..rounds {
        let out = std::process::Command::new("nix")
            .args(["path-info", "--json", "--recursive", "--extra-experimental-features", "nix-command", "--"])
            .args(&args)
            .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
    }
    let cli = start.elapsed() / rounds.max(1) as u32;
    println!(
        "{} ({} paths): protocol first call (with connect) {:.2} ms, then {:.3} ms per closure; nix path-info {:.2} ms per closure ({:.0}x)",
        nix.version().await?,
        closure.len(),
        first.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3,
        cli.as_secs_f64() * 1e3,
        cli.as_secs_f64() / warm.as_secs_f64().max(1e-9)
    );
    Ok(())
}
