//! The `Range` header parser of the read proxy ([`niks3_server::http::proxy::parse_range`]). The first 8
//! bytes are the object's size, the rest the header value. A partial answer must lie inside the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use niks3_server::http::proxy::{RangeRequest, parse_range};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, value) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap_or_default());
    // Small sizes are the interesting ones (0, 1, around the numbers in the header); keep most inputs there.
    let size = if size & 1 == 0 { size >> 1 } else { (size >> 1) % 1024 };
    // warp hands the header over as a `&str` only when it is visible ASCII; be no stricter here.
    let value = String::from_utf8_lossy(value);
    if let RangeRequest::Partial(start, end) = parse_range(&value, size) {
        assert!(start <= end && end < size, "{value:?} on {size} bytes gave {start}..={end}");
    }
});
