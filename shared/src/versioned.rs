//! A map of configuration rows that a newer load is never overwritten by an older one.
//!
//! The caches of the fan-out (routes per tenant) and of the delivery-consumer (endpoints) are
//! reloaded in several ways at once: all of it (after a reconnect and periodically), one tenant
//! (a change notification), one entry (a miss, a 410). Loads overlap: a full reload that started
//! before a change can finish after the notification's reload of that tenant. Applied naively
//! the older result wins and the change is lost until the next full reload.
//!
//! So every load takes a [`Stamp`] *before* its query starts, and every entry remembers the
//! stamp of the load that wrote it. Applying a load changes only entries whose stamp is older:
//! a newer entry is proof of newer data. An entry the load's scope covers but its result lacks
//! was deleted: it becomes a tombstone with the load's stamp, so an older load still in flight
//! cannot bring it back. A load of a whole scope (a tenant, everything) also raises that
//! scope's floor: an older load's entries for it are ignored even where nothing was cached to
//! leave a tombstone (an entry deleted before anyone here knew it). Tombstones and floors are
//! dropped after [`MAX_LOAD_AGE`], and a load older than that is discarded rather than applied,
//! so no load can outlive the tombstone or floor it must respect.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ids::TenantId;

/// The oldest a load may be when applied (its query longer than this is a failed load).
pub const MAX_LOAD_AGE: Duration = Duration::from_secs(600);

/// When a load started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    seq: u64,
    at: Instant,
}

/// Hands out increasing stamps.
#[derive(Debug, Default)]
pub struct Stamps(AtomicU64);

impl Stamps {
    /// A stamp for a load about to start (take it before the query).
    pub fn take(&self) -> Stamp {
        Stamp {
            seq: self.0.fetch_add(1, Ordering::SeqCst) + 1,
            at: Instant::now(),
        }
    }
}

/// What a load covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<K> {
    All,
    /// Every entry of one tenant.
    Tenant(TenantId),
    One(K),
}

#[derive(Debug, Clone)]
struct Entry<V> {
    seq: u64,
    at: Instant,
    /// Unknown only for the tombstone of an entry never cached here (see `apply`).
    tenant: Option<TenantId>,
    value: Option<V>,
}

#[derive(Debug, Clone)]
pub struct Versioned<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// The newest whole-tenant load applied, per tenant.
    floors: HashMap<TenantId, Stamp>,
    /// The newest full load applied.
    floor: u64,
}

impl<K, V> Default for Versioned<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            floors: HashMap::new(),
            floor: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Versioned<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().filter_map(|e| e.value.as_ref())
    }

    pub fn len(&self) -> usize {
        self.values().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a load that started at `stamp`, covered `scope` and found `fresh` (key, its
    /// tenant, value). Returns false when the load was too old to apply.
    pub fn apply(
        &mut self,
        stamp: Stamp,
        scope: Scope<K>,
        fresh: impl IntoIterator<Item = (K, TenantId, V)>,
    ) -> bool {
        if stamp.at.elapsed() > MAX_LOAD_AGE {
            tracing::warn!("a configuration load took longer than {MAX_LOAD_AGE:?}; discarded");
            return false;
        }
        let mut seen = std::collections::HashSet::new();
        for (key, tenant, value) in fresh {
            seen.insert(key.clone());
            self.write(key, Some(tenant), Some(value), stamp);
        }
        // A single entry looked up and not found: a tombstone even if it was never cached, so
        // an older full load still in flight cannot bring back what was just deleted.
        if let Scope::One(key) = &scope
            && !seen.contains(key)
            && !self.entries.contains_key(key)
        {
            self.write(key.clone(), None, None, stamp);
        }
        let gone: Vec<(K, Option<TenantId>)> = self
            .entries
            .iter()
            .filter(|(k, e)| {
                !seen.contains(*k)
                    && match &scope {
                        Scope::All => true,
                        Scope::Tenant(t) => e.tenant == Some(*t),
                        Scope::One(key) => *k == key,
                    }
            })
            .map(|(k, e)| (k.clone(), e.tenant))
            .collect();
        for (key, tenant) in gone {
            self.write(key, tenant, None, stamp);
        }
        match scope {
            Scope::All => {
                self.floor = self.floor.max(stamp.seq);
                self.entries
                    .retain(|_, e| e.value.is_some() || e.at.elapsed() <= MAX_LOAD_AGE);
                self.floors.retain(|_, s| s.at.elapsed() <= MAX_LOAD_AGE);
            }
            Scope::Tenant(t) => {
                let floor = self.floors.entry(t).or_insert(stamp);
                if floor.seq < stamp.seq {
                    *floor = stamp;
                }
            }
            Scope::One(_) => {}
        }
        true
    }

    /// An entry changed by this process itself (a 410 disabled the endpoint): a write as new
    /// as a load starting now.
    pub fn set(&mut self, stamp: Stamp, key: K, tenant: TenantId, value: V) {
        self.write(key, Some(tenant), Some(value), stamp);
    }

    fn write(&mut self, key: K, tenant: Option<TenantId>, value: Option<V>, stamp: Stamp) {
        // A newer load of the whole scope already said what this tenant holds.
        let tenant_floor = tenant.and_then(|t| self.floors.get(&t));
        if stamp.seq < self.floor || tenant_floor.is_some_and(|f| stamp.seq < f.seq) {
            return;
        }
        let entry = Entry {
            seq: stamp.seq,
            at: stamp.at,
            tenant,
            value,
        };
        match self.entries.get_mut(&key) {
            Some(current) if current.seq >= stamp.seq => {}
            Some(current) => *current = entry,
            None => {
                self.entries.insert(key, entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_load_never_overwrites_a_newer_one() {
        let stamps = Stamps::default();
        let t = TenantId::new();
        let mut m: Versioned<u32, &str> = Versioned::default();
        let full = stamps.take(); // A full reload starts, sees 1 = "old" and 2.
        let tenant = stamps.take(); // A notification's reload starts later: 1 changed, 2 deleted.
        assert!(m.apply(tenant, Scope::Tenant(t), [(1, t, "new")]));
        assert!(m.apply(full, Scope::All, [(1, t, "old"), (2, t, "deleted")]));
        assert_eq!(m.get(&1), Some(&"new"), "the older full reload lost");
        assert_eq!(m.get(&2), None, "the deletion stuck (tombstone)");
        // A later full reload is authoritative.
        let later = stamps.take();
        assert!(m.apply(later, Scope::All, [(3, t, "three")]));
        assert_eq!((m.get(&1), m.get(&3)), (None, Some(&"three")));
    }

    #[test]
    fn single_entries_and_own_writes_are_versioned_too() {
        let stamps = Stamps::default();
        let t = TenantId::new();
        let mut m: Versioned<u32, &str> = Versioned::default();
        let miss = stamps.take();
        let own = stamps.take();
        m.set(own, 1, t, "disabled");
        assert!(m.apply(miss, Scope::One(1), [(1, t, "enabled")]));
        assert_eq!(m.get(&1), Some(&"disabled"));
        let gone = stamps.take();
        assert!(m.apply(gone, Scope::One(1), []));
        assert_eq!(m.get(&1), None);
        assert!(m.is_empty());
    }

    #[test]
    fn a_miss_for_an_entry_never_cached_is_a_tombstone() {
        let stamps = Stamps::default();
        let t = TenantId::new();
        let mut m: Versioned<u32, &str> = Versioned::default();
        // A full load starts, the entry is deleted, a lookup finds nothing, then the full
        // load (which still saw the entry) lands.
        let full = stamps.take();
        let miss = stamps.take();
        assert!(m.apply(miss, Scope::One(7), []));
        assert!(m.apply(full, Scope::All, [(7, t, "deleted")]));
        assert_eq!(
            m.get(&7),
            None,
            "the older load brought a deleted entry back"
        );
    }
}
