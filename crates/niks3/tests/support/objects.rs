//! Objects for the storage tests: content, and the keys it is stored under. (The GC tests' keys of a
//! made-up universe of paths are `support::gc`'s.)

use niks3_nix::hash::Sha256Hash;
use niks3_storage::{ObjectKey, ObjectKind};

/// `len` pseudo-random bytes, the same for the same `seed`.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The key a NAR with these bytes is stored under.
pub fn nar_key(data: &[u8]) -> ObjectKey {
    ObjectKey::nar(&Sha256Hash::digest(data))
}

/// The key of the narinfo of a made-up path whose hash is `n`'s last digit 32 times.
pub fn narinfo_key(n: u8) -> ObjectKey {
    let hash: String = std::iter::repeat_n(char::from(b'0' + n % 10), 32).collect();
    let (kind, key) = ObjectKey::parse(&format!("{hash}.narinfo")).expect("valid narinfo key");
    assert_eq!(kind, ObjectKind::NarInfo);
    key
}
