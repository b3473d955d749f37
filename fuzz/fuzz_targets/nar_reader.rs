//! The NAR reader ([`niks3_nix::nar::read_tree`]) on arbitrary bytes, then the `.ls` listing of whatever
//! it accepts: no panic, no hang, memory bounded by the input (not by the lengths the input claims).
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_nix::listing::listing_json;
use niks3_nix::nar::read_tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = read_tree(&mut &data[..])
        && let Some(listing) = listing_json(&tree)
    {
        assert_eq!(listing["version"], 1);
    }
});
