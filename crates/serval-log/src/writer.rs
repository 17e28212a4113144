//! The log's writer: a bounded queue from the request path to one writer thread, which appends
//! records to the current segment and fsyncs them by group commit, and a roller thread that
//! turns closed segments into Parquet.
//!
//! The request path never blocks on the log: a full queue drops the record (buffered mode) or
//! fails the request (synced mode) at once. Disk trouble never stops predictions either: the
//! failed segment is closed where it stands (recovery cuts its torn tail), records that could
//! not be written are counted, and writing resumes in a fresh segment once space returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use crate::error::LogError;
use crate::record::{LabelBatch, LoggedRequest};
use crate::roll::{LABELS_DIR, PREDICTIONS_DIR, roll_segment, segments_in};
use crate::root::{Destination, LogRoot};
use serval_wal::{DirLock, SegmentWriter};

/// Folder of the write-ahead directories under a local log root: one per live process.
pub const WAL_DIR: &str = "_wal";

/// Where and how the log writes.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The log's root: `predictions/model=<m>/date=<d>/*.parquet` below it.
    pub root: LogRoot,
    /// Where this process's write-ahead directory goes (default `<root>/_wal` for a local root;
    /// required for an object store: segments are appended to, objects cannot be); each process
    /// takes its own `<replica>` folder in it and adopts those of processes that died.
    pub wal_root: Option<PathBuf>,
    /// Names this process's files; unique per replica (default hostname and start time).
    pub replica_id: String,
    /// Requests the queue holds before records are dropped (buffered) or refused (synced).
    pub queue_capacity: usize,
    /// Group commit interval for buffered records.
    pub sync_interval: Duration,
    /// A segment is rolled into Parquet past this size...
    pub roll_bytes: u64,
    /// ... or this age.
    pub roll_interval: Duration,
}

impl LogOptions {
    /// Defaults for a log at `root`.
    pub fn new(root: impl Into<LogRoot>) -> LogOptions {
        LogOptions {
            root: root.into(),
            wal_root: None,
            replica_id: default_replica_id(),
            queue_capacity: 10_000,
            sync_interval: Duration::from_millis(100),
            roll_bytes: 64 * 1024 * 1024,
            roll_interval: Duration::from_secs(60),
        }
    }
}

/// Hostname and start time (UTC, to the millisecond): unique per process on a host and across
/// hosts, and sortable.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "serval".to_owned());
    let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
    sanitize(&format!("{host}-{started}"))
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether a request waits for its record to reach the disk.
pub type Ack = oneshot::Receiver<Result<(), LogError>>;

enum Message {
    Append(Rows, Option<oneshot::Sender<Result<(), LogError>>>),
    Close,
}

/// The rows one message appends: a request's predictions, or labels.
enum Rows {
    Predictions(Box<LoggedRequest>),
    Labels(Box<LabelBatch>),
}

impl Rows {
    fn records(&self) -> Result<Vec<Vec<u8>>, LogError> {
        match self {
            Rows::Predictions(request) => request.records(),
            Rows::Labels(labels) => labels.records(),
        }
    }

    fn model(&self) -> &str {
        match self {
            Rows::Predictions(request) => &request.model,
            Rows::Labels(labels) => &labels.model,
        }
    }

    fn table(&self) -> &'static str {
        match self {
            Rows::Predictions(_) => PREDICTIONS_DIR,
            Rows::Labels(_) => LABELS_DIR,
        }
    }
}

/// Counters of what the log did, for `/stats`-style reporting and tests.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records appended to a segment.
    pub written: AtomicU64,
    /// Records (instances) dropped: queue full, or a write that failed.
    pub dropped: AtomicU64,
    /// Group commits (fsyncs).
    pub syncs: AtomicU64,
    /// Records a group commit made durable: what a `kill -9` or power loss cannot take.
    pub committed: AtomicU64,
    /// Records rolled into Parquet.
    pub rolled: AtomicU64,
}

/// A durable keyed prediction log.
pub struct PredictionLog {
    sender: SyncSender<Message>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<LogStats>,
    last_drop_warning: AtomicU64,
    started: Instant,
}

impl PredictionLog {
    /// Opens the log: takes a write-ahead directory, rolls segments left by processes that died
    /// (in the background), and starts the writer.
    pub fn open(options: LogOptions) -> Result<PredictionLog, LogError> {
        let wal_root = match (&options.wal_root, &options.root) {
            (Some(wal), _) => wal.clone(),
            (None, LogRoot::Dir(dir)) => dir.join(WAL_DIR),
            (None, LogRoot::Store { url, .. }) => {
                return Err(LogError::Store {
                    url: url.clone(),
                    message: "an object-store log needs a local write-ahead directory".into(),
                });
            }
        };
        if let LogRoot::Dir(dir) = &options.root {
            std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        }
        let wal_dir = wal_root.join(sanitize(&options.replica_id));
        std::fs::create_dir_all(&wal_dir).map_err(|e| LogError::io(&wal_dir, e))?;
        let lock =
            DirLock::try_acquire(&wal_dir)?.ok_or_else(|| LogError::InUse(wal_dir.clone()))?;
        let stats = Arc::new(LogStats::default());
        let (roll_tx, roll_rx) = std::sync::mpsc::channel::<PathBuf>();
        // Our own folder first (a replica id reused after a crash), then dead processes' folders.
        for segment in segments_in(&wal_dir)? {
            let _ = roll_tx.send(segment);
        }
        let orphans = adopt_orphans(&wal_root, &wal_dir);
        let roller = {
            let root = options.root.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("serval-log-roll".into())
                .spawn(move || roll_loop(roll_rx, root, &stats, orphans))
                .map_err(|e| LogError::io(&wal_dir, e))?
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(options.queue_capacity.max(1));
        let writer = {
            let stats = stats.clone();
            let state = Writer {
                options,
                wal_dir: wal_dir.clone(),
                segment: None,
                opened: Instant::now(),
                sequence: 0,
                roll_tx,
                stats,
                _lock: lock,
                last_error: None,
                uncommitted: 0,
            };
            std::thread::Builder::new()
                .name("serval-log-write".into())
                .spawn(move || state.run(receiver))
                .map_err(|e| LogError::io(&wal_dir, e))?
        };
        Ok(PredictionLog {
            sender,
            threads: Mutex::new(vec![writer, roller]),
            stats,
            last_drop_warning: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Queues a request's records. `synced`: the returned [`Ack`] resolves after their group
    /// commit, and a full queue is an error; otherwise a full queue drops them (counted).
    pub fn submit(&self, request: LoggedRequest, synced: bool) -> Result<Option<Ack>, LogError> {
        let instances = request.instances() as u64;
        let model = request.model.clone();
        self.send(Rows::Predictions(Box::new(request)), synced)
            .inspect_err(|e| {
                if matches!(e, LogError::QueueFull) {
                    self.count_drop(&model, instances, "queue_full");
                }
            })
    }

    /// Queues a request's records, waiting while the queue is full: for producers that must
    /// lose nothing and may be slowed (`serval batch`), never for the online path.
    pub fn submit_waiting(&self, request: LoggedRequest) -> Result<(), LogError> {
        self.sender
            .send(Message::Append(Rows::Predictions(Box::new(request)), None))
            .map_err(|_| LogError::Closed)
    }

    /// Queues labels. A full queue is always an error (a label is what its request is for, so it
    /// is refused, never dropped); `synced`: the returned [`Ack`] resolves after their group commit.
    pub fn submit_labels(&self, labels: LabelBatch, synced: bool) -> Result<Option<Ack>, LogError> {
        self.send(Rows::Labels(Box::new(labels)), synced)
    }

    fn send(&self, rows: Rows, synced: bool) -> Result<Option<Ack>, LogError> {
        let (ack_tx, ack_rx) = if synced {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match self.sender.try_send(Message::Append(rows, ack_tx)) {
            Ok(()) => Ok(ack_rx),
            Err(TrySendError::Full(Message::Append(..))) => Err(LogError::QueueFull),
            Err(TrySendError::Full(Message::Close)) => Err(LogError::Closed),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }

    /// Counts a request's records as dropped, warning at most once every ten seconds.
    fn count_drop(&self, model: &str, records: u64, reason: &'static str) {
        self.stats.dropped.fetch_add(records, Ordering::Relaxed);
        metrics::counter!("serval_prediction_log_dropped_total", "model" => model.to_owned(), "reason" => reason, "table" => PREDICTIONS_DIR).increment(records);
        let now = self.started.elapsed().as_secs() + 10;
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                model,
                reason,
                "prediction log records dropped (counted in serval_prediction_log_dropped_total)"
            );
        }
    }

    /// What the log did so far.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Writes out everything queued, rolls every segment into Parquet and stops.
    pub fn close(&self) {
        let _ = self.sender.send(Message::Close);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for PredictionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLog")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for PredictionLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The write-ahead directories of processes that died (their lock is free), locked for the
/// roller, which rolls their segments and removes them.
fn adopt_orphans(wal_root: &Path, own: &Path) -> Vec<(PathBuf, DirLock)> {
    let Ok(entries) = std::fs::read_dir(wal_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p != own)
        .filter_map(|dir| match DirLock::try_acquire(&dir) {
            Ok(Some(lock)) => Some((dir, lock)),
            _ => None,
        })
        .collect()
}

/// Rolls segments as the writer closes them, then the orphans', retrying what fails (disk full)
/// until the writer closes; what is left stays for the next start.
fn roll_loop(
    segments: Receiver<PathBuf>,
    root: LogRoot,
    stats: &LogStats,
    orphans: Vec<(PathBuf, DirLock)>,
) {
    let root = match Destination::new(root) {
        Ok(destination) => destination,
        Err(e) => {
            // Segments stay where they are, for the next start.
            tracing::error!(error = %e, "cannot roll the prediction log: segments stay in the write-ahead directory");
            return;
        }
    };
    let root = &root;
    let mut pending: Vec<PathBuf> = Vec::new();
    for (dir, _lock) in &orphans {
        pending.extend(segments_in(dir).unwrap_or_default());
    }
    let roll = |pending: &mut Vec<PathBuf>| {
        pending.retain(|segment| match roll_segment(segment, root) {
            Ok(n) => {
                stats.rolled.fetch_add(n as u64, Ordering::Relaxed);
                tracing::debug!(segment = %segment.display(), records = n, "segment rolled into Parquet");
                false
            }
            Err(e) => {
                metrics::counter!("serval_prediction_log_errors_total", "reason" => e.reason()).increment(1);
                tracing::error!(segment = %segment.display(), error = %e, "cannot roll a segment into Parquet yet; will retry");
                true
            }
        });
    };
    roll(&mut pending);
    for (dir, lock) in orphans {
        if segments_in(&dir).is_ok_and(|s| s.is_empty()) {
            drop(lock);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    loop {
        match segments.recv_timeout(Duration::from_secs(5)) {
            Ok(segment) => pending.push(segment),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                roll(&mut pending);
                return;
            }
        }
        roll(&mut pending);
    }
}

struct Writer {
    options: LogOptions,
    wal_dir: PathBuf,
    segment: Option<SegmentWriter>,
    opened: Instant,
    sequence: u64,
    roll_tx: std::sync::mpsc::Sender<PathBuf>,
    stats: Arc<LogStats>,
    /// Held for the writer's life: the directory is ours while it runs.
    _lock: DirLock,
    /// The last write error's reason, so a lasting condition is logged once, not per group.
    last_error: Option<&'static str>,
    /// Records appended since the last group commit.
    uncommitted: u64,
}

/// Records whose acknowledgement waits for the next group commit.
type Waiting = Vec<oneshot::Sender<Result<(), LogError>>>;

impl Writer {
    fn run(mut self, queue: Receiver<Message>) {
        let mut waiting: Waiting = Vec::new();
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            let wait = self
                .options
                .sync_interval
                .saturating_sub(last_sync.elapsed());
            let first = match queue.recv_timeout(wait) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Message::Close),
            };
            let mut closing = false;
            // Take everything queued behind it: one commit for the whole group.
            let mut next = first;
            while let Some(message) = next.take() {
                match message {
                    Message::Append(rows, ack) => {
                        let result = self.append(&rows);
                        dirty |= result.is_ok();
                        match (ack, result) {
                            (Some(ack), Ok(())) => waiting.push(ack),
                            (Some(ack), Err(e)) => {
                                let _ = ack.send(Err(e));
                            }
                            (None, _) => {}
                        }
                    }
                    Message::Close => closing = true,
                }
                if closing || waiting.len() >= 4096 {
                    break;
                }
                next = queue.try_recv().ok();
            }
            // Synced requests are committed as soon as the queue is drained (group commit);
            // buffered ones at the interval.
            if !waiting.is_empty()
                || (dirty && last_sync.elapsed() >= self.options.sync_interval)
                || closing
            {
                self.commit(&mut waiting);
                last_sync = Instant::now();
                dirty = false;
            }
            if closing {
                self.roll_current();
                return;
            }
            if self.segment.as_ref().is_some_and(|s| {
                s.bytes() >= self.options.roll_bytes
                    || self.opened.elapsed() >= self.options.roll_interval
            }) {
                self.commit(&mut waiting);
                self.roll_current();
            }
        }
    }

    fn append(&mut self, rows: &Rows) -> Result<(), LogError> {
        let records = rows.records()?;
        if records.is_empty() {
            return Ok(());
        }
        let result = self
            .current()
            .and_then(|segment| Ok(records.iter().try_for_each(|r| segment.append(r))?));
        let count = records.len() as u64;
        let model = rows.model().to_owned();
        match result {
            Ok(()) => {
                self.stats.written.fetch_add(count, Ordering::Relaxed);
                self.uncommitted += count;
                metrics::counter!("serval_prediction_log_records_total", "model" => model, "table" => rows.table())
                    .increment(count);
                Ok(())
            }
            Err(e) => {
                // `current` already closed the segment if it was the one that failed.
                if self.segment.is_some() {
                    self.fail(&e);
                }
                self.stats.dropped.fetch_add(count, Ordering::Relaxed);
                metrics::counter!("serval_prediction_log_dropped_total", "model" => model, "reason" => e.reason(), "table" => rows.table()).increment(count);
                Err(e)
            }
        }
    }

    /// The open segment, creating one if needed.
    fn current(&mut self) -> Result<&mut SegmentWriter, LogError> {
        if self.segment.is_none() {
            self.sequence += 1;
            let millis = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            // Sortable, and unique per replica even across a reused replica id.
            let name = format!(
                "{}-{millis:013}-{:06}.seg",
                sanitize(&self.options.replica_id),
                self.sequence
            );
            match SegmentWriter::create(&self.wal_dir.join(name)) {
                Ok(segment) => {
                    self.segment = Some(segment);
                    self.opened = Instant::now();
                }
                Err(e) => {
                    let e = LogError::from(e);
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
        self.segment.as_mut().ok_or(LogError::Closed)
    }

    /// The group commit: fsyncs the open segment and answers the records waiting for it.
    fn commit(&mut self, waiting: &mut Waiting) {
        let result = match &mut self.segment {
            Some(segment) => segment.sync().map_err(LogError::from),
            None => Ok(()),
        };
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            self.fail(e);
        } else {
            let committed = std::mem::take(&mut self.uncommitted);
            self.stats.committed.fetch_add(committed, Ordering::Relaxed);
            metrics::counter!("serval_prediction_log_committed_total").increment(committed);
            if self.last_error.take().is_some() {
                tracing::info!("prediction log writes again");
            }
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(result.clone());
        }
    }

    /// Closes the segment after a failed write or sync: whatever is whole in it is kept (the
    /// roller's recovery cuts the torn tail), and the next record opens a fresh one.
    fn fail(&mut self, error: &LogError) {
        // Whatever was not committed in the failed segment is not claimed as durable.
        self.uncommitted = 0;
        metrics::counter!("serval_prediction_log_errors_total", "reason" => error.reason())
            .increment(1);
        if self.last_error != Some(error.reason()) {
            tracing::error!(error = %error, "prediction log cannot write; predictions are still answered, records are dropped and counted");
            self.last_error = Some(error.reason());
        }
        self.roll_current();
    }

    fn roll_current(&mut self) {
        if let Some(segment) = self.segment.take() {
            let _ = self.roll_tx.send(segment.path().to_owned());
        }
    }
}
