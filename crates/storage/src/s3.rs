//! The S3 backend (rust-s3, rustls): path-style addressing for Garage/MinIO, SigV4, multipart uploads
//! in equal parts (R2 requires equal sizes) above a threshold, presigned PUT URLs.
//!
//! Error mapping: an absent object (404) is `None`, never an error; an HTTP error answer becomes
//! [`StorageError::S3Status`] (its S3 error code and message, the key and the bucket — never credentials, and
//! never a URL, since presigned URLs carry signatures); a failure without an answer (connection refused,
//! timeout) becomes [`StorageError::S3`].
//!
//! Throttling: every request but streamed downloads and listings goes through [`S3Store::request`], which holds
//! a permit of the backend's [`Throttle`] (an adaptive limit on requests in flight, shared by every
//! upload of the server) and retries the request itself, with jittered backoff, when the store is
//! overloaded (429, 503 `SlowDown`, a reset connection) or the body was corrupted in transit
//! (`BadDigest`: rust-s3 sends `Content-MD5` and a signed `x-amz-content-sha256` with every `PutObject`
//! and `UploadPart`, so the store refuses bytes that changed on the wire). What is still failing after
//! [`RetryPolicy::attempts`] goes to the caller, whose [`StorageError::is_transient`] says whether to
//! retry later (the drainer retries whole entries). rust-s3's errors carry no headers, so a
//! `Retry-After` of the store cannot be read here (`HttpFailWithBody` holds the status and the body only;
//! AWS documents exponential backoff for `SlowDown`, not a header): the jittered backoff alone sets the pace. Streamed downloads and listings are not gated:
//! a slow reader would hold a permit for as long as it reads.

use super::throttle::{Outcome, RetryPolicy, Throttle};
use super::{ByteStream, ObjectKey, ObjectMeta, StorageError, Streamed, UploadJournal};
use bytes::Bytes;
use futures::StreamExt;
use s3::command::Command;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::request::Request as _;
use s3::request::tokio_backend::ReqwestRequest;
use s3::serde_types::{ObjectIdentifier, Part};
use s3::{Bucket, Region};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Smallest part size S3 accepts for all but the last part.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Timeout for small requests (HEAD, GET of a narinfo, DELETE, multipart bookkeeping).
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_mins(1);

/// Timeout for one part or one single-request upload of a NAR (a part of 8 MiB over a slow uplink).
const BULK_REQUEST_TIMEOUT: Duration = Duration::from_mins(10);

/// A streamed download fails when the server sends nothing for this long (the whole download may take
/// longer: a slow client must not cut a NAR off).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_mins(1);

/// Longest a presigned URL may live (S3's limit: one week).
const MAX_PRESIGN_SECS: u64 = 604_800;

/// The header carrying the base64 SHA-256 of a PUT body, which S3 (and Garage) check against the body.
pub const CHECKSUM_HEADER: &str = "x-amz-checksum-sha256";

/// Keys per multi-object delete request (S3's limit).
const DELETE_BATCH: usize = 1000;

/// `Cache-Control` of NARs: their key is their content hash, so they never change.
const NAR_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// How to reach a bucket. Secrets are held here only in memory and never printed (see `Debug`).
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host:port`; empty for AWS's default endpoint for `region`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region (`garage`, `auto` for R2, `us-east-1`, …).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Path-style addressing (`endpoint/bucket/key`); needed for Garage and MinIO.
    pub path_style: bool,
    /// Part size for multipart uploads (≥ 8 MiB); also the threshold above which multipart is used.
    pub part_size: usize,
    /// Most requests in flight to this bucket at once (the adaptive limit starts here and never goes
    /// above; see [`Throttle`]); at least 1.
    pub max_requests: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("part_size", &self.part_size)
            .field("max_requests", &self.max_requests)
            .finish_non_exhaustive()
    }
}

/// Most parts one multipart upload may have (S3's limit).
pub const MAX_PARTS: u64 = 10_000;

/// An unfinished multipart upload found in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key being uploaded (raw: another writer may have started it).
    pub key: String,
    /// The upload id (needed to abort it).
    pub upload_id: String,
    /// When the upload was initiated, as the server reports it (`None` when unparseable).
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

/// A connected bucket.
pub struct S3Store {
    config: S3Config,
    /// Small requests.
    bucket: Arc<Bucket>,
    /// Uploads of NARs: long timeout, immutable `Cache-Control`.
    nar_bucket: Arc<Bucket>,
    /// Uploads of everything else: long timeout.
    bulk_bucket: Arc<Bucket>,
    /// Streamed downloads: no overall timeout (an idle timeout per chunk instead).
    stream_bucket: Arc<Bucket>,
    /// Most parts of one multipart upload: S3's [`MAX_PARTS`], smaller only in tests
    /// ([`S3Store::with_max_parts`]).
    max_parts: u64,
    /// The adaptive limit on requests in flight, shared by all uploads to this bucket.
    throttle: Arc<Throttle>,
}

impl S3Store {
    /// Builds the client; does no network I/O.
    pub fn new(config: S3Config) -> Result<Self, StorageError> {
        if config.bucket.is_empty() {
            return Err(StorageError::Config("S3 bucket name is empty".to_owned()));
        }
        if config.part_size < MIN_PART_SIZE {
            return Err(StorageError::Config(format!(
                "S3 part size {} is below the minimum of {MIN_PART_SIZE} bytes",
                config.part_size
            )));
        }
        let region = if config.endpoint.is_empty() {
            config
                .region
                .parse::<Region>()
                .map_err(|e| StorageError::Config(format!("S3 region {:?}: {e}", config.region)))?
        } else {
            if !(config.endpoint.starts_with("http://") || config.endpoint.starts_with("https://")) {
                return Err(StorageError::Config(format!(
                    "S3 endpoint {:?} must start with http:// or https://",
                    config.endpoint
                )));
            }
            Region::Custom { region: config.region.clone(), endpoint: config.endpoint.trim_end_matches('/').to_owned() }
        };
        // Never format the credentials error: it could quote what it was given.
        let credentials = Credentials::new(Some(&config.access_key), Some(&config.secret_key), None, None, None)
            .map_err(|_| StorageError::Config("S3 credentials rejected by the client library".to_owned()))?;
        let config_err = |e: S3Error| StorageError::Config(format!("S3 client for bucket {}: {e}", config.bucket));
        let mut base = *Bucket::new(&config.bucket, region, credentials).map_err(config_err)?;
        if config.path_style {
            base.set_path_style();
        }
        let mut bucket = base.clone();
        bucket.set_request_timeout(Some(SMALL_REQUEST_TIMEOUT));
        let mut bulk = base.clone();
        bulk.set_request_timeout(Some(BULK_REQUEST_TIMEOUT));
        let mut nar_headers = http::HeaderMap::new();
        nar_headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static(NAR_CACHE_CONTROL));
        let nar = bulk.with_extra_headers(nar_headers).map_err(config_err)?;
        let mut stream = base;
        stream.set_request_timeout(None);
        let throttle = Arc::new(Throttle::new(config.max_requests, RetryPolicy::default()));
        Ok(S3Store {
            config,
            bucket: Arc::new(bucket),
            nar_bucket: Arc::new(nar),
            bulk_bucket: Arc::new(bulk),
            stream_bucket: Arc::new(stream),
            max_parts: MAX_PARTS,
            throttle,
        })
    }

    /// The same store with at most `max_parts` parts per multipart upload (at least 1): lets a test show
    /// the part size growing without uploading gigabytes.
    #[must_use]
    pub fn with_max_parts(mut self, max_parts: u64) -> Self {
        self.max_parts = max_parts.clamp(1, MAX_PARTS);
        self
    }
    /// The same store with another retry schedule (tests: short delays).
    #[must_use]
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.throttle = Arc::new(Throttle::new(self.config.max_requests, policy));
        self
    }

    /// The adaptive request limit of this bucket (for `/metrics`).
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// Sends one request (`attempt` builds it afresh each time) under the bucket's [`Throttle`], retrying
    /// throttled and corrupted ones; see the module doc.
    async fn request<T, F, Fut>(&self, op: &'static str, key: &str, attempt: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, S3Error>>,
    {
        throttled(&self.throttle, op, key, &self.config, attempt).await
    }

    /// The configuration (for logging; secrets are redacted by `Debug`).
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The bucket uploads of `key` go through.
    fn upload_bucket(&self, key: &ObjectKey) -> &Arc<Bucket> {
        if key.kind().is_immutable() { &self.nar_bucket } else { &self.bulk_bucket }
    }

    /// Maps a rust-s3 error for `key` to ours.
    fn error(&self, op: &'static str, key: &str, e: S3Error) -> StorageError {
        describe_error(op, key, &self.config, e)
    }

    pub(super) async fn put(&self, key: &ObjectKey, body: Bytes, content_type: &str) -> Result<(), StorageError> {
        let bucket = self.upload_bucket(key);
        self.request("PUT", key.as_str(), || bucket.put_object_with_content_type(key.as_str(), &body, content_type))
            .await?;
        Ok(())
    }

    /// Buffers up to one part; a stream that ends within one part is a single PUT, a longer one a multipart
    /// upload, one part uploading while the next fills (two part buffers, plus the copy rust-s3 makes of the
    /// part it sends: at most three part sizes of memory per upload). With `max_size` (an upper bound of
    /// the stream's length, e.g. the zstd bound of a NAR) the parts are equal, of
    /// [`S3Store::part_size_for`]; without, they start at the configured size and double every tenth of
    /// the part limit (8 MiB parts reach 8 TiB within 10 000 parts), for stores that accept unequal
    /// parts. A stream longer than the parts can hold fails clearly (and the upload is aborted).
    /// Any failure, including an `Err` from `chunks`, aborts the multipart upload. A stream whose sender is
    /// dropped without an `Err` counts as complete: producers must send their error. If this future is
    /// dropped mid-upload, the multipart upload stays until [`S3Store::abort_stale_uploads`] removes it —
    /// or, with a `journal`, until the next upload of `key` continues it (see
    /// [`super::Storage::put_stream_resumable`]; the part boundaries are the same both times, as they
    /// depend only on `max_size` and the configuration).
    pub(super) async fn put_stream(
        &self,
        key: &ObjectKey,
        mut chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>,
        content_type: &str,
        max_size: Option<u64>,
        journal: Option<&dyn UploadJournal>,
    ) -> Result<Streamed, StorageError> {
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let mut part_size = to_usize(max_size.map_or(self.config.part_size as u64, |m| self.part_size_for(m)));
        let grow_every = (self.max_parts / 10).max(1);
        let mut parts_sent = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0u64;
        let mut multipart: Option<Multipart> = None;
        let result = async {
            while let Some(chunk) = chunks.recv().await {
                let mut chunk = chunk?;
                total += chunk.len() as u64;
                while !chunk.is_empty() {
                    if buf.len() == part_size {
                        // More data follows a full part: this is a multipart upload.
                        if parts_sent + 1 >= self.max_parts {
                            return Err(StorageError::TooLarge {
                                key: key.as_str().to_owned(),
                                reason: format!(
                                    "more than {parts_sent} full parts (the last {part_size} bytes) and data still \
                                     coming: past the limit of {} parts",
                                    self.max_parts
                                ),
                            });
                        }
                        let full = std::mem::take(&mut buf);
                        let mp = match &mut multipart {
                            Some(mp) => mp,
                            None => multipart.insert(self.start_multipart(key, content_type, journal).await?),
                        };
                        mp.send_part(full, self).await?;
                        parts_sent += 1;
                        if max_size.is_none() && parts_sent.is_multiple_of(grow_every) {
                            part_size = part_size.saturating_mul(2);
                        }
                    }
                    if buf.capacity() == 0 {
                        buf.reserve_exact(part_size.min(chunk.len().max(64 * 1024)));
                    }
                    let take = (part_size - buf.len()).min(chunk.len());
                    buf.extend_from_slice(&chunk.split_to(take));
                }
            }
            match &mut multipart {
                None => {
                    let body = Bytes::from(std::mem::take(&mut buf));
                    self.put(key, body, content_type).await?;
                    Ok(Streamed { size: total, sent: total, reused_parts: 0 })
                }
                Some(mp) => {
                    mp.send_part(std::mem::take(&mut buf), self).await?;
                    let parts = mp.finish().await?;
                    self.complete(key, &mp.upload_id, parts).await.map_err(|e| mp.vanished(e))?;
                    if mp.reused_parts > 0 {
                        tracing::info!(
                            key = key.as_str(),
                            reused_parts = mp.reused_parts,
                            reused_bytes = total - mp.sent,
                            sent_bytes = mp.sent,
                            "continued an interrupted multipart upload"
                        );
                    }
                    Ok(Streamed { size: total, sent: mp.sent, reused_parts: mp.reused_parts })
                }
            }
        }
        .await;
        if result.is_err()
            && let Some(mp) = multipart
        {
            mp.abort(self).await;
        }
        result
    }

    /// The multipart upload a stream of `key` goes into: the one `journal` hands over, with the parts
    /// the bucket holds for it, or a new one (recorded in `journal`). An upload handed over that cannot
    /// be listed (gone: completed, or aborted by GC) is replaced by a new one.
    async fn start_multipart(
        &self,
        key: &ObjectKey,
        content_type: &str,
        journal: Option<&dyn UploadJournal>,
    ) -> Result<Multipart, StorageError> {
        let Some(journal) = journal else { return self.initiate(key, content_type).await };
        if let Some(upload_id) = journal.take_over(key).await {
            match self.list_parts(key, &upload_id).await {
                Ok(held) => {
                    tracing::debug!(key = key.as_str(), parts = held.len(), "continuing a multipart upload");
                    let mut mp = self.multipart(key, upload_id, content_type);
                    mp.held = held;
                    mp.continued = true;
                    return Ok(mp);
                }
                Err(e) => {
                    tracing::info!(error = %e, "an interrupted multipart upload cannot be continued; starting afresh");
                    // Still there but unusable: leave nothing behind (gone already is fine too).
                    if let Err(abort) = self.abort_multipart(key, &upload_id).await {
                        tracing::debug!(error = %abort, "could not abort it; GC will");
                    }
                }
            }
        }
        let mp = self.initiate(key, content_type).await?;
        journal.started(key, &mp.upload_id).await;
        Ok(mp)
    }

    /// The parts the bucket holds for the unfinished upload `upload_id` of `key` (ListParts, every page),
    /// by part number. rust-s3 has no ListParts, so this is a presigned `GET ?uploadId=` sent with
    /// reqwest. Public for tests and diagnostics (what an interrupted upload left).
    pub async fn list_parts(&self, key: &ObjectKey, upload_id: &str) -> Result<HashMap<u32, HeldPart>, StorageError> {
        let err = |reason: String| StorageError::S3 { op: "list parts", key: key.as_str().to_owned(), reason };
        let client =
            reqwest::Client::builder().timeout(SMALL_REQUEST_TIMEOUT).build().map_err(|e| err(e.to_string()))?;
        let mut held = HashMap::new();
        let mut marker: Option<String> = None;
        loop {
            let mut queries = HashMap::from([("uploadId".to_owned(), upload_id.to_owned())]);
            if let Some(m) = &marker {
                queries.insert("part-number-marker".to_owned(), m.clone());
            }
            let url = self
                .bucket
                .presign_get(key.as_str(), 300, Some(queries))
                .await
                .map_err(|e| self.error("presign list parts", key.as_str(), e))?;
            let response = client.get(url).send().await.map_err(|e| err(e.without_url().to_string()))?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(|e| err(e.without_url().to_string()))?;
            if status != 200 {
                let reason = summarize_error_body(&body).unwrap_or_else(|| status_hint(status).to_owned());
                return Err(StorageError::S3Status {
                    op: "list parts",
                    key: key.as_str().to_owned(),
                    status,
                    reason: format!("{reason} (bucket {})", self.config.bucket),
                });
            }
            let (page, next) = parse_list_parts(&body).ok_or_else(|| err("unreadable ListParts answer".to_owned()))?;
            held.extend(page);
            match next {
                Some(m) if marker.as_deref() != Some(m.as_str()) => marker = Some(m),
                _ => return Ok(held),
            }
        }
    }

    /// Starts a multipart upload of `key`.
    async fn initiate(&self, key: &ObjectKey, content_type: &str) -> Result<Multipart, StorageError> {
        let bucket = self.upload_bucket(key);
        let resp = self
            .request("initiate multipart upload", key.as_str(), || {
                bucket.initiate_multipart_upload(key.as_str(), content_type)
            })
            .await?;
        Ok(self.multipart(key, resp.upload_id, content_type))
    }

    /// Upload `upload_id` of `key` with no parts known yet.
    fn multipart(&self, key: &ObjectKey, upload_id: String, content_type: &str) -> Multipart {
        Multipart {
            key: key.as_str().to_owned(),
            upload_id,
            content_type: content_type.to_owned(),
            bucket: Arc::clone(self.upload_bucket(key)),
            throttle: Arc::clone(&self.throttle),
            parts: Vec::new(),
            in_flight: None,
            held: HashMap::new(),
            sent: 0,
            reused_parts: 0,
            continued: false,
        }
    }

    pub(super) async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        self.request("GET", key.as_str(), || async {
            match self.bucket.get_object(key.as_str()).await {
                Ok(data) => Ok(Some(data.into_bytes())),
                Err(S3Error::HttpFailWithBody(404, _)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// One GET (no HEAD first); `meta.size` is the whole object's size, from `Content-Length` or the total
    /// in `Content-Range`.
    pub(super) async fn get_stream(
        &self,
        key: &ObjectKey,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        let command = match range {
            None => Command::GetObject,
            Some((start, Some(end))) if end < start => return self.empty_stream(key).await,
            Some((start, end)) => Command::GetObjectRange { start, end },
        };
        let bucket = &*self.stream_bucket;
        let request =
            ReqwestRequest::new(bucket, key.as_str(), command).await.map_err(|e| self.error("GET", key.as_str(), e))?;
        let response = match request.response().await {
            Ok(r) => r,
            Err(S3Error::HttpFailWithBody(404, _)) => return Ok(None),
            Err(S3Error::HttpFailWithBody(416, _)) => return self.empty_stream(key).await,
            Err(e) => return Err(self.error("GET", key.as_str(), e)),
        };
        let size = match (response.status().as_u16(), range) {
            (200, None) => response.content_length(),
            (206, Some(_)) => response
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, total)| total.parse().ok()),
            (status, _) => {
                return Err(StorageError::S3Status {
                    op: "GET",
                    key: key.as_str().to_owned(),
                    status,
                    reason: format!(
                        "unexpected answer to a {} request",
                        if range.is_some() { "range" } else { "full" }
                    ),
                });
            }
        };
        let size = size.ok_or_else(|| StorageError::S3 {
            op: "GET",
            key: key.as_str().to_owned(),
            reason: "response lacks the object size (Content-Length/Content-Range)".to_owned(),
        })?;
        let key_owned = key.as_str().to_owned();
        let config = self.config.clone();
        let body = response.bytes_stream();
        let stream = futures::stream::unfold(Some(body), move |body| {
            let key = key_owned.clone();
            let config = config.clone();
            async move {
                let mut body = body?;
                match tokio::time::timeout(STREAM_IDLE_TIMEOUT, body.next()).await {
                    Ok(None) => None,
                    Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
                    Ok(Some(Err(e))) => Some((Err(describe_error("GET", &key, &config, S3Error::Reqwest(e))), None)),
                    Err(_) => Some((
                        Err(StorageError::S3 {
                            op: "GET",
                            key,
                            reason: format!(
                                "no data for {}s (bucket {})",
                                STREAM_IDLE_TIMEOUT.as_secs(),
                                config.bucket
                            ),
                        }),
                        None,
                    )),
                }
            }
        });
        Ok(Some((ObjectMeta { size }, stream.boxed())))
    }

    /// The answer to a range that selects nothing: the object's size and no bytes (or `None` if absent).
    async fn empty_stream(&self, key: &ObjectKey) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        Ok(self.head(key).await?.map(|meta| (meta, futures::stream::empty().boxed())))
    }

    pub(super) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let head = self
            .request("HEAD", key.as_str(), || async {
                match self.bucket.head_object(key.as_str()).await {
                    Ok((head, _)) => Ok(Some(head)),
                    Err(S3Error::HttpFailWithBody(404, _)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        match head {
            Some(head) => {
                let size = head.content_length.and_then(|n| u64::try_from(n).ok()).ok_or_else(|| StorageError::S3 {
                    op: "HEAD",
                    key: key.as_str().to_owned(),
                    reason: "response lacks Content-Length".to_owned(),
                })?;
                Ok(Some(ObjectMeta { size }))
            }
            None => Ok(None),
        }
    }

    /// Multi-object delete, up to 1000 keys per request.
    pub(super) async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<(ObjectKey, StorageError)> {
        let mut failed = Vec::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let ids: Vec<ObjectIdentifier> = batch.iter().map(|k| ObjectIdentifier::new(k.as_str())).collect();
            match self.request("DELETE", "(batch)", || self.bucket.delete_objects(ids.clone())).await {
                Ok(result) => {
                    for err in result.errors {
                        // Absent objects count as deleted.
                        if err.code == "NoSuchKey" {
                            continue;
                        }
                        if let Some(key) = batch.iter().find(|k| k.as_str() == err.key) {
                            failed.push((
                                key.clone(),
                                StorageError::S3 {
                                    op: "DELETE",
                                    key: err.key.clone(),
                                    reason: format!("{}: {} (bucket {})", err.code, err.message, self.config.bucket),
                                },
                            ));
                        }
                    }
                }
                Err(first) => {
                    for key in batch {
                        let e = match &first {
                            StorageError::S3Status { op, status, reason, .. } => StorageError::S3Status {
                                op,
                                key: key.to_string(),
                                status: *status,
                                reason: reason.clone(),
                            },
                            other => StorageError::S3 { op: "DELETE", key: key.to_string(), reason: other.to_string() },
                        };
                        failed.push((key.clone(), e));
                    }
                }
            }
        }
        failed
    }

    pub(super) async fn presign_put(&self, key: &ObjectKey, expiry: Duration) -> Result<String, StorageError> {
        let secs = presign_secs(expiry)?;
        self.bucket
            .presign_put(key.as_str(), secs, None, None)
            .await
            .map_err(|e| self.error("presign PUT", key.as_str(), e))
    }

    /// A presigned PUT URL for `key` that only accepts a body of exactly `size` bytes whose SHA-256 is
    /// `sha256`: `Content-Length` and `x-amz-checksum-sha256` are signed headers, so the uploader must send
    /// both (the server refuses a request without them) and S3 refuses other bytes (Garage: 403 for
    /// another length, 400 `InvalidDigest` for other content). Such a URL cannot be used to upload
    /// anything but the file it was issued for, however long it stays valid.
    pub async fn presign_put_bound(
        &self,
        key: &ObjectKey,
        expiry: Duration,
        size: u64,
        sha256: &niks3_nix::hash::Sha256Hash,
    ) -> Result<String, StorageError> {
        use base64::Engine;
        let secs = presign_secs(expiry)?;
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256.0);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(size));
        let value = http::HeaderValue::from_str(&checksum)
            .map_err(|e| StorageError::Config(format!("checksum header for {key}: {e}")))?;
        headers.insert(http::HeaderName::from_static(CHECKSUM_HEADER), value);
        self.bucket
            .presign_put(key.as_str(), secs, Some(headers), None)
            .await
            .map_err(|e| self.error("presign PUT", key.as_str(), e))
    }

    /// The part size of a multipart upload of an object of at most `max_size` bytes: the configured
    /// part size, grown (in whole MiB) when needed so that [`MAX_PARTS`] parts hold `max_size` — every
    /// part the same size, as R2 requires, and any object up to S3's 5 TiB fits.
    pub fn part_size_for(&self, max_size: u64) -> u64 {
        const MIB: u64 = 1 << 20;
        let configured = self.config.part_size as u64;
        let needed = max_size.div_ceil(self.max_parts).div_ceil(MIB) * MIB;
        configured.max(needed)
    }

    /// The configured part size: objects that may be larger go multipart.
    pub fn part_size(&self) -> u64 {
        self.config.part_size as u64
    }

    /// Starts a multipart upload whose parts a remote client sends straight to the bucket through
    /// [`S3Store::presign_part_bound`] URLs; returns the upload id.
    pub async fn initiate_multipart(&self, key: &ObjectKey, content_type: &str) -> Result<String, StorageError> {
        Ok(self.initiate(key, content_type).await?.upload_id)
    }

    /// A presigned URL for `PUT`ting part `part_number` (1-based, ≤ 10 000) of upload `upload_id` that only
    /// accepts a body of exactly `size` bytes whose MD5 is `md5`: `Content-Length` and `Content-MD5` are
    /// signed headers, so the uploader must send both and S3 refuses other bytes (400 `BadDigest`), as
    /// [`S3Store::presign_put_bound`] does for a whole object. Content-MD5 rather than a SHA-256 checksum:
    /// every S3 store verifies it on `UploadPart`, while AWS takes `x-amz-checksum-*` on a part only when
    /// the upload was initiated with that algorithm. The `ETag` header of the answer is what
    /// [`S3Store::complete_multipart`] needs for that part.
    pub async fn presign_part_bound(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        part_number: u32,
        expiry: Duration,
        size: u64,
        md5: &[u8; 16],
    ) -> Result<String, StorageError> {
        use base64::Engine;
        if !(1..=MAX_PARTS).contains(&u64::from(part_number)) {
            return Err(StorageError::Config(format!("part number {part_number} is outside 1..=10000")));
        }
        let secs = presign_secs(expiry)?;
        let queries = std::collections::HashMap::from([
            ("partNumber".to_owned(), part_number.to_string()),
            ("uploadId".to_owned(), upload_id.to_owned()),
        ]);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(size));
        let value = http::HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(md5))
            .map_err(|e| StorageError::Config(format!("Content-MD5 header for {key}: {e}")))?;
        headers.insert(http::HeaderName::from_static("content-md5"), value);
        self.bucket
            .presign_put(key.as_str(), secs, Some(headers), Some(queries))
            .await
            .map_err(|e| self.error("presign upload part", key.as_str(), e))
    }

    /// Completes upload `upload_id` from the parts' ETags in part order (part 1 first). The object becomes
    /// visible only now.
    pub async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        etags: Vec<String>,
    ) -> Result<(), StorageError> {
        let parts = etags.into_iter().zip(1u32..).map(|(etag, part_number)| Part { part_number, etag }).collect();
        self.complete(key, upload_id, parts).await
    }

    /// Completes an upload, retried like any request. When a retry finds the upload gone (`NoSuchUpload`)
    /// an earlier attempt completed it and only its answer was lost (a cut connection): the object must
    /// be there, which a HEAD checks.
    async fn complete(&self, key: &ObjectKey, upload_id: &str, parts: Vec<Part>) -> Result<(), StorageError> {
        let bucket = self.upload_bucket(key);
        let mut sent_before = false;
        let completed_here = self
            .request("complete multipart upload", key.as_str(), || {
                let retry = std::mem::replace(&mut sent_before, true);
                let parts = parts.clone();
                async move {
                    match bucket.complete_multipart_upload(key.as_str(), upload_id, parts).await {
                        Err(S3Error::HttpFailWithBody(404, body))
                            if retry && error_code(&body) == Some("NoSuchUpload") =>
                        {
                            Ok(false)
                        }
                        other => other.map(|_| true),
                    }
                }
            })
            .await?;
        if !completed_here && self.head(key).await?.is_none() {
            return Err(StorageError::S3Status {
                op: "complete multipart upload",
                key: key.as_str().to_owned(),
                status: 404,
                reason: format!("the upload vanished and no object took its place (bucket {})", self.config.bucket),
            });
        }
        Ok(())
    }

    /// Aborts upload `upload_id` (a remote client gave up); an upload already gone counts as aborted.
    pub async fn abort_multipart(&self, key: &ObjectKey, upload_id: &str) -> Result<(), StorageError> {
        self.request("abort multipart upload", key.as_str(), || async {
            match self.bucket.abort_upload(key.as_str(), upload_id).await {
                Ok(()) | Err(S3Error::HttpFailWithBody(404, _)) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Unfinished multipart uploads in the bucket (all of them, following pagination).
    pub async fn pending_uploads(&self) -> Result<Vec<PendingUpload>, StorageError> {
        let pages = self
            .bucket
            .list_multiparts_uploads(None, None)
            .await
            .map_err(|e| self.error("list multipart uploads", "", e))?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.uploads)
            .map(|u| PendingUpload {
                initiated: chrono::DateTime::parse_from_rfc3339(&u.initiated).ok().map(|t| t.to_utc()),
                key: u.key,
                upload_id: u.id,
            })
            .collect())
    }

    /// Aborts every upload initiated before now − `older_than` (uploads with an unreadable date are left
    /// alone), except those whose id is in `keep`. Tries them all; returns the first failure if any abort
    /// failed.
    pub(super) async fn abort_stale_uploads(
        &self,
        older_than: Duration,
        keep: &std::collections::HashSet<String>,
    ) -> Result<u64, StorageError> {
        let cutoff = chrono::Duration::from_std(older_than).ok().and_then(|d| chrono::Utc::now().checked_sub_signed(d));
        // A cutoff before any representable date: nothing is that old.
        let Some(cutoff) = cutoff else { return Ok(0) };
        let mut aborted = 0;
        let mut first_error = None;
        for upload in self.pending_uploads().await? {
            if upload.initiated.is_none_or(|t| t > cutoff) || keep.contains(&upload.upload_id) {
                continue;
            }
            match self.bucket.abort_upload(&upload.key, &upload.upload_id).await {
                Ok(()) => aborted += 1,
                // Finished or aborted by someone else meanwhile.
                Err(S3Error::HttpFailWithBody(404, _)) => {}
                Err(e) => {
                    first_error.get_or_insert(self.error("abort multipart upload", &upload.key, e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(aborted),
        }
    }

    /// Keys under `prefix`, sorted.
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let pages = self.bucket.list(prefix.to_owned(), None).await.map_err(|e| self.error("LIST", prefix, e))?;
        let mut keys: Vec<String> = pages.into_iter().flat_map(|p| p.contents).map(|o| o.key).collect();
        keys.sort();
        Ok(keys)
    }
}

/// A part an unfinished upload holds in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldPart {
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, unquoted: the hex MD5 of its bytes (S3 and Garage, unencrypted).
    pub etag: String,
}

/// True when `etag` (as S3 lists or answers it, quoted or not) is the hex MD5 `md5`: the part it names
/// holds exactly the bytes hashed (S3, Garage and MinIO; not buckets encrypting with KMS or customer
/// keys). How an interrupted upload's held parts are checked before being reused, by the server's own
/// uploads and by `niks3 push`.
pub fn etag_is_md5(etag: &str, md5: &[u8; 16]) -> bool {
    etag.trim_matches('"').eq_ignore_ascii_case(&format!("{:x}", md5::Digest(*md5)))
}

/// One multipart upload in progress: the parts done and the one uploading.
struct Multipart {
    key: String,
    upload_id: String,
    content_type: String,
    bucket: Arc<Bucket>,
    throttle: Arc<Throttle>,
    parts: Vec<Part>,
    in_flight: Option<JoinHandle<Result<Part, StorageError>>>,
    /// Parts the bucket already holds (continuing an interrupted upload): reused when they match.
    held: HashMap<u32, HeldPart>,
    /// Bytes sent in parts (not reused).
    sent: u64,
    /// Parts reused from `held`.
    reused_parts: u32,
    /// True when this upload continues an interrupted one.
    continued: bool,
}

impl Multipart {
    /// Waits for the part uploading now, then starts uploading `data` as the next part — or, when the
    /// bucket already holds this part with exactly these bytes (same size, ETag = MD5), reuses it.
    async fn send_part(&mut self, data: Vec<u8>, store: &S3Store) -> Result<(), StorageError> {
        self.wait_in_flight().await?;
        let number = u32::try_from(self.parts.len() + 1)
            .map_err(|_| StorageError::Config(format!("too many parts uploading {}", self.key)))?;
        let data = match self.held.remove(&number) {
            Some(held) if held.size == data.len() as u64 => {
                let (data, md5) = tokio::task::spawn_blocking(move || {
                    let md5 = md5::compute(&data).0;
                    (data, md5)
                })
                .await
                .map_err(|e| StorageError::S3 {
                    op: "upload part",
                    key: self.key.clone(),
                    reason: e.to_string(),
                })?;
                if etag_is_md5(&held.etag, &md5) {
                    self.parts.push(Part { part_number: number, etag: format!("\"{:x}\"", md5::Digest(md5)) });
                    self.reused_parts += 1;
                    return Ok(());
                }
                data
            }
            _ => data,
        };
        self.sent += data.len() as u64;
        let (bucket, key, id, ct) =
            (Arc::clone(&self.bucket), self.key.clone(), self.upload_id.clone(), self.content_type.clone());
        let (throttle, config) = (Arc::clone(&self.throttle), store.config.clone());
        // Each attempt sends a copy (rust-s3 takes the part by value): one more part of memory per upload
        // while a part is in flight, the price of retrying a part without the caller re-reading the NAR.
        self.in_flight = Some(tokio::spawn(async move {
            throttled(&throttle, "upload part", &key, &config, || {
                bucket.put_multipart_chunk(data.clone(), &key, number, &id, &ct)
            })
            .await
        }));
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<(), StorageError> {
        if let Some(task) = self.in_flight.take() {
            let part = task
                .await
                .map_err(|e| StorageError::S3 { op: "upload part", key: self.key.clone(), reason: e.to_string() })?
                .map_err(|e| self.vanished(e))?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Waits for the last part; returns all parts in order.
    async fn finish(&mut self) -> Result<Vec<Part>, StorageError> {
        self.wait_in_flight().await?;
        Ok(std::mem::take(&mut self.parts))
    }

    /// A continued upload that is gone mid-way (404: GC aborted it as stale, or another uploader of the
    /// same key completed it) is worth retrying — afresh, as its record goes with the failed attempt — so
    /// its 404 becomes a transient error.
    fn vanished(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::S3Status { op, key, status: 404, reason } if self.continued => StorageError::S3 {
                op,
                key,
                reason: format!("the continued multipart upload is gone ({reason}); a retry starts afresh"),
            },
            other => other,
        }
    }

    /// Best effort: stops the part in flight and aborts the upload (GC retries what fails here).
    async fn abort(mut self, store: &S3Store) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.bucket.abort_upload(&self.key, &self.upload_id).await {
            let e = store.error("abort multipart upload", &self.key, e);
            tracing::warn!(error = %e, "could not abort a failed multipart upload; GC will retry");
        }
    }
}

/// The parts of a ListParts answer (part number → size and unquoted ETag) and the marker of the next
/// page when it is truncated; `None` when the XML lacks what a part must have.
fn parse_list_parts(xml: &str) -> Option<(HashMap<u32, HeldPart>, Option<String>)> {
    fn tag<'a>(body: &'a str, name: &str) -> Option<&'a str> {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let len = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + len].trim())
    }
    let mut parts = HashMap::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Part>") {
        let end = rest[start..].find("</Part>")? + start;
        let part = &rest[start..end];
        let number = tag(part, "PartNumber")?.parse().ok()?;
        let size = tag(part, "Size")?.parse().ok()?;
        let etag = tag(part, "ETag")?.replace("&quot;", "").replace('"', "");
        parts.insert(number, HeldPart { size, etag });
        rest = &rest[end..];
    }
    let truncated = tag(xml, "IsTruncated").is_some_and(|t| t == "true");
    let next = if truncated { tag(xml, "NextPartNumberMarker").map(str::to_owned) } else { None };
    Some((parts, next))
}

/// Sends one request under `throttle`: waits for a permit, tries, reports the outcome, and retries
/// (after a jittered delay, with a new permit) what [`classify`] calls throttled or retryable, up to the
/// policy's attempts. `attempt` builds the request afresh each time.
async fn throttled<T, F, Fut>(
    throttle: &Arc<Throttle>,
    op: &'static str,
    key: &str,
    config: &S3Config,
    mut attempt: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S3Error>>,
{
    let policy = throttle.policy();
    let mut tries = 0;
    loop {
        tries += 1;
        let permit = throttle.acquire().await;
        let result = attempt().await;
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => classify(e),
        };
        throttle.finish(permit, outcome);
        match result {
            Ok(value) => return Ok(value),
            Err(e) if matches!(outcome, Outcome::Throttled | Outcome::Retry) && tries < policy.attempts => {
                let e = describe_error(op, key, config, e);
                // rust-s3 keeps the answer's headers from us: no Retry-After (see the module doc).
                let delay = policy.delay(tries, None);
                tracing::debug!(error = %e, attempt = tries, retry_in_ms = delay.as_millis() as u64, "retrying an S3 request");
                throttle.note_retry();
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(describe_error(op, key, config, e)),
        }
    }
}

/// S3 error codes that mean the body arrived other than it was sent (a byte changed or went missing on
/// the wire): sending it again is the fix.
const CORRUPTED_IN_TRANSIT: [&str; 5] =
    ["BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody", "RequestTimeout"];

/// What a failed request says about the store: overload (halve the limit, retry), a transient failure
/// (retry), or something request-level retries do not fix (give up here; [`StorageError::is_transient`]
/// still tells the caller whether to try again later, as for an outage).
fn classify(e: &S3Error) -> Outcome {
    match e {
        S3Error::HttpFailWithBody(429 | 503, _) => Outcome::Throttled,
        S3Error::HttpFailWithBody(status, body) => {
            let code = error_code(body);
            if code == Some("SlowDown") {
                Outcome::Throttled
            } else if matches!(status, 408 | 500 | 502 | 504) || code.is_some_and(|c| CORRUPTED_IN_TRANSIT.contains(&c))
            {
                Outcome::Retry
            } else {
                Outcome::Fatal
            }
        }
        // The store is down or does not answer in time: an outage, not overload, and not for seconds of
        // request-level retries (a timeout already took minutes): the caller's slower retry handles it.
        S3Error::Reqwest(e) if e.is_connect() || e.is_timeout() => Outcome::Fatal,
        S3Error::Reqwest(e) => {
            // A connection the store (or a proxy in front of it) cut is how some stores shed load.
            let mut source: Option<&dyn std::error::Error> = Some(e);
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>()
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    )
                {
                    return Outcome::Throttled;
                }
                source = s.source();
            }
            Outcome::Retry
        }
        _ => Outcome::Fatal,
    }
}

/// The `<Code>` of an S3 XML error body.
fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    Some(body[start..start + len].trim())
}

/// Maps a rust-s3 error to ours, naming the key and the bucket but never credentials or URLs.
fn describe_error(op: &'static str, key: &str, config: &S3Config, e: S3Error) -> StorageError {
    let key = key.to_owned();
    let bucket = &config.bucket;
    match e {
        S3Error::HttpFailWithBody(status, body) => {
            let detail = summarize_error_body(&body).unwrap_or_else(|| status_hint(status).to_owned());
            let reason = format!("{detail} (bucket {bucket})");
            if error_code(&body).is_some_and(|c| CORRUPTED_IN_TRANSIT.contains(&c)) {
                StorageError::Corrupted { op, key, reason }
            } else {
                StorageError::S3Status { op, key, status, reason }
            }
        }
        S3Error::Reqwest(e) => {
            let e = e.without_url();
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                source = s.source();
            }
            StorageError::S3 { op, key, reason: format!("{reason} (bucket {bucket} at {})", endpoint_name(config)) }
        }
        S3Error::Credentials(_) => StorageError::Config(format!("S3 credentials for bucket {bucket} are unusable")),
        S3Error::Region(e) => StorageError::Config(format!("S3 region for bucket {bucket}: {e}")),
        S3Error::UrlParse(e) => StorageError::Config(format!("S3 URL for bucket {bucket}: {e}")),
        other => StorageError::S3 { op, key, reason: format!("{other} (bucket {bucket})") },
    }
}

/// A presigned URL lifetime in seconds, within S3's limits.
fn presign_secs(expiry: Duration) -> Result<u32, StorageError> {
    let secs = expiry.as_secs();
    if secs == 0 || secs > MAX_PRESIGN_SECS {
        return Err(StorageError::Config(format!(
            "presigned URL lifetime must be 1..={MAX_PRESIGN_SECS} seconds, got {secs}"
        )));
    }
    u32::try_from(secs).map_err(|_| StorageError::Config("presign expiry out of range".to_owned()))
}

fn endpoint_name(config: &S3Config) -> &str {
    if config.endpoint.is_empty() { "AWS" } else { &config.endpoint }
}

/// What an error status means when the server sent no body (HEAD answers never have one).
fn status_hint(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 | 403 => "access denied (check the access key, secret key, region and bucket permissions)",
        404 => "not found (does the bucket exist?)",
        408 | 504 => "timeout",
        429 | 503 => "slow down / service unavailable",
        500..=599 => "server error",
        _ => "error",
    }
}

/// `Code: Message` from an S3 XML error body, or a short prefix of a non-XML body.
fn summarize_error_body(body: &str) -> Option<String> {
    fn tag<'a>(body: &'a str, name: &str) -> Option<&'a str> {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let len = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + len].trim())
    }
    let body = body.trim();
    if body.is_empty() {
        return None;
    }
    match (tag(body, "Code"), tag(body, "Message")) {
        (Some(code), Some(msg)) => Some(format!("{code}: {msg}")),
        (Some(code), None) => Some(code.to_owned()),
        (None, Some(msg)) => Some(msg.to_owned()),
        (None, None) => Some(body.chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            endpoint: "http://127.0.0.1:1".to_owned(),
            bucket: "b".to_owned(),
            region: "garage".to_owned(),
            access_key: "GKaccess".to_owned(),
            secret_key: "supersecretvalue".to_owned(),
            path_style: true,
            part_size: 8 << 20,
            max_requests: 4,
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let s = format!("{:?}", config());
        assert!(!s.contains("supersecretvalue") && !s.contains("GKaccess"), "{s}");
    }

    #[test]
    fn bad_configs_are_rejected() {
        type Edit = fn(&mut S3Config);
        let cases: [(Edit, &str); 3] = [
            (|c| c.bucket.clear(), "bucket name is empty"),
            (|c| c.part_size = 1024, "part size"),
            (|c| c.endpoint = "127.0.0.1:3900".to_owned(), "must start with http"),
        ];
        for (edit, want) in cases {
            let mut c = config();
            edit(&mut c);
            match S3Store::new(c) {
                Err(StorageError::Config(msg)) => assert!(msg.contains(want), "{msg}"),
                Err(e) => panic!("wrong error {e}"),
                Ok(_) => panic!("accepted a config that should fail with {want}"),
            }
        }
    }

    #[test]
    fn error_bodies_are_summarised() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Forbidden: Invalid signature</Message></Error>";
        assert_eq!(summarize_error_body(xml).as_deref(), Some("AccessDenied: Forbidden: Invalid signature"));
        assert_eq!(summarize_error_body("  "), None);
        let e = describe_error("HEAD", "k", &config(), S3Error::HttpFailWithBody(403, String::new()));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("access denied") && e.to_string().contains("bucket b"), "{e}");
        let e = describe_error("GET", "k", &config(), S3Error::HttpFailWithBody(503, String::new()));
        assert!(e.is_transient(), "{e}");
    }

    #[test]
    fn overload_and_corruption_are_retried_verdicts_are_not() {
        let body =
            |code: &str| format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>");
        let cases = [
            (503, body("SlowDown"), Outcome::Throttled),
            (429, String::new(), Outcome::Throttled),
            // Some stores answer SlowDown with another status.
            (400, body("SlowDown"), Outcome::Throttled),
            (400, body("BadDigest"), Outcome::Retry),
            (400, body("InvalidDigest"), Outcome::Retry),
            (400, body("XAmzContentSHA256Mismatch"), Outcome::Retry),
            (500, body("InternalError"), Outcome::Retry),
            (403, body("AccessDenied"), Outcome::Fatal),
            (400, body("InvalidPart"), Outcome::Fatal),
            (404, body("NoSuchUpload"), Outcome::Fatal),
        ];
        for (status, body, want) in cases {
            assert_eq!(classify(&S3Error::HttpFailWithBody(status, body.clone())), want, "{status} {body}");
        }
    }

    #[test]
    fn a_held_part_matches_only_the_md5_of_its_bytes() {
        let md5 = md5::compute(b"part").0;
        let hex = format!("{:x}", md5::Digest(md5));
        for etag in [hex.clone(), format!("\"{hex}\""), hex.to_ascii_uppercase()] {
            assert!(etag_is_md5(&etag, &md5), "{etag}");
        }
        assert!(!etag_is_md5(&hex, &md5::compute(b"other").0));
        assert!(!etag_is_md5(&format!("{hex}-2"), &md5), "a multipart object's ETag is no part's MD5");
    }

    #[test]
    fn list_parts_answers_are_read_with_their_pages() {
        let page = "<?xml version=\"1.0\"?><ListPartsResult><Bucket>b</Bucket><Key>nar/x</Key>\
            <UploadId>u</UploadId><PartNumberMarker>0</PartNumberMarker><NextPartNumberMarker>2</NextPartNumberMarker>\
            <MaxParts>2</MaxParts><IsTruncated>true</IsTruncated>\
            <Part><PartNumber>1</PartNumber><LastModified>2026-12-07T21:00:00Z</LastModified>\
            <ETag>&quot;0123abcd&quot;</ETag><Size>8388608</Size></Part>\
            <Part><PartNumber>2</PartNumber><ETag>\"4567ef\"</ETag><Size>5</Size></Part></ListPartsResult>";
        let (parts, next) = parse_list_parts(page).expect("readable");
        assert_eq!(next.as_deref(), Some("2"));
        assert_eq!(parts[&1], HeldPart { size: 8_388_608, etag: "0123abcd".to_owned() });
        assert_eq!(parts[&2], HeldPart { size: 5, etag: "4567ef".to_owned() });
        let last = "<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>";
        assert_eq!(parse_list_parts(last), Some((HashMap::new(), None)));
        assert_eq!(parse_list_parts("<ListPartsResult><Part><PartNumber>x</PartNumber></Part>"), None);
    }
}
