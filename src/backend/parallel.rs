//! [`run_parallel`]: a bounded pool of scoped worker threads for the uploads, downloads and file
//! writes of checkpoints and restores.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::error::Result;

/// Runs `work` on every item with up to `workers` threads (at least one: the calling thread
/// works too, so it is used alone when one is enough). Returns the results in item order, or an
/// error of a failed item; after the first failure no worker takes a new item. A thread the OS
/// refuses to start only means fewer workers.
pub(crate) fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = workers.clamp(1, items.len().max(1));
    if workers == 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::with_capacity(items.len()));
    let worker = || {
        while !failed.load(Ordering::Relaxed) {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(index) else {
                break;
            };
            let result = work(item);
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            results.lock().push((index, result));
        }
    };
    std::thread::scope(|scope| {
        for n in 1..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("flowstate-io-{n}"))
                .spawn_scoped(scope, worker);
            if spawned.is_err() {
                break;
            }
        }
        worker();
    });
    let mut results = results.into_inner();
    results.sort_unstable_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn run_parallel_keeps_item_order_and_stops_after_an_error() {
        let items: Vec<u64> = (0..100).collect();
        for workers in [0, 1, 3, 8, 500] {
            let doubled = run_parallel(&items, workers, |i| Ok(i * 2)).unwrap();
            assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        }
        // One worker stops exactly at the failure.
        let started = AtomicUsize::new(0);
        let fail_at_10 = |&i: &u64| {
            started.fetch_add(1, Ordering::Relaxed);
            if i == 10 {
                return Err(Error::invalid("item 10"));
            }
            Ok(i)
        };
        let err = run_parallel(&items, 1, fail_at_10).unwrap_err();
        assert!(err.to_string().contains("item 10"), "{err}");
        assert_eq!(started.swap(0, Ordering::Relaxed), 11);
        // Several: the others finish what they hold and take nothing new. Items take 2 ms, so
        // running all 1000 would need the failing worker to stall for about 600 ms.
        let many: Vec<u64> = (0..1000).collect();
        let err = run_parallel(&many, 4, |i| {
            if *i != 10 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            fail_at_10(i)
        })
        .unwrap_err();
        assert!(err.to_string().contains("item 10"), "{err}");
        assert!(started.load(Ordering::Relaxed) < 1000, "{started:?}");
        assert!(
            run_parallel(&[] as &[u64], 8, |&i| Ok(i))
                .unwrap()
                .is_empty()
        );
    }
}
