//! The object key parser ([`niks3_storage::ObjectKey::parse`]): the read proxy runs it on every request
//! path, GC on every listed key. What it accepts must stay inside the layout and be classified the same
//! way [`ObjectKey::kind`] classifies it later.
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_storage::ObjectKey;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok((kind, key)) = ObjectKey::parse(s) {
        assert_eq!(key.as_str(), s);
        assert_eq!(key.kind(), kind, "parse and kind() disagree on {s:?}");
        assert!(!s.starts_with('/') && !s.split('/').any(|seg| seg.is_empty() || seg == "." || seg == ".."));
    }
});
