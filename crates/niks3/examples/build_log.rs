//! Measures what reading one build log costs, both ways niks3 can do it: from Nix's log file
//! ([`LocalNix::build_log`] with the log directory in sight) and one `nix-store --read-log` process per log
//! (the fallback, and what niks3 did before 2026-12). Prints CPU (user + sys, this process and its
//! children, from getrusage) and wall time per log.
//!
//! `cargo run --release --example build_log -- [ROUNDS] /nix/store/…-x.drv …`

#[path = "support/args.rs"]
mod cli_args;

use niks3_local::nix::LocalNix;
use niks3_nix::store_path::{StoreDir, StorePath};
use std::time::{Duration, Instant};

/// User + system CPU time of this process (all threads) and of its children that were waited for.
#[allow(unsafe_code)]
fn cpu_time() -> Duration {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes the struct it is given, which lives for the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `who` is one of the two valid constants.
        if unsafe { libc::getrusage(who, &raw mut usage) } == 0 {
            for t in [usage.ru_utime, usage.ru_stime] {
                total += Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
            }
        }
    }
    total
}

/// CPU and wall time per log of `rounds` passes over `drvs`.
async fn measure(
    nix: &LocalNix,
    dir: &StoreDir,
    drvs: &[StorePath],
    rounds: usize,
) -> Result<(Duration, Duration, usize), Box<dyn std::error::Error>> {
    let (cpu, wall) = (cpu_time(), Instant::now());
    let mut bytes = 0;
    for _ in 0..rounds {
        for drv in drvs {
            bytes += nix.build_log(dir, drv).await?.map_or(0, |l| l.len());
        }
    }
    let n = (rounds * drvs.len()).max(1) as u32;
    Ok((cpu_time().saturating_sub(cpu) / n, wall.elapsed() / n, bytes / n as usize))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rounds, drvs) = cli_args::rounds_and_paths(200)?;
    let dir = StoreDir::default();
    let files = LocalNix::default();
    // No `drvs/` there: every call spawns `nix-store --read-log`.
    let command = LocalNix::default().with_log_dir("/nonexistent".into());
    // Warm both (page cache, the fallback decision) before measuring.
    measure(&files, &dir, &drvs, 1).await?;
    measure(&command, &dir, &drvs, 1).await?;
    let (f_cpu, f_wall, bytes) = measure(&files, &dir, &drvs, rounds).await?;
    let (c_cpu, c_wall, _) = measure(&command, &dir, &drvs, rounds).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} logs x {rounds} rounds, {bytes} bytes per log: file read {:.3} CPU-ms ({:.3} ms wall) per log; \
         nix-store --read-log {:.2} CPU-ms ({:.2} ms wall) per log ({:.0}x the CPU)",
        drvs.len(),
        ms(f_cpu),
        ms(f_wall),
        ms(c_cpu),
        ms(c_wall),
        c_cpu.as_secs_f64() / f_cpu.as_secs_f64().max(1e-9)
    );
    Ok(())
}
