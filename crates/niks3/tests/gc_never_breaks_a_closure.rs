//! Random histories of overlapping pushes, abandoned uploads, clock jumps and GC runs (some concurrent with
//! pushes) against a real PostgreSQL and a real local store. After every step: every narinfo in the store
//! has its NAR and its references' narinfos, every object of every remembered closure exists, and every
//! recorded object exists.

#![allow(clippy::many_single_char_names, reason = "u, n, c, a, b: the universe, its size, the cache, two roots")]

use crate::support::gc::{Cache, Universe, narinfo_key};
use chrono::Duration as ChronoDuration;
use niks3_server::gc::{self, GcError, GcOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

const HOUR: Duration = Duration::from_hours(1);
const OLDER_THAN_HOURS: i64 = 24;

async fn history(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let u = Universe::random(40, &mut rng);
    let n = u.deps.len();
    let c = Cache::new(u).await;
    let mut now = Cache::at(0);
    let mut last_push: HashMap<usize, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for step in 0..steps {
        let dice = rng.gen_range(0..100);
        let what;
        if dice < 35 {
            let root = rng.gen_range(0..n);
            c.push(root, now).await;
            last_push.insert(root, now);
            what = format!("push {root}");
        } else if dice < 45 {
            let root = rng.gen_range(0..n);
            let limit = rng.gen_range(0..6);
            c.abandon(root, now, limit).await;
            what = format!("abandon {root} after {limit} objects");
        } else if dice < 65 {
            now += ChronoDuration::minutes(rng.gen_range(0..12 * 60));
            what = "clock".to_owned();
        } else if dice < 88 {
            let force = rng.gen_bool(0.3);
            let opts = GcOptions { older_than: 24 * HOUR, failed_uploads_older_than: 6 * HOUR, force, dry_run: false };
            gc::run(&c.db, &c.store, opts, now).await.expect("gc");
            // GC forgot nothing pushed within older_than.
            for (&root, &t) in &last_push {
                if t >= now - ChronoDuration::hours(OLDER_THAN_HOURS) {
                    assert!(
                        c.db.missing(&[narinfo_key(root)]).await.expect("missing").is_empty(),
                        "seed {seed} step {step}: recent closure {root} lost"
                    );
                }
            }
            what = format!("gc force={force}");
        } else {
            // Pushes racing a forced GC (no grace period: the harshest case).
            let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
            let opts =
                GcOptions { older_than: 24 * HOUR, failed_uploads_older_than: 6 * HOUR, force: true, dry_run: false };
            let ((), (), g) = tokio::join!(c.push(a, now), c.push(b, now), gc::run(&c.db, &c.store, opts, now));
            match g {
                Ok(_) | Err(GcError::AlreadyRunning) => {}
                Err(e) => panic!("seed {seed} step {step}: gc: {e}"),
            }
            last_push.insert(a, now);
            last_push.insert(b, now);
            what = format!("push {a} + push {b} racing gc");
        }
        c.check(&format!("seed {seed} step {step} ({what})")).await;
    }
}

#[tokio::test]
async fn random_histories_seed_1() {
    history(1, 80).await;
}

#[tokio::test]
async fn random_histories_seed_2() {
    history(2, 80).await;
}

#[tokio::test]
async fn random_histories_seed_3() {
    history(3, 80).await;
}

/// Many pushes against GC runs in a loop, truly in parallel on a multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_gc_runs_never_break_a_closure() {
    let mut rng = StdRng::seed_from_u64(42);
    let u = Universe::random(30, &mut rng);
    let n = u.deps.len();
    let c = std::sync::Arc::new(Cache::new(u).await);
    let roots: Vec<usize> = (0..60).map(|_| rng.gen_range(0..n)).collect();
    for round in 0..6 {
        // Each round the clock jumps past older_than, so the previous rounds' closures expire and GC is
        // busy deleting exactly while the new pushes reuse the same paths.
        let now = Cache::at(30 * round);
        let pushes = {
            let c = c.clone();
            let roots = roots[round as usize * 10..(round as usize + 1) * 10].to_vec();
            tokio::spawn(async move {
                for r in roots {
                    c.push(r, now).await;
                }
            })
        };
        let gcs = {
            let c = c.clone();
            tokio::spawn(async move {
                let opts = GcOptions {
                    older_than: 24 * HOUR,
                    failed_uploads_older_than: 6 * HOUR,
                    force: true,
                    dry_run: false,
                };
                for _ in 0..5 {
                    match gc::run(&c.db, &c.store, opts, now).await {
                        Ok(_) | Err(GcError::AlreadyRunning) => {}
                        Err(e) => panic!("gc: {e}"),
                    }
                }
            })
        };
        pushes.await.expect("pushes");
        gcs.await.expect("gcs");
        c.check(&format!("round {round}")).await;
    }
}
