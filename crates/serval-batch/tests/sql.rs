//! `predict()` in SQL and `serval batch` jobs on the bundled example models, checked against the
//! onnxruntime goldens of `examples/generate.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Int64Type};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use serde_json::Value;
use serval_batch::{
    BatchJob, BatchRun, FileFormat, ModelCatalog, OnError, SessionOptions, batch_session,
};
use serval_core::manifest::{BatchManifest, MANIFEST_FILE};
use serval_core::{ModelRepository, RepositoryOptions};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn catalog() -> Arc<ModelCatalog> {
    let repo =
        ModelRepository::open(examples().join("models"), RepositoryOptions::default()).unwrap();
    Arc::new(ModelCatalog::new(repo))
}

fn golden(model: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(examples().join(format!("golden/{model}.json"))).unwrap(),
    )
    .unwrap()
}

fn options(batch_size: usize, on_error: OnError) -> SessionOptions {
    SessionOptions {
        partitions: 2,
        batch_size,
        on_error,
        memory_limit: None,
    }
}

/// `predict('m', f0, ..., f29)` over the bundled CSV (keys `breast_cancer_lr-<i>`).
fn predict_sql(model_spec: &str, table: &str) -> String {
    let features: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    format!(
        "SELECT key, predict('{model_spec}', {}) AS p FROM {table}",
        features.join(", ")
    )
}

async fn sql(ctx: &SessionContext, query: &str) -> Vec<RecordBatch> {
    ctx.sql(query).await.unwrap().collect().await.unwrap()
}

/// A session (failing on bad rows) with the bundled CSV registered as `t`.
async fn csv_session(batch_size: usize) -> (SessionContext, Arc<serval_batch::PredictReport>) {
    let (ctx, report) = batch_session(catalog(), options(batch_size, OnError::Fail));
    let csv = examples().join("data/breast_cancer.csv");
    ctx.register_csv("t", csv.to_str().unwrap(), CsvReadOptions::new())
        .await
        .unwrap();
    (ctx, report)
}

fn key_index(key: &str) -> usize {
    key.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn predict_matches_onnxruntime_with_one_call_per_record_batch() {
    let (ctx, report) = csv_session(8).await;
    let golden = golden("breast_cancer_lr");
    let batches = sql(&ctx, &predict_sql("breast_cancer_lr", "t")).await;
    let mut seen = 0;
    for batch in &batches {
        let keys = batch.column(0).as_string::<i32>();
        let p = batch.column(1).as_struct();
        let labels = p
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Int64Type>();
        let probs = p
            .column_by_name("probabilities")
            .unwrap()
            .as_fixed_size_list();
        assert_eq!(
            p.column_by_name("serval_error").unwrap().null_count(),
            batch.num_rows()
        );
        for row in 0..batch.num_rows() {
            let i = key_index(keys.value(row));
            assert_eq!(
                labels.value(row),
                golden["outputs"]["label"][i].as_i64().unwrap()
            );
            let got = probs.value(row);
            let got = got.as_primitive::<Float32Type>();
            for c in 0..2 {
                let want = golden["outputs"]["probabilities"][i][c].as_f64().unwrap();
                assert!(
                    (got.value(c) as f64 - want).abs() < 1e-5,
                    "row {i}: {} vs {want}",
                    got.value(c)
                );
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 25);
    assert_eq!(report.rows(), 25);
    // 25 rows in record batches of at most 8: never one call per row.
    assert!(
        (4..=8).contains(&report.model_calls()),
        "{} model calls",
        report.model_calls()
    );
}

#[tokio::test]
async fn signatures_versions_and_struct_fields_are_selectable() {
    let (ctx, _) = csv_session(8192).await;
    let golden = golden("breast_cancer_lr");
    let query = format!(
        "SELECT key, p['diagnosis'] AS diagnosis FROM ({}) ORDER BY key",
        predict_sql("breast_cancer_lr:screening', '1", "t")
    );
    let batches = sql(&ctx, &query).await;
    for batch in &batches {
        let keys = batch.column(0).as_string::<i32>();
        let diagnosis = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let i = key_index(keys.value(row));
            assert_eq!(
                diagnosis.value(row),
                golden["signatures"]["screening"]["diagnosis"][i]
                    .as_str()
                    .unwrap()
            );
        }
    }
    let err = ctx
        .sql(&predict_sql("breast_cancer_lr', '9", "t"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("version") && err.contains('9'), "{err}");
}

#[tokio::test]
async fn wrong_feature_count_and_unknown_model_are_clear_errors() {
    let (ctx, _) = csv_session(8192).await;
    let err = ctx
        .sql("SELECT predict('breast_cancer_lr', f0, f1) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("takes 30 values per row") && err.contains("f0, f1"),
        "{err}"
    );
    let err = ctx
        .sql("SELECT predict('nope', f0) FROM t")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// A CSV whose third row has an unreadable value and fourth a missing one.
fn write_bad_csv(dir: &Path) -> PathBuf {
    let src = std::fs::read_to_string(examples().join("data/breast_cancer.csv")).unwrap();
    let mut lines: Vec<String> = src.lines().map(str::to_owned).collect();
    let mut cells: Vec<&str> = lines[3].split(',').collect();
    cells[2] = "oops";
    let bad = cells.join(",");
    let mut cells: Vec<&str> = lines[4].split(',').collect();
    cells[5] = "";
    let missing = cells.join(",");
    lines[3] = bad;
    lines[4] = missing;
    let path = dir.join("bad.csv");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn job(input: &Path, output: &Path, on_error: OnError) -> BatchJob {
    BatchJob {
        model: "breast_cancer_lr".into(),
        version: None,
        signature: None,
        input: input.to_str().unwrap().into(),
        input_format: None,
        output: output.to_str().unwrap().into(),
        format: FileFormat::Parquet,
        key: Some("key".into()),
        columns: Some(vec![]),
        features: None,
        overwrite: false,
        session: options(8, on_error),
        prediction_log: None,
        time_column: None,
    }
}

async fn run_job(job: BatchJob) -> Result<BatchManifest, serval_batch::BatchError> {
    BatchRun::plan(catalog(), job).await?.execute().await
}

fn read_output(ctx_dir: &Path) -> BatchManifest {
    serde_json::from_slice(&std::fs::read(ctx_dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

#[tokio::test]
async fn a_job_writes_every_row_once_with_its_key_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifest = run_job(job(
        &examples().join("data/breast_cancer.csv"),
        &out,
        OnError::Fail,
    ))
    .await
    .unwrap();
    assert_eq!(
        (manifest.rows_in, manifest.rows_out, manifest.rows_failed),
        (25, 25, 0)
    );
    assert_eq!(read_output(&out), manifest);
    assert!(!manifest.files.is_empty());
    assert!(
        manifest
            .files
            .iter()
            .all(|f| out.join(f).is_file() && f.starts_with("part-"))
    );
    assert!(
        !out.join("_temporary")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    );

    let ctx = SessionContext::new();
    ctx.register_parquet("o", out.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let batches = sql(&ctx, "SELECT count(*), count(DISTINCT key) FROM o").await;
    let counts = batches[0].column(0).as_primitive::<Int64Type>().value(0);
    let distinct = batches[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!((counts, distinct), (25, 25));
    let golden = golden("breast_cancer_lr");
    for batch in sql(&ctx, "SELECT arrow_cast(key, 'Utf8') AS key, label FROM o").await {
        let keys = batch.column(0).as_string::<i32>();
        let labels = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            assert_eq!(
                labels.value(row),
                golden["outputs"]["label"][key_index(keys.value(row))]
                    .as_i64()
                    .unwrap()
            );
        }
    }

    // The output is not silently replaced.
    let again = run_job(job(
        &examples().join("data/breast_cancer.csv"),
        &out,
        OnError::Fail,
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(again.contains("--overwrite"), "{again}");
}

#[tokio::test]
async fn bad_rows_fail_skip_or_null_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_bad_csv(dir.path());

    let err = run_job(job(&input, &dir.path().join("fail"), OnError::Fail))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("'f1'") && err.contains("oops"), "{err}");
    assert!(!dir.path().join("fail").join(MANIFEST_FILE).exists());

    let skipped = run_job(job(&input, &dir.path().join("skip"), OnError::Skip))
        .await
        .unwrap();
    assert_eq!(
        (skipped.rows_in, skipped.rows_out, skipped.rows_failed),
        (25, 23, 2)
    );

    let nulled = run_job(job(&input, &dir.path().join("null"), OnError::Null))
        .await
        .unwrap();
    assert_eq!(
        (nulled.rows_in, nulled.rows_out, nulled.rows_failed),
        (25, 25, 2)
    );
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "o",
        dir.path().join("null").to_str().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let batches = sql(
        &ctx,
        "SELECT arrow_cast(key, 'Utf8'), arrow_cast(serval_error, 'Utf8') FROM o WHERE label IS NULL ORDER BY key",
    )
    .await;
    let rows: Vec<(String, String)> = batches
        .iter()
        .flat_map(|b| {
            let keys = b.column(0).as_string::<i32>().clone();
            let errors = b.column(1).as_string::<i32>().clone();
            (0..b.num_rows()).map(move |r| (keys.value(r).to_owned(), errors.value(r).to_owned()))
        })
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].1.contains("'f1'") && rows[0].1.contains("oops"),
        "{rows:?}"
    );
    assert!(
        rows[1].1.contains("'f4'") && rows[1].1.contains("null"),
        "{rows:?}"
    );
}
