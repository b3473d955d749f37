//! GC at scale (run by bench/gc.sh; ignored in normal test runs): a synthetic cache of 1 000 000 objects
//! (500 000 store paths: a narinfo and a NAR each) and 100 000 closures in a real PostgreSQL, built with
//! one generate_series INSERT per table. Ten independent "releases" of 50 000 paths, each path referring to
//! up to three paths one or two levels below it (64 levels deep), so closures are deep and overlap; the
//! releases were pushed a week apart and GC keeps 35 days, so half the cache becomes unreachable.
//!
//! Prints the time of each GC run, the baseline (one sequential read of every object and its references,
//! the least work any collector must do), their ratio, and this process's peak RSS.

#![allow(clippy::many_single_char_names, reason = "short names for a linear script")]

use chrono::{Duration as ChronoDuration, TimeZone, Utc};
use niks3_server::db::Db;
use niks3_server::gc::{self, GcOptions};
use niks3_storage::Storage;
use niks3_storage::local::LocalStore;
use niks3_testkit::postgres::Postgres;
use std::time::{Duration, Instant};

const PATHS_PER_RELEASE: i64 = 50_000;
const RELEASES: i64 = 10;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "benchmark: run bench/gc.sh"]
async fn gc_one_million_objects() {
    let pg = Postgres::start().expect("PostgreSQL");
    let db = Db::connect(&pg.url()).await.expect("connect");
    let dir = tempfile::tempdir().expect("dir");
    let store = Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store"));
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).single().expect("date");
    let c = db.client().await.expect("client");

    let t = Instant::now();
    // Keys: narinfo = 32 nixbase32 chars (md5 hex with the one non-nix32 letter 'e' swapped), NAR = 52
    // chars starting with '1' (so the padding bits are zero).
    c.batch_execute(&format!(
        "CREATE FUNCTION ni(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS
           $$ SELECT translate(md5('p' || i), 'e', 'z') || '.narinfo' $$;
         CREATE FUNCTION na(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS
           $$ SELECT 'nar/1' || translate(substr(md5('n' || i) || md5('m' || i), 1, 51), 'e', 'z') || '.nar.zst' $$;
         INSERT INTO objects (key, kind, size, refs, first_seen, last_pushed)
         SELECT na(i), 'nar', 100000, '{{}}', '{now}', '{now}' FROM generate_series(0, {total} - 1) i;
         INSERT INTO objects (key, kind, size, refs, first_seen, last_pushed)
         SELECT ni(i), 'narinfo', 500,
                array_remove(ARRAY[
                    na(i),
                    CASE WHEN lvl >= 1 THEN ni(i - 1) END,
                    CASE WHEN lvl >= 1 AND i - 1 - 64 * (i % 97) >= base THEN ni(i - 1 - 64 * (i % 97)) END,
                    CASE WHEN lvl >= 2 AND i - 2 - 64 * (i % 89) >= base THEN ni(i - 2 - 64 * (i % 89)) END
                ], NULL),
                '{now}', '{now}'
         FROM (SELECT i, (i - (i / {per}) * {per}) % 64 AS lvl, (i / {per}) * {per} AS base
               FROM generate_series(0, {total} - 1) i) s;
         INSERT INTO closures (root, pushed_at)
         SELECT ni(i), timestamptz '{now}' - interval '1 hour' - (i / {per}) * interval '7 days'
         FROM generate_series(0, {total} - 1) i WHERE i % 5 = 0;
         ANALYZE;",
        per = PATHS_PER_RELEASE,
        total = PATHS_PER_RELEASE * RELEASES,
        now = now.to_rfc3339(),
    ))
    .await
    .expect("build the synthetic cache");
    let s = db.stats().await.expect("stats");
    println!("built {} objects, {} closures in {:.1?}", s.objects, s.closures, t.elapsed());
    assert_eq!((s.objects, s.closures), (1_000_000, 100_000));

    // Log every statement slower than 300 ms, to print where the time goes.
    c.batch_execute("ALTER SYSTEM SET log_min_duration_statement = 300").await.expect("log slow statements");
    c.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    let log_start = std::fs::metadata(pg.log_path()).map_or(0, |m| m.len());

    let t = Instant::now();
    let n: i64 = c
        .query_one("SELECT count(r) FROM objects o LEFT JOIN LATERAL unnest(o.refs) r ON true", &[])
        .await
        .expect("baseline")
        .get(0);
    let baseline = t.elapsed();
    println!("baseline: one sequential read of all objects and {n} references: {baseline:.2?}");

    let opts = GcOptions {
        older_than: Duration::from_hours(35 * 24),
        failed_uploads_older_than: Duration::from_hours(6),
        force: false,
        dry_run: false,
    };
    let t = Instant::now();
    let f = gc::run(&db, &store, opts, now).await.expect("gc: mark");
    let mark = t.elapsed();
    println!(
        "gc run 1 (expire + mark, grace keeps all): {mark:.2?} ({:.1}x baseline) {f:?}",
        mark.as_secs_f64() / baseline.as_secs_f64()
    );

    let t = Instant::now();
    let f2 = gc::run(&db, &store, opts, now + ChronoDuration::hours(7)).await.expect("gc: delete");
    let sweep = t.elapsed();
    println!(
        "gc run 2 (mark again + delete after grace): {sweep:.2?} ({:.1}x baseline) {f2:?}",
        sweep.as_secs_f64() / baseline.as_secs_f64()
    );

    let t = Instant::now();
    let f3 = gc::run(&db, &store, opts, now + ChronoDuration::hours(8)).await.expect("gc: idle");
    let idle = t.elapsed();
    println!(
        "gc run 3 (nothing to do): {idle:.2?} ({:.1}x baseline) {f3:?}",
        idle.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("peak RSS of the niks3 side: {} MiB", peak_rss_kib() / 1024);

    assert_eq!(f.old_closures_deleted, 50_000);
    assert!(f.objects_marked_for_deletion > 0);
    assert_eq!(f2.objects_deleted_after_grace_period, f.objects_marked_for_deletion);
    let s = db.stats().await.expect("stats");
    println!("left: {} objects, {} closures", s.objects, s.closures);
    let log = std::fs::read(pg.log_path()).expect("server log");
    println!("statements slower than 300 ms:");
    for line in String::from_utf8_lossy(&log[log_start as usize..]).lines().filter(|l| l.contains("duration:")) {
        let short: String = line.split("duration:").nth(1).unwrap_or(line).chars().take(160).collect();
        println!("  {}", short.replace('\n', " "));
    }
}
