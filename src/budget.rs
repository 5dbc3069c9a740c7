//! One hard memory budget shared by every store and backend of a process: [`MemoryBudget`].
//!
//! Each consumer charges the bytes it is about to hold to one [`Component`] before it holds
//! them and releases them when it lets go; a charge that would take the total past the limit
//! fails instead. What a consumer does then depends on what it is:
//!
//! - block caches evict (their own blocks, or those of another cache on the same budget through
//!   [`Reclaim`]) or do not cache the block;
//! - write caches settle into their store and evict;
//! - memtable writers ask the caches to shrink, freeze their memtable for a flush, ask the other
//!   stores on the budget to flush, and wait (counted, logged) until a flush hands memory back.
//!
//! Two charges never wait and may pass the limit, because the thread that makes them cannot
//! wait without stopping the work that frees memory: the index and filter of a table a flush or
//! compaction just wrote ([`Component::TableReader`]), and the writes of a checkpoint moved from
//! a write cache to the checkpoint write log (the same bytes change hands, so the total does not
//! grow). [`MemoryBudget::peak`] and [`MemoryBudget::overshoot`] report what happened.
//!
//! Charges are made in chunks of [`CHUNK`] bytes by consumers that grow one record at a time
//! (memtables, write caches), so the shared counter is touched about once per 256 KiB written.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// The granularity of the charges of memtables and write caches.
pub const CHUNK: usize = 256 << 10;

/// What a charge pays for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// A backend's write cache: the newest values of recently used keys and the writes since
    /// the last snapshot.
    WriteCache,
    /// Mutable and frozen memtables, until the last reader lets go of them.
    Memtable,
    /// Decoded blocks in a block cache.
    BlockCache,
    /// The index and filter of every open SST file.
    TableReader,
    /// Frozen checkpoint write batches not yet applied to the store.
    CheckpointLog,
    /// Buffers of files in transfer to or from checkpoint storage.
    Transfer,
}

impl Component {
    /// Every component, in the order of [`MemoryBudget::charged`]'s index.
    pub const ALL: [Component; 6] = [
        Component::WriteCache,
        Component::Memtable,
        Component::BlockCache,
        Component::TableReader,
        Component::CheckpointLog,
        Component::Transfer,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The component's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Component::WriteCache => "write_cache",
            Component::Memtable => "memtable",
            Component::BlockCache => "block_cache",
            Component::TableReader => "table_reader",
            Component::CheckpointLog => "checkpoint_log",
            Component::Transfer => "transfer",
        }
    }
}

/// Something on the budget that can hand memory back when asked: block caches evict, stores
/// freeze their memtables for a flush.
pub trait Reclaim: Send + Sync {
    /// Frees about `bytes` bytes now if it can (caches evict); returns the bytes released.
    fn reclaim(&self, bytes: usize) -> usize;

    /// Starts handing memory back later if it holds more than `larger_than` bytes of
    /// memtables (a store schedules a flush); returns whether it will. The default holds none.
    fn request_flush(&self, larger_than: usize) -> bool {
        let _ = larger_than;
        false
    }
}

/// A process-wide memory limit shared by stores and backends. See the module documentation.
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    by_component: [AtomicUsize; 6],
    waits: AtomicU64,
    reclaimers: Mutex<Vec<(usize, Weak<dyn Reclaim>)>>,
    next_id: AtomicUsize,
    freed_lock: Mutex<()>,
    freed: Condvar,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("MemoryBudget");
        d.field("limit", &self.limit).field("used", &self.used());
        for c in Component::ALL {
            d.field(c.name(), &self.charged(c));
        }
        d.finish()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            by_component: Default::default(),
            waits: AtomicU64::new(0),
            reclaimers: Mutex::new(Vec::new()),
            next_id: AtomicUsize::new(1),
            freed_lock: Mutex::new(()),
            freed: Condvar::new(),
        })
    }

    /// A budget of `mib` MiB.
    pub fn with_mib(mib: usize) -> Arc<MemoryBudget> {
        MemoryBudget::new(mib.saturating_mul(1 << 20))
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now, over every component.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes ever charged at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// How far the peak went past the limit (0 when it never did).
    pub fn overshoot(&self) -> usize {
        self.peak().saturating_sub(self.limit)
    }

    /// Bytes charged now to `component`.
    pub fn charged(&self, component: Component) -> usize {
        self.by_component[component.index()].load(Ordering::Relaxed)
    }

    /// Times a writer waited for memory.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Charges `bytes` to `component` if the total stays within the limit; false (nothing
    /// charged) otherwise.
    pub fn try_charge(&self, component: Component, bytes: usize) -> bool {
        self.try_charge_within(component, bytes, usize::MAX)
    }

    /// [`MemoryBudget::try_charge`], failing also when `component`'s own charge would pass
    /// `component_cap`.
    pub fn try_charge_within(&self, component: Component, bytes: usize, cap: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        if self.charged(component).saturating_add(bytes) > cap {
            return false;
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    self.add_component(component, bytes);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Charges `bytes` to `component` even past the limit (see the module documentation for
    /// the two charges that may).
    pub fn force_charge(&self, component: Component, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let next = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak.fetch_max(next, Ordering::Relaxed);
        self.add_component(component, bytes);
    }

    /// Hands `bytes` charged to `component` back and wakes the writers waiting for memory.
    pub fn release(&self, component: Component, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        let slot = &self.by_component[component.index()];
        let before = slot.fetch_sub(bytes, Ordering::Relaxed);
        publish(component, before, before - bytes);
        let _guard = self.freed_lock.lock();
        self.freed.notify_all();
    }

    /// Moves `bytes` of charge from one component to another (the total does not change).
    pub fn transfer(&self, from: Component, to: Component, bytes: usize) {
        if bytes == 0 || from == to {
            return;
        }
        let before = self.by_component[from.index()].fetch_sub(bytes, Ordering::Relaxed);
        publish(from, before, before - bytes);
        self.add_component(to, bytes);
    }

    fn add_component(&self, component: Component, bytes: usize) {
        let before = self.by_component[component.index()].fetch_add(bytes, Ordering::Relaxed);
        publish(component, before, before + bytes);
    }

    /// Registers `reclaimer`; returns its id for [`MemoryBudget::reclaim`]'s `except`. The
    /// budget holds it weakly: a dropped reclaimer is forgotten.
    pub fn register(&self, reclaimer: Weak<dyn Reclaim>) -> usize {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut list = self.reclaimers.lock();
        list.retain(|(_, r)| r.strong_count() > 0);
        list.push((id, reclaimer));
        id
    }

    fn live_reclaimers(&self, except: usize) -> Vec<Arc<dyn Reclaim>> {
        self.reclaimers
            .lock()
            .iter()
            .filter(|(id, _)| *id != except)
            .filter_map(|(_, r)| r.upgrade())
            .collect()
    }

    /// Asks the registered reclaimers other than `except` to free `bytes` in all; returns the
    /// bytes they released. Called without any lock a reclaimer takes.
    pub fn reclaim(&self, bytes: usize, except: usize) -> usize {
        let mut freed = 0;
        for reclaimer in self.live_reclaimers(except) {
            if freed >= bytes {
                break;
            }
            freed += reclaimer.reclaim(bytes - freed);
        }
        freed
    }

    /// Asks every registered store other than `except` that holds more than `larger_than`
    /// bytes of memtables to flush them; returns how many will.
    pub fn request_flushes(&self, except: usize, larger_than: usize) -> usize {
        self.live_reclaimers(except)
            .iter()
            .filter(|r| r.request_flush(larger_than))
            .count()
    }

    /// Counts a writer's wait for memory (and logs the first of a run).
    pub fn note_wait(&self, component: Component, wanted: usize) {
        let waits = self.waits.fetch_add(1, Ordering::Relaxed);
        crate::observe::memory_wait();
        if waits.is_multiple_of(64) {
            tracing::info!(
                component = component.name(),
                wanted,
                used = self.used(),
                limit = self.limit,
                waits = waits + 1,
                "memory budget full: waiting for a flush"
            );
        }
    }

    /// Wakes the writers waiting for memory, so they look again (a store installed a new
    /// view of its memtables: a flushed one is released once its waiting writer lets go).
    pub fn wake(&self) {
        let _guard = self.freed_lock.lock();
        self.freed.notify_all();
    }

    /// Waits until some charge is released, or `timeout` passes.
    pub fn wait_for_release(&self, timeout: Duration) {
        let mut guard = self.freed_lock.lock();
        self.freed.wait_for(&mut guard, timeout);
    }
}

/// Sets the component's gauge when its charge crosses a MiB boundary (so the gauge is not
/// touched on every block).
fn publish(component: Component, before: usize, after: usize) {
    if before >> 20 != after >> 20 {
        crate::observe::memory_charged(component.name(), after);
    }
}

/// Bytes charged to one component of a budget, released when dropped. A consumer that may or
/// may not run on a budget holds one with no budget, which charges nothing.
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<Arc<MemoryBudget>>,
    component: Option<Component>,
    bytes: usize,
}

impl Reservation {
    /// An empty reservation against `budget` (none: nothing is ever charged).
    pub fn new(budget: Option<Arc<MemoryBudget>>, component: Component) -> Reservation {
        Reservation {
            budget,
            component: Some(component),
            bytes: 0,
        }
    }

    /// Charges exactly `bytes` now without waiting: within the limit if the caches on the
    /// budget can make room, past it otherwise (for charges whose thread must not wait; see the
    /// module documentation).
    pub fn charge_now(
        budget: Option<Arc<MemoryBudget>>,
        component: Component,
        bytes: usize,
    ) -> Reservation {
        if let Some(budget) = &budget
            && !budget.try_charge(component, bytes)
        {
            budget.reclaim(bytes, 0);
            if !budget.try_charge(component, bytes) {
                budget.force_charge(component, bytes);
            }
        }
        Reservation {
            bytes: if budget.is_some() { bytes } else { 0 },
            budget,
            component: Some(component),
        }
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<&Arc<MemoryBudget>> {
        self.budget.as_ref()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `bytes` are held (always true without a budget).
    pub fn covers(&self, bytes: usize) -> bool {
        self.budget.is_none() || self.bytes >= bytes
    }

    /// Grows the reservation to cover `bytes`, in whole [`CHUNK`]s; false when the budget
    /// cannot (the reservation keeps what it had). Always true without a budget.
    pub fn try_cover(&mut self, bytes: usize) -> bool {
        self.try_cover_within(bytes, usize::MAX)
    }

    /// [`Reservation::try_cover`] with a cap on the component's total charge.
    pub fn try_cover_within(&mut self, bytes: usize, cap: usize) -> bool {
        let (Some(budget), Some(component)) = (&self.budget, self.component) else {
            return true;
        };
        if bytes <= self.bytes {
            return true;
        }
        let more = (bytes - self.bytes).div_ceil(CHUNK) * CHUNK;
        if budget.try_charge_within(component, more, cap) {
            self.bytes += more;
            true
        } else {
            false
        }
    }

    /// Grows the reservation to cover `bytes` even past the limit.
    pub fn force_cover(&mut self, bytes: usize) {
        let (Some(budget), Some(component)) = (&self.budget, self.component) else {
            return;
        };
        if bytes > self.bytes {
            budget.force_charge(component, bytes - self.bytes);
            self.bytes = bytes;
        }
    }

    /// Shrinks the reservation to the whole chunks that cover `bytes`, releasing the rest.
    pub fn shrink_to(&mut self, bytes: usize) {
        let (Some(budget), Some(component)) = (&self.budget, self.component) else {
            return;
        };
        let keep = bytes.div_ceil(CHUNK) * CHUNK;
        if keep < self.bytes {
            budget.release(component, self.bytes - keep);
            self.bytes = keep;
        }
    }

    /// Takes up to `bytes` out of this reservation into a new one charged to `component`.
    pub fn split_off(&mut self, bytes: usize, component: Component) -> Reservation {
        let moved = bytes.min(self.bytes);
        if let (Some(budget), Some(from)) = (&self.budget, self.component) {
            budget.transfer(from, component, moved);
        }
        self.bytes -= moved;
        Reservation {
            budget: self.budget.clone(),
            component: Some(component),
            bytes: moved,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let (Some(budget), Some(component)) = (&self.budget, self.component) {
            budget.release(component, self.bytes);
        }
    }
}

/// A [`Reservation`] shared by several holders that each take part of it: the memtables of one
/// store share one, so a store with many column families holds whole chunks only for the sum
/// of its memtables, not one per memtable.
#[derive(Debug)]
pub struct Pool {
    /// The reservation and the bytes of it the holders have taken.
    state: Mutex<(Reservation, usize)>,
}

impl Pool {
    /// An empty pool on `budget`, charged to `component`.
    pub fn new(budget: Arc<MemoryBudget>, component: Component) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new((Reservation::new(Some(budget), component), 0)),
        })
    }

    /// The budget the pool charges.
    pub fn budget(&self) -> Option<Arc<MemoryBudget>> {
        self.state.lock().0.budget().cloned()
    }

    /// Takes `bytes`, growing the reservation if needed; false (nothing taken) when the budget
    /// cannot.
    pub fn try_take(&self, bytes: usize) -> bool {
        let mut state = self.state.lock();
        let (reservation, taken) = &mut *state;
        let need = taken.saturating_add(bytes);
        if reservation.try_cover(need) {
            *taken = need;
            true
        } else {
            false
        }
    }

    /// Takes `bytes` even past the budget's limit.
    pub fn force_take(&self, bytes: usize) {
        let mut state = self.state.lock();
        let (reservation, taken) = &mut *state;
        *taken = taken.saturating_add(bytes);
        reservation.force_cover(*taken);
    }

    /// Gives `bytes` back; whole chunks nobody holds go back to the budget (one spare chunk
    /// stays, so a holder growing again does not charge the budget at once).
    pub fn give_back(&self, bytes: usize) {
        let mut state = self.state.lock();
        let (reservation, taken) = &mut *state;
        *taken = taken.saturating_sub(bytes);
        reservation.shrink_to(taken.saturating_add(CHUNK));
    }

    /// Bytes taken by the holders.
    pub fn taken(&self) -> usize {
        self.state.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stay_within_the_limit_and_drops_release() {
        let budget = MemoryBudget::new(4 * CHUNK);
        let mut a = Reservation::new(Some(budget.clone()), Component::Memtable);
        assert!(a.try_cover(3 * CHUNK - 10));
        assert_eq!(a.bytes(), 3 * CHUNK);
        assert!(!budget.try_charge(Component::BlockCache, 2 * CHUNK));
        assert!(budget.try_charge(Component::BlockCache, CHUNK));
        assert_eq!(budget.used(), 4 * CHUNK);
        assert!(!a.try_cover(4 * CHUNK));
        assert_eq!(a.bytes(), 3 * CHUNK);
        let log = a.split_off(CHUNK, Component::CheckpointLog);
        assert_eq!(budget.charged(Component::Memtable), 2 * CHUNK);
        assert_eq!(budget.charged(Component::CheckpointLog), CHUNK);
        drop(log);
        a.shrink_to(1);
        assert_eq!(budget.charged(Component::Memtable), CHUNK);
        drop(a);
        budget.release(Component::BlockCache, CHUNK);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.peak(), 4 * CHUNK);
        assert_eq!(budget.overshoot(), 0);
    }

    #[test]
    fn a_component_cap_limits_one_component_only() {
        let budget = MemoryBudget::new(8 * CHUNK);
        assert!(budget.try_charge_within(Component::WriteCache, 2 * CHUNK, 2 * CHUNK));
        assert!(!budget.try_charge_within(Component::WriteCache, 1, 2 * CHUNK));
        assert!(budget.try_charge(Component::Memtable, 6 * CHUNK));
    }

    #[test]
    fn a_pool_charges_whole_chunks_for_the_sum_of_its_holders() {
        let budget = MemoryBudget::new(2 * CHUNK);
        let pool = Pool::new(budget.clone(), Component::Memtable);
        for _ in 0..3 {
            assert!(pool.try_take(CHUNK / 4));
        }
        assert_eq!(budget.used(), CHUNK);
        assert!(pool.try_take(CHUNK));
        assert!(!pool.try_take(CHUNK));
        assert_eq!(pool.taken(), CHUNK / 4 * 3 + CHUNK);
        pool.give_back(CHUNK / 4 * 3 + CHUNK);
        assert_eq!(budget.used(), CHUNK, "one spare chunk stays");
        drop(pool);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn no_budget_charges_nothing() {
        let mut r = Reservation::new(None, Component::Memtable);
        assert!(r.try_cover(usize::MAX / 2));
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn concurrent_charges_never_pass_the_limit() {
        let budget = MemoryBudget::new(10 * CHUNK);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let budget = &budget;
                s.spawn(move || {
                    for i in 0..20_000usize {
                        let bytes = 1 + (i * 7919) % (3 * CHUNK);
                        if budget.try_charge(Component::BlockCache, bytes) {
                            assert!(budget.used() <= budget.limit());
                            budget.release(Component::BlockCache, bytes);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.used(), 0);
        assert!(budget.peak() <= budget.limit());
    }

    struct Evictor(Mutex<usize>);
    impl Reclaim for Evictor {
        fn reclaim(&self, bytes: usize) -> usize {
            let mut held = self.0.lock();
            let freed = bytes.min(*held);
            *held -= freed;
            freed
        }
    }

    #[test]
    fn reclaim_asks_the_others_and_forgets_dropped_ones() {
        let budget = MemoryBudget::with_mib(1);
        let a: Arc<Evictor> = Arc::new(Evictor(Mutex::new(100)));
        let b: Arc<Evictor> = Arc::new(Evictor(Mutex::new(100)));
        let a_id = budget.register(Arc::downgrade(&a) as Weak<dyn Reclaim>);
        budget.register(Arc::downgrade(&b) as Weak<dyn Reclaim>);
        assert_eq!(budget.reclaim(150, a_id), 100);
        assert_eq!(*a.0.lock(), 100);
        drop(b);
        assert_eq!(budget.reclaim(50, 0), 50);
        assert_eq!(budget.live_reclaimers(0).len(), 1);
    }
}
