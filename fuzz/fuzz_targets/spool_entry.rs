//! The spool entry parser ([`niks3_spool::Entry::parse`]): the daemon reads entries any local user able
//! to write the spool could have written. What parses must validate and round-trip through `to_text`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_spool::Entry;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The daemon refuses non-UTF-8 entries before parsing (spool::read_entry).
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/spool/fuzz");
    if let Ok(entry) = Entry::parse(text, path) {
        assert_eq!(entry.validate(), Ok(()));
        let again = Entry::parse(&entry.to_text(), path);
        assert_eq!(again.ok().as_ref(), Some(&entry), "own text must parse back to the same entry");
    }
});
