//! Usage recording: price table and the batching writer that keeps the store
//! off the request path.

pub mod prices;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, UsageRow};

enum Msg {
    Row(Box<UsageRow>),
    Drain(oneshot::Sender<()>),
}

/// The sending side: cheap to clone, never blocks a request.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl UsageSink {
    /// Queue a row; when the queue is full the row is counted as dropped and
    /// logged rather than slowing the request.
    pub fn record(&self, row: UsageRow) {
        if let Err(e) = self.tx.try_send(Msg::Row(Box::new(row))) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let mpsc::error::TrySendError::Full(Msg::Row(r)) = e {
                tracing::error!(request_id = %r.request_id, "usage queue full; row dropped");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Write everything queued so far and wait until it is stored.
    pub async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Drain(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Start the writer task.
pub fn start_writer(store: Arc<dyn Store>, capacity: usize) -> UsageSink {
    let (tx, mut rx) = mpsc::channel::<Msg>(capacity.max(16));
    tokio::spawn(async move {
        let mut msgs = Vec::with_capacity(1024);
        let mut batch: Vec<UsageRow> = Vec::with_capacity(1024);
        while rx.recv_many(&mut msgs, 1024).await > 0 {
            let mut waiters = Vec::new();
            for m in msgs.drain(..) {
                match m {
                    Msg::Row(r) => batch.push(*r),
                    Msg::Drain(w) => waiters.push(w),
                }
            }
            write_with_retry(store.as_ref(), &mut batch).await;
            for w in waiters {
                let _ = w.send(());
            }
        }
    });
    UsageSink {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    }
}

/// Insert a batch, retrying while the store is unavailable. Inserts are
/// idempotent per request id, so a retry never doubles a row.
async fn write_with_retry(store: &dyn Store, batch: &mut Vec<UsageRow>) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=30 {
        match store.insert_usage(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(attempt, rows = batch.len(), error = %e, "usage write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(
        rows = batch.len(),
        "usage rows could not be written and were dropped"
    );
    batch.clear();
}
