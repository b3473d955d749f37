//! What the tests share: starting the real programs and checking what they left behind.

pub mod cluster;
pub mod e2e;
pub mod gc;
pub mod http;
pub mod objects;
pub mod throttle;

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
        max_requests: 16,
    }
}
