//! All five kinds of typed state on the LSM backend, with namespaces and TTL: a click stream of
//! 1,000 users over 10 one-minute windows, checkpointed, restored into a new backend (as after
//! a crash) and checked there; then the clock moves past the TTL and the expiring states read
//! as empty. Exits non-zero on a wrong answer.
//!
//! `cargo run --release --example typed_state`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flowstate::{
    AggregateFunction, AggregatingState, BackendConfig, KeyedState, ListState, LocalDirStorage,
    LsmBackend, LsmBackendOptions, ManualClock, MapState, ReducingState, StateOptions, TtlConfig,
    ValueState,
};

const USERS: u64 = 1_000;
const EVENTS: u64 = 20_000;
const WINDOWS: u64 = 10;
const TTL: Duration = Duration::from_secs(3600);

/// The mean latency of a window: a (sum, count) accumulator.
struct Mean;

impl AggregateFunction<u64, (u64, u64), f64> for Mean {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, value: u64, (sum, count): (u64, u64)) -> (u64, u64) {
        (sum + value, count + 1)
    }
    fn get_result(&self, &(sum, count): &(u64, u64)) -> f64 {
        sum as f64 / count.max(1) as f64
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// One click: user, page, latency, window.
struct Click {
    user: String,
    page: String,
    latency_ms: u64,
    window: u64,
}

fn click(i: u64) -> Click {
    Click {
        user: format!("user-{}", i % USERS),
        page: format!("/page-{}", (i * 7) % 13),
        latency_ms: (i * 31) % 500,
        window: i * WINDOWS / EVENTS,
    }
}

/// What a user's state must hold, computed without flowstate.
#[derive(Default)]
struct Expected {
    clicks: u64,
    last_page: String,
    recent: Vec<String>,
    per_page: BTreeMap<String, u32>,
    slowest: u64,
    per_window: BTreeMap<u64, (u64, u64)>,
}

/// The job's states; `last_page` and `recent` expire an hour after their last write.
struct States<'k> {
    clicks: ValueState<'k, u64>,
    last_page: ValueState<'k, String>,
    recent: ListState<'k, String>,
    per_page: MapState<'k, String, u32>,
    slowest: ReducingState<'k, u64>,
    /// Per window (namespace): the mean latency.
    latency: AggregatingState<'k, u64, (u64, u64), f64>,
}

impl<'k> States<'k> {
    fn register(keyed: &'k KeyedState) -> flowstate::Result<Self> {
        let ttl = TtlConfig::new(TTL);
        Ok(States {
            clicks: keyed.value_state("clicks")?,
            last_page: keyed.value_state(StateOptions::new("last_page").with_ttl(ttl))?,
            recent: keyed.list_state(StateOptions::new("recent").with_ttl(ttl))?,
            per_page: keyed.map_state("per_page")?,
            slowest: keyed.reducing_state("slowest", |a: u64, b: u64| a.max(b))?,
            latency: keyed.aggregating_state("latency", Mean)?,
        })
    }
}

fn lsm_backend(
    config: BackendConfig,
    work: &std::path::Path,
    storage: Arc<LocalDirStorage>,
) -> flowstate::Result<LsmBackend> {
    let options = LsmBackendOptions::new(work)
        .write_buffer_size(4 << 20)
        .write_cache_size(4 << 20);
    LsmBackend::open(config, storage, options)
}

fn process(keyed: &KeyedState, states: &States, expected: &mut BTreeMap<String, Expected>) {
    for i in 0..EVENTS {
        let c = click(i);
        let e = expected.entry(c.user.clone()).or_default();
        e.clicks += 1;
        e.last_page = c.page.clone();
        e.recent.push(c.page.clone());
        *e.per_page.entry(c.page.clone()).or_default() += 1;
        e.slowest = e.slowest.max(c.latency_ms);
        let w = e.per_window.entry(c.window).or_default();
        *w = (w.0 + c.latency_ms, w.1 + 1);

        keyed.set_current_key(&c.user).expect("key");
        states
            .clicks
            .update_with(|n| n.unwrap_or(0) + 1)
            .expect("clicks");
        states.last_page.update(&c.page).expect("last_page");
        states.recent.add(&c.page).expect("recent");
        let seen = states.per_page.get(&c.page).expect("per_page").unwrap_or(0);
        states.per_page.put(&c.page, &(seen + 1)).expect("per_page");
        states.slowest.add(c.latency_ms).expect("slowest");
        keyed.set_current_namespace(&c.window).expect("namespace");
        states.latency.add(c.latency_ms).expect("latency");
        keyed.set_default_namespace().expect("namespace");
    }
}

fn check(keyed: &KeyedState, states: &States, expected: &BTreeMap<String, Expected>) {
    for (user, e) in expected {
        keyed.set_current_key(user).expect("key");
        assert_eq!(
            states.clicks.value().expect("clicks"),
            Some(e.clicks),
            "{user}"
        );
        assert_eq!(
            states.last_page.value().expect("last_page").as_ref(),
            Some(&e.last_page),
            "{user}"
        );
        assert_eq!(states.recent.get().expect("recent"), e.recent, "{user}");
        let per_page: BTreeMap<String, u32> = states
            .per_page
            .iter()
            .expect("per_page")
            .collect::<flowstate::Result<_>>()
            .expect("per_page entries");
        assert_eq!(per_page, e.per_page, "{user}");
        assert_eq!(
            states.slowest.get().expect("slowest"),
            Some(e.slowest),
            "{user}"
        );
        for (window, &(sum, count)) in &e.per_window {
            keyed.set_current_namespace(window).expect("namespace");
            let mean = states.latency.get().expect("latency");
            assert_eq!(
                mean,
                Some(sum as f64 / count as f64),
                "{user} window {window}"
            );
        }
        keyed.set_default_namespace().expect("namespace");
    }
    let users: Vec<String> = keyed.keys("clicks").expect("keys");
    assert_eq!(users.len(), expected.len());
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir()?;
    let storage = Arc::new(LocalDirStorage::open(dir.path().join("checkpoints"))?);
    let clock = ManualClock::new(1_000_000);
    let config = BackendConfig::default().with_clock(clock.clone());

    let keyed = KeyedState::new(lsm_backend(
        config.clone(),
        &dir.path().join("work-1"),
        storage.clone(),
    )?);
    let states = States::register(&keyed)?;
    let mut expected = BTreeMap::new();
    process(&keyed, &states, &mut expected);
    check(&keyed, &states, &expected);
    keyed.snapshot(1)?.run()?;
    keyed.notify_checkpoint_complete(1)?;
    drop(states);
    drop(keyed);

    // A new backend, as after a crash: the newest completed checkpoint is restored.
    let mut backend = lsm_backend(config, &dir.path().join("work-2"), storage)?;
    assert_eq!(backend.restore_latest()?, Some(1));
    let keyed = KeyedState::new(backend);
    let states = States::register(&keyed)?;
    check(&keyed, &states, &expected);

    // Merging windows: windows 0..=4 of one user into window 100.
    let user = "user-7";
    keyed.set_current_key(user)?;
    let sources: Vec<u64> = (0..5).collect();
    states.latency.merge_namespaces(&100u64, &sources)?;
    keyed.set_current_namespace(&100u64)?;
    let (sum, count) = (0..5)
        .filter_map(|w| expected[user].per_window.get(&w))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(states.latency.get()?, Some(sum as f64 / count as f64));
    keyed.set_current_namespace(&0u64)?;
    assert_eq!(states.latency.get()?, None);
    keyed.set_default_namespace()?;

    // An hour later, the TTL states are gone; the others stay.
    clock.advance(TTL.as_millis() as u64 + 1);
    for (user, e) in &expected {
        keyed.set_current_key(user)?;
        assert_eq!(states.last_page.value()?, None, "{user}");
        assert!(states.recent.get()?.is_empty(), "{user}");
        assert_eq!(states.clicks.value()?, Some(e.clicks), "{user}");
    }
    println!(
        "typed_state: {} users, {EVENTS} clicks, 5 state kinds, {WINDOWS} windows: checked after \
         restore and TTL expiry in {:.2} s",
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
