//! The PostgreSQL primary + streaming standby: rows stream to the standby, and after the primary is
//! stopped and the standby promoted the multi-host connection string lands writes on the former standby.
//! Driven with the system's `psql`.

use std::process::Command;
use std::time::Instant;

use niks3_testkit::postgres::server_bin;
use niks3_testkit::postgres_pair::{PostgresPair, Server};

/// Runs `sql` through `psql` with connection string `url`; returns its trimmed tuples-only output.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let bin = server_bin().map_err(|e| e.to_string())?;
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .map_err(|e| format!("run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn start() -> PostgresPair {
    let t = Instant::now();
    let pair = PostgresPair::start().expect("start primary and standby");
    eprintln!("postgres pair up in {:?} ({})", t.elapsed(), pair.dir().display());
    pair
}

#[test]
fn a_row_committed_on_the_primary_is_on_the_standby_once_replayed() {
    let pair = start();
    psql(&pair.url(), "CREATE TABLE t (v text); INSERT INTO t VALUES ('one')").expect("write via url()");
    pair.wait_replayed().expect("standby catches up");
    assert_eq!(psql(&pair.standby_url(), "SELECT v FROM t").as_deref(), Ok("one"), "{}", pair.log_paths());
    assert_eq!(pair.psql(Server::Standby, "SELECT pg_is_in_recovery()").expect("psql"), "t");
    let err = psql(&pair.standby_url(), "INSERT INTO t VALUES ('two')").expect_err("standby is read-only");
    assert!(err.contains("read-only"), "{err}");

    let other = pair.create_database().expect("create database");
    psql(&other, "CREATE TABLE u (v int)").expect("write to the new database");
    pair.wait_replayed().expect("standby catches up");
    let dbname = other.split_whitespace().find_map(|w| w.strip_prefix("dbname=")).expect("dbname in the url");
    let on_standby = pair.server_url(Server::Standby, dbname);
    assert_eq!(psql(&on_standby, "SELECT count(*) FROM u").as_deref(), Ok("0"), "{on_standby}");
}

#[test]
fn after_the_primary_dies_and_the_standby_is_promoted_url_writes_to_the_former_standby() {
    let mut pair = start();
    psql(&pair.url(), "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')").expect("write");
    pair.wait_replayed().expect("standby catches up");

    pair.stop_primary().expect("stop primary");
    assert!(psql(&pair.primary_url(), "SELECT 1").is_err(), "primary is down");
    let err = psql(&pair.url(), "INSERT INTO t VALUES ('nowhere')").expect_err("no read-write server");
    assert!(err.contains("read-write") || err.contains("read-only"), "{err}");

    let t = Instant::now();
    pair.promote_standby().expect("promote");
    eprintln!("standby promoted and writable in {:?}", t.elapsed());
    psql(&pair.url(), "INSERT INTO t VALUES ('after')").expect("write through url() after failover");
    assert_eq!(
        pair.psql(Server::Standby, "SELECT string_agg(v, ',' ORDER BY v) FROM t").expect("psql"),
        "after,before"
    );
    assert!(pair.restart_primary().is_err(), "no second primary after a promotion");
}

#[test]
fn a_stopped_primary_restarts_and_the_standby_follows_it_again() {
    let pair = start();
    pair.stop_primary().expect("stop primary");
    pair.restart_primary().expect("restart primary");
    psql(&pair.url(), "CREATE TABLE t (v text); INSERT INTO t VALUES ('again')").expect("write");
    pair.wait_replayed().expect("standby reconnects and catches up");
    assert_eq!(psql(&pair.standby_url(), "SELECT v FROM t").as_deref(), Ok("again"), "{}", pair.log_paths());
}
