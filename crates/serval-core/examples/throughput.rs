//! Raw in-process engine throughput, the compute ceiling for `bench/load.sh`: loads one model from
//! a repository with [`ModelRepository`], then calls [`Model::predict`] from one thread per core
//! (`std::thread::available_parallelism()`) for a few seconds per batch size, and prints rows/s.
//!
//! ```sh
//! cargo run --release -p serval-core --example throughput -- \
//!     examples/models breast_cancer_mlp_large --data examples/data/breast_cancer_mlp_large.jsonl
//! ```
//!
//! Rows are the `features` (the signature's first input) of the JSON Lines file given with
//! `--data`, repeated to fill each batch. No JSON parsing, HTTP or queueing is timed: only
//! validation, the engine run and post-processing, as the server's engine threads do them.
//! `--json FILE` also writes the results as one JSON object.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serval_core::{ModelRepository, RepositoryOptions, Tensor, TensorData};

const DEFAULT_BATCHES: [usize; 6] = [1, 8, 32, 64, 128, 256];

struct Args {
    repository: PathBuf,
    model: String,
    data: PathBuf,
    seconds: f64,
    warmup: f64,
    batches: Vec<usize>,
    json: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: throughput <repository> <model> --data ROWS.jsonl [--seconds S] [--warmup S] \
         [--batches 1,8,32] [--json FILE]"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut data = None;
    let mut seconds = 3.0;
    let mut warmup = 0.5;
    let mut batches = DEFAULT_BATCHES.to_vec();
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--warmup" => warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--json" => json = Some(PathBuf::from(value()?)),
            "--batches" => {
                batches = value()?
                    .split(',')
                    .map(|b| {
                        b.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--batches: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => usage(),
            _ if arg.starts_with("--") => return Err(format!("unknown option '{arg}'")),
            _ => positional.push(arg),
        }
    }
    let [repository, model] = <[String; 2]>::try_from(positional).unwrap_or_else(|_| usage());
    Ok(Args {
        repository: repository.into(),
        model,
        data: data.ok_or("--data is required")?,
        seconds,
        warmup,
        batches,
        json,
    })
}

/// The `input` field of every line of a JSON Lines file, as f32 rows.
fn read_rows(path: &PathBuf, input: &str) -> Result<Vec<Vec<f32>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(ix, line)| {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), ix + 1))?;
            value[input]
                .as_array()
                .ok_or_else(|| format!("{}:{}: no '{input}' array", path.display(), ix + 1))?
                .iter()
                .map(|x| {
                    x.as_f64().map(|x| x as f32).ok_or_else(|| {
                        format!("{}:{}: non-number in '{input}'", path.display(), ix + 1)
                    })
                })
                .collect()
        })
        .collect()
}

/// Runs `predict` on `threads` threads for `duration`; returns rows per second over all threads.
fn measure(
    model: &Arc<serval_core::Model>,
    input: &str,
    tensor: &Tensor,
    threads: usize,
    duration: Duration,
) -> Result<f64, String> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let model = model.clone();
            let tensor = tensor.clone();
            let input = input.to_owned();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(u64, Duration), String> {
                barrier.wait();
                let start = Instant::now();
                let mut rows = 0u64;
                while start.elapsed() < duration {
                    let out = model
                        .predict(None, vec![(input.clone(), tensor.clone())])
                        .map_err(|e| e.to_string())?;
                    std::hint::black_box(out);
                    rows += tensor.rows() as u64;
                }
                Ok((rows, start.elapsed()))
            })
        })
        .collect();
    let mut total = 0.0;
    for h in handles {
        let (rows, elapsed) = h
            .join()
            .map_err(|_| "a worker thread panicked".to_owned())??;
        total += rows as f64 / elapsed.as_secs_f64();
    }
    Ok(total)
}

fn run(args: Args) -> Result<(), String> {
    let repo = ModelRepository::open(&args.repository, RepositoryOptions::default())
        .map_err(|e| e.to_string())?;
    let model = Arc::new(repo.load(&args.model, None).map_err(|e| e.to_string())?);
    let signature = model.signature(None).map_err(|e| e.to_string())?;
    let input = signature
        .inputs
        .first()
        .ok_or("the default signature has no input")?
        .name
        .clone();
    let rows = read_rows(&args.data, &input)?;
    let width = rows.first().ok_or("no rows in --data")?.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "model {} v{} on {} ({}); {threads} threads; {} s per batch size",
        model.name(),
        model.version(),
        model.backend_choice().kind.as_str(),
        model.backend_choice().reason,
        args.seconds
    );
    println!("| batch | rows/s |");
    println!("|---:|---:|");
    let mut results = Vec::new();
    for &batch in &args.batches {
        let values: Vec<f32> = rows.iter().cycle().take(batch).flatten().copied().collect();
        let tensor =
            Tensor::new(vec![batch, width], TensorData::Fp32(values)).map_err(|e| e.to_string())?;
        measure(
            &model,
            &input,
            &tensor,
            threads,
            Duration::from_secs_f64(args.warmup),
        )?;
        let rate = measure(
            &model,
            &input,
            &tensor,
            threads,
            Duration::from_secs_f64(args.seconds),
        )?;
        println!("| {batch} | {rate:.0} |");
        results.push((batch, rate));
    }
    let (best_batch, best) = results
        .iter()
        .copied()
        .fold((0, 0.0), |acc, r| if r.1 > acc.1 { r } else { acc });
    println!("best: {best:.0} rows/s at batch {best_batch}");
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": model.name(),
            "version": model.version(),
            "backend": model.backend_choice().kind.as_str(),
            "threads": threads,
            "seconds": args.seconds,
            "results": results
                .iter()
                .map(|(b, r)| serde_json::json!({"batch": b, "rows_per_s": r}))
                .collect::<Vec<_>>(),
            "best": {"batch": best_batch, "rows_per_s": best},
        });
        std::fs::write(path, format!("{json}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
