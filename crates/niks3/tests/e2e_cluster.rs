//! Several niks3 servers on one database and a three-node Garage cluster (docs/deployment.md), with the
//! real binaries: builders' overlapping closures drained through different servers at once are written
//! once and substitute with signatures; GC started on two servers at once runs once while pushes go on;
//! a Garage node, a niks3 server and the PostgreSQL primary fail in the middle of pushes and nothing is
//! lost, no narinfo is served without its NAR and references.

use crate::support::cluster::{Builder, Fleet, LEASE_TIMEOUT_SECS};
use crate::support::e2e::{http_status, wait_for};
use niks3_testkit::garage_cluster::GarageCluster;
use niks3_testkit::nix::NixEnv;
use niks3_testkit::postgres::Postgres;
use niks3_testkit::postgres_pair::{PostgresPair, Server};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Longest a builder's drain may take here (the machine has two cores and runs everything).
const DRAIN_TIMEOUT: Duration = Duration::from_mins(5);

/// The roots each of three builders queues: overlapping closures (see fixtures/cluster.nix).
const ROOTS: [&[&str]; 3] = [
    &["a", "d", "leaf0", "leaf3", "leaf4"],
    &["b", "d", "leaf1", "leaf3", "leaf5"],
    &["c", "a", "leaf2", "leaf0", "leaf4"],
];

/// The store path hashes of the closures of `roots`.
fn closure_hashes(nix: &NixEnv, roots: &[String]) -> BTreeSet<String> {
    let out = nix.command("nix-store").arg("-qR").args(roots).output().expect("nix-store -qR");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim_start_matches("/nix/store/")[..32].to_owned()).collect()
}

/// Builders each draining through the three servers in its own order, at once; returns after every
/// drain finished (how long that took), each spool checked empty.
fn drain_all(fleet: &Fleet, builders: &[Builder]) -> Duration {
    let t0 = Instant::now();
    let n = 3;
    let drains: Vec<_> = builders
        .iter()
        .enumerate()
        .map(|(k, b)| fleet.spawn_drain(b, &(0..n).map(|i| (i + k) % n).collect::<Vec<_>>()))
        .collect();
    for d in drains {
        d.finish(DRAIN_TIMEOUT);
    }
    for b in builders {
        b.assert_drained();
    }
    t0.elapsed()
}

/// Substitutes every builder's roots into a fresh store with signatures required, builder `k` from
/// server `servers[k % len]`.
fn substitute_all(fleet: &Fleet, builders: &[Builder], servers: &[usize]) {
    for (k, b) in builders.iter().enumerate() {
        let server = servers[k % servers.len()];
        let url = fleet.url(server);
        let store = fleet
            .nix
            .substitute(&url, &format!("client-{}-via{server}", b.name), &b.roots, &fleet.public_key)
            .unwrap_or_else(|e| panic!("{}'s roots do not substitute from {url}: {e}", b.name));
        for r in &b.roots {
            assert!(store.join(r.trim_start_matches('/')).exists(), "{r} missing after nix copy from {url}");
        }
    }
}

/// Runs `cmd`, asserts it succeeded, returns its stdout and stderr.
fn run_text(mut cmd: std::process::Command) -> String {
    let out = cmd.output().expect("run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn three_servers_take_overlapping_closures_at_once_write_each_object_once_and_gc_runs_once() {
    let garage = GarageCluster::start().expect("garage cluster");
    let pg = Postgres::start().expect("postgres");
    let nix = NixEnv::new().expect("nix env");
    let fleet = Fleet::start(nix, garage, pg.url(), 3);
    let builders: Vec<Builder> =
        ROOTS.iter().enumerate().map(|(k, roots)| fleet.builder(&format!("builder{k}"), roots)).collect();
    let took = drain_all(&fleet, &builders);
    let all_roots: Vec<String> = builders.iter().flat_map(|b| b.roots.clone()).collect();
    let want = closure_hashes(&fleet.nix, &all_roots);
    eprintln!("three builders drained {} paths through three servers in {took:?}", want.len());

    // Every closure path is published, through every node, with its NAR and references.
    for node in 0..3 {
        let have = fleet.check_invariant(node);
        let lacking: Vec<_> = want.difference(&have).collect();
        assert!(lacking.is_empty(), "node {node}: not published: {lacking:?}");
    }
    // Each object was written once (nix-cache-info is written by every server as it starts).
    let counts = fleet.garage.put_counts().expect("put counts");
    let twice: Vec<_> = counts
        .iter()
        .filter(|(k, c)| k.as_str() != "nix-cache-info" && c.object_writes() != 1)
        .map(|(k, c)| format!("{k}: {c:?}"))
        .collect();
    assert!(twice.is_empty(), "objects not written exactly once:\n{}", twice.join("\n"));
    let narinfos = counts.keys().filter(|k| k.ends_with(".narinfo")).count();
    assert_eq!(narinfos, want.len(), "one narinfo write per closure path");
    substitute_all(&fleet, &builders, &[1, 2, 0]);

    // GC on two servers at once while new pushes run: exactly one runs, the other is refused at once
    // ("not started"), and the pushes and the invariant are untouched. Old closures are forgotten at
    // once (admin token, --force): only what the new pushes claim survives.
    let round2: Vec<Builder> = [["leaf0", "leaf5"], ["leaf2", "leaf4"], ["leaf1", "leaf3"]]
        .iter()
        .enumerate()
        .map(|(k, roots)| fleet.builder(&format!("round2-builder{k}"), roots))
        .collect();
    std::thread::sleep(Duration::from_secs(2)); // round 1 is now older than --older-than
    let drains: Vec<_> = round2.iter().enumerate().map(|(k, b)| fleet.spawn_drain(b, &[k, (k + 1) % 3])).collect();
    let gc =
        |i: usize| {
            let mut cmd = fleet.nix.command(crate::support::e2e::niks3_bin());
            cmd.args(["gc", "--server", &fleet.url(i), "--auth-token-file"])
                .arg(fleet.dir.path().join("token"))
                .args(["--older-than", "1s", "--failed-uploads-older-than", "1h", "--force"]);
            cmd
        };
    // A run on this small cache takes well under a second, so two started together could also run one
    // after the other, each finding the other finished. To see the overlap every time, the test holds the
    // GC lock shared, as a push's claim does: the run that takes the run lock first then waits in its mark
    // phase (still holding the run lock), and the other one, started at the same moment, must be refused
    // while it waits. Pushes' claims queue behind the waiting mark meanwhile, as they would behind a real
    // one; the lock is let go as soon as the refusal is in.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (db, conn) = rt.block_on(async {
        let db = niks3_server::db::Db::connect(&fleet.db_url).await.expect("connect");
        let c = db.client().await.expect("connection");
        (db, c)
    });
    let sql = |q: &str, key: i64| -> i64 {
        rt.block_on(conn.query_one(q, &[&key])).unwrap_or_else(|e| panic!("{q}: {e}")).get(0)
    };
    sql("SELECT count(*) FROM (SELECT pg_advisory_lock_shared($1)) l", niks3_server::db::GC_LOCK);
    // Advisory locks on a bigint key show in pg_locks as its two halves.
    let held = |key: i64, granted: bool| {
        sql(
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND mode = \
                 'ExclusiveLock' AND granted = {granted} AND ((classid::bigint << 32) | objid::bigint) = $1"
            ),
            key,
        )
    };
    let [(ran, ran_took), (refused, refused_took)] = std::thread::scope(|s| {
        let timed = |i: usize| {
            let t = Instant::now();
            (run_text(gc(i)), t.elapsed())
        };
        let runs = [s.spawn(move || timed(0)), s.spawn(move || timed(1))];
        let one_done = wait_for(Duration::from_mins(1), || runs.iter().any(std::thread::ScopedJoinHandle::is_finished));
        assert!(one_done, "neither GC answered within a minute with the GC lock held shared");
        let first = usize::from(runs[1].is_finished());
        // The other run is under way: it holds the run lock and waits for the GC lock in its mark phase.
        assert!(!runs[1 - first].is_finished(), "both GCs ended while one could not get past its mark phase");
        let waiting = wait_for(Duration::from_secs(30), || held(niks3_server::db::GC_LOCK, false) == 1);
        let run_lock = held(niks3_server::db::GC_RUN_LOCK, true);
        sql("SELECT count(*) FROM (SELECT pg_advisory_unlock_shared($1)) l", niks3_server::db::GC_LOCK);
        assert!(waiting && run_lock == 1, "the running GC holds the run lock ({run_lock}) and waits for the GC lock");
        let [a, b] = runs.map(|h| h.join().expect("gc thread"));
        if first == 0 { [b, a] } else { [a, b] }
    });
    assert!(refused.contains("not started: GC already running"), "the first GC to answer was not refused:\n{refused}");
    assert!(refused_took < Duration::from_secs(10), "the refusal took {refused_took:?}");
    assert!(ran.contains("objects-deleted-after-grace-period:"), "the other GC did not run:\n{ran}");
    eprintln!("two GCs at once: one refused after {refused_took:?}, the other ran in {ran_took:?}");

    // A GC running elsewhere (the test holds the run lock, as a long run on another server would):
    // a GC asked of server 2 answers at once that one is running; pushes are not held up by it.
    rt.block_on(conn.execute("SELECT pg_advisory_lock($1)", &[&niks3_server::db::GC_RUN_LOCK])).expect("lock");
    let holder = (db, conn);
    let t = Instant::now();
    let out = run_text(gc(2));
    assert!(out.contains("not started: GC already running"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(10), "the refusal took {:?}", t.elapsed());
    for d in drains {
        d.finish(DRAIN_TIMEOUT);
    }
    drop(holder);
    for b in &round2 {
        b.assert_drained();
    }
    let round2_roots: Vec<String> = round2.iter().flat_map(|b| b.roots.clone()).collect();
    let live = closure_hashes(&fleet.nix, &round2_roots);
    for node in 0..3 {
        let have = fleet.check_invariant(node);
        let lacking: Vec<_> = live.difference(&have).collect();
        assert!(lacking.is_empty(), "node {node}: the new pushes lost {lacking:?} to GC");
    }
    substitute_all(&fleet, &round2, &[2, 0, 1]);
}

#[test]
fn a_garage_node_and_a_niks3_server_killed_mid_push_lose_nothing() {
    let garage = GarageCluster::start().expect("garage cluster");
    let pg = Postgres::start().expect("postgres");
    let nix = NixEnv::new().expect("nix env");
    let mut fleet = Fleet::start(nix, garage, pg.url(), 3);
    let builders: Vec<Builder> =
        ROOTS.iter().enumerate().map(|(k, roots)| fleet.builder(&format!("builder{k}"), roots)).collect();
    let drains: Vec<_> = builders
        .iter()
        .enumerate()
        .map(|(k, b)| fleet.spawn_drain(b, &(0..3).map(|i| (i + k) % 3).collect::<Vec<_>>()))
        .collect();
    // Once niks3 server 1 has a push in flight (announced, neither completed nor aborted), it is frozen
    // with that push unfinished; Garage node 0 (server 0's endpoint) is killed, then server 1 (kill -9).
    let caught = fleet.freeze_mid_push(1, Duration::from_mins(2));
    assert!(caught, "server 1 never had a push in flight:\n{}", fleet.server_log(1));
    let in_flight = fleet.pushes_in_flight(1);
    fleet.garage.kill(0);
    fleet.kill9(1);
    let t_kill = Instant::now();
    let logs: Vec<String> = drains.into_iter().map(|d| d.finish(DRAIN_TIMEOUT)).collect();
    eprintln!(
        "drains finished {:?} after the kills ({in_flight} push(es) in flight on server 1; lease timeout \
         {LEASE_TIMEOUT_SECS} s)",
        t_kill.elapsed()
    );
    // A drainer pushing through server 1 went on through another one (the warning of
    // crates/client/src/failover.rs).
    let (dead, others) = (fleet.url(1), [fleet.url(0), fleet.url(2)]);
    let failed_over = logs.iter().flat_map(|l| l.lines()).find(|l| {
        l.contains(&format!("{dead} did not answer")) && others.iter().any(|o| l.contains(&format!("; trying {o}")))
    });
    let failed_over = failed_over.unwrap_or_else(|| panic!("no drainer failed over:\n{}", logs.join("\n---\n")));
    eprintln!("failover: {failed_over}");
    let all_roots: Vec<String> = builders.iter().flat_map(|b| b.roots.clone()).collect();
    let want = closure_hashes(&fleet.nix, &all_roots);
    // With node 0 down, the other two hold everything (quorum 2 of 3).
    for node in [1, 2] {
        let lacking: Vec<_> = want.difference(&fleet.check_invariant(node)).cloned().collect();
        assert!(lacking.is_empty(), "node {node}: not published: {lacking:?}");
    }
    substitute_all(&fleet, &builders, &[2]);
    // Node 0 comes back having missed the writes made while it was down: its own object table is behind.
    // The repair syncs the metadata tables (objects, versions) from the others, and within a bound node 0
    // holds as many entries as they do. That is what "heals" means here: Garage 2.5 was not seen to fetch a
    // restarted node's missing data blocks within 100 s (testkit's `GarageCluster::repair`), so nothing here
    // claims node 0 has every byte on its disk; what it lacks it reads from a peer.
    fleet.garage.restart(0).expect("restart node 0");
    fleet.garage.wait_healthy(Duration::from_mins(1)).expect("healthy");
    let items = |node: usize, table: &str| fleet.garage.table_items(node, table).expect("garage stats");
    let behind = items(0, "object");
    assert!(behind < items(1, "object"), "node 0 missed no write while it was down? {behind} objects");
    let t_repair = Instant::now();
    fleet.garage.repair().expect("repair");
    let healed = wait_for(Duration::from_secs(30), || {
        ["object", "version"].iter().all(|t| {
            let n = items(0, t);
            n == items(1, t) && n == items(2, t)
        })
    });
    let tables: Vec<_> = ["object", "version"].iter().map(|t| (*t, [items(0, t), items(1, t), items(2, t)])).collect();
    assert!(healed, "node 0's metadata tables did not catch up within 30 s of the repair: {tables:?}");
    eprintln!(
        "node 0's object table: {behind} entries after the restart; tables {tables:?} {:?} after the repair",
        t_repair.elapsed()
    );
    // Through node 0's endpoint every narinfo, its NAR and its references are served.
    let lacking: Vec<_> = want.difference(&fleet.check_invariant(0)).cloned().collect();
    assert!(lacking.is_empty(), "node 0 after healing: not published: {lacking:?}");
    fleet.start_server(1);
    fleet.wait_http(1);
    substitute_all(&fleet, &builders, &[0, 1]);
    let counts = fleet.garage.put_counts().expect("put counts");
    let again = counts.iter().filter(|(k, c)| k.as_str() != "nix-cache-info" && c.object_writes() > 1).count();
    eprintln!("objects written more than once across the faults: {again} of {}", counts.len());
    assert_eq!(http_status(&format!("{}/nix-cache-info", fleet.url(1))), Some(200));
}

#[test]
fn a_postgresql_failover_mid_push_loses_no_closure_and_gc_keeps_what_served_narinfos_need() {
    let garage = GarageCluster::start().expect("garage cluster");
    let mut pair = PostgresPair::start().expect("postgres primary and standby");
    let nix = NixEnv::new().expect("nix env");
    let fleet = Fleet::start(nix, garage, pair.url(), 3);
    // Round 1, replicated to the standby.
    let round1 = vec![fleet.builder("builder0", ROOTS[0]), fleet.builder("builder1", ROOTS[1])];
    drain_all(&fleet, &round1);
    // The standby falls behind (asynchronous replication's window, made wide): round 2 is acknowledged
    // and committed on the primary only — its drainer forgets the entries.
    pair.pause_streaming().expect("pause streaming");
    let round2 = vec![fleet.builder("builder2", ROOTS[2])];
    drain_all(&fleet, &round2);
    // Round 3 is in flight when the primary crashes; the standby is promoted a second later.
    let round3 = fleet.builder("builder3", &["leaf6", "leaf7", "leaf8"]);
    let announced = |f: &Fleet| (0..3).map(|i| f.server_log(i).matches("push announced").count()).sum::<usize>();
    let before = announced(&fleet);
    let drain3 = fleet.spawn_drain(&round3, &[2, 0, 1]);
    assert!(wait_for(Duration::from_mins(1), || announced(&fleet) > before), "round 3 never started");
    pair.stop_primary().expect("crash the primary");
    std::thread::sleep(Duration::from_secs(1));
    let promoted = Instant::now();
    pair.promote_standby().expect("promote");
    let promote_took = promoted.elapsed();
    let healthy = wait_for(Duration::from_mins(1), || {
        (0..3).all(|i| http_status(&format!("{}/health", fleet.url(i))) == Some(200))
    });
    let back_after = promoted.elapsed();
    assert!(healthy, "the servers never came back on the new primary:\n{}", fleet.server_log(0));
    eprintln!("promotion took {promote_took:?}; all three servers healthy {back_after:?} after it was asked for");
    drain3.finish(DRAIN_TIMEOUT);
    round3.assert_drained();

    // The failover lost round 2's records: the paths it published (those round 1 had not) are in the
    // bucket and not in the new primary's database.
    let unrecorded: Vec<String> = round2[0]
        .roots
        .iter()
        .filter(|r| {
            let q = format!("SELECT count(*) FROM objects WHERE key = '{}.narinfo'", &r[11..43]);
            pair.psql(Server::Standby, &q).expect("psql") == "0"
        })
        .cloned()
        .collect();
    assert!(!unrecorded.is_empty(), "the failover should have lost round 2's records");
    // … yet every closure is served whole, through every node.
    let all: Vec<&Builder> = round1.iter().chain(&round2).chain(std::iter::once(&round3)).collect();
    let roots: Vec<String> = all.iter().flat_map(|b| b.roots.clone()).collect();
    let want = closure_hashes(&fleet.nix, &roots);
    let lacking: Vec<_> = want.difference(&fleet.check_invariant(1)).cloned().collect();
    assert!(lacking.is_empty(), "not published: {lacking:?}");

    // GC on the new timeline, forgetting every closure older than a second: it first records what the
    // bucket serves and the database lost (gc/adopt.rs), so round 2's narinfos keep their references.
    std::thread::sleep(Duration::from_secs(2));
    let mut gc = fleet.nix.command(crate::support::e2e::niks3_bin());
    gc.args(["gc", "--server", &fleet.url(0), "--auth-token-file"]).arg(fleet.dir.path().join("token")).args([
        "--older-than",
        "1s",
        "--failed-uploads-older-than",
        "1h",
        "--force",
    ]);
    let out = run_text(gc);
    assert!(out.contains("objects-deleted-after-grace-period:"), "{out}");
    for node in 0..3 {
        fleet.check_invariant(node);
    }
    // The closures of the paths whose records were lost are kept whole (GC recorded them again); the
    // other round 2 roots were recorded before, and the failover lost only their refreshed push time.
    let kept = fleet.check_invariant(0);
    let lacking: Vec<_> = closure_hashes(&fleet.nix, &unrecorded).difference(&kept).cloned().collect();
    assert!(lacking.is_empty(), "GC deleted what served narinfos need: {lacking:?}");
    let store = fleet
        .nix
        .substitute(&fleet.url(1), "client-after-gc", &unrecorded, &fleet.public_key)
        .expect("the narinfos the failover lost substitute after GC");
    assert!(unrecorded.iter().all(|r| store.join(r.trim_start_matches('/')).exists()));
}

/// Throughput of three builders draining overlapping closures (15 paths, 35 MiB of incompressible data)
/// through one server versus through three (each builder's first choice another server), on fresh
/// caches, alternated and repeated; prints the wall times and their ratio. A benchmark, not a test: run
/// it with `cargo test -p niks3 --test it -- --ignored e2e_cluster::bench --nocapture`.
#[test]
#[ignore = "benchmark: prints the 1 vs 3 servers drain times (docs/deployment.md)"]
fn bench_drain_through_one_server_vs_three() {
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for (which, spread) in [(0, false), (1, true)] {
            let garage = GarageCluster::start().expect("garage cluster");
            let pg = Postgres::start().expect("postgres");
            let fleet = Fleet::start(NixEnv::new().expect("nix env"), garage, pg.url(), 3);
            let builders: Vec<Builder> =
                ROOTS.iter().enumerate().map(|(k, roots)| fleet.builder(&format!("builder{k}"), roots)).collect();
            let t0 = Instant::now();
            let drains: Vec<_> =
                builders.iter().enumerate().map(|(k, b)| fleet.spawn_drain(b, &[if spread { k } else { 0 }])).collect();
            for d in drains {
                d.finish(DRAIN_TIMEOUT);
            }
            let took = t0.elapsed();
            eprintln!("round {round}: {} server(s): {took:?}", if spread { 3 } else { 1 });
            times[which].push(took);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (one, three) = (median(&mut times[0]), median(&mut times[1]));
    eprintln!(
        "median drain: 1 server {one:?}, 3 servers {three:?}: 3 servers take {:.2}x the time of 1",
        three.as_secs_f64() / one.as_secs_f64()
    );
}
