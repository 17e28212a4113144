//! Keeps the served models in step with the repository: file notifications trigger a
//! reconciliation at once, and a periodic poll catches what notifications miss (network file
//! systems, editors that replace files, notify back-ends that fail to start).

use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::store::ModelStore;

/// Watches `store`'s repository until `stop` turns true; `poll` is the fallback interval.
pub async fn run(store: Arc<ModelStore>, poll: Duration, mut stop: watch::Receiver<bool>) {
    let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
    // The watcher must live as long as the loop; `None` when notifications are unavailable.
    let _watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only changes matter: our own reads of config and model files raise access events.
        if event.is_ok_and(|e| {
            matches!(
                e.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            )
        }) {
            // A full channel already holds a pending wake-up; dropping this one loses nothing.
            let _ = changed_tx.try_send(());
        }
    }) {
        Ok(mut watcher) => match watcher.watch(store.repository().root(), RecursiveMode::Recursive)
        {
            Ok(()) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "file notifications unavailable; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "file notifications unavailable; polling only");
            None
        }
    };
    loop {
        tokio::select! {
            res = stop.changed() => {
                if res.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep(poll) => {}
            Some(()) = changed_rx.recv() => {
                // Let a burst of writes (a file being copied in) settle before loading.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while changed_rx.try_recv().is_ok() {}
            }
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.reconcile_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot read the model repository"),
            Err(e) => tracing::error!(error = %e, "repository reconciliation panicked"),
        }
    }
}
