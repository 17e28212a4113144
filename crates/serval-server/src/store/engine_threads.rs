//! How many engine threads a version gets when its config names no number.

use serval_core::Model;
use serval_core::warmup::zero_inputs;

/// Per-row engine time, at a full batch, below which one engine thread outruns the HTTP front end
/// on every core: the front end spends at least about 5 µs of CPU per request (an empty axum
/// handler's cost on the bench machine), so a thread computing a row in under 5 µs / cores keeps
/// up with all of them.
const FRONT_END_NS_PER_REQUEST: u128 = 5_000;

/// Engine threads for a version whose config names none: one per core, except for models so cheap
/// that one thread running full batches keeps up with the whole front end. For those a second
/// thread only splits the queue into smaller batches and adds a wake-up per request (measured on
/// the bench's logistic regression: 55.6k req/s with two threads, 64.8k with one; see
/// docs/benchmarks.md).
pub(super) fn default_workers(model: &Model) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows = model.config().batching.max_batch_size;
    if cores == 1 || rows <= 1 || !model.is_batchable() {
        return cores;
    }
    let Ok(signature) = model.signature(None) else {
        return cores;
    };
    let inputs = zero_inputs(signature, Some(rows), 1);
    // The fastest of a few runs: the model is warm, and noise only ever adds time. A run ten
    // times over the line settles it at once, so heavy models do not pay five full batches at
    // load.
    let line = front_end_line(rows, cores);
    let mut fastest = u128::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        // Zeros are not valid input for every model (string features it parses, say); such a
        // model keeps the safe default rather than failing to load over a heuristic.
        if model.predict(None, inputs.clone()).is_err() {
            return cores;
        }
        fastest = fastest.min(started.elapsed().as_nanos());
        if fastest >= 10 * line {
            break;
        }
    }
    tracing::debug!(model = %model.name(), version = model.version(), rows, ns_per_row = fastest / rows as u128, "engine cost at a full batch");
    workers_for(fastest, rows, cores)
}

/// Nanoseconds a full batch of `rows` may take for one engine thread to outrun `cores` HTTP
/// threads.
fn front_end_line(rows: usize, cores: usize) -> u128 {
    FRONT_END_NS_PER_REQUEST * rows as u128 / cores.max(1) as u128
}

/// The engine threads for a model whose fastest full batch of `rows` took `fastest_ns`: one when
/// that outruns the front end, else one per core.
fn workers_for(fastest_ns: u128, rows: usize, cores: usize) -> usize {
    if cores > 1 && rows > 1 && fastest_ns < front_end_line(rows, cores) {
        1
    } else {
        cores
    }
}

/// Resident set size of this process, from `/proc/self/statm` (0 where unavailable).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::workers_for;

    /// The rule on injected measurements: the timing itself is never asserted (it depends on
    /// the machine and its load).
    #[test]
    fn one_engine_thread_only_for_models_that_outrun_the_front_end() {
        // 64 rows on 2 cores: the line is 5 µs x 64 / 2 = 160 µs per batch.
        assert_eq!(workers_for(20_000, 64, 2), 1, "a logistic regression");
        assert_eq!(workers_for(159_999, 64, 2), 1);
        assert_eq!(workers_for(160_000, 64, 2), 2, "at the line");
        assert_eq!(workers_for(5_000_000, 64, 2), 2, "an MLP");
        assert_eq!(workers_for(20_000, 64, 1), 1, "one core: one thread anyway");
        assert_eq!(workers_for(20_000, 64, 8), 1);
        assert_eq!(
            workers_for(20_000, 1, 4),
            4,
            "no batching: nothing to gain from one thread"
        );
    }
}
