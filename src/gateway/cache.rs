//! The in-memory key cache: the request path never asks the database which
//! key a secret belongs to. Reloaded at once after a change in this process
//! and every few seconds as a safety net.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::Result;

use crate::keys::spec::{KeySpec, OwnerFields};
use crate::keys::{self, KeyHash};
use crate::store::{KeyRow, Store};

/// A key as the request path sees it.
#[derive(Debug)]
pub struct CachedKey {
    pub row: KeyRow,
    pub spec: KeySpec,
    pub ip_nets: Vec<ipnet::IpNet>,
}

impl CachedKey {
    pub fn from_row(row: KeyRow) -> CachedKey {
        let spec: KeySpec = serde_json::from_str(&row.spec).unwrap_or_default();
        let ip_nets = spec
            .ip_allow
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c).ok())
            .collect();
        CachedKey { row, spec, ip_nets }
    }
}

struct Entry {
    hash: KeyHash,
    /// For a rotated-out secret: when it stops being accepted (epoch ms).
    valid_until: Option<i64>,
    key: Arc<CachedKey>,
}

#[derive(Default)]
struct Maps {
    keys: HashMap<KeyHash, Entry>,
    admins: HashMap<KeyHash, String>,
    by_id: HashMap<String, Arc<CachedKey>>,
    /// Child key ids by parent id.
    children: HashMap<String, Vec<String>>,
    /// Users and teams by (kind, name).
    owners: HashMap<(String, String), Arc<OwnerFields>>,
}

#[derive(Default)]
pub struct KeyCache {
    maps: RwLock<Arc<Maps>>,
    /// When the cache last matched the store (epoch ms).
    fresh_at: std::sync::atomic::AtomicI64,
    /// Reloads run one at a time, so an older read can never replace a newer one.
    reload_lock: tokio::sync::Mutex<()>,
}

/// What a presented secret resolves to.
pub enum Lookup {
    Found(Arc<CachedKey>),
    /// A rotated-out secret past its grace period.
    Rotated(Arc<CachedKey>),
    Unknown,
}

fn decode_hash(h: &str) -> Option<KeyHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

impl KeyCache {
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let rows = store.all_keys().await?;
        let admins = store.admin_keys().await?;
        let owners = store.list_owners(None).await?;
        let mut maps = Maps::default();
        for o in owners {
            if let Ok(f) = serde_json::from_str::<OwnerFields>(&o.spec) {
                maps.owners.insert((o.kind, o.name), Arc::new(f));
            }
        }
        for row in rows {
            let current = decode_hash(&row.key_hash);
            let old = row.old_key_hash.as_deref().and_then(decode_hash);
            let old_until = row.old_key_expires_at;
            let key = Arc::new(CachedKey::from_row(row));
            maps.by_id.insert(key.row.id.clone(), key.clone());
            if let Some(p) = &key.row.parent_id {
                maps.children
                    .entry(p.clone())
                    .or_default()
                    .push(key.row.id.clone());
            }
            if let Some(h) = current {
                maps.keys.insert(
                    h,
                    Entry {
                        hash: h,
                        valid_until: None,
                        key: key.clone(),
                    },
                );
            }
            if let Some(h) = old {
                maps.keys.insert(
                    h,
                    Entry {
                        hash: h,
                        valid_until: old_until,
                        key,
                    },
                );
            }
        }
        for a in admins.into_iter().filter(|a| a.revoked_at.is_none()) {
            if let Some(h) = decode_hash(&a.key_hash) {
                maps.admins.insert(h, a.prefix);
            }
        }
        if let Ok(mut guard) = self.maps.write() {
            *guard = Arc::new(maps);
        }
        self.fresh_at
            .store(crate::util::now_ms(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Maps> {
        match self.maps.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn lookup(&self, secret: &str, now_ms: i64) -> Lookup {
        let h = keys::hash(secret);
        let maps = self.snapshot();
        let hit = maps.keys.get(&h);
        metrics::counter!("bursar_key_cache_lookups_total", "result" => if hit.is_some() { "hit" } else { "miss" }).increment(1);
        match hit {
            Some(e) if keys::hashes_equal(&e.hash, &h) => match e.valid_until {
                Some(until) if until <= now_ms => Lookup::Rotated(e.key.clone()),
                _ => Lookup::Found(e.key.clone()),
            },
            _ => Lookup::Unknown,
        }
    }

    /// The display prefix of the admin key this secret is, if any.
    pub fn admin(&self, secret: &str) -> Option<String> {
        let h = keys::hash(secret);
        let maps = self.snapshot();
        maps.admins
            .iter()
            .find(|(k, _)| keys::hashes_equal(k, &h))
            .map(|(_, p)| p.clone())
    }

    /// Milliseconds since the cache last matched the store.
    pub fn staleness_ms(&self, now_ms: i64) -> i64 {
        now_ms - self.fresh_at.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A key by id.
    pub fn by_id(&self, id: &str) -> Option<Arc<CachedKey>> {
        self.snapshot().by_id.get(id).cloned()
    }

    /// A key's id and the ids of all its descendants.
    pub fn subtree(&self, id: &str) -> Vec<String> {
        let maps = self.snapshot();
        let mut out = vec![id.to_string()];
        let mut i = 0;
        while i < out.len() && out.len() < 100_000 {
            if let Some(kids) = maps.children.get(&out[i]) {
                for k in kids {
                    if !out.contains(k) {
                        out.push(k.clone());
                    }
                }
            }
            i += 1;
        }
        out
    }

    /// A key's ancestors, nearest first.
    pub fn ancestors(&self, key: &CachedKey) -> Vec<Arc<CachedKey>> {
        let maps = self.snapshot();
        let mut out: Vec<Arc<CachedKey>> = Vec::new();
        let mut parent = key.row.parent_id.clone();
        while let Some(pid) = parent {
            match maps.by_id.get(&pid) {
                Some(p) if out.len() < 64 && !out.iter().any(|a| a.row.id == p.row.id) => {
                    parent = p.row.parent_id.clone();
                    out.push(p.clone());
                }
                _ => break,
            }
        }
        out
    }

    /// Whether every ancestor of a key is active and unexpired.
    pub fn ancestors_alive(&self, key: &CachedKey, now_ms: i64) -> bool {
        let maps = self.snapshot();
        let mut parent = key.row.parent_id.clone();
        let mut depth = 0;
        while let Some(pid) = parent {
            depth += 1;
            match maps.by_id.get(&pid) {
                Some(p)
                    if p.row.status == "active"
                        && p.row.expires_at.is_none_or(|e| e > now_ms)
                        && depth < 64 =>
                {
                    parent = p.row.parent_id.clone();
                }
                _ => return false,
            }
        }
        true
    }

    /// A user's or team's limits.
    pub fn owner(&self, kind: &str, name: &str) -> Option<Arc<OwnerFields>> {
        self.snapshot()
            .owners
            .get(&(kind.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.snapshot().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
