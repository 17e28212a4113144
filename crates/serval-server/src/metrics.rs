//! Prometheus metrics: request counts by outcome, and histograms of queue, compute and
//! end-to-end time per model and version (Triton only has counters; p99 needs histograms).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric name starts with this.
pub const PREFIX: &str = "serval";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process-wide recorder (once) and returns the handle that renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_instances".into()), BATCH_BUCKETS)
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Protocol labels; each version caches its success counter per protocol.
const PROTOCOLS: [&str; 3] = ["tfserving", "v2_rest", "v2_grpc"];

/// Counts a finished request and observes its end-to-end latency.
///
/// Looks the series up by name and labels (allocating them): for requests that resolved no
/// version. Requests that did go through [`VersionMetrics::record_request`].
pub fn record_request(
    model: &str,
    version: &str,
    protocol: &'static str,
    status: u16,
    elapsed: Duration,
) {
    let labels = [
        ("model", model.to_owned()),
        ("version", version.to_owned()),
        ("protocol", protocol.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!(format!("{PREFIX}_requests_total"), &labels).increment(1);
    if status == 200 {
        version_histogram("request_duration_seconds", model, version).record(elapsed.as_secs_f64());
    }
}

fn version_histogram(name: &str, model: &str, version: &str) -> Histogram {
    let labels = [("model", model.to_owned()), ("version", version.to_owned())];
    metrics::histogram!(format!("{PREFIX}_{name}"), &labels)
}

/// One model version's series, looked up once (on first use) and then recorded with atomics
/// only: the request and engine paths never format names or clone labels.
pub struct VersionMetrics {
    model: String,
    version: String,
    requests_ok: [OnceLock<Counter>; PROTOCOLS.len()],
    request_duration: OnceLock<Histogram>,
    queue_duration: OnceLock<Histogram>,
    compute_duration: OnceLock<Histogram>,
    batch_instances: OnceLock<Histogram>,
    precomputed_instances: OnceLock<Counter>,
}

impl VersionMetrics {
    /// The series of `model` version `version` (registered lazily, so unused ones stay absent).
    pub fn new(model: &str, version: u64) -> VersionMetrics {
        VersionMetrics {
            model: model.to_owned(),
            version: version.to_string(),
            requests_ok: Default::default(),
            request_duration: OnceLock::new(),
            queue_duration: OnceLock::new(),
            compute_duration: OnceLock::new(),
            batch_instances: OnceLock::new(),
            precomputed_instances: OnceLock::new(),
        }
    }

    fn histogram<'a>(&self, cell: &'a OnceLock<Histogram>, name: &str) -> &'a Histogram {
        cell.get_or_init(|| version_histogram(name, &self.model, &self.version))
    }

    /// Counts a finished request of this version and observes its end-to-end latency.
    pub fn record_request(&self, protocol: &'static str, status: u16, elapsed: Duration) {
        let cached = PROTOCOLS.iter().position(|p| *p == protocol);
        let Some(ix) = cached.filter(|_| status == 200) else {
            return record_request(&self.model, &self.version, protocol, status, elapsed);
        };
        self.requests_ok[ix]
            .get_or_init(|| {
                let labels = [
                    ("model", self.model.clone()),
                    ("version", self.version.clone()),
                    ("protocol", protocol.to_owned()),
                    ("status", "200".to_owned()),
                ];
                metrics::counter!(format!("{PREFIX}_requests_total"), &labels)
            })
            .increment(1);
        self.histogram(&self.request_duration, "request_duration_seconds")
            .record(elapsed.as_secs_f64());
    }

    /// Counts instances answered from a precomputed batch table instead of the engine.
    pub fn record_precomputed(&self, instances: usize) {
        self.precomputed_instances
            .get_or_init(|| {
                let labels = [
                    ("model", self.model.clone()),
                    ("version", self.version.clone()),
                ];
                metrics::counter!(format!("{PREFIX}_precomputed_instances_total"), &labels)
            })
            .increment(instances as u64);
    }

    /// Counts an engine thread that panicked (its batch failed, a new thread took its place).
    pub fn record_engine_panic(&self) {
        let labels = [
            ("model", self.model.clone()),
            ("version", self.version.clone()),
        ];
        metrics::counter!(format!("{PREFIX}_engine_panics_total"), &labels).increment(1);
    }

    /// Observes how long a queued request waited for a worker.
    pub fn record_queue(&self, queued: Duration) {
        self.histogram(&self.queue_duration, "queue_duration_seconds")
            .record(queued.as_secs_f64());
    }

    /// Observes one engine run: its duration and how many instances it held.
    pub fn record_batch(&self, compute: Duration, instances: usize) {
        self.histogram(&self.compute_duration, "compute_duration_seconds")
            .record(compute.as_secs_f64());
        self.histogram(&self.batch_instances, "batch_instances")
            .record(instances as f64);
    }
}

/// Counts a version that failed to load or warm up (it does not serve).
pub fn record_load_failure(model: &str, version: u64) {
    let labels = [
        ("model", model.to_owned()),
        ("version", version.to_string()),
    ];
    metrics::counter!(format!("{PREFIX}_model_load_failures_total"), &labels).increment(1);
}
