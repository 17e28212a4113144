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
        let mut item = {
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
        let res = f(&mut item);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
        self.returned.notify_one();
        res
    }
}
