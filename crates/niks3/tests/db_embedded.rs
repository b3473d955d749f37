//! The embedded private cluster: created on first start, adopted when already running, restartable.

use niks3_server::db::Db;
use niks3_server::db::embedded::EmbeddedPostgres;

#[tokio::test]
async fn embedded_cluster_starts_adopts_and_restarts() {
    let state = tempfile::tempdir().expect("state dir");
    let first = EmbeddedPostgres::start(state.path()).await.expect("first start (initdb)");
    assert!(first.started_here());
    assert!(state.path().join("postgres/data/PG_VERSION").exists());
    let db = Db::connect(&first.url()).await.expect("connect");
    let c = db.client().await.expect("client");
    c.execute("CREATE TABLE survivor (x int)", &[]).await.expect("create");
    drop(c);

    // A second start on the same directory adopts the running server instead of failing.
    let second = EmbeddedPostgres::start(state.path()).await.expect("second start adopts");
    assert!(!second.started_here());
    assert_eq!(second.url(), first.url());
    drop(second);
    db.ping().await.expect("dropping the adopter leaves the server running");

    drop(first);
    assert!(db.ping().await.is_err(), "the starter stopped it on drop");
    assert!(!state.path().join("postgres/data/postmaster.pid").exists(), "clean shutdown");

    // Restart after stop: no initdb, data kept.
    let again = EmbeddedPostgres::start(state.path()).await.expect("restart");
    assert!(again.started_here());
    let db = Db::connect(&again.url()).await.expect("reconnect");
    let c = db.client().await.expect("client");
    c.execute("SELECT * FROM survivor", &[]).await.expect("data survived the restart");
    drop(c);
    again.stop().await.expect("explicit stop");
}

#[tokio::test]
async fn an_interrupted_initdb_is_redone() {
    let state = tempfile::tempdir().expect("state dir");
    std::fs::create_dir_all(state.path().join("postgres/data.new/junk")).expect("leftover");
    let pg = EmbeddedPostgres::start(state.path()).await.expect("start over a half-made cluster");
    Db::connect(&pg.url()).await.expect("connect").ping().await.expect("ping");
}

/// Security review finding 14: niks3 never opens up a directory above its state directory to let the
/// cluster (running as `postgres`) reach it; it says which directory is in the way.
#[tokio::test]
async fn closed_parents_are_left_closed_and_named() {
    use std::os::unix::fs::PermissionsExt;
    let outer = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let closed = outer.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let state = closed.join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let err = EmbeddedPostgres::start(&state).await.err().expect("a closed parent is refused");
    let text = err.to_string();
    assert!(text.contains("is not searchable by others") && text.contains("closed"), "{text}");
    let mode = std::fs::metadata(&closed).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the closed directory was opened up");
}
