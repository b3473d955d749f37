//! The uploader's walk against a real Nix store, PostgreSQL and local store: uploads of overlapping
//! closures running at once upload each path once; a closure already in the cache costs one level of the
//! walk (only its roots are looked at), and a new path on top of it two (itself, then its cached
//! references), whatever the size of the closure below.

use niks3_local::nix::LocalNix;
use niks3_nix::signing::SecretKey;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_server::db::Db;
use niks3_server::metrics::Metrics;
use niks3_server::upload::pipeline::Uploader;
use niks3_server::upload::publish::Publisher;
use niks3_storage::local::LocalStore;
use niks3_storage::{ObjectKey, Storage};
use niks3_testkit::nix::NixEnv;
use niks3_testkit::postgres::Postgres;
use std::sync::Arc;

const EXPR: &str = include_str!("fixtures/upload_walk.nix");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_uploads_upload_each_path_once_and_a_cached_closure_costs_one_level() {
    let env = NixEnv::new().expect("nix env");
    let dir = StoreDir::default();
    let built = |attr: &str| -> StorePath {
        dir.parse_path(&env.build(EXPR, attr).expect("build").remove(0)).expect("store path")
    };
    let (top, mid1, mid2, above) = (built("top"), built("mid1"), built("mid2"), built("above"));

    let pg = Postgres::start().expect("postgres");
    let db = Db::connect(&pg.url()).await.expect("db");
    let cache = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Storage::Local(LocalStore::open(cache.path().join("cache")).expect("store")));
    let keys = Arc::new(vec![SecretKey::generate("test-1").expect("key")]);
    let publisher = Publisher::new(Arc::clone(&store), db.clone(), dir.clone(), keys);
    let uploader = Uploader::new(publisher, LocalNix::default(), Arc::new(Metrics::default()), 2);

    // Two uploads at once whose closures share leaf, mid1 and mid2: four paths, each uploaded once.
    let (roots_a, roots_b) = ([top.clone()], [mid1, mid2]);
    let (a, b) = tokio::join!(uploader.upload_closure(&roots_a), uploader.upload_closure(&roots_b));
    let (a, b) = (a.expect("upload top"), b.expect("upload mids"));
    assert_eq!(a.uploaded + b.uploaded, 4, "each path uploaded once: {a:?} {b:?}");
    for p in [&top, &above] {
        let present = store.head(&ObjectKey::narinfo(p)).await.expect("head").is_some();
        assert_eq!(present, *p == top, "{}", p.basename());
    }

    // The same closure again: the walk looks at the root only and uploads nothing.
    let again = uploader.upload_closure(std::slice::from_ref(&top)).await.expect("again");
    assert_eq!((again.looked_at, again.uploaded), (1, 0), "{again:?}");

    // A new path on top: itself, then its one (cached) reference; not the four paths below.
    let new = uploader.upload_closure(std::slice::from_ref(&above)).await.expect("above");
    assert_eq!((new.looked_at, new.uploaded), (2, 1), "{new:?}");
    assert!(store.head(&ObjectKey::narinfo(&above)).await.expect("head").is_some());

    // Each upload made its roots closures of the cache.
    let closures = db.closure_count().await.expect("closures");
    assert_eq!(closures, 4, "top, mid1, mid2, above");
}
