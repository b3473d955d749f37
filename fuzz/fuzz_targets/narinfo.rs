//! The narinfo parser ([`niks3_nix::narinfo::NarInfo::parse`]; the server reads narinfos from the bucket
//! and GC adopts ones other writers left there). Whatever parses must re-serialise to text that parses
//! back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_nix::narinfo::NarInfo;
use niks3_nix::store_path::StoreDir;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = StoreDir::default();
    if let Ok(info) = NarInfo::parse(text, &dir) {
        let again = NarInfo::parse(&info.to_text(&dir), &dir);
        assert_eq!(again.as_ref(), Ok(&info), "own output must parse back to the same narinfo");
    }
});
