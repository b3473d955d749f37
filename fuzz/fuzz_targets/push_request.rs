//! The push API's request decoding: a body decoded as each request type the API routes read
//! (`serde_json`, as `read_json` does), then the checks the routes run before touching the database:
//! [`validate_closure`] for push and complete, [`Realisation::from_json`] of each realisation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_api::protocol::{
    AbortRequest, CompleteRequest, GcRequest, PartPresignRequest, PresignRequest, PushRequest, RealisationsRequest,
    TouchRequest,
};
use niks3_nix::realisation::Realisation;
use niks3_nix::store_path::StoreDir;
use niks3_server::http::api::ApiLimits;
use niks3_server::http::api::push::{ClosureLimits, validate_closure};

fuzz_target!(|data: &[u8]| {
    let dir = StoreDir::default();
    let limits = ClosureLimits::of(&ApiLimits::default());
    if let Ok(req) = serde_json::from_slice::<PushRequest>(data) {
        check(validate_closure(&dir, &req.roots, &req.paths, limits), req.paths.len());
    }
    if let Ok(req) = serde_json::from_slice::<CompleteRequest>(data) {
        check(validate_closure(&dir, &req.roots, &req.paths, limits), req.paths.len());
    }
    if let Ok(req) = serde_json::from_slice::<RealisationsRequest>(data) {
        for v in &req.realisations {
            let _ = Realisation::from_json(v.to_string().as_bytes());
        }
    }
    let _ = serde_json::from_slice::<PresignRequest>(data);
    let _ = serde_json::from_slice::<PartPresignRequest>(data);
    let _ = serde_json::from_slice::<AbortRequest>(data);
    let _ = serde_json::from_slice::<TouchRequest>(data);
    let _ = serde_json::from_slice::<GcRequest>(data);
});

/// A valid closure holds every path once, each after its references.
fn check(closure: Result<niks3_server::http::api::push::ValidClosure, String>, sent: usize) {
    let Ok(c) = closure else { return };
    assert_eq!(c.paths.len(), sent);
    let mut seen = std::collections::HashSet::new();
    for p in &c.paths {
        for r in &p.references {
            assert!(r == &p.path || seen.contains(r), "{} before its reference {}", p.path.basename(), r.basename());
        }
        seen.insert(p.path.clone());
    }
}
