//! The prediction log's writer ceiling: how many records per second one writer thread appends,
//! group-commits and rolls into Parquet, and how many bytes a record takes in a segment and in
//! Parquet. Records are the tiny benchmark model's: 30 features in, a label and 2 probabilities
//! out, a UUID key, one instance per request (the online server's worst case).
//!
//!   cargo run --release -p serval-log --example write_throughput -- [REQUESTS] [synced]
//!
//! Prints one JSON object.

use std::path::Path;
use std::time::{Duration, Instant};

use serval_core::{Tensor, TensorData};
use serval_log::{LogOptions, LoggedRequest, PredictionLog, Source};

fn request(i: u64) -> LoggedRequest {
    let features: Vec<f32> = (0..30)
        .map(|j| (i as f32) * 0.001 + j as f32 * 0.37)
        .collect();
    LoggedRequest {
        model: "breast_cancer_lr".into(),
        version: 1,
        signature: "serving_default".into(),
        timestamp_us: 1_764_633_600_000_000 + i as i64,
        instance_timestamps_us: None,
        request_id: format!("0193a1b2-0000-7000-8000-{i:012}"),
        protocol: "tfserving",
        source: Source::Online,
        keys: vec![Some(format!("0193a1b2-0000-7000-9000-{i:012}"))],
        inputs: Some(vec![(
            "features".into(),
            Tensor::new(vec![1, 30], TensorData::Fp32(features)).expect("30 values"),
        )]),
        outputs: Some(vec![
            (
                "label".into(),
                Tensor::new(vec![1], TensorData::Int64(vec![(i % 2) as i64])).expect("1 value"),
            ),
            (
                "probabilities".into(),
                Tensor::new(vec![1, 2], TensorData::Fp32(vec![0.25, 0.75])).expect("2 values"),
            ),
        ]),
        batched: true,
        queue_us: 12,
        compute_us: 34,
        sample_rate: 1.0,
    }
}

fn bytes_under(dir: &Path, extension: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .map(|p| {
            if p.is_dir() {
                bytes_under(&p, extension)
            } else if p.extension().is_some_and(|e| e == extension) {
                p.metadata().map_or(0, |m| m.len())
            } else {
                0
            }
        })
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let requests: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let synced = args.next().is_some_and(|a| a == "synced");
    let root = std::env::temp_dir().join(format!("serval-log-bench-{}", std::process::id()));
    let options = LogOptions {
        replica_id: "bench".into(),
        queue_capacity: 100_000,
        // One segment for the whole run, so its size can be read before the roll.
        roll_bytes: u64::MAX,
        roll_interval: Duration::from_secs(3600),
        ..LogOptions::new(root.clone())
    };
    let log = PredictionLog::open(options)?;
    let started = Instant::now();
    let mut acks = Vec::new();
    // The log counts a refused submit as dropped; here it is retried, so it is not one.
    let mut retries = 0u64;
    for i in 0..requests {
        let mut next = request(i);
        loop {
            // A full queue is the writer's backpressure: wait for room rather than drop, so
            // the figure is the writer's throughput, not the queue's.
            match log.submit(next, synced) {
                Ok(ack) => {
                    acks.extend(ack);
                    break;
                }
                Err(serval_log::LogError::QueueFull) => {
                    retries += 1;
                    std::thread::sleep(Duration::from_micros(50));
                    next = request(i);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if acks.len() >= 1024 {
            for ack in acks.drain(..) {
                ack.blocking_recv()??;
            }
        }
    }
    for ack in acks.drain(..) {
        ack.blocking_recv()??;
    }
    // Everything submitted is in the segment once the writer has drained the queue.
    while log
        .stats()
        .written
        .load(std::sync::atomic::Ordering::Relaxed)
        + log
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
        < requests
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let appended = started.elapsed();
    let segment_bytes = bytes_under(&root.join(serval_log::WAL_DIR), "seg");
    log.close();
    let total = started.elapsed();
    let parquet_bytes = bytes_under(&root, "parquet");
    let stats = log.stats();
    let rolled = stats.rolled.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "requests": requests,
            "synced": synced,
            "records_rolled": rolled,
            "dropped": stats.dropped.load(std::sync::atomic::Ordering::Relaxed) - retries,
            "queue_full_retries": retries,
            "syncs": stats.syncs.load(std::sync::atomic::Ordering::Relaxed),
            "append_seconds": appended.as_secs_f64(),
            "records_per_second_appended": requests as f64 / appended.as_secs_f64(),
            "total_seconds_with_roll": total.as_secs_f64(),
            "records_per_second_with_roll": requests as f64 / total.as_secs_f64(),
            "segment_bytes_per_record": segment_bytes as f64 / requests as f64,
            "parquet_bytes_per_record": parquet_bytes as f64 / rolled.max(1) as f64,
        })
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
