//! The offline queue: forwards phase 2 could not take yet, kept on disk until it can.
//!
//! A directory of `serval-wal` segments (the project's one checksummed append format), one
//! record per forwarded instance, plus a `CURSOR` file naming the first record not yet
//! acknowledged. A push is fsynced before it returns, so an instance the caller was told is
//! queued survives `kill -9` and power loss; recovery cuts a torn tail. Acknowledging moves the
//! cursor (written by rename, so it is either the old or the new one) and removes segments
//! wholly behind it. A crash between a successful send and its acknowledgement replays those
//! records: a duplicate, with the same key, is possible; a loss is not.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serval_wal::{DirLock, SegmentWriter, WalError};

use crate::error::EdgeError;

/// File naming the first unacknowledged record: `<segment file name> <records consumed>`.
const CURSOR_FILE: &str = "CURSOR";

/// What to do with a forward when the queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the new forward (the caller keeps phase 1's answer and is told why).
    #[default]
    Refuse,
    /// Drop the oldest queued forwards to make room (counted).
    DropOldest,
}

/// The queue's bounds.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// The most records queued.
    pub max_records: u64,
    /// The most payload bytes queued.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size, so acknowledged records
    /// leave the disk segment by segment.
    pub segment_bytes: u64,
    /// What a full queue does.
    pub when_full: WhenFull,
}

impl Default for QueueOptions {
    fn default() -> QueueOptions {
        QueueOptions {
            max_records: 100_000,
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 4 * 1024 * 1024,
            when_full: WhenFull::Refuse,
        }
    }
}

/// One segment's unacknowledged records (the head's are read on demand).
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Payload sizes of its records, in order (all of them, acknowledged ones included).
    sizes: Vec<u64>,
}

/// A durable FIFO of byte records, owned by one process at a time.
#[derive(Debug)]
pub struct OfflineQueue {
    dir: PathBuf,
    _lock: DirLock,
    options: QueueOptions,
    /// Oldest first; the last is the one being appended to when `writer` is open.
    segments: VecDeque<Segment>,
    writer: Option<SegmentWriter>,
    /// Records of the head segment already acknowledged.
    consumed: usize,
    /// Records and payload bytes not yet acknowledged.
    records: u64,
    bytes: u64,
    /// Next segment number.
    next: u64,
    /// Records dropped to make room (`WhenFull::DropOldest`) since opening.
    dropped: u64,
    /// The head segment's records, read once when first peeked.
    head_cache: Option<Vec<Vec<u8>>>,
}

impl OfflineQueue {
    /// Opens (or creates) the queue in `dir`, recovering every segment; fails with
    /// [`EdgeError::QueueInUse`] when another live process has it.
    pub fn open(dir: &Path, options: QueueOptions) -> Result<OfflineQueue, EdgeError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        let lock =
            DirLock::try_acquire(dir)?.ok_or_else(|| EdgeError::QueueInUse(dir.to_owned()))?;
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| WalError::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        let (cursor_segment, mut consumed) = read_cursor(dir)?;
        let mut segments = VecDeque::new();
        for name in &names {
            let path = dir.join(name);
            // Segments before the cursor's were acknowledged; a crash kept them.
            if cursor_segment.as_deref().is_some_and(|c| name.as_str() < c) {
                std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
                continue;
            }
            let recovered = serval_wal::recover(&path)?;
            if recovered.cut_bytes > 0 {
                tracing::warn!(segment = %path.display(), cut_bytes = recovered.cut_bytes, "offline queue: cut a torn tail");
            }
            let sizes = recovered.records.iter().map(|r| r.len() as u64).collect();
            segments.push_back(Segment { path, sizes });
        }
        let next = names
            .last()
            .and_then(|n| n.strip_suffix(".seg")?.parse::<u64>().ok())
            .map_or(1, |n| n + 1);
        // A cursor naming a removed segment means that segment was wholly consumed.
        let head_matches = match (&cursor_segment, segments.front()) {
            (Some(c), Some(head)) => head.path.file_name().is_some_and(|n| n == c.as_str()),
            _ => false,
        };
        if !head_matches {
            consumed = 0;
        }
        if let Some(head) = segments.front() {
            consumed = consumed.min(head.sizes.len());
        }
        let mut queue = OfflineQueue {
            dir: dir.to_owned(),
            _lock: lock,
            options,
            segments,
            writer: None,
            consumed,
            records: 0,
            bytes: 0,
            next,
            dropped: 0,
            head_cache: None,
        };
        queue.recount();
        Ok(queue)
    }

    fn recount(&mut self) {
        let mut records = 0u64;
        let mut bytes = 0u64;
        for (i, segment) in self.segments.iter().enumerate() {
            let skip = if i == 0 { self.consumed } else { 0 };
            records += (segment.sizes.len() - skip) as u64;
            bytes += segment.sizes[skip..].iter().sum::<u64>();
        }
        self.records = records;
        self.bytes = bytes;
    }

    /// Records waiting.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Payload bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records dropped to make room since the queue was opened (queued ones, and a push's own
    /// oldest that could not fit).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends what fits of `payloads`, in order, and fsyncs it before returning; returns which
    /// payloads were queued. When the queue is full, [`WhenFull::Refuse`] queues the first ones
    /// that fit; [`WhenFull::DropOldest`] drops the oldest records (queued ones first, then the
    /// push's own) to queue the newest. Nothing fits: [`EdgeError::QueueFull`].
    pub fn push(&mut self, payloads: &[Vec<u8>]) -> Result<std::ops::Range<usize>, EdgeError> {
        let full = |q: &OfflineQueue| EdgeError::QueueFull {
            records: q.records,
            bytes: q.bytes,
        };
        let (max_records, max_bytes) = (self.options.max_records, self.options.max_bytes);
        let fits = |records: u64, bytes: u64| records <= max_records && bytes <= max_bytes;
        let accepted = match self.options.when_full {
            WhenFull::Refuse => {
                let (mut records, mut bytes, mut end) = (self.records, self.bytes, 0);
                for payload in payloads {
                    if !fits(records + 1, bytes + payload.len() as u64) {
                        break;
                    }
                    (records, bytes, end) = (records + 1, bytes + payload.len() as u64, end + 1);
                }
                0..end
            }
            WhenFull::DropOldest => {
                // The newest payloads that fit an empty queue; then room is made for them.
                let (mut records, mut bytes, mut start) = (0u64, 0u64, payloads.len());
                for payload in payloads.iter().rev() {
                    if !fits(records + 1, bytes + payload.len() as u64) {
                        break;
                    }
                    (records, bytes, start) =
                        (records + 1, bytes + payload.len() as u64, start - 1);
                }
                self.dropped += start as u64;
                while !self.is_empty() && !fits(self.records + records, self.bytes + bytes) {
                    self.ack(1)?;
                    self.dropped += 1;
                }
                start..payloads.len()
            }
        };
        if accepted.is_empty() {
            return Err(full(self));
        }
        let payloads = &payloads[accepted.clone()];
        let records = payloads.len() as u64;
        let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        self.head_cache = None;
        let mut written = Vec::with_capacity(payloads.len());
        if let Err(e) = self.append_all(payloads, &mut written) {
            // What reached the segment unbooked is ignored by readers (they take only booked
            // records); later pushes start a new segment.
            self.writer = None;
            return Err(e);
        }
        if let Some(last) = self.segments.back_mut() {
            last.sizes.extend(written);
        }
        self.records += records;
        self.bytes += bytes;
        Ok(accepted)
    }

    fn append_all(
        &mut self,
        payloads: &[Vec<u8>],
        written: &mut Vec<u64>,
    ) -> Result<(), EdgeError> {
        for payload in payloads {
            let writer = self.writer()?;
            writer.append(payload)?;
            written.push(payload.len() as u64);
            if writer.bytes() >= self.options.segment_bytes {
                self.close_writer(written)?;
            }
        }
        match &mut self.writer {
            Some(writer) => Ok(writer.sync()?),
            None => Ok(()),
        }
    }

    /// The open segment, starting one when needed.
    fn writer(&mut self) -> Result<&mut SegmentWriter, EdgeError> {
        if self.writer.is_none() {
            let path = self.dir.join(format!("{:012}.seg", self.next));
            self.next += 1;
            let writer = SegmentWriter::create(&path)?;
            self.segments.push_back(Segment {
                path,
                sizes: Vec::new(),
            });
            self.writer = Some(writer);
        }
        self.writer.as_mut().ok_or(EdgeError::Closed)
    }

    /// Syncs and closes the open segment, booking the sizes written to it.
    fn close_writer(&mut self, written: &mut Vec<u64>) -> Result<(), EdgeError> {
        if let Some(mut writer) = self.writer.take() {
            writer.sync()?;
        }
        if let Some(last) = self.segments.back_mut() {
            last.sizes.append(written);
        }
        Ok(())
    }

    /// Up to `limit` of the oldest records, in order, without removing them.
    pub fn peek(&mut self, limit: usize) -> Result<Vec<Vec<u8>>, EdgeError> {
        let mut out = Vec::new();
        let mut skip = self.consumed;
        for (i, segment) in self.segments.iter().enumerate() {
            if out.len() >= limit {
                break;
            }
            let records = if i == 0 {
                if self.head_cache.is_none() {
                    self.head_cache = Some(read_records(&segment.path, segment.sizes.len())?);
                }
                self.head_cache.clone().unwrap_or_default()
            } else {
                read_records(&segment.path, segment.sizes.len())?
            };
            out.extend(records.into_iter().skip(skip).take(limit - out.len()));
            skip = 0;
        }
        Ok(out)
    }

    /// Acknowledges the `count` oldest records: they are gone from the queue, and from disk
    /// once their segment is wholly acknowledged.
    pub fn ack(&mut self, count: usize) -> Result<(), EdgeError> {
        let mut left = count;
        while left > 0 {
            let Some(head) = self.segments.front() else {
                break;
            };
            let remaining = head.sizes.len() - self.consumed;
            let take = left.min(remaining);
            let acked: u64 = head.sizes[self.consumed..self.consumed + take].iter().sum();
            self.consumed += take;
            self.records -= take as u64;
            self.bytes -= acked;
            left -= take;
            let open = self.segments.len() == 1 && self.writer.is_some();
            if self.consumed == head.sizes.len() && !open {
                let done = self.segments.pop_front().map(|s| s.path);
                self.consumed = 0;
                self.head_cache = None;
                self.write_cursor()?;
                if let Some(path) = done {
                    std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
                }
            } else if remaining == take && left > 0 {
                // The open segment is exhausted; nothing further to acknowledge.
                break;
            }
        }
        self.write_cursor()
    }

    fn write_cursor(&self) -> Result<(), EdgeError> {
        let text = match self.segments.front() {
            Some(head) => format!(
                "{} {}\n",
                head.path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                self.consumed
            ),
            None => String::new(),
        };
        let path = self.dir.join(CURSOR_FILE);
        let tmp = self.dir.join(format!("{CURSOR_FILE}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .map_err(|e| WalError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| WalError::io(&path, e))?;
        serval_wal::sync_dir(&path)?;
        Ok(())
    }
}

/// The cursor: the head segment's file name and how many of its records were acknowledged.
fn read_cursor(dir: &Path) -> Result<(Option<String>, usize), EdgeError> {
    let path = dir.join(CURSOR_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, 0)),
        Err(e) => return Err(WalError::io(&path, e).into()),
    };
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next().and_then(|n| n.parse().ok())) {
        (Some(segment), Some(consumed)) => Ok((Some(segment.to_owned()), consumed)),
        (None, _) => Ok((None, 0)),
        _ => Err(EdgeError::Config(format!(
            "{} is damaged ({text:?}): remove it to replay the whole queue",
            path.display()
        ))),
    }
}

/// A segment's first `expected` records (those the queue booked); a segment shorter than
/// that is an error, never a silent loss.
fn read_records(path: &Path, expected: usize) -> Result<Vec<Vec<u8>>, EdgeError> {
    let mut recovered = serval_wal::recover(path)?;
    if recovered.records.len() < expected {
        return Err(EdgeError::Config(format!(
            "offline queue segment {} lost records while open ({} of {expected})",
            path.display(),
            recovered.records.len()
        )));
    }
    recovered.records.truncate(expected);
    Ok(recovered.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range.map(|i| format!("record-{i}").into_bytes()).collect()
    }

    fn small_segments() -> QueueOptions {
        QueueOptions {
            segment_bytes: 64,
            ..QueueOptions::default()
        }
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = OfflineQueue::open(dir.path(), small_segments()).unwrap();
            q.push(&payloads(0..10)).unwrap();
            assert_eq!(q.len(), 10);
            assert_eq!(q.peek(3).unwrap(), payloads(0..3));
            q.ack(3).unwrap();
        }
        let mut q = OfflineQueue::open(dir.path(), small_segments()).unwrap();
        assert_eq!(q.len(), 7);
        assert_eq!(q.peek(100).unwrap(), payloads(3..10));
        q.push(&payloads(10..12)).unwrap();
        q.ack(8).unwrap();
        assert_eq!(q.peek(100).unwrap(), payloads(11..12));
        q.ack(1).unwrap();
        assert!(q.is_empty());
        drop(q);
        let q = OfflineQueue::open(dir.path(), small_segments()).unwrap();
        assert!(q.is_empty(), "acknowledged records never come back");
    }

    #[test]
    fn acknowledged_segments_leave_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = OfflineQueue::open(dir.path(), small_segments()).unwrap();
        q.push(&payloads(0..20)).unwrap();
        let segments = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        let before = segments(dir.path());
        assert!(before > 2, "{before} segments");
        q.ack(19).unwrap();
        assert!(segments(dir.path()) <= 2);
    }

    #[test]
    fn a_full_queue_refuses_or_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let options = QueueOptions {
            max_records: 3,
            ..QueueOptions::default()
        };
        let mut q = OfflineQueue::open(dir.path(), options.clone()).unwrap();
        assert_eq!(q.push(&payloads(0..2)).unwrap(), 0..2);
        assert_eq!(q.push(&payloads(2..5)).unwrap(), 0..1, "only what fits");
        assert!(matches!(
            q.push(&payloads(5..6)),
            Err(EdgeError::QueueFull { records: 3, .. })
        ));
        drop(q);
        let dropping = QueueOptions {
            when_full: WhenFull::DropOldest,
            ..options
        };
        let mut q = OfflineQueue::open(dir.path(), dropping).unwrap();
        assert_eq!(q.push(&payloads(3..5)).unwrap(), 0..2);
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.peek(10).unwrap(), payloads(2..5));
        assert_eq!(
            q.push(&payloads(5..10)).unwrap(),
            2..5,
            "the newest of a push"
        );
        assert_eq!(q.dropped(), 2 + 3 + 2);
        assert_eq!(q.peek(10).unwrap(), payloads(7..10));
    }

    #[test]
    fn a_torn_tail_is_cut_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut q = OfflineQueue::open(dir.path(), QueueOptions::default()).unwrap();
            q.push(&payloads(0..5)).unwrap();
        }
        let segment = dir.path().join("000000000001.seg");
        let len = std::fs::metadata(&segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(len - 3).unwrap();
        let mut q = OfflineQueue::open(dir.path(), QueueOptions::default()).unwrap();
        assert_eq!(q.peek(10).unwrap(), payloads(0..4));
    }

    #[test]
    fn a_second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _q = OfflineQueue::open(dir.path(), QueueOptions::default()).unwrap();
        assert!(matches!(
            OfflineQueue::open(dir.path(), QueueOptions::default()),
            Err(EdgeError::QueueInUse(_))
        ));
    }
}
