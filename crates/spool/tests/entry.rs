//! The spool entry format: what is written reads back identically; anything else is refused with a
//! reason that names the file and the line.

use niks3_spool::{Entry, Spool, SpoolError};
use std::path::Path;

const OUT: &str = "/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test";
const DEV: &str = "/nix/store/niym0l9w4bif3x5sa4580wbs4dyxzhla-hk-test-dev";
const DRV: &str = "/nix/store/92gvrkx5bkbxcwjgqdgql0hchrldma0l-hk-test.drv";

fn full() -> Entry {
    Entry { drv: Some(DRV.into()), outs: vec![OUT.into(), DEV.into()], realisations: vec![], queued: 1_764_105_600 }
}

fn reason(text: &str) -> String {
    match Entry::parse(text, Path::new("/spool/new/x")) {
        Err(SpoolError::Malformed { path, reason }) => {
            assert_eq!(path, Path::new("/spool/new/x"), "error names the file");
            reason
        }
        other => panic!("expected Malformed for {text:?}, got {other:?}"),
    }
}

#[test]
fn entry_round_trips_through_text() {
    for e in [
        full(),
        Entry { drv: None, outs: vec![OUT.into()], realisations: vec![], queued: 0 },
        Entry { drv: Some(DRV.into()), outs: vec![], realisations: vec![], queued: u64::MAX },
        Entry { drv: Some(DRV.into()), outs: vec![], realisations: vec!["out".into(), "dev".into()], queued: 7 },
        Entry { drv: Some(DRV.into()), outs: vec![OUT.into()], realisations: vec!["out".into()], queued: 7 },
    ] {
        let text = e.to_text();
        assert!(text.starts_with("niks3-spool-v1\n"), "{text}");
        assert_eq!(Entry::parse(&text, Path::new("x")).expect("round trip"), e);
    }
    assert_eq!(
        full().to_text(),
        format!("niks3-spool-v1\ndrv={DRV}\nout={OUT}\nout={DEV}\nqueued=1764105600\n"),
        "the documented format, queued= last"
    );
}

#[test]
fn entry_parse_rejects_garbage_with_a_reason() {
    let v = "niks3-spool-v1\n";
    for (text, why) in [
        ("", "does not end with a newline"),
        ("\n", "line 1: is not the version line \"niks3-spool-v1\""),
        ("hello world\n", "line 1: is not the version line"),
        ("niks3-spool-v2\nqueued=1\n", "line 1: is not the version line"),
        ("\u{0}\u{1}\u{2}\n", "line 1"),
        (&format!("{v}out={OUT}\nbogus=1\nqueued=1\n"), "line 3: unknown key"),
        (&format!("{v}out={OUT}\n\nqueued=1\n"), "line 3: not key=value"),
        (&format!("{v}out={OUT}\nqueued=soon\n"), "line 3: queued= value is not a number"),
        (&format!("{v}out={OUT}\nqueued=+1\n"), "not a number"),
        (&format!("{v}out={OUT}\nqueued=1\nqueued=2\n"), "line 4: found after queued="),
        (&format!("{v}queued=1\nout={OUT}\n"), "must be the last line"),
        (&format!("{v}drv={DRV}\ndrv={DRV}\nqueued=1\n"), "line 3: second drv="),
        (&format!("{v}out={OUT}\n"), "no queued= line"),
        (&format!("{v}queued=1\n"), "names neither a drv nor an output"),
        (&format!("{v}out=nix/store/x\nqueued=1\n"), "line 2: out= value: not an absolute path"),
        (&format!("{v}out=\nqueued=1\n"), "not an absolute path"),
        (&format!("{v}out=/nix/store/a\u{0}b\nqueued=1\n"), "contains NUL"),
        (&format!("{v}out=/nix/store/a\rb\nqueued=1\n"), "control character"),
        (&format!("{v}out=/nix/store/../etc\nqueued=1\n"), "`..` component"),
        (&format!("{v}drv=/nix//store/x.drv\nqueued=1\n"), "empty, `.` or `..` component"),
        (&format!("{v}out=/nix/store/x/\nqueued=1\n"), "empty"),
        (&format!("{v}drv={DRV}\nrealisation=\nqueued=1\n"), "line 3: realisation= value: empty output name"),
        (&format!("{v}drv={DRV}\nrealisation=.x\nqueued=1\n"), "starts with `.`"),
        (&format!("{v}drv={DRV}\nrealisation=a/b\nqueued=1\n"), "other than letters"),
        (&format!("{v}drv={DRV}\nrealisation=a!b\nqueued=1\n"), "other than letters"),
        (&format!("{v}drv={DRV}\nrealisation={}\nqueued=1\n", "o".repeat(212)), "longer than 211"),
        (
            &format!("{v}drv={DRV}\nrealisation=out\nrealisation=out\nqueued=1\n"),
            "line 4: realisation= repeats an earlier one",
        ),
        (&format!("{v}out={OUT}\nrealisation=out\nqueued=1\n"), "there is no drv="),
    ] {
        let r = reason(text);
        assert!(r.contains(why), "{text:?}: reason {r:?} does not contain {why:?}");
    }
}

#[test]
fn entry_parse_rejects_every_truncation() {
    let text = full().to_text();
    for len in 0..text.len() {
        let cut = &text[..len];
        assert!(Entry::parse(cut, Path::new("x")).is_err(), "truncated to {len} bytes was accepted: {cut:?}");
    }
}

#[test]
fn enqueue_refuses_an_entry_that_would_not_read_back_and_queues_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    for bad in [
        Entry { drv: None, outs: vec![format!("{OUT}\nout=/etc/passwd")], realisations: vec![], queued: 1 },
        Entry { drv: Some(DRV.into()), outs: vec![], realisations: vec!["out\nout=/etc/passwd".into()], queued: 1 },
        Entry { drv: Some(DRV.into()), outs: vec![], realisations: vec!["out".into(), "out".into()], queued: 1 },
        Entry { drv: None, outs: vec![OUT.into()], realisations: vec!["out".into()], queued: 1 },
        Entry { drv: Some("relative.drv".into()), outs: vec![], realisations: vec![], queued: 1 },
        Entry { drv: None, outs: vec!["/nix/store/a\0b".into()], realisations: vec![], queued: 1 },
        Entry { drv: None, outs: vec![], realisations: vec![], queued: 1 },
    ] {
        let err = spool.enqueue(&bad).expect_err("must be refused");
        assert!(matches!(err, SpoolError::Malformed { .. }), "{err}");
    }
    assert_eq!(spool.depth().expect("depth"), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0, "no stray tmp files");
}

#[test]
fn entries_written_before_realisations_existed_still_parse() {
    // The exact bytes a niks3-hook without `realisation=` support wrote.
    let old = format!("niks3-spool-v1\ndrv={DRV}\nout={OUT}\nqueued=1764105600\n");
    let e = Entry::parse(&old, Path::new("x")).expect("old entry");
    assert_eq!(e.drv.as_deref(), Some(DRV));
    assert_eq!(e.outs, vec![OUT.to_owned()]);
    assert!(e.realisations.is_empty());
    assert_eq!(e.to_text(), old, "and writes back byte for byte");
}

#[test]
fn realisation_lines_follow_the_outputs() {
    let e = Entry { drv: Some(DRV.into()), outs: vec![], realisations: vec!["out".into(), "dev".into()], queued: 3 };
    assert_eq!(e.to_text(), format!("niks3-spool-v1\ndrv={DRV}\nrealisation=out\nrealisation=dev\nqueued=3\n"));
}

#[test]
fn reasons_never_quote_the_entry() {
    // What a symlinked or hard-linked secret would put in a reason (and so in the log and in
    // quarantine/*.reason) if the parser quoted what it found; review finding #12.
    const SECRET: &str = "s3cr3t-Hunter2";
    let v = "niks3-spool-v1\n";
    for text in [
        format!("root:{SECRET}:20228:0:99999:7:::\n"),
        format!("{v}{SECRET}\nqueued=1\n"),
        format!("{v}{SECRET}=1\nqueued=1\n"),
        format!("{v}out={SECRET}\nqueued=1\n"),
        format!("{v}drv=/nix/store/{SECRET}\u{1}\nqueued=1\n"),
        format!("{v}drv={DRV}\nrealisation={SECRET}!\nqueued=1\n"),
        format!("{v}drv={DRV}\nrealisation={SECRET}\nrealisation={SECRET}\nqueued=1\n"),
        format!("{v}out={OUT}\nqueued={SECRET}\n"),
    ] {
        let r = reason(&text);
        assert!(!r.contains("s3cr3t") && !r.contains("Hunter2"), "{text:?}: reason {r:?} quotes the entry");
    }
}
