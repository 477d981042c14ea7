//! The audit log: admin actions are appended before the action answers;
//! security events from the request path go through a bounded queue.
//! Appends are serialized in-process so the hash chain stays linear.

use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

use crate::store::{AuditEntry, AuditRow, Store};

#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn Store>,
    lock: Arc<Mutex<()>>,
    tx: mpsc::Sender<AuditEntry>,
}

impl Audit {
    pub fn start(store: Arc<dyn Store>) -> Audit {
        let (tx, mut rx) = mpsc::channel::<AuditEntry>(10_000);
        let audit = Audit {
            store,
            lock: Arc::new(Mutex::new(())),
            tx,
        };
        let writer = audit.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if let Err(err) = writer.append(e).await {
                    tracing::error!(error = %err, "audit append failed");
                }
            }
        });
        audit
    }

    async fn append(&self, e: AuditEntry) -> Result<AuditRow> {
        let _g = self.lock.lock().await;
        self.store.append_audit(&e).await
    }

    /// Record an admin action and wait until it is stored.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        ip: Option<String>,
        detail: Value,
    ) -> Result<AuditRow> {
        self.append(entry(actor, action, target, ip, detail)).await
    }

    /// Record a security event without waiting (request path).
    pub fn event(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        ip: Option<String>,
        detail: Value,
    ) {
        if self
            .tx
            .try_send(entry(actor, action, target, ip, detail))
            .is_err()
        {
            tracing::warn!(action, "audit queue full; security event dropped");
        }
    }

    /// Wait until queued events are stored (shutdown).
    pub async fn drain(&self) {
        for _ in 0..100 {
            if self.tx.capacity() == self.tx.max_capacity() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _g = self.lock.lock().await;
    }
}

fn entry(
    actor: &str,
    action: &str,
    target: Option<&str>,
    ip: Option<String>,
    detail: Value,
) -> AuditEntry {
    AuditEntry {
        ts: crate::util::now_ms(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.map(str::to_string),
        ip,
        detail,
    }
}
