//! Process-wide counters for `/metrics` (Prometheus text format). Passed around explicitly as
//! `Arc<Metrics>`; there is no global registry.

use niks3_api::protocol::GcFigures;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Upper bounds (seconds) of the upload latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0];

/// Counters and gauges the server exports.
#[derive(Default)]
pub struct Metrics {
    /// Entries waiting in the spool (set by the drainer).
    pub queue_depth: AtomicU64,
    /// Store paths uploaded successfully.
    pub uploads_ok: AtomicU64,
    /// Store path uploads that failed (will be retried or quarantined).
    pub uploads_failed: AtomicU64,
    /// Compressed bytes written to the store by this server.
    pub bytes_uploaded: AtomicU64,
    /// Uncompressed NAR bytes processed by this server.
    pub nar_bytes: AtomicU64,
    /// Bytes received through the HTTP API (NARs relayed for the local backend).
    pub api_bytes_received: AtomicU64,
    /// Store paths left out because their NAR is over `--max-nar-size` (spool and push API).
    pub paths_skipped: AtomicU64,
    /// Compressed bytes not sent again because an interrupted multipart upload left them in the bucket.
    pub bytes_resumed: AtomicU64,
    latency: Mutex<Histogram>,
    queued_to_published: Mutex<Histogram>,
    http: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    gc: Mutex<Option<GcFigures>>,
    nix: Mutex<NixHealth>,
    /// The S3 backend's adaptive request limit (none with a local store).
    s3_throttle: OnceLock<Arc<niks3_storage::throttle::Throttle>>,
}

/// Whether the drainer can read the local Nix store, as last seen.
#[derive(Default)]
struct NixHealth {
    /// The cause of the current failure (cleared by the next successful entry).
    failing: Option<String>,
    /// Entries that met a store niks3 could not read (each retry counts).
    errors: u64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

impl Metrics {
    /// Records one finished path upload.
    pub(crate) fn record_upload(&self, ok: bool, nar_bytes: u64, stored_bytes: u64, seconds: f64) {
        if ok {
            self.uploads_ok.fetch_add(1, Ordering::Relaxed);
            self.nar_bytes.fetch_add(nar_bytes, Ordering::Relaxed);
            self.bytes_uploaded.fetch_add(stored_bytes, Ordering::Relaxed);
        } else {
            self.uploads_failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.latency.lock() {
            h.observe(seconds);
        }
    }

    /// Records `bytes` of a NAR that an interrupted upload had already sent (0: nothing to record).
    pub(crate) fn record_resumed(&self, bytes: u64) {
        self.bytes_resumed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records that a spool entry's closure is published, `seconds` after the hook queued it (what a
    /// builder waits between a build ending and its outputs being substitutable).
    pub(crate) fn record_queued_to_published(&self, seconds: f64) {
        if let Ok(mut h) = self.queued_to_published.lock() {
            h.observe(seconds);
        }
    }

    /// Records one HTTP response.
    pub(crate) fn record_http(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((route.to_owned(), status)).or_default() += 1;
        }
    }

    /// Records the figures of a finished GC run.
    pub(crate) fn record_gc(&self, figures: GcFigures) {
        if let Ok(mut g) = self.gc.lock() {
            *g = Some(figures);
        }
    }

    /// Records that an entry could not be processed because the local Nix store could not be read (`cause`
    /// says why). Returns true when the cause differs from the last one recorded, so that the caller logs
    /// each distinct cause once instead of once per entry and retry.
    pub(crate) fn record_nix_trouble(&self, cause: &str) -> bool {
        let Ok(mut n) = self.nix.lock() else { return true };
        n.errors += 1;
        if n.failing.as_deref() == Some(cause) {
            return false;
        }
        n.failing = Some(cause.to_owned());
        true
    }

    /// Records that an entry went through: the local Nix store is readable again. Returns the cause of
    /// the failure this ends, if there was one.
    pub(crate) fn record_nix_ok(&self) -> Option<String> {
        self.nix.lock().ok().and_then(|mut n| n.failing.take())
    }

    /// True while the drainer cannot read the local Nix store (the cause is in the log, not here: `/health`
    /// is public).
    pub(crate) fn nix_unreadable(&self) -> bool {
        self.nix.lock().is_ok_and(|n| n.failing.is_some())
    }

    /// Shows the S3 backend's adaptive request limit in `/metrics` (set once, at startup).
    pub fn watch_s3_throttle(&self, throttle: Arc<niks3_storage::throttle::Throttle>) {
        let _ = self.s3_throttle.set(throttle);
    }

    /// Renders everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        counter(
            &mut out,
            "niks3_queue_depth",
            "Spool entries waiting to be uploaded.",
            "gauge",
            self.queue_depth.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP niks3_uploads_total Store path uploads by result.\n# TYPE niks3_uploads_total counter"
        );
        let _ = writeln!(out, "niks3_uploads_total{{result=\"ok\"}} {}", self.uploads_ok.load(Ordering::Relaxed));
        let _ =
            writeln!(out, "niks3_uploads_total{{result=\"failed\"}} {}", self.uploads_failed.load(Ordering::Relaxed));
        counter(
            &mut out,
            "niks3_uploaded_bytes_total",
            "Compressed bytes written to the store.",
            "counter",
            self.bytes_uploaded.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "niks3_nar_bytes_total",
            "Uncompressed NAR bytes uploaded.",
            "counter",
            self.nar_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "niks3_paths_skipped_total",
            "Store paths not uploaded because their NAR is over --max-nar-size.",
            "counter",
            self.paths_skipped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "niks3_resumed_bytes_total",
            "Compressed bytes an interrupted multipart upload had sent, reused instead of sent again.",
            "counter",
            self.bytes_resumed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "niks3_api_received_bytes_total",
            "Bytes received through the push API.",
            "counter",
            self.api_bytes_received.load(Ordering::Relaxed),
        );
        if let Ok(n) = self.nix.lock() {
            counter(
                &mut out,
                "niks3_nix_store_up",
                "1 when the drainer can read the local Nix store, 0 while entries wait for it.",
                "gauge",
                u64::from(n.failing.is_none()),
            );
            counter(
                &mut out,
                "niks3_nix_store_errors_total",
                "Entry attempts that could not read the local Nix store (kept queued and retried).",
                "counter",
                n.errors,
            );
        }
        if let Some(t) = self.s3_throttle.get() {
            let s = t.stats();
            for (name, help, kind, v) in [
                (
                    "niks3_s3_concurrency_limit",
                    "S3 requests allowed in flight now (halved while the store throttles, grown back slowly).",
                    "gauge",
                    s.limit,
                ),
                (
                    "niks3_s3_concurrency_max",
                    "The configured most S3 requests in flight (--s3-max-requests).",
                    "gauge",
                    s.max,
                ),
                (
                    "niks3_s3_concurrency_limit_lowest",
                    "The lowest the S3 request limit has been since start.",
                    "gauge",
                    s.lowest,
                ),
                ("niks3_s3_requests_in_flight", "S3 requests in flight now.", "gauge", s.in_flight),
                (
                    "niks3_s3_throttled_total",
                    "S3 answers that signalled overload (429, 503 SlowDown, reset connections).",
                    "counter",
                    s.throttled,
                ),
                ("niks3_s3_retries_total", "S3 requests sent again after a transient failure.", "counter", s.retries),
                (
                    "niks3_s3_concurrency_decreases_total",
                    "Times the S3 request limit was halved.",
                    "counter",
                    s.decreases,
                ),
            ] {
                counter(&mut out, name, help, kind, v);
            }
        }
        if let Ok(h) = self.latency.lock() {
            h.render(&mut out, "niks3_upload_duration_seconds", "Time to upload one store path.");
        }
        if let Ok(h) = self.queued_to_published.lock() {
            h.render(
                &mut out,
                "niks3_queued_to_published_seconds",
                "Time from the hook queueing a spool entry to its closure being in the cache (entry acknowledged).",
            );
        }
        if let Ok(m) = self.http.lock() {
            let _ = writeln!(
                out,
                "# HELP niks3_http_requests_total HTTP requests by route and status.\n# TYPE niks3_http_requests_total counter"
            );
            for ((route, status), n) in m.iter() {
                let _ = writeln!(out, "niks3_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        if let Ok(g) = self.gc.lock()
            && let Some(g) = *g
        {
            for (name, v) in [
                ("failed_uploads_deleted", g.failed_uploads_deleted),
                ("old_closures_deleted", g.old_closures_deleted),
                ("objects_marked_for_deletion", g.objects_marked_for_deletion),
                ("objects_deleted_after_grace_period", g.objects_deleted_after_grace_period),
                ("objects_failed_to_delete", g.objects_failed_to_delete),
            ] {
                counter(&mut out, &format!("niks3_gc_last_{name}"), "Figure of the last GC run.", "gauge", v);
            }
        }
        out
    }
}

/// The drainer's reports land in the same counters `/metrics` and `/health` show.
impl niks3_local::drain::DrainObserver for Metrics {
    fn queue_depth(&self, depth: u64) {
        self.queue_depth.store(depth, Ordering::Relaxed);
    }

    fn queued_to_published(&self, waited: std::time::Duration) {
        self.record_queued_to_published(waited.as_secs_f64());
    }

    fn nix_trouble(&self, cause: &str) -> bool {
        self.record_nix_trouble(cause)
    }

    fn nix_ok(&self) -> Option<String> {
        self.record_nix_ok()
    }
}
