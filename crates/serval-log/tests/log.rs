//! The log end to end on real files: submit, group commit, roll into Parquet, recover what a
//! dead process left.

use std::path::Path;
use std::time::Duration;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serval_core::{Tensor, TensorData};
use serval_log::{
    LABELS_DIR, Label, LabelBatch, LogOptions, LoggedRequest, PREDICTIONS_DIR, PredictionLog,
    Source, WAL_DIR,
};

fn request(keys: &[&str]) -> LoggedRequest {
    let n = keys.len();
    let features = Tensor::new(vec![n, 2], TensorData::Fp32(vec![0.5; n * 2])).unwrap();
    let scores = Tensor::new(vec![n], TensorData::Fp32(vec![0.25; n])).unwrap();
    LoggedRequest {
        model: "iris".into(),
        version: 1,
        signature: "serving_default".into(),
        timestamp_us: 1_764_633_600_000_000, // 2025-12-02T00:00:00Z
        instance_timestamps_us: None,
        request_id: "req".into(),
        protocol: "v2_rest",
        source: Source::Online,
        keys: keys.iter().map(|k| Some((*k).to_owned())).collect(),
        inputs: Some(vec![("features".into(), features)]),
        outputs: Some(vec![("score".into(), scores)]),
        batched: true,
        queue_us: 1,
        compute_us: 2,
        sample_rate: 1.0,
    }
}

fn options(root: &Path, replica: &str) -> LogOptions {
    LogOptions {
        replica_id: replica.into(),
        sync_interval: Duration::from_millis(5),
        ..LogOptions::new(root.to_owned())
    }
}

/// Every key in the Parquet files under the predictions table.
fn logged_keys(root: &Path) -> Vec<String> {
    column_values(&root.join(PREDICTIONS_DIR), "key")
}

/// One text column's values across a table's files for model `iris` on 2025-12-02, sorted.
fn column_values(table: &Path, column: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let dir = table.join("model=iris").join("date=2025-12-02");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let column = batch.column_by_name(column).unwrap();
            let strings = column
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            keys.extend(strings.iter().map(|k| k.unwrap().to_owned()));
        }
    }
    keys.sort();
    keys
}

#[test]
fn synced_records_are_acknowledged_and_rolled_into_parquet_on_close() {
    let root = tempfile::tempdir().unwrap();
    let log = PredictionLog::open(options(root.path(), "a")).unwrap();
    let ack = log.submit(request(&["k1", "k2"]), true).unwrap().unwrap();
    ack.blocking_recv().unwrap().unwrap();
    assert!(log.submit(request(&["k3"]), false).unwrap().is_none());
    log.close();
    assert_eq!(logged_keys(root.path()), ["k1", "k2", "k3"]);
    assert_eq!(
        log.stats()
            .rolled
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn labels_share_the_segments_and_roll_into_their_own_table() {
    let root = tempfile::tempdir().unwrap();
    let log = PredictionLog::open(options(root.path(), "a")).unwrap();
    log.submit(request(&["k1"]), false).unwrap();
    let labels = LabelBatch::new(
        "iris".into(),
        1_764_633_600_000_001,
        vec![
            ("k1".into(), Label::text("setosa".into())),
            ("k9".into(), Label::text("3.5".into())),
        ],
    );
    let ack = log.submit_labels(labels, true).unwrap().unwrap();
    ack.blocking_recv().unwrap().unwrap();
    log.close();
    assert_eq!(logged_keys(root.path()), ["k1"]);
    let labels = root.path().join(LABELS_DIR);
    assert_eq!(column_values(&labels, "key"), ["k1", "k9"]);
    assert_eq!(column_values(&labels, "label"), ["3.5", "setosa"]);
}

#[test]
fn segments_of_a_process_that_died_are_adopted_and_rolled() {
    let root = tempfile::tempdir().unwrap();
    // A log that is never closed leaves its acknowledged records in a segment, as kill -9 does.
    let dead = root.path().join(WAL_DIR).join("dead");
    let log = PredictionLog::open(options(root.path(), "dead")).unwrap();
    let ack = log.submit(request(&["d1", "d2"]), true).unwrap().unwrap();
    ack.blocking_recv().unwrap().unwrap();
    std::mem::forget(log);
    let segment = std::fs::read_dir(&dead)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("the dead replica's segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
    // The leaked log's threads still hold its folder's lock: a copy of the segment, with a torn
    // tail, in a folder nobody holds plays the dead process's.
    let orphan = root.path().join(WAL_DIR).join("orphan");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("orphan-1.seg"), &bytes).unwrap();
    let log = PredictionLog::open(options(root.path(), "b")).unwrap();
    log.close();
    assert_eq!(logged_keys(root.path()), ["d1", "d2"]);
    assert!(!orphan.exists(), "an adopted folder is removed once rolled");
}

#[test]
fn a_second_process_cannot_take_the_same_write_ahead_folder() {
    let root = tempfile::tempdir().unwrap();
    let _first = PredictionLog::open(options(root.path(), "same")).unwrap();
    let second = PredictionLog::open(options(root.path(), "same"));
    assert!(matches!(second, Err(serval_log::LogError::InUse(_))));
}
