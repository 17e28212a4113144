//! Serval's one write-ahead format, shared by the prediction log (`serval-log`) and the edge
//! runtime's offline queue (`serval-edge`): checksummed append-only [`segment`]s whose
//! [`segment::recover`] keeps every whole record and cuts a torn tail, and the [`DirLock`] that
//! gives each write-ahead directory one live owner.
#![deny(missing_docs)]

mod error;
mod lock;
pub mod segment;

pub use error::WalError;
pub use lock::{DirLock, LOCK_FILE};
pub use segment::{MAX_RECORD_BYTES, Recovered, SegmentWriter, recover, sync_dir};
