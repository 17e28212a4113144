//! Raw engine latency: every example model on every engine that can run it, batches of 1 and 64.
//!
//! Measures `Model::predict` on a prepared tensor (validation + engine run, no JSON), one run
//! state per model so nothing runs in parallel. Rows come from the goldens, repeated to fill
//! the batch. Run: `cargo bench -p serval-core --bench backends`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serval_core::{Tensor, TensorData};

#[path = "../tests/common/mod.rs"]
mod common;

const BATCHES: [usize; 2] = [1, 64];

/// The golden rows' features, repeated to `batch` rows, as one `[batch, F]` tensor.
fn features(model: &str, batch: usize) -> Tensor {
    let golden = common::golden(model);
    let rows: Vec<Vec<f32>> = golden
        .rows
        .iter()
        .map(|r| {
            r["features"]
                .as_array()
                .unwrap_or_else(|| panic!("{model}: golden row without features"))
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                .collect()
        })
        .collect();
    let width = rows[0].len();
    let values: Vec<f32> = rows.iter().cycle().take(batch).flatten().copied().collect();
    Tensor::new(vec![batch, width], TensorData::Fp32(values))
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn backends(c: &mut Criterion) {
    let ort = serval_core::backend::ort_status(None);
    if let Err(why) = &ort {
        eprintln!("ONNX Runtime unavailable, benchmarking tract only: {why}");
    }
    for model_name in common::MODELS {
        let mut group = c.benchmark_group(model_name);
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(20);
        for backend in ["tract", "ort"] {
            if backend == "ort" && ort.is_err() {
                continue;
            }
            let (_dir, repo) = common::forced_repo(model_name, backend);
            let model = match repo.load(model_name, None) {
                Ok(model) => model,
                // breast_cancer_gbt on tract: refused, tract gets binary tree ensembles wrong.
                Err(e) => {
                    eprintln!("{model_name}/{backend}: not benchmarked: {e}");
                    continue;
                }
            };
            for batch in BATCHES {
                let input = features(model_name, batch);
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(BenchmarkId::new(backend, batch), &input, |b, input| {
                    b.iter_batched(
                        || vec![("features".to_owned(), input.clone())],
                        |inputs| {
                            model
                                .predict(None, black_box(inputs))
                                .unwrap_or_else(|e| panic!("{model_name}/{backend}: {e}"))
                        },
                        BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, backends);
criterion_main!(benches);
