//! The dynamic batcher on real example models: rows come back to the right requests, a batch
//! that fills does not wait out the delay, a full queue is refused at once, abandoned requests
//! are never computed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serval_core::{Model, ModelRepository, RepositoryOptions, Tensor, TensorData};
use serval_server::batcher::{Batcher, Computed};
use serval_server::error::ServerError;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

/// Loads `iris_lr` (tract) with extra config lines, from a private copy of the example.
fn load_iris(config: &str) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("iris_lr");
    std::fs::create_dir_all(model_dir.join("1")).unwrap();
    std::fs::copy(
        examples().join("iris_lr/1/model.onnx"),
        model_dir.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::write(model_dir.join("config.toml"), config).unwrap();
    let repository = ModelRepository::open(dir.path(), RepositoryOptions::default()).unwrap();
    let model = Arc::new(repository.load("iris_lr", None).unwrap());
    (dir, model)
}

/// `rows` distinct iris-like instances starting at `seed`.
fn features(seed: usize, rows: usize) -> Vec<(String, Tensor)> {
    let values: Vec<f32> = (0..rows * 4)
        .map(|i| ((seed * 4 + i) % 37) as f32 * 0.2)
        .collect();
    vec![(
        "features".to_owned(),
        Tensor::new(vec![rows, 4], TensorData::Fp32(values)).unwrap(),
    )]
}

/// Same outputs up to float rounding: the engine may pick different kernels per batch size.
#[track_caller]
fn assert_close(got: &[(String, Tensor)], expected: &[(String, Tensor)], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: output count");
    for ((gn, g), (en, e)) in got.iter().zip(expected) {
        assert_eq!(
            (gn, g.shape()),
            (en, e.shape()),
            "{what}: output names/shapes"
        );
        match (g.data(), e.data()) {
            (TensorData::Fp32(g), TensorData::Fp32(e)) => {
                for (a, b) in g.iter().zip(e) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                        "{what}: {gn} {a} != {b}"
                    );
                }
            }
            (g, e) => assert_eq!(g, e, "{what}: {gn}"),
        }
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_get_their_own_rows_back() {
    let (_dir, model) = load_iris("[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 2000\n");
    let batcher = Arc::new(Batcher::start(model.clone(), 1));
    let mut tasks = Vec::new();
    for request in 0..64usize {
        let (batcher, model) = (batcher.clone(), model.clone());
        tasks.push(tokio::spawn(async move {
            let rows = 1 + request % 7;
            let expected = model.predict(None, features(request, rows)).unwrap();
            let valid = model.validate(None, features(request, rows)).unwrap();
            let got = batcher.submit(valid, far()).await.unwrap();
            assert_close(&got.outputs, &expected, &format!("request {request}"));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let executions = batcher.stats().executions.load(Ordering::Relaxed);
    assert!(
        executions < 64,
        "requests were never batched together ({executions} engine runs)"
    );
    assert_eq!(batcher.stats().success.load(Ordering::Relaxed), 64);
}

#[tokio::test]
async fn oversize_client_batch_is_split_not_rejected() {
    let (_dir, model) = load_iris("[batching]\nmax_batch_size = 8\n");
    let batcher = Batcher::start(model.clone(), 1);
    let expected = model.predict(None, features(3, 50)).unwrap();
    let got = batcher
        .submit(model.validate(None, features(3, 50)).unwrap(), far())
        .await
        .unwrap();
    assert_close(&got.outputs, &expected, "split request");
    assert!(
        got.compute > Duration::ZERO,
        "the engine time of its parts is reported"
    );
    assert!(
        batcher.stats().executions.load(Ordering::Relaxed) >= 7,
        "50 rows with max 8 need at least 7 runs"
    );
}

/// A submitted request's task: its outputs, or why it was refused.
type Submitted = tokio::task::JoinHandle<Result<Computed, ServerError>>;

/// Submits `n` one-row requests concurrently, each on its own task.
fn submit_single_rows(batcher: &Arc<Batcher>, model: &Model, n: usize) -> Vec<Submitted> {
    (0..n)
        .map(|seed| {
            let batcher = batcher.clone();
            let valid = model.validate(None, features(seed, 1)).unwrap();
            tokio::spawn(async move { batcher.submit(valid, far()).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_fills_runs_without_waiting_out_the_delay() {
    // A delay of 60 s: only the batch filling (to max_batch_size, or to a preferred size) can
    // wake the worker that waits on the first request.
    for (batching, requests) in [
        ("max_batch_size = 4", 4),
        ("max_batch_size = 64\npreferred_batch_sizes = [3]", 3),
    ] {
        let (_dir, model) = load_iris(&format!(
            "[batching]\n{batching}\nmax_queue_delay_us = 60000000\n"
        ));
        let batcher = Arc::new(Batcher::start(model.clone(), 1));
        for task in submit_single_rows(&batcher, &model, requests) {
            let answered = tokio::time::timeout(Duration::from_secs(30), task).await;
            assert!(
                matches!(answered, Ok(Ok(Ok(_)))),
                "{batching}: a full batch waited for the delay"
            );
        }
        assert_eq!(
            batcher.stats().executions.load(Ordering::Relaxed),
            1,
            "{batching}: one batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_refused_at_once() {
    // Capacity is max_queue_size + workers; 0 leaves no waiting room beyond the one worker.
    for max_queue_size in [0, 1] {
        refused_beyond_capacity(max_queue_size).await;
    }
}

async fn refused_beyond_capacity(max_queue_size: usize) {
    // The worker waits up to 10 s for a full batch, so admitted requests stay queued.
    let (_dir, model) = load_iris(&format!(
        "[batching]\nmax_batch_size = 1000\nmax_queue_delay_us = 10000000\nmax_queue_size = {max_queue_size}\n",
    ));
    let batcher = Arc::new(Batcher::start(model.clone(), 1));
    let capacity = max_queue_size + 1;
    let waiting = submit_single_rows(&batcher, &model, capacity);
    while batcher.queued() < capacity {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let res = batcher
        .submit(model.validate(None, features(9, 1)).unwrap(), far())
        .await;
    assert!(
        matches!(res, Err(ServerError::Overloaded(_))),
        "expected Overloaded"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusal must not wait for the queue"
    );
    for task in waiting {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_request_is_never_computed() {
    let (_dir, model) =
        load_iris("[batching]\nmax_batch_size = 1000\nmax_queue_delay_us = 300000\n");
    let batcher = Batcher::start(model.clone(), 1);
    let valid = model.validate(None, features(1, 1)).unwrap();
    // The client gives up (drops its future) before the batch is cut.
    let res = tokio::time::timeout(Duration::from_millis(20), batcher.submit(valid, far())).await;
    assert!(res.is_err(), "the request should still be queued");
    // Another request wakes the worker once the delay has passed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let valid = model.validate(None, features(2, 1)).unwrap();
    batcher.submit(valid, far()).await.unwrap();
    assert_eq!(
        batcher.stats().inferences.load(Ordering::Relaxed),
        1,
        "only the live request is computed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_request_is_dropped_before_compute() {
    let (_dir, model) =
        load_iris("[batching]\nmax_batch_size = 1000\nmax_queue_delay_us = 200000\n");
    let batcher = Batcher::start(model.clone(), 1);
    let valid = model.validate(None, features(1, 1)).unwrap();
    let res = batcher
        .submit(valid, Instant::now() + Duration::from_millis(10))
        .await;
    assert!(
        matches!(res, Err(ServerError::Timeout(_))),
        "expected Timeout"
    );
    assert_eq!(batcher.stats().inferences.load(Ordering::Relaxed), 0);
}
