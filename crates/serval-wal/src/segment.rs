//! A checksummed append-only segment: the one write-ahead format of the project (the prediction
//! log's, and the edge runtime's offline queue's).
//!
//! A segment file is an 8-byte magic, then records, each `len: u32 LE`, `crc32(payload): u32 LE`,
//! `payload`. A crash can only leave a torn tail (a record cut short, or its bytes not all on
//! disk): [`recover`] keeps every whole record before it and cuts the file there, so nothing
//! acknowledged earlier is lost and the file is never left unreadable.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::WalError;

/// First bytes of every segment (format version 1).
const MAGIC: &[u8; 8] = b"SRVLSEG1";

/// Bytes before each record's payload.
const FRAME: usize = 8;

/// The largest payload a record may have; a length beyond it can only be a torn or foreign
/// tail, never something to allocate.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// Appends records to one segment file.
#[derive(Debug)]
pub struct SegmentWriter {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
    records: u64,
}

impl SegmentWriter {
    /// Creates a new segment (refusing to overwrite one) and makes its directory entry durable.
    pub fn create(path: &Path) -> Result<SegmentWriter, WalError> {
        let io = |source| WalError::io(path, source);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        let mut file = BufWriter::with_capacity(256 * 1024, file);
        let started = file
            .write_all(MAGIC)
            .and_then(|()| file.flush())
            .and_then(|()| file.get_ref().sync_all());
        if let Err(e) = started {
            // A full disk would otherwise leave one empty file per attempt.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(io(e));
        }
        sync_dir(path)?;
        Ok(SegmentWriter {
            path: path.to_owned(),
            file,
            bytes: MAGIC.len() as u64,
            records: 0,
        })
    }

    /// Appends one record (buffered: durable after the next [`SegmentWriter::sync`]).
    pub fn append(&mut self, payload: &[u8]) -> Result<(), WalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::RecordTooLarge(payload.len()));
        }
        let mut frame = [0u8; FRAME];
        frame[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        frame[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let io = |source| WalError::io(&self.path, source);
        self.file.write_all(&frame).map_err(io)?;
        self.file.write_all(payload).map_err(io)?;
        self.bytes += (FRAME + payload.len()) as u64;
        self.records += 1;
        Ok(())
    }

    /// Writes out what is buffered and waits for it to reach the disk (the group commit).
    pub fn sync(&mut self) -> Result<(), WalError> {
        let io = |source| WalError::io(&self.path, source);
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)
    }

    /// Bytes in the segment, buffered ones included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records appended.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What [`recover`] found in a segment.
#[derive(Debug)]
pub struct Recovered {
    /// Every whole record, in append order.
    pub records: Vec<Vec<u8>>,
    /// Bytes cut from the end (a torn tail); 0 for a segment closed cleanly.
    pub cut_bytes: u64,
}

/// Reads every whole record of a segment and cuts a torn tail off the file, so later readers
/// and appends see only whole records.
pub fn recover(path: &Path) -> Result<Recovered, WalError> {
    let io = |source| WalError::io(path, source);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io)?;
    // A file holding only part of the magic is a segment whose creation was cut short.
    let is_segment = match data.get(..MAGIC.len()) {
        Some(magic) => magic == MAGIC,
        None => MAGIC.starts_with(&data),
    };
    if !is_segment {
        return Err(WalError::NotASegment(path.to_owned()));
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len().min(data.len());
    while let Some(header) = data.get(at..at + FRAME) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES {
            break;
        }
        let Some(payload) = data.get(at + FRAME..at + FRAME + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        at += FRAME + len;
    }
    let cut_bytes = (data.len() - at) as u64;
    if data.len() < MAGIC.len() {
        // Complete the magic a torn creation left out, so the file is a valid empty segment.
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(MAGIC).map_err(io)?;
        file.sync_all().map_err(io)?;
    } else if cut_bytes > 0 {
        file.set_len(at as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok(Recovered { records, cut_bytes })
}

/// Makes a file's creation, rename or removal in its directory durable.
pub fn sync_dir(path: &Path) -> Result<(), WalError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| WalError::io(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(records: &[&[u8]]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.seg");
        let mut w = SegmentWriter::create(&path).unwrap();
        for r in records {
            w.append(r).unwrap();
        }
        w.sync().unwrap();
        (dir, path)
    }

    #[test]
    fn whole_records_come_back_in_order() {
        let (_dir, path) = written(&[b"one", b"", b"three"]);
        let got = recover(&path).unwrap();
        assert_eq!(
            got.records,
            vec![b"one".to_vec(), vec![], b"three".to_vec()]
        );
        assert_eq!(got.cut_bytes, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_possible_length_and_nothing_before_it_is_lost() {
        let (_dir, path) = written(&[b"first", b"second"]);
        let full = std::fs::read(&path).unwrap();
        let first_end = MAGIC.len() + FRAME + 5;
        for len in first_end..full.len() {
            std::fs::write(&path, &full[..len]).unwrap();
            let got = recover(&path).unwrap();
            assert_eq!(got.records, vec![b"first".to_vec()], "cut at {len}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), first_end as u64);
            // Recovery is idempotent: the cut file reads the same again.
            assert_eq!(recover(&path).unwrap().cut_bytes, 0);
        }
    }

    #[test]
    fn a_corrupt_record_ends_the_segment_there() {
        let (_dir, path) = written(&[b"good", b"flipped", b"after"]);
        let mut data = std::fs::read(&path).unwrap();
        let second_payload = MAGIC.len() + FRAME + 4 + FRAME;
        data[second_payload] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let got = recover(&path).unwrap();
        assert_eq!(got.records, vec![b"good".to_vec()]);
        assert!(got.cut_bytes > 0);
    }

    #[test]
    fn a_huge_length_is_a_torn_tail_not_an_allocation() {
        let (_dir, path) = written(&[b"ok"]);
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&[0; 4]);
        std::fs::write(&path, &data).unwrap();
        assert_eq!(recover(&path).unwrap().records, vec![b"ok".to_vec()]);
    }

    #[test]
    fn a_creation_cut_short_recovers_as_an_empty_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.seg");
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        assert!(recover(&path).unwrap().records.is_empty());
        assert!(recover(&path).unwrap().records.is_empty());
    }

    #[test]
    fn a_foreign_file_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.seg");
        std::fs::write(&path, b"not a segment at all").unwrap();
        assert!(matches!(recover(&path), Err(WalError::NotASegment(_))));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a segment at all");
    }

    #[test]
    fn create_never_overwrites() {
        let (_dir, path) = written(&[b"x"]);
        assert!(SegmentWriter::create(&path).is_err());
        assert_eq!(recover(&path).unwrap().records.len(), 1);
    }
}
