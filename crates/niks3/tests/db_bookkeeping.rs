//! The bookkeeping against a real PostgreSQL: migrations, the upload lifecycle, set-based queries, and
//! surviving a database outage.

use chrono::{DateTime, Duration, TimeZone, Utc};
use niks3_nix::hash::Sha256Hash;
use niks3_server::db::pins::PinDbError;
use niks3_server::db::{Db, DbError, NewObject};
use niks3_storage::ObjectKey;
use niks3_testkit::postgres::Postgres;
use niks3_testkit::postgres_pair::{PostgresPair, Server};

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A valid 32-character nixbase32 hash part made from `n` (distinct for distinct `n`).
fn hash_part(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
    let mut s = String::with_capacity(32);
    for i in 0..32 {
        if i == 13 {
            x = n; // the low digits spell `n` itself, so parts never collide
        }
        s.push(NIX32[(x % 32) as usize] as char);
        x /= 32;
    }
    s
}

fn narinfo(n: u64) -> ObjectKey {
    ObjectKey::parse(&format!("{}.narinfo", hash_part(n))).expect("valid narinfo key").1
}

fn nar(n: u64) -> ObjectKey {
    ObjectKey::nar(&Sha256Hash::digest(&n.to_le_bytes()))
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid date")
}

fn obj(key: ObjectKey, refs: Vec<ObjectKey>) -> NewObject {
    NewObject { key, size: 100, refs }
}

async fn fresh() -> (Postgres, Db) {
    let pg = Postgres::start().expect("start PostgreSQL");
    let db = Db::connect(&pg.url()).await.expect("connect and migrate");
    (pg, db)
}

#[tokio::test]
async fn migrations_apply_once_even_when_servers_start_together() {
    let pg = Postgres::start().expect("start PostgreSQL");
    let url = pg.url();
    let (first, second, third) = tokio::join!(Db::connect(&url), Db::connect(&url), Db::connect(&url));
    let first = first.expect("first connect");
    second.expect("second connect");
    third.expect("third connect");
    // And again, later: nothing to do.
    let d = Db::connect(&url).await.expect("reconnect");
    let client = d.client().await.expect("client");
    let row =
        client.query_one("SELECT count(*), count(DISTINCT version) FROM schema_migrations", &[]).await.expect("count");
    let (n, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert!(n >= 2, "all migrations applied: {n}");
    assert_eq!(n, distinct, "each migration recorded exactly once");
    first.ping().await.expect("ping");
}

#[tokio::test]
async fn missing_answers_ten_thousand_keys_in_input_order() {
    let (_pg, db) = fresh().await;
    let keys: Vec<ObjectKey> = (0..10_000).map(narinfo).collect();
    let present: Vec<NewObject> = keys.iter().step_by(2).map(|k| obj(k.clone(), vec![])).collect();
    db.record_objects(&present, t0()).await.expect("record 5000");
    let missing = db.missing(&keys).await.expect("missing");
    let expected: Vec<ObjectKey> = keys.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(missing, expected);
    assert!(db.missing(&[]).await.expect("empty").is_empty());
    assert!(db.object_exists(&keys[0]).await.expect("exists"));
    assert!(!db.object_exists(&keys[1]).await.expect("exists"));
}

#[tokio::test]
async fn upload_lifecycle_begin_record_finish_abort() {
    let (_pg, db) = fresh().await;
    let root = narinfo(1);
    let claimed = vec![root.clone(), nar(1), narinfo(2), nar(2)];
    let id = db.begin_upload(&root, &claimed, t0()).await.expect("begin");
    assert_eq!(db.stats().await.expect("stats").uploads, 1);
    assert_eq!(db.missing(&claimed).await.expect("missing"), claimed, "nothing recorded yet");

    db.record_object(&obj(nar(2), vec![]), t0()).await.expect("record nar");
    db.record_object(&obj(narinfo(2), vec![nar(2), narinfo(2)]), t0()).await.expect("record narinfo");
    db.record_object(&obj(nar(1), vec![]), t0()).await.expect("record nar");
    db.record_object(&obj(root.clone(), vec![nar(1), narinfo(2)]), t0()).await.expect("record root");
    assert!(db.missing(&claimed).await.expect("missing").is_empty());

    db.finish_upload(id, &root, t0()).await.expect("finish");
    let s = db.stats().await.expect("stats");
    assert_eq!((s.uploads, s.closures, s.objects, s.narinfos, s.bytes), (0, 1, 4, 2, 400));

    // Finishing twice: the upload is gone, which is what an upload dropped by GC looks like.
    let again = db.finish_upload(id, &root, t0()).await.expect_err("second finish must fail");
    assert!(matches!(again, DbError::UploadExpired(i) if i == id), "{again}");
    assert!(again.is_transient(), "the path can be uploaded again");

    // An aborted upload leaves its objects recorded but its claim gone.
    let id2 = db.begin_upload(&narinfo(3), &[narinfo(3), nar(3)], t0()).await.expect("begin 2");
    db.record_object(&obj(nar(3), vec![]), t0()).await.expect("record");
    db.abort_upload(id2).await.expect("abort");
    let s = db.stats().await.expect("stats");
    assert_eq!((s.uploads, s.closures, s.objects), (0, 1, 5));
}

#[tokio::test]
async fn re_push_keeps_latest_time_and_upsert_updates_size_and_refs() {
    let (_pg, db) = fresh().await;
    let root = narinfo(10);
    let id = db.begin_upload(&root, std::slice::from_ref(&root), t0() + Duration::hours(2)).await.expect("begin");
    db.record_objects(
        &[obj(root.clone(), vec![]), NewObject { key: root.clone(), size: 7, refs: vec![nar(10)] }],
        t0(),
    )
    .await
    .expect("duplicate keys in one batch: the last wins");
    db.finish_upload(id, &root, t0() + Duration::hours(2)).await.expect("finish");
    // An older finish (clock skew between servers) never moves pushed_at back.
    let id = db.begin_upload(&root, std::slice::from_ref(&root), t0()).await.expect("begin");
    db.finish_upload(id, &root, t0()).await.expect("finish");
    let c = db.client().await.expect("client");
    let row = c
        .query_one(
            "SELECT o.size, o.refs, c.pushed_at FROM objects o, closures c WHERE o.key = $1 AND c.root = $1",
            &[&root.as_str()],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i64>(0), 7);
    assert_eq!(row.get::<_, Vec<String>>(1), vec![nar(10).as_str().to_owned()]);
    assert_eq!(row.get::<_, DateTime<Utc>>(2), t0() + Duration::hours(2));
}

#[tokio::test]
async fn claiming_unmarks_and_drops_half_deleted_rows() {
    let (_pg, db) = fresh().await;
    let keys = vec![narinfo(1), nar(1), narinfo(2)];
    db.record_objects(&keys.iter().map(|k| obj(k.clone(), vec![])).collect::<Vec<_>>(), t0()).await.expect("record");
    let c = db.client().await.expect("client");
    c.execute("UPDATE objects SET marked_at = $1", &[&t0()]).await.expect("mark all");
    // As if a GC died between deleting narinfo(2) from the store and removing its row.
    c.execute("UPDATE objects SET deleting = true WHERE key = $1", &[&narinfo(2).as_str()]).await.expect("flag");
    assert_eq!(db.missing(&keys).await.expect("missing"), vec![narinfo(2)], "a half-deleted row reads as missing");

    db.begin_upload(&narinfo(1), &[narinfo(1), narinfo(2)], t0()).await.expect("begin");
    let marked: Vec<String> = c
        .query("SELECT key FROM objects WHERE marked_at IS NOT NULL ORDER BY key", &[])
        .await
        .expect("marked")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(marked, vec![nar(1).as_str().to_owned()], "claimed keys unmarked, others untouched");
    let flagged: i64 = c.query_one("SELECT count(*) FROM objects WHERE deleting", &[]).await.expect("n").get(0);
    assert_eq!(flagged, 0, "the claimed half-deleted row is gone, so it gets uploaded again");
}

#[tokio::test]
async fn pins_unmark_their_closure() {
    let (_pg, db) = fresh().await;
    db.record_objects(
        &[
            obj(narinfo(1), vec![nar(1), narinfo(2)]),
            obj(nar(1), vec![]),
            obj(narinfo(2), vec![nar(2)]),
            obj(nar(2), vec![]),
        ],
        t0(),
    )
    .await
    .expect("record");
    let c = db.client().await.expect("client");
    c.execute("UPDATE objects SET marked_at = $1", &[&t0()]).await.expect("mark all");
    let path = "/nix/store/pinned";
    assert_eq!(db.pin("release", &narinfo(1), path, "local:ops", t0()).await.expect("pin"), None);
    assert_eq!(db.stats().await.expect("stats").marked, 0);
    let pins = db.pins().await.expect("pins");
    assert_eq!(pins.len(), 1);
    assert_eq!((pins[0].name.as_str(), pins[0].root.as_str()), ("release", narinfo(1).as_str()));
    assert_eq!((pins[0].what(), pins[0].created_by.as_deref()), (path, Some("local:ops")));
    // Only what the cache holds can be pinned.
    let e = db.pin("other", &narinfo(9), "/nix/store/absent", "local:ops", t0()).await.expect_err("not cached");
    assert!(matches!(e, PinDbError::NotInCache(ref p) if p == "/nix/store/absent"), "{e}");
    assert_eq!(db.unpin("release", "local:ops", t0()).await.expect("unpin").root, narinfo(1).as_str());
    let e = db.unpin("release", "local:ops", t0()).await.expect_err("unpin twice");
    assert!(matches!(e, PinDbError::NoSuchPin(_)), "{e}");
    let trail = db.audit_log(&niks3_server::db::audit::AuditQuery { limit: 10, ..Default::default() }).await;
    let actions: Vec<String> =
        trail.expect("audit").into_iter().map(|r| format!("{} {}", r.action, r.subject)).collect();
    assert_eq!(actions, [format!("unpin {path}"), format!("pin {path}")], "one row each, refusals none");
}

#[tokio::test]
async fn a_database_outage_is_transient_and_the_pool_recovers() {
    let (pg, db) = fresh().await;
    db.record_object(&obj(narinfo(1), vec![]), t0()).await.expect("record");
    pg.stop().expect("stop PostgreSQL");

    let err = db.ping().await.expect_err("ping while down");
    assert!(err.is_transient(), "ping: {err}");
    let err = db.missing(&[narinfo(1)]).await.expect_err("missing while down");
    assert!(err.is_transient(), "missing: {err}");
    let err = db.begin_upload(&narinfo(1), &[narinfo(1)], t0()).await.expect_err("begin while down");
    assert!(err.is_transient(), "begin_upload: {err}");
    let err = Db::connect(&pg.url()).await.err().expect("connect while down");
    assert!(err.is_transient(), "connect: {err}");

    pg.restart().expect("restart PostgreSQL");
    // Pooled connections died with the server; the pool replaces them.
    let mut ok = false;
    for _ in 0..5 {
        if db.ping().await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "pool recovered after restart");
    assert!(db.missing(&[narinfo(1)]).await.expect("missing after restart").is_empty(), "data survived");
}

/// `--db` naming a primary and its standby, in the `key=value` form (`host=/a,/b …`) and the URL form
/// (`postgresql://%2Fa,%2Fb/niks3?target_session_attrs=read-write`, socket directories percent-encoded):
/// each connects and migrates on the primary, and once the primary is gone and the standby promoted each
/// pool lands its writes on the former standby.
#[tokio::test]
async fn a_multi_host_connection_string_in_either_form_writes_to_the_primary_and_follows_a_failover() {
    let mut pair = PostgresPair::start().expect("primary and standby");
    let socket = |s: Server| pair.socket_dir(s).display().to_string().replace('/', "%2F");
    let forms = [
        pair.url(),
        format!(
            "postgresql://postgres@{},{}/niks3?target_session_attrs=read-write",
            socket(Server::Primary),
            socket(Server::Standby)
        ),
    ];
    assert!(forms[0].starts_with("host=/") && forms[0].contains(','), "{}", forms[0]);
    let mut dbs = Vec::new();
    for (n, url) in (0u64..).zip(&forms) {
        let db = Db::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        db.record_object(&obj(narinfo(n), vec![]), t0()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        dbs.push(db);
    }
    let count = "SELECT count(*) FROM objects";
    assert_eq!(pair.psql(Server::Primary, count).expect("psql"), "2");
    pair.wait_replayed().expect("standby catches up");

    pair.stop_primary().expect("stop the primary");
    pair.promote_standby().expect("promote the standby");
    for (n, (url, db)) in (10u64..).zip(forms.iter().zip(&dbs)) {
        let t = std::time::Instant::now();
        let mut last = None;
        while t.elapsed() < std::time::Duration::from_secs(30) {
            match db.record_object(&obj(narinfo(n), vec![]), t0()).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    assert!(e.is_transient(), "{url}: {e}");
                    last = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        assert!(last.is_none(), "{url}: no write within 30 s of the promotion: {last:?}");
    }
    assert_eq!(pair.psql(Server::Standby, count).expect("psql"), "4", "both pools wrote to the promoted standby");
}

#[tokio::test]
async fn bad_configuration_is_a_clear_permanent_error_without_the_secret() {
    let err = Db::connect("host=/tmp user=x password=hunter2 bogus_option=1").await.err().expect("bad option");
    assert!(matches!(err, DbError::Config(_)), "{err}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn sql_errors_are_not_transient() {
    let (_pg, db) = fresh().await;
    let c = db.client().await.expect("client");
    let e = c.execute("SELECT * FROM no_such_table", &[]).await.expect_err("bad SQL");
    let err = DbError::Query { what: "test", source: e };
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("no_such_table"), "{err}");
}
