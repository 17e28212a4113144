//! Prometheus metrics: request counts by outcome, and histograms of queue, compute and
//! end-to-end time per model and version (Triton only has counters; p99 needs histograms).

use std::time::Duration;

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

/// Counts a finished request and observes its end-to-end latency.
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
        let labels = [("model", model.to_owned()), ("version", version.to_owned())];
        metrics::histogram!(format!("{PREFIX}_request_duration_seconds"), &labels)
            .record(elapsed.as_secs_f64());
    }
}

/// Observes how long a queued request waited for a worker.
pub fn record_queue(model: &str, version: u64, queued: Duration) {
    let labels = [
        ("model", model.to_owned()),
        ("version", version.to_string()),
    ];
    metrics::histogram!(format!("{PREFIX}_queue_duration_seconds"), &labels)
        .record(queued.as_secs_f64());
}

/// Observes one engine run: its duration and how many instances it held.
pub fn record_batch(model: &str, version: u64, compute: Duration, instances: usize) {
    let labels = [
        ("model", model.to_owned()),
        ("version", version.to_string()),
    ];
    metrics::histogram!(format!("{PREFIX}_compute_duration_seconds"), &labels)
        .record(compute.as_secs_f64());
    metrics::histogram!(format!("{PREFIX}_batch_instances"), &labels).record(instances as f64);
}

/// Counts a version that failed to load or warm up (it does not serve).
pub fn record_load_failure(model: &str, version: u64) {
    let labels = [
        ("model", model.to_owned()),
        ("version", version.to_string()),
    ];
    metrics::counter!(format!("{PREFIX}_model_load_failures_total"), &labels).increment(1);
}
