//! The JSON messages of the push API (docs/api.md), shared by the server's routes and the client.
//! Strings on the wire are full store paths and Nix hash strings; the server re-validates all of them.

use serde::{Deserialize, Serialize};

/// What the client knows of one store path of the closure it pushes (as its local Nix registered it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfoWire {
    /// Full store path, e.g. `/nix/store/<hash>-name`.
    pub path: String,
    /// `sha256:<nix32>` (or any form `Sha256Hash::parse` accepts) of the uncompressed NAR.
    pub nar_hash: String,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Full store paths it references (each must be in the same request, or be the path itself).
    pub references: Vec<String>,
    /// The deriver (`.drv` store path), when known.
    #[serde(default)]
    pub deriver: Option<String>,
    /// Content address, when the path is content-addressed.
    #[serde(default)]
    pub ca: Option<String>,
}

/// `POST /api/v1/push`: "here is a closure; which NARs do you lack and where do I put them?"
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushRequest {
    /// The paths the user asked to push (closure roots for GC); each must be among `paths`.
    pub roots: Vec<String>,
    /// Every path of the closure of `roots` (references closed under `paths`).
    pub paths: Vec<PathInfoWire>,
    /// Only report what is missing: claim nothing, hand out no upload URLs.
    #[serde(default)]
    pub dry_run: bool,
    /// This pusher's `--max-nar-size`: missing paths with a larger NAR are left out (the server applies
    /// the smaller of this and its own limit). Send the same value with the complete request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nar_size: Option<u64>,
}

/// One NAR the server lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingNar {
    /// The store path whose NAR this is (paths with identical contents share one NAR: the first is named).
    pub path: String,
    /// Its NarHash, as sent.
    pub nar_hash: String,
    /// Where to `PUT` the zstd-compressed NAR: a path on the server (starting with `/`, needs the bearer
    /// token) when the backend is not S3; empty for S3, where `presign_route` or `multipart` says how.
    pub upload_url: String,
    /// True when the NAR goes to presigned S3 URLs (`upload_url`, or the ones its routes answer): send no
    /// `Authorization` header there.
    pub presigned: bool,
    /// Set for NARs that may be larger than one part: upload them in parts instead (`upload_url` is then
    /// empty) and report each part's `ETag` in [`UploadedNar::parts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart: Option<MultipartWire>,
    /// For a single presigned PUT: a server path (bearer token) to `POST` a [`PresignRequest`] to once
    /// the NAR is compressed, answered with a URL that accepts exactly that file ([`PresignResponse`]).
    /// (S3 hands out no unbound single-PUT URL: it would accept any body up to 5 GiB.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presign_route: Option<String>,
}

/// `POST /api/v1/uploads/{id}/nar/{nix32}/presign`: "give me a URL for exactly this compressed file".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignRequest {
    /// Size of the compressed file.
    pub file_size: u64,
    /// `sha256:<nix32>` of the compressed file.
    pub file_hash: String,
}

/// Answer to [`PresignRequest`]: `PUT` the file to `upload_url` with exactly these headers (they are
/// signed; S3 refuses a request without them, or with a body of another size or hash).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresignResponse {
    /// The presigned URL (a credential: never log it).
    pub upload_url: String,
    /// Headers to send with the `PUT` (`content-length`, and `x-amz-checksum-sha256` for a whole file or
    /// `content-md5` for a part).
    pub headers: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for PresignResponse {
    /// The URL carries a signature: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresignResponse").field("headers", &self.headers).finish_non_exhaustive()
    }
}

/// A presigned multipart upload: the compressed NAR cut into parts of exactly `part_size` bytes (the last
/// one shorter). For each part the client `POST`s a [`PartPresignRequest`] to `part_route` once the part
/// is compressed and `PUT`s it to the URL of the [`PresignResponse`], with its signed headers
/// (`content-length` and `content-md5`): S3 refuses any other bytes, so a part corrupted on the wire is
/// refused (400 `BadDigest`) and sent again, never stored. No part URL is handed out before its bytes
/// exist: an unbound one would take any body (security review #19).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartWire {
    /// Size of every part but the last.
    pub part_size: u64,
    /// A server path (bearer token) to `POST` a [`PartPresignRequest`] to for each part. Empty from a
    /// server older than bound parts (it sent unbound `part_urls`, which this client no longer uses).
    #[serde(default)]
    pub part_route: String,
    /// Parts the bucket already holds because this upload continues one an earlier push of the same
    /// owner started and never finished (killed part way). The compressed stream is deterministic, so a
    /// client reuses part `number` without sending it when its own part has the same `size` and its MD5
    /// is `etag`; any other part it `PUT`s as usual (replacing the held one). Empty for a fresh upload,
    /// and absent from the JSON then, so older clients and servers read each other unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_parts: Vec<HeldPartWire>,
}

/// `POST <part_route>`: "give me a URL for exactly this part" (see [`MultipartWire`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartPresignRequest {
    /// Its part number, 1-based.
    pub part: u32,
    /// Its size in bytes: `part_size`, or less for the last part.
    pub size: u64,
    /// The MD5 of its bytes, base64 (the `Content-MD5` header's form).
    pub md5: String,
}

/// A part an interrupted multipart upload left in the bucket (see [`MultipartWire::held_parts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPartWire {
    /// Its part number (1-based).
    pub number: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag as the bucket lists it, unquoted: the hex MD5 of its bytes on S3, Garage and MinIO.
    pub etag: String,
}

/// A build log the server lacks for one of the missing paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingLog {
    /// The derivation (`.drv` store path) whose log is wanted.
    pub deriver: String,
    /// Where to `PUT` the plain-text log: a path on the server (needs the bearer token).
    pub upload_url: String,
}

/// The `.ls` file listing of a pushed path (as `nix store ls` reads it), computed by the client from the
/// NAR it serialised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListingWire {
    /// The store path.
    pub path: String,
    /// `{"version":1,"root":{…}}`.
    pub listing: serde_json::Value,
}

/// Answer to [`PushRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushResponse {
    /// Upload sessions opened for the roots (same order); the client sends them back on completion.
    pub uploads: Vec<i64>,
    /// Paths of the request the cache lacks (their narinfo will be written on completion).
    pub missing_paths: Vec<String>,
    /// NARs to upload before completing (deduplicated by NarHash; may be fewer than `missing_paths`).
    pub missing_nars: Vec<MissingNar>,
    /// The compression the server expects NARs in (`zstd`).
    pub compression: String,
    /// Build logs the cache lacks for the missing paths (optional to upload).
    #[serde(default)]
    pub missing_logs: Vec<MissingLog>,
    /// Missing paths left out because their NAR is over the size limit: not uploaded, not published;
    /// their referrers are published and name them (the closure is recorded as incomplete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_paths: Vec<String>,
}

/// What the client measured of an uploaded NAR file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedNar {
    /// The NarHash that names the NAR.
    pub nar_hash: String,
    /// `sha256:<nix32>` of the compressed file.
    pub file_hash: String,
    /// Size of the compressed file.
    pub file_size: u64,
    /// For a multipart upload: the `ETag` S3 answered for each part, part 1 first (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

/// `POST /api/v1/complete`: "the NARs are uploaded; publish the narinfos".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompleteRequest {
    /// The upload sessions [`PushResponse::uploads`] opened.
    pub uploads: Vec<i64>,
    /// The roots, as in the push request.
    pub roots: Vec<String>,
    /// The closure, as in the push request.
    pub paths: Vec<PathInfoWire>,
    /// What was uploaded.
    pub nars: Vec<UploadedNar>,
    /// File listings of the missing paths (optional).
    #[serde(default)]
    pub listings: Vec<ListingWire>,
    /// The push request's `max_nar_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nar_size: Option<u64>,
}

/// Answer to [`CompleteRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompleteResponse {
    /// Narinfos written by this request.
    pub published: usize,
    /// Paths that were already present (e.g. published meanwhile by another pusher).
    pub already_present: usize,
}

/// Answer to `PUT /api/v1/uploads/{id}/nar/{nix32}` (the server-relayed upload).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadResponse {
    /// Bytes stored.
    pub size: u64,
    /// `sha256:<nix32>` of the stored bytes, as the server computed it.
    pub file_hash: String,
}

/// `POST /api/v1/abort`: "I give up on these upload sessions" (the client failed between push and
/// complete): the server aborts their multipart uploads and ends them, so nothing waits for GC.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AbortRequest {
    /// The sessions [`PushResponse::uploads`] opened.
    pub uploads: Vec<i64>,
}

/// `POST /api/v1/touch`: "these upload sessions are alive" — a pusher sends it every half minute while
/// it uploads, so the paths its sessions lease are not taken over by another push however long the
/// upload takes (docs/api.md, leases).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TouchRequest {
    /// The sessions [`PushResponse::uploads`] opened.
    pub uploads: Vec<i64>,
}

/// Answer to [`TouchRequest`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TouchResponse {
    /// Leases kept (0 once the sessions are gone or hold none).
    pub touched: u64,
}

/// Answer to [`AbortRequest`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AbortResponse {
    /// Sessions ended (ones already gone are not counted).
    pub aborted_uploads: u64,
    /// Multipart uploads aborted in the bucket.
    pub aborted_multiparts: u64,
}

/// `POST /api/v1/gc`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct GcRequest {
    /// Forget closures last pushed more than this many seconds ago.
    pub older_than_secs: u64,
    /// Abort uploads in flight for longer than this; also the grace period before deleting marked objects.
    pub failed_uploads_older_than_secs: u64,
    /// Delete unreachable objects without waiting for the grace period.
    #[serde(default)]
    pub force: bool,
    /// Only count what would be done.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/realisations`: realisations to publish, dependencies first, each the JSON Nix prints
/// (`nix realisation info --json`; signatures are ignored: the server signs with its own keys).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RealisationsRequest {
    /// Realisation objects.
    pub realisations: Vec<serde_json::Value>,
}

/// Answer to `POST /api/v1/realisations`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RealisationsResponse {
    /// Realisations written (all of the request's).
    pub published: usize,
}

/// The five figures of the last GC run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcFigures {
    /// In-flight uploads aborted and cleaned up.
    pub failed_uploads_deleted: u64,
    /// Closures forgotten for being too old.
    pub old_closures_deleted: u64,
    /// Objects newly marked unreachable.
    pub objects_marked_for_deletion: u64,
    /// Objects deleted after their grace period (or at once with --force).
    pub objects_deleted_after_grace_period: u64,
    /// Objects the store failed to delete (retried next run).
    pub objects_failed_to_delete: u64,
}
