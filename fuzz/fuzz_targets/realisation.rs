//! Realisation JSON ([`niks3_nix::realisation::Realisation::from_json`], what `POST /api/v1/realisations`
//! and the bucket's `.doi` files go through) and realisation ids ([`DrvOutput::parse`]). Whatever parses
//! must survive a round trip through its own JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_nix::realisation::{DrvOutput, Realisation};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Realisation::from_json(data) {
        let again = Realisation::from_json(r.to_json().as_bytes());
        assert_eq!(again.as_ref(), Ok(&r), "own JSON must parse back to the same realisation");
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(id) = DrvOutput::parse(s)
    {
        assert_eq!(DrvOutput::parse(&id.to_string()).as_ref(), Ok(&id));
    }
});
