//! The server-wide budget of memory for requests in flight, in bytes.
//!
//! A count of requests does not bound memory: sixteen maximal bodies, or a body that one
//! decoder blows up into a tree twenty times its size, can take the machine down under any
//! request limit. So every request holds a [`Reservation`] that grows with what it costs —
//! its body as the bytes arrive, the tree a JSON decoder is about to build, the tensors it
//! decoded — and a request that would take the budget past its limit is refused at once with
//! 429 / RESOURCE_EXHAUSTED (413 when it alone is larger than the whole budget), before the
//! memory is taken wherever the cost is known in advance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ServerError;

/// Bytes that requests in flight may hold together.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The default limit: a quarter of the memory this process may use (its cgroup's limit
    /// where one is set, as in a container, else the machine's), at least 256 MiB. A quarter
    /// leaves the models, their engines' arenas and the batcher's copies the rest.
    pub fn default_limit() -> usize {
        let memory = cgroup_limit().or_else(machine_memory).unwrap_or(4 << 30);
        (memory / 4).max(256 << 20)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation against this budget.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` more for a request that holds `held`.
    fn try_take(&self, held: usize, bytes: usize) -> Result<(), ServerError> {
        if held.saturating_add(bytes) > self.limit {
            return Err(ServerError::PayloadTooLarge(format!(
                "the request needs {} of memory, more than the server's whole budget for \
                 requests in flight ({}; --max-request-memory-mib)",
                size(held.saturating_add(bytes)),
                size(self.limit)
            )));
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(|before| record_use(before + bytes))
            .map_err(|used| {
                metrics::counter!("serval_memory_budget_refused_total").increment(1);
                ServerError::OutOfMemory(format!(
                    "the server's memory budget for requests in flight is taken ({} of {} in \
                     use; this request holds {} and needs {} more), retry later",
                    size(used),
                    size(self.limit),
                    size(held),
                    size(bytes)
                ))
            })
    }
}

/// What one request holds of the budget; given back when dropped. Shared (`&self`) so that a
/// gRPC body and the handler decoding its message can both add to it.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: AtomicUsize,
}

impl Reservation {
    /// Takes `bytes` more, or refuses without taking any.
    pub fn grow(&self, bytes: usize) -> Result<(), ServerError> {
        self.budget.try_take(self.bytes(), bytes)?;
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        if bytes > 0 {
            let before = self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
            record_use(before - bytes);
        }
    }
}

fn record_use(used: usize) {
    metrics::gauge!("serval_request_memory_bytes").set(used as f64);
}

/// Requests at least this large are decoded off the I/O threads.
pub const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Runs `decode` of a request of `bytes` bytes. A large one runs with its thread handed over
/// to blocking work (the runtime moves the other connections to a fresh I/O thread), and at
/// most one core fewer than the machine has decode large requests at once, so that parsing
/// maximal bodies does not stall health checks and small requests. Small ones run in place:
/// the hand-over costs more than they do.
pub(crate) fn off_io_threads<T>(bytes: usize, decode: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if bytes >= LARGE_REQUEST_BYTES && multi_thread {
        tokio::task::block_in_place(|| {
            let _slot = LargeDecodes::global().enter();
            decode()
        })
    } else {
        decode()
    }
}

/// Slots for large decodes: a blocking wait, since it runs on threads already given over to
/// blocking work (and under tonic's codec, which cannot await).
struct LargeDecodes {
    running: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
    slots: usize,
}

impl LargeDecodes {
    fn global() -> &'static LargeDecodes {
        static GLOBAL: std::sync::OnceLock<LargeDecodes> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| LargeDecodes {
            running: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            slots: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
        })
    }

    fn enter(&self) -> LargeDecodeSlot<'_> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *running >= self.slots {
            running = self
                .freed
                .wait(running)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *running += 1;
        LargeDecodeSlot(self)
    }
}

/// A held slot of [`LargeDecodes`], given back when dropped.
struct LargeDecodeSlot<'a>(&'a LargeDecodes);

impl Drop for LargeDecodeSlot<'_> {
    fn drop(&mut self) {
        let mut running = self
            .0
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *running -= 1;
        self.0.freed.notify_one();
    }
}

fn size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// cgroup v2's `memory.max` for this process, when it is a number.
fn cgroup_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse().ok()
}

/// `MemTotal` of `/proc/meminfo`.
fn machine_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_it_back() {
        let budget = MemoryBudget::new(100);
        let a = budget.reservation();
        a.grow(60).unwrap();
        let b = budget.reservation();
        let refused = b.grow(50).unwrap_err();
        assert!(matches!(refused, ServerError::OutOfMemory(_)), "{refused}");
        assert_eq!(b.bytes(), 0, "a refused growth takes nothing");
        b.grow(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        b.grow(60).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_is_too_large_not_busy() {
        let budget = MemoryBudget::new(100);
        let err = budget.reservation().grow(101).unwrap_err();
        assert!(matches!(err, ServerError::PayloadTooLarge(_)), "{err}");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_default_limit_is_a_share_of_real_memory() {
        let limit = MemoryBudget::default_limit();
        assert!(limit >= 256 << 20);
        if let Some(machine) = machine_memory() {
            assert!(limit <= machine.max(1 << 30), "{limit} of {machine}");
        }
    }
}
