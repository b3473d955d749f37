//! End to end with the S3 backend (a real single-node Garage): built paths are uploaded to the bucket and
//! substitute through the read proxy with signatures required; a Garage outage delays uploads without
//! losing anything.
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

use crate::support::e2e::{Backend, GRAPH, World};
use std::time::{Duration, Instant};

#[test]
fn built_paths_land_in_garage_and_substitute_through_the_read_proxy() {
    let w = World::s3();
    let mut server = w.serve();
    w.wait_http(&server);
    let public_key = w.public_key();
    let app = w.build(GRAPH, "app");
    let tree = w.build(GRAPH, "tree");
    w.wait_uploaded(&app, &server, Duration::from_secs(60));

    let http = w.url();
    let store = w.nix.substitute(&http, "from-garage", &app, &public_key).expect("substitute through the read proxy");
    let tool =
        std::fs::read_to_string(store.join(app[0].trim_start_matches('/')).join("uses-tree")).expect("uses-tree");
    assert_eq!(tool.trim(), format!("{}/bin/tool", tree[0]));
    w.verify_over_http(&http, &public_key, &app[0], &tree[0], "building tree");
    let narinfo = w.narinfo_text(&app[0]).expect("narinfo");
    assert!(narinfo.contains("Compression: zstd") && narinfo.contains("URL: nar/"), "{narinfo}");
    server.terminate();
}

#[test]
fn garage_outage_delays_uploads_but_loses_nothing() {
    let mut w = World::s3();
    let server = w.serve();
    w.wait_http(&server);
    let public_key = w.public_key();
    let before = w.nix.build_script("e2e-s3-before", "echo before > $out").expect("build");
    w.wait_uploaded(&[before], &server, Duration::from_secs(60));
    w.wait_drained(&server);

    if let Backend::S3(g) = &mut w.backend {
        g.stop();
    }
    let during = w.nix.build_script("e2e-s3-during", "echo during > $out").expect("builds succeed during the outage");
    server.wait_log("will be retried", Duration::from_secs(60));
    assert_eq!(w.spool_entries("claimed").len(), 1, "the entry stays claimed during the outage");
    if let Backend::S3(g) = &mut w.backend {
        g.resume().expect("restart garage");
    }
    w.wait_uploaded(std::slice::from_ref(&during), &server, Duration::from_secs(120));
    assert!(w.spool_entries("quarantine").is_empty(), "{}", server.log_text());
    w.nix.substitute(&w.url(), "after-outage", &[during], &public_key).expect("substitute after the outage");
}

/// Issue 18 point 1: a path holding a sparse 2 GiB file goes through the daemon into Garage with the part
/// limit forced down to 4 (so the parts are sized from the NAR's zstd bound, ~512 MiB each, as a
/// multi-terabyte NAR's would be under S3's 10 000) and substitutes back byte for byte. Zeros compress to
/// almost nothing, so it is fast: what it checks is that sizes past 4 GiB of buffers, bounds and counters
/// nowhere overflow or get allocated up front.
#[test]
fn a_sparse_multi_gib_path_uploads_under_a_small_part_limit_and_substitutes() {
    const SIZE: u64 = 2 << 30;
    let w = World::s3();
    let started = Instant::now();
    let expr = r#"{ salt }: {
      sparse = derivation { name = "e2e-sparse"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "/usr/bin/mkdir $out && /usr/bin/truncate -s 2G $out/zeros && echo ${salt} > $out/salt" ]; };
    }"#;
    let sparse = w.build(expr, "sparse");
    let built = started.elapsed();
    let mut server = w.serve_with(|c| {
        c.env("NIKS3_S3_MAX_PARTS", "4");
    });
    w.wait_http(&server);
    let public_key = w.public_key();
    w.wait_uploaded(&sparse, &server, Duration::from_secs(120));
    let uploaded = started.elapsed();
    let narinfo = w.narinfo_text(&sparse[0]).expect("narinfo");
    let field = |k: &str| -> u64 {
        narinfo.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok()).expect("a number field")
    };
    assert!(field("NarSize:") > SIZE, "{narinfo}");
    assert!(field("FileSize:") < 16 << 20, "zeros compress to little: {narinfo}");
    let store = w.nix.substitute(&w.url(), "sparse", &sparse, &public_key).expect("substitute the sparse path");
    let zeros = store.join(sparse[0].trim_start_matches('/')).join("zeros");
    assert_eq!(std::fs::metadata(&zeros).expect("substituted file").len(), SIZE);
    eprintln!(
        "sparse 2 GiB: built {:.1}s, uploaded {:.1}s, substituted {:.1}s (since start)",
        built.as_secs_f64(),
        uploaded.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    server.terminate();
}
