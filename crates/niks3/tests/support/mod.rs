//! What the tests share: starting the real programs and checking what they left behind.

pub mod e2e;
pub mod gc;
pub mod http;

use niks3_storage::s3::S3Config;
use niks3_testkit::garage::Garage;

/// The S3 configuration of `g`'s bucket and key, with `part_size`-byte multipart parts.
pub fn s3_config(g: &Garage, part_size: usize) -> S3Config {
    S3Config {
        endpoint: g.endpoint.clone(),
        bucket: g.bucket.clone(),
        region: g.region.clone(),
        access_key: g.access_key.clone(),
        secret_key: g.secret_key.clone(),
        path_style: true,
        part_size,
    }
}

/// `len` pseudo-random bytes, the same for the same `seed`.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The key a NAR with these bytes is stored under.
pub fn nar_key(data: &[u8]) -> niks3_storage::ObjectKey {
    use sha2::Digest;
    niks3_storage::ObjectKey::nar(&niks3_nix::hash::Sha256Hash(sha2::Sha256::digest(data).into()))
}

/// The key of the narinfo of a made-up path whose hash is `n`'s last digit 32 times.
pub fn narinfo_key(n: u8) -> niks3_storage::ObjectKey {
    let hash: String = std::iter::repeat_n(char::from(b'0' + n % 10), 32).collect();
    let (kind, key) = niks3_storage::ObjectKey::parse(&format!("{hash}.narinfo")).expect("valid narinfo key");
    assert_eq!(kind, niks3_storage::ObjectKind::NarInfo);
    key
}
