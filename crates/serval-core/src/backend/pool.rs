//! A fixed set of per-thread engine states, checked out for one run at a time.
//!
//! tract's `SimpleState` and ONNX Runtime's `Session::run(&mut self)` both need exclusive
//! access while running; a pool gives each concurrent caller its own without loading anything.

use std::sync::{Condvar, Mutex, PoisonError};

/// A blocking pool of `T`s; callers wait when all are checked out.
pub struct Pool<T> {
    idle: Mutex<Vec<T>>,
    returned: Condvar,
}

impl<T> Pool<T> {
    /// A pool holding `items`.
    pub fn new(items: Vec<T>) -> Pool<T> {
        Pool {
            idle: Mutex::new(items),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` with exclusive use of one item, waiting for one to be free.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let item = {
            // A panic while holding the lock cannot leave the Vec half-updated, so poison is harmless.
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(item) = idle.pop() {
                    break item;
                }
                idle = self
                    .returned
                    .wait(idle)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // The guard returns the item even if `f` panics, so a panic can never shrink the pool
        // until callers wait forever.
        let mut guard = CheckedOut {
            pool: self,
            item: Some(item),
        };
        let item = guard
            .item
            .as_mut()
            .expect("item is present until drop. This is a bug.");
        f(item)
    }
}

struct CheckedOut<'p, T> {
    pool: &'p Pool<T>,
    item: Option<T>,
}

impl<T> Drop for CheckedOut<'_, T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(item);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_caller_returns_its_item() {
        let pool = Pool::new(vec![1]);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.with(|_| panic!("boom"))
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.with(|x| *x), 1);
    }
}
