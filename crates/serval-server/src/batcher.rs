//! Per-version dynamic batching: a bounded queue drained by dedicated engine threads.
//!
//! Requests are admitted or refused at once (429) by count and by bytes, so memory stays bounded
//! under any load. Each worker thread takes the oldest request plus every compatible request
//! behind it up to `max_batch_size` instances (TEI-style: no waiting unless
//! `max_queue_delay_us` asks for it), runs the engine once, and scatters the rows back.
//! Requests whose client left, or whose deadline passed, are dropped before compute.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serval_core::config::BatchingConfig;
use serval_core::{Model, Tensor, ValidInputs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::{Result, ServerError};
use crate::metrics::VersionMetrics;

/// What one queued part of a request gets back.
type Reply = Result<Computed>;

/// A request's outputs with the time it spent queued and computing.
pub struct Computed {
    /// Signature outputs, one row per instance.
    pub outputs: Vec<(String, Tensor)>,
    /// Time before an engine thread took it (the longest of a split request's parts).
    pub queued: Duration,
    /// Engine time of the batches it ran in (summed over a split request's parts).
    pub compute: Duration,
}

/// A handle to one model version's queue and workers; dropping it lets the workers finish the
/// queue and exit.
pub struct Batcher {
    queue: Arc<Queue>,
    workers: usize,
    admitted: Arc<Semaphore>,
    admitted_kib: Arc<Semaphore>,
}

/// Cumulative counters, Triton `statistics`-style.
#[derive(Default)]
pub struct Stats {
    /// Requests (parts) answered successfully.
    pub success: AtomicU64,
    /// Requests (parts) that failed in the engine or timed out in the queue.
    pub failure: AtomicU64,
    /// Instances computed.
    pub inferences: AtomicU64,
    /// Engine runs (batches).
    pub executions: AtomicU64,
    /// Total nanoseconds requests waited in the queue.
    pub queue_ns: AtomicU64,
    /// Total nanoseconds of engine runs.
    pub compute_ns: AtomicU64,
    /// Engine threads that panicked and were replaced.
    pub engine_panics: AtomicU64,
}

struct Queue {
    model: Arc<Model>,
    cfg: BatchingConfig,
    state: Mutex<QueueState>,
    arrived: Condvar,
    stats: Stats,
    metrics: VersionMetrics,
}

struct QueueState {
    entries: VecDeque<Entry>,
    closed: bool,
    /// Workers blocked on `arrived`. A submit signals the condvar only when one is: signalling
    /// costs a futex syscall even with nobody waiting, and a busy worker finds new entries itself.
    sleeping: usize,
}

/// One admitted part of a request, waiting for a worker.
struct Entry {
    inputs: ValidInputs,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
    /// Released when the entry is answered or dropped, freeing queue capacity.
    _admission: Arc<Admission>,
    /// The request's span, so the batch it runs in can be traced back to it.
    span: tracing::Span,
}

/// An entry whose inputs went to the engine: where to send its rows.
struct Waiting {
    reply: oneshot::Sender<Reply>,
    queued: Duration,
    _admission: Arc<Admission>,
}

struct Admission {
    _count: OwnedSemaphorePermit,
    _kib: OwnedSemaphorePermit,
}

impl Batcher {
    /// Starts `workers` engine threads for `model`.
    pub fn start(model: Arc<Model>, workers: usize) -> Batcher {
        let workers = workers.max(1);
        let mut cfg = model.config().batching.clone();
        if !model.is_batchable() {
            // A fixed leading dimension cannot stack requests: every request runs alone.
            cfg.max_batch_size = 1;
        }
        // Busy workers plus waiting room. With no waiting room (`max_queue_size = 0`) a request is
        // admitted only while a worker is free to start it, so an admitted request never waits
        // behind another: the lowest latency under overload, bought with idle gaps between runs.
        let admitted = Arc::new(Semaphore::new(cfg.max_queue_size + workers));
        let kib = (cfg.max_queue_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        let admitted_kib = Arc::new(Semaphore::new(kib));
        let metrics = VersionMetrics::new(model.name(), model.version());
        let queue = Arc::new(Queue {
            model,
            cfg,
            state: Mutex::new(QueueState {
                entries: VecDeque::new(),
                closed: false,
                sleeping: 0,
            }),
            arrived: Condvar::new(),
            stats: Stats::default(),
            metrics,
        });
        for ix in 0..workers {
            spawn_worker(queue.clone(), ix);
        }
        Batcher {
            queue,
            workers,
            admitted,
            admitted_kib,
        }
    }

    /// Cumulative statistics.
    pub fn stats(&self) -> &Stats {
        &self.queue.stats
    }

    /// This version's Prometheus series.
    pub fn metrics(&self) -> &VersionMetrics {
        &self.queue.metrics
    }

    /// Engine threads serving this queue.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Whether a request would be refused now: every queue slot is taken. A hint for shedding
    /// before decoding; `submit` still decides for real.
    pub fn is_full(&self) -> bool {
        self.admitted.available_permits() == 0
    }

    /// Requests currently waiting.
    pub fn queued(&self) -> usize {
        self.queue.lock().entries.len()
    }

    /// Admits a validated request and waits for its outputs. Oversize requests are split into
    /// parts of at most `max_batch_size` instances; a full queue is an immediate `Overloaded`.
    pub async fn submit(&self, inputs: ValidInputs, deadline: Instant) -> Result<Computed> {
        let overloaded = || ServerError::Overloaded(self.queue.model.name().to_owned());
        let kib =
            u32::try_from(inputs.byte_size().div_ceil(1024).max(1)).map_err(|_| overloaded())?;
        let admission = Arc::new(Admission {
            _count: self
                .admitted
                .clone()
                .try_acquire_owned()
                .map_err(|_| overloaded())?,
            _kib: self
                .admitted_kib
                .clone()
                .try_acquire_many_owned(kib)
                .map_err(|_| overloaded())?,
        });
        // A model that does not batch has `max_batch_size` 1 here and one instance per request.
        let rows = inputs.rows();
        let max = self.queue.cfg.max_batch_size;
        let parts: Vec<ValidInputs> = if rows <= max {
            vec![inputs]
        } else {
            (0..rows)
                .step_by(max)
                .map(|start| inputs.slice_rows(start, (start + max).min(rows)))
                .collect()
        };
        let now = Instant::now();
        let mut replies = Vec::with_capacity(parts.len());
        let wake = {
            let mut state = self.queue.lock();
            if state.closed {
                return Err(ServerError::Unavailable(format!(
                    "model '{}' is unloading",
                    self.queue.model.name()
                )));
            }
            let was_empty = state.entries.is_empty();
            for part in parts {
                let (tx, rx) = oneshot::channel();
                state.entries.push_back(Entry {
                    inputs: part,
                    enqueued: now,
                    deadline,
                    reply: tx,
                    _admission: admission.clone(),
                    span: tracing::Span::current(),
                });
                replies.push(rx);
            }
            // A worker asleep on an empty queue must be woken. One asleep on a partial batch wakes
            // by itself when `max_queue_delay_us` runs out, so it is woken early only when the
            // batch has filled: waking it for every arrival cost a futex wake and a context switch
            // per request, all to go back to sleep.
            state.sleeping > 0 && (was_empty || self.queue.batch_ready(&state.entries))
        };
        // One worker is enough to take one entry; a split request may keep several busy.
        match (wake, replies.len()) {
            (false, _) => {}
            (true, 1) => self.queue.arrived.notify_one(),
            (true, _) => self.queue.arrived.notify_all(),
        }
        drop(admission);
        let mut pieces = Vec::with_capacity(replies.len());
        for rx in replies {
            // A dropped sender means the worker dropped the entry (deadline) without replying.
            let reply = rx.await.map_err(|_| {
                ServerError::Timeout(deadline.saturating_duration_since(now).as_millis() as u64)
            })?;
            pieces.push(reply?);
        }
        join_parts(pieces)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.arrived.notify_all();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Entries are pushed and popped whole; a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs batches until the queue closes. A panic in the engine fails only its batch; the
    /// thread then hands over to a fresh one, so nothing the panicking run left behind (on its
    /// stack or in thread-locals of the engine) serves another request.
    fn work(self: Arc<Queue>, ix: usize) {
        while let Some(batch) = self.next_batch() {
            if let Err(Panicked) = self.run(batch) {
                spawn_worker(self.clone(), ix);
                return;
            }
        }
    }

    /// Blocks until a batch is ready; `None` once the queue is closed and empty.
    fn next_batch(&self) -> Option<Vec<Entry>> {
        let mut state = self.lock();
        let delay = Duration::from_micros(self.cfg.max_queue_delay_us);
        loop {
            self.drop_abandoned(&mut state.entries);
            if let Some(oldest) = state.entries.front() {
                let waited = oldest.enqueued.elapsed();
                if waited >= delay || state.closed || self.batch_ready(&state.entries) {
                    let batch = take_batch(&mut state.entries, &self.cfg);
                    // What this batch left behind (a burst beyond one batch, or entries that
                    // cannot join it) goes to a sleeping worker now, not at the next submit.
                    if !state.entries.is_empty() && state.sleeping > 0 {
                        self.arrived.notify_one();
                    }
                    return Some(batch);
                }
                state.sleeping += 1;
                let (next, _) = self
                    .arrived
                    .wait_timeout(state, delay - waited)
                    .unwrap_or_else(PoisonError::into_inner);
                state = next;
                state.sleeping -= 1;
            } else if state.closed {
                return None;
            } else {
                state.sleeping += 1;
                state = self
                    .arrived
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.sleeping -= 1;
            }
        }
    }

    /// Whether the next batch is full (or at a preferred size), so it runs without waiting out
    /// `max_queue_delay_us`.
    fn batch_ready(&self, entries: &VecDeque<Entry>) -> bool {
        let rows = compatible_rows(entries, self.cfg.max_batch_size);
        rows >= self.cfg.max_batch_size || self.cfg.preferred_batch_sizes.contains(&rows)
    }

    /// Removes entries nobody waits for (client gone) or whose deadline passed.
    fn drop_abandoned(&self, entries: &mut VecDeque<Entry>) {
        let now = Instant::now();
        entries.retain(|e| {
            if e.reply.is_closed() {
                return false;
            }
            if e.deadline <= now {
                self.stats.failure.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            true
        });
    }

    fn run(&self, batch: Vec<Entry>) -> std::result::Result<(), Panicked> {
        let started = Instant::now();
        let model = &self.model;
        let sizes: Vec<usize> = batch.iter().map(|e| e.inputs.rows()).collect();
        let total: usize = sizes.iter().sum();
        // One span for the engine run, linked to every request it serves (TEI's layout), so a
        // request's trace shows the batch it shared.
        let batch_span = tracing::debug_span!("batch", model = %model.name(), version = model.version(), requests = batch.len(), rows = total);
        for entry in &batch {
            let queued = started.duration_since(entry.enqueued);
            self.stats
                .queue_ns
                .fetch_add(queued.as_nanos() as u64, Ordering::Relaxed);
            self.metrics.record_queue(queued);
            batch_span.follows_from(&entry.span);
        }
        let _in_batch = batch_span.enter();
        // Move the inputs out (the replies and admission permits stay with the entries), so a
        // lone request runs without copying its tensors.
        let (inputs, waiting): (Vec<ValidInputs>, Vec<Waiting>) = batch
            .into_iter()
            .map(|e| {
                (
                    e.inputs,
                    Waiting {
                        reply: e.reply,
                        queued: started.duration_since(e.enqueued),
                        _admission: e._admission,
                    },
                )
            })
            .unzip();
        if inputs.is_empty() {
            return Ok(());
        }
        // Compute and scatter under one catch: every entry gets an answer even if the engine
        // (or slicing its outputs) panics; an entry dropped unanswered would wait for its deadline.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_and_scatter(model, inputs, &sizes)
        }));
        let compute = started.elapsed();
        self.stats.executions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .inferences
            .fetch_add(total as u64, Ordering::Relaxed);
        self.stats
            .compute_ns
            .fetch_add(compute.as_nanos() as u64, Ordering::Relaxed);
        self.metrics.record_batch(compute, total);
        let (replies, panicked) = match outcome {
            Ok(replies) => (replies, Ok(())),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(model = %model.name(), version = model.version(), panic = %message, "engine thread panicked; its batch failed and a new thread replaces it");
                self.stats.engine_panics.fetch_add(1, Ordering::Relaxed);
                self.metrics.record_engine_panic();
                let error = serval_core::Error::Inference {
                    model: model.name().to_owned(),
                    version: model.version(),
                    reason: format!("the engine panicked: {message}"),
                };
                (Err(error), Err(Panicked))
            }
        };
        match replies {
            Ok(mut parts) => {
                for (entry, outputs) in waiting.into_iter().zip(parts.drain(..)) {
                    self.stats.success.fetch_add(1, Ordering::Relaxed);
                    let _ = entry.reply.send(Ok(Computed {
                        outputs,
                        queued: entry.queued,
                        compute,
                    }));
                }
            }
            Err(err) => {
                for entry in waiting {
                    self.stats.failure.fetch_add(1, Ordering::Relaxed);
                    let _ = entry.reply.send(Err(err.clone().into()));
                }
            }
        }
        panicked
    }
}

/// An engine run panicked (the batch was answered with an error).
struct Panicked;

fn spawn_worker(queue: Arc<Queue>, ix: usize) {
    let name = format!(
        "serval-{}-v{}-{ix}",
        queue.model.name(),
        queue.model.version()
    );
    // A worker that cannot start is a worker less; the others still serve.
    if let Err(e) = std::thread::Builder::new()
        .name(name)
        .spawn(move || queue.work(ix))
    {
        tracing::error!(error = %e, "cannot start engine worker thread");
    }
}

/// Runs one batch and cuts its outputs into each entry's rows (`sizes`). A lone entry gets the
/// outputs whole: a model that does not batch returns whatever shape it returns.
fn run_and_scatter(
    model: &Model,
    mut inputs: Vec<ValidInputs>,
    sizes: &[usize],
) -> serval_core::Result<Vec<Vec<(String, Tensor)>>> {
    if inputs.len() == 1 {
        let only = inputs.swap_remove(0);
        return Ok(vec![model.run(only)?]);
    }
    let outputs = model.run(ValidInputs::concat(&inputs)?)?;
    let mut offset = 0;
    Ok(sizes
        .iter()
        .map(|&rows| {
            let mine = outputs
                .iter()
                .map(|(n, t)| (n.clone(), t.slice_rows(offset, offset + rows)))
                .collect();
            offset += rows;
            mine
        })
        .collect())
}

/// Instances the next batch would hold (the oldest entry plus compatible ones, up to `max`).
fn compatible_rows(entries: &VecDeque<Entry>, max: usize) -> usize {
    let Some(first) = entries.front() else {
        return 0;
    };
    let mut rows = 0;
    for e in entries
        .iter()
        .filter(|e| e.inputs.can_batch_with(&first.inputs))
    {
        if rows + e.inputs.rows() > max {
            break;
        }
        rows += e.inputs.rows();
    }
    rows.max(first.inputs.rows())
}

/// Takes the oldest entry and every compatible entry that fits, in arrival order. With preferred
/// sizes configured, cuts at the largest preferred size the prefix reaches.
fn take_batch(entries: &mut VecDeque<Entry>, cfg: &BatchingConfig) -> Vec<Entry> {
    let Some(first) = entries.pop_front() else {
        return Vec::new();
    };
    let mut rows = first.inputs.rows();
    let mut batch = vec![first];
    let mut ix = 0;
    while ix < entries.len() && rows < cfg.max_batch_size {
        let e = &entries[ix];
        if e.inputs.can_batch_with(&batch[0].inputs) && rows + e.inputs.rows() <= cfg.max_batch_size
        {
            rows += e.inputs.rows();
            batch.push(
                entries
                    .remove(ix)
                    .expect("index is in bounds. This is a bug."),
            );
        } else {
            ix += 1;
        }
    }
    if !cfg.preferred_batch_sizes.is_empty() && !cfg.preferred_batch_sizes.contains(&rows) {
        // Give back the newest entries until a preferred size is reached (if one can be).
        let mut prefix = 0;
        let cut = batch
            .iter()
            .map(|e| {
                prefix += e.inputs.rows();
                prefix
            })
            .enumerate()
            .filter(|(_, p)| cfg.preferred_batch_sizes.contains(p))
            .map(|(i, _)| i + 1)
            .last();
        if let Some(cut) = cut {
            for e in batch.drain(cut..).rev() {
                entries.push_front(e);
            }
        }
    }
    batch
}

/// Joins the outputs of a split request back together, in order.
fn join_parts(mut pieces: Vec<Computed>) -> Result<Computed> {
    if pieces.len() == 1 {
        return Ok(pieces.swap_remove(0));
    }
    let queued = pieces.iter().map(|p| p.queued).max().unwrap_or_default();
    let compute = pieces.iter().map(|p| p.compute).sum();
    let names: Vec<String> = pieces[0].outputs.iter().map(|(n, _)| n.clone()).collect();
    let outputs = names
        .into_iter()
        .enumerate()
        .map(|(ix, name)| {
            let column: Vec<Tensor> = pieces.iter().map(|p| p.outputs[ix].1.clone()).collect();
            let joined = Tensor::concat_rows(&column).map_err(serval_core::Error::from)?;
            Ok((name, joined))
        })
        .collect::<Result<_>>()?;
    Ok(Computed {
        outputs,
        queued,
        compute,
    })
}
