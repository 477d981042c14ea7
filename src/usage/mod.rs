//! Usage recording: price table and the batching writer that keeps the store
//! off the request path.

pub mod prices;

use std::path::{Path, PathBuf};
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

/// Start the writer task. Rows that cannot be stored (the database is
/// down) are appended to the spool file and written when it answers again.
pub fn start_writer(store: Arc<dyn Store>, capacity: usize, spool: PathBuf) -> UsageSink {
    let (tx, mut rx) = mpsc::channel::<Msg>(capacity.max(16));
    tokio::spawn(async move {
        let mut msgs = Vec::with_capacity(1024);
        let mut batch: Vec<UsageRow> = Vec::with_capacity(1024);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut msgs, 1024) => {
                    if n == 0 {
                        break;
                    }
                    let mut waiters = Vec::new();
                    for m in msgs.drain(..) {
                        match m {
                            Msg::Row(r) => batch.push(*r),
                            Msg::Drain(w) => waiters.push(w),
                        }
                    }
                    write_or_spool(store.as_ref(), &mut batch, &spool).await;
                    if !waiters.is_empty() {
                        replay_spool(store.as_ref(), &spool).await;
                    }
                    for w in waiters {
                        let _ = w.send(());
                    }
                }
                _ = tick.tick() => replay_spool(store.as_ref(), &spool).await,
            }
        }
    });
    UsageSink {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    }
}

/// Insert a batch (a few quick retries); if the store still fails, append
/// the rows to the spool file. Inserts are idempotent per request id, so a
/// retry or a replay never doubles a row.
async fn write_or_spool(store: &dyn Store, batch: &mut Vec<UsageRow>, spool: &Path) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=3 {
        match store.insert_usage(batch).await {
            Ok(()) => {
                batch.clear();
                metrics::gauge!("bursar_usage_spooled_rows").set(0.0);
                return;
            }
            Err(e) => {
                tracing::warn!(attempt, rows = batch.len(), error = %e, "usage write failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    match append_spool(spool, batch).await {
        Ok(()) => {
            tracing::warn!(rows = batch.len(), spool = %spool.display(), "database unavailable; usage rows spooled to disk");
            metrics::counter!("bursar_usage_spooled_rows_total").increment(batch.len() as u64);
        }
        Err(e) => {
            tracing::error!(rows = batch.len(), error = %e, "usage rows could neither be stored nor spooled; dropped")
        }
    }
    batch.clear();
}

async fn append_spool(spool: &Path, rows: &[UsageRow]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool)
        .await?;
    f.write_all(text.as_bytes()).await?;
    f.sync_data().await
}

/// Write the spooled rows to the store and remove the spool when all are in.
pub async fn replay_spool(store: &dyn Store, spool: &Path) {
    let Ok(text) = tokio::fs::read_to_string(spool).await else {
        return;
    };
    let rows: Vec<UsageRow> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for chunk in rows.chunks(500) {
        if let Err(e) = store.insert_usage(chunk).await {
            tracing::debug!(error = %e, "spool replay: database still unavailable");
            return;
        }
    }
    // Rows appended while replaying stay for the next round: only remove
    // the file if it is unchanged.
    match tokio::fs::read_to_string(spool).await {
        Ok(now) if now.len() == text.len() => {
            if let Err(e) = tokio::fs::remove_file(spool).await {
                tracing::error!(error = %e, "could not remove the replayed usage spool");
            } else {
                tracing::warn!(
                    rows = rows.len(),
                    "spooled usage rows written to the database"
                );
            }
        }
        _ => {}
    }
}
