//! The background checkpointer: copies sealed segments into database files on its own
//! threads, a bounded number of databases at a time, so a commit never waits for a copy.
//!
//! - A database is *notified* when it has sealed segments (after a swap, or when a reader
//!   that held a checkpoint back goes away). A notification for a database already queued is
//!   merged; one for a database being checkpointed makes it run once more afterwards. One
//!   database is never checkpointed twice at once.
//! - At most `concurrency_max` checkpoints run at once, across all databases.
//! - A failed checkpoint is logged, counted on the database (`info` shows it) and retried
//!   after an exponential backoff; failures never stop other databases' checkpoints.
//! - A ticker seals the current segment of databases whose segment is older than their
//!   `segment_age_max`, so a quiet database still gets its tail checkpointed.
//! - `shutdown` seals current segments (if configured), drains the queue and joins the
//!   threads. From then on the logs registered with it are on their own again: commits seal
//!   full segments and SQLite's autocheckpoint runs, as without a checkpointer.
//! - Databases are known by a [`LogId`] given at registration, never by path: a log closed
//!   and reopened (or a hard link) is another log, with its own queue state and backoff.
//!
//! Who changes what: `State` (entries, their `queued`/`running`/`again`/backoff, the ready
//! queue, `stopping`) only under its mutex, which is never held while calling into a log
//! (the ticker and the workers copy what they need and let go first), except for
//! `CheckpointTarget::record_checkpoint_error` (a counter and a mutex of its own, taken last). `stopped` is set once,
//! by `shutdown`, after every thread is joined; logs read it (`has_checkpointer`) without a
//! lock. `live_threads` is counted under its own mutex. A log's slot for its checkpointer
//! (`CheckpointerLink::slot` in `log`) is taken before this `State`, never after.
//!
//! Architecture invariant: the checkpointer never holds a database's write lock while it
//! copies pages; it sees a log only as a [`CheckpointTarget`], which offers nothing else than
//! `checkpoint_sealed` (copy what is sealed) and `seal_if_older_than` (a short seal for
//! quiet databases). This module does not depend on `log`: the log depends on it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::path::Path;

/// What the checkpointer sees of a log: the two things it may do to it, and where to say
/// what went wrong. Given at registration, as a `Weak` (the checkpointer never keeps a
/// log open).
pub(crate) trait CheckpointTarget: Send + Sync {
    /// The database, for messages.
    fn db_path(&self) -> &Path;
    /// Seal by age: see `WalConfig::segment_age_max`.
    fn segment_age_max(&self) -> Option<Duration>;
    /// Copies what is sealed into the database file; never waits, never takes the write lock.
    fn checkpoint_sealed(&self) -> crate::Result<()>;
    /// Seals the current segment if it is at least `age_max` old and no writer holds the
    /// lock. Returns whether it sealed.
    fn seal_if_older_than(&self, age_max: Duration) -> crate::Result<bool>;
    /// A background checkpoint failed (`info` shows the count and the last one).
    fn record_checkpoint_error(&self, error: &crate::Error);
}

/// Tuning of the background checkpointer.
#[derive(Debug, Clone)]
pub struct CheckpointerConfig {
    /// Checkpoints running at once, across all databases (the worker thread count).
    pub concurrency_max: usize,
    /// First retry delay after a failure; doubled per consecutive failure, with jitter (the
    /// delay is drawn from the upper half of that: `backoff::retry_delay`).
    pub retry_delay_min: Duration,
    /// Longest retry delay.
    pub retry_delay_max: Duration,
    /// How often segment ages and due retries are looked at.
    pub tick: Duration,
    /// Seal every current segment at shutdown, so the drain checkpoints everything.
    pub seal_on_shutdown: bool,
    /// The nice value of the worker threads (Linux; elsewhere ignored). A copy runs for
    /// seconds on a large log, and on a busy machine it should yield the CPU to commits and
    /// reads: at 10, commit p99 during a checkpoint dropped by a third (docs/BENCHMARKS.md).
    /// The scheduler still gives the workers a share, so checkpoints never starve.
    pub worker_nice: i32,
}

impl Default for CheckpointerConfig {
    fn default() -> Self {
        CheckpointerConfig {
            concurrency_max: 4,
            retry_delay_min: Duration::from_millis(50),
            retry_delay_max: Duration::from_secs(30),
            tick: Duration::from_millis(100),
            seal_on_shutdown: true,
            worker_nice: 10,
        }
    }
}

/// Counters, for `info`, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointerStats {
    pub completed: u64,
    pub failed: u64,
    /// The most checkpoints ever seen running at once.
    pub running_max_seen: usize,
}

/// A handle on the checkpointer service; clones share it. When the last handle goes (every
/// log registered with it holds one), its threads stop.
#[derive(Clone)]
pub struct Checkpointer {
    inner: Arc<Inner>,
    _last_handle: Arc<StopOnLastHandle>,
}

/// Shared by the handles only, not by the threads (they hold `Inner`): dropped with the last
/// handle, it tells the threads to stop. Not joined: a worker in the middle of a checkpoint
/// finishes it first.
struct StopOnLastHandle(Arc<Inner>);

impl Drop for StopOnLastHandle {
    fn drop(&mut self) {
        lock(&self.0.state).stopping = true;
        self.0.work.notify_all();
    }
}

/// The identity of one registered log: unique for the life of the process, never reused
/// (a reopened log gets a new one, so it inherits nothing of its predecessor's jobs).
pub(crate) type LogId = u64;

static NEXT_LOG_ID: AtomicU64 = AtomicU64::new(1);

static NEXT_CHECKPOINTER_ID: AtomicU64 = AtomicU64::new(1);

struct Inner {
    /// Unique in the process: tells checkpointers apart (the registry compares the one a
    /// log was opened with against the one a later open asks for).
    id: u64,
    config: CheckpointerConfig,
    /// Set by `shutdown` once its threads are joined: nothing checkpoints or seals in the
    /// background any more, and the logs registered here must do it themselves (see
    /// `Checkpointer::is_stopped`). Only then: while a worker may still run, a log must not
    /// start sealing its current segment on the commit path (the worker may be sealing it).
    stopped: AtomicBool,
    state: Mutex<State>,
    /// Workers wait here for work.
    work: Condvar,
    /// `drain` waits here for the queue to empty.
    idle: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// This checkpointer's threads alive right now (counted from before their spawn to
    /// their very end), and a condvar signalled whenever one ends: what `threads` reports,
    /// so a test need not count the process's threads by name (other checkpointers' come
    /// and go meanwhile).
    live_threads: Mutex<usize>,
    thread_ended: Condvar,
    running_now: AtomicUsize,
    running_max_seen: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct State {
    databases: HashMap<LogId, Entry>,
    /// Queued logs, oldest first. An id whose entry is gone, or no longer `queued`, is a
    /// stale item (its log closed meanwhile) and is skipped.
    ready: VecDeque<LogId>,
    started: bool,
    paused: bool,
    stopping: bool,
}

struct Entry {
    wal: Weak<dyn CheckpointTarget>,
    queued: bool,
    running: bool,
    /// Notified while running: run again when done.
    again: bool,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Checkpointer {
    /// A checkpointer; its threads start with the first database registered.
    pub fn new(config: CheckpointerConfig) -> Self {
        let config = CheckpointerConfig { concurrency_max: config.concurrency_max.max(1), ..config };
        let inner = Arc::new(Inner {
            id: NEXT_CHECKPOINTER_ID.fetch_add(1, Ordering::Relaxed),
            config,
            stopped: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            live_threads: Mutex::new(0),
            thread_ended: Condvar::new(),
            running_now: AtomicUsize::new(0),
            running_max_seen: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        Checkpointer { _last_handle: Arc::new(StopOnLastHandle(inner.clone())), inner }
    }

    /// The process's shared checkpointer, with the default configuration: what
    /// `LibsqlWalManager::default()` uses.
    pub fn global() -> Checkpointer {
        static GLOBAL: std::sync::LazyLock<Checkpointer> =
            std::sync::LazyLock::new(|| Checkpointer::new(CheckpointerConfig::default()));
        GLOBAL.clone()
    }

    /// This checkpointer's identity (clones share it).
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn config(&self) -> &CheckpointerConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> CheckpointerStats {
        CheckpointerStats {
            completed: self.inner.completed.load(Ordering::SeqCst),
            failed: self.inner.failed.load(Ordering::SeqCst),
            running_max_seen: self.inner.running_max_seen.load(Ordering::SeqCst),
        }
    }

    /// Stops starting checkpoints (running ones finish) until `resume`. For benchmarks that
    /// build a large log first.
    pub fn pause(&self) {
        lock(&self.inner.state).paused = true;
    }

    pub fn resume(&self) {
        lock(&self.inner.state).paused = false;
        self.inner.work.notify_all();
    }

    /// Whether `shutdown` has stopped this checkpointer: logs registered with it then seal
    /// and checkpoint on their own (`SharedWal::has_checkpointer` is false).
    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Registers a log and asks for its first checkpoint at once (sealed segments left by
    /// a previous process or close are copied without waiting for a seal). `None` if the
    /// checkpointer is stopping: the log then checkpoints on its own.
    pub(crate) fn register(&self, wal: Weak<dyn CheckpointTarget>) -> Option<LogId> {
        let mut state = lock(&self.inner.state);
        if state.stopping {
            return None;
        }
        let id = NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed);
        state.databases.insert(
            id,
            Entry { wal, queued: false, running: false, again: false, consecutive_failures: 0, retry_at: None },
        );
        let start = !std::mem::replace(&mut state.started, true);
        drop(state);
        if start {
            self.start_threads();
        }
        // Also for the first log, which starts the threads: it may hold sealed segments.
        self.notify(id);
        Some(id)
    }

    pub(crate) fn unregister(&self, id: LogId) {
        lock(&self.inner.state).databases.remove(&id);
    }

    /// Asks for a checkpoint of log `id` (merged with one already queued or running).
    pub(crate) fn notify(&self, id: LogId) {
        notify_inner(&self.inner, id);
    }

    fn start_threads(&self) {
        let mut threads = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..self.inner.config.concurrency_max {
            match spawn_counted(&self.inner, format!("libsql-wal-checkpoint-{i}"), worker) {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::error!("could not start a checkpointer thread: {e}"),
            }
        }
        match spawn_counted(&self.inner, "libsql-wal-ticker".into(), ticker) {
            Ok(handle) => threads.push(handle),
            Err(e) => tracing::error!("could not start the checkpointer ticker: {e}"),
        }
    }

    /// A view of this checkpointer's threads that does not keep them running (it is not a
    /// handle): for tests and diagnostics.
    pub fn threads(&self) -> CheckpointerThreads {
        CheckpointerThreads(self.inner.clone())
    }

    /// Waits until nothing is queued or running (retries still backing off are not waited
    /// for), or `timeout` passes. Returns whether it drained.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.inner.state);
        loop {
            let busy = !state.ready.is_empty() || state.databases.values().any(|e| e.running);
            if !busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.inner.idle.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Seals current segments (if configured), checkpoints what it can within `timeout`,
    /// then stops the threads. Databases stay usable: their logs simply stop being
    /// checkpointed in the background.
    pub fn shutdown(&self, timeout: Duration) {
        let live: Vec<(LogId, Arc<dyn CheckpointTarget>)> = {
            let mut state = lock(&self.inner.state);
            state.paused = false;
            for entry in state.databases.values_mut() {
                entry.retry_at = None;
            }
            state.databases.iter().filter_map(|(id, e)| Some((*id, e.wal.upgrade()?))).collect()
        };
        for (id, wal) in &live {
            if self.inner.config.seal_on_shutdown
                && let Err(e) = wal.seal_if_older_than(Duration::ZERO)
            {
                tracing::warn!(db = %wal.db_path().display(), "could not seal at shutdown: {e}");
            }
            self.notify(*id);
        }
        drop(live);
        if !self.drain(timeout) {
            tracing::warn!("checkpointer shutdown: some checkpoints did not finish in {timeout:?}");
        }
        lock(&self.inner.state).stopping = true;
        self.inner.work.notify_all();
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in threads {
            let _ = handle.join();
        }
        // No worker or ticker runs any more: the logs take their seals and checkpoints back.
        self.inner.stopped.store(true, Ordering::SeqCst);
    }
}

/// This checkpointer's threads, observed without keeping them alive (see
/// [`Checkpointer::threads`]).
pub struct CheckpointerThreads(Arc<Inner>);

impl CheckpointerThreads {
    /// Threads of this checkpointer alive now (workers and ticker).
    pub fn live(&self) -> usize {
        *self.0.live_threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every thread of this checkpointer has ended, or `timeout` passes.
    /// Returns whether they all ended.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut live = self.0.live_threads.lock().unwrap_or_else(|e| e.into_inner());
        while *live > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            live = self.0.thread_ended.wait_timeout(live, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

/// Spawns one of the checkpointer's threads, counted in `live_threads` from before the
/// spawn (so it counts as soon as `start_threads` returns) until its last instruction
/// (also if it panics).
fn spawn_counted(inner: &Arc<Inner>, name: String, body: fn(&Inner)) -> std::io::Result<JoinHandle<()>> {
    struct Ended(Arc<Inner>);
    impl Drop for Ended {
        fn drop(&mut self) {
            *self.0.live_threads.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            self.0.thread_ended.notify_all();
        }
    }
    *inner.live_threads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let ended = Ended(inner.clone());
    std::thread::Builder::new().name(name).spawn(move || {
        let ended = ended;
        body(&ended.0);
    })
    // On a failed spawn the closure, and `ended` with it, is dropped: the count goes back.
}

fn worker(inner: &Inner) {
    lower_priority(inner.config.worker_nice);
    loop {
        let Some((id, wal)) = next_job(inner) else { return };
        let running = inner.running_now.fetch_add(1, Ordering::SeqCst) + 1;
        inner.running_max_seen.fetch_max(running, Ordering::SeqCst);
        let result = wal.checkpoint_sealed();
        inner.running_now.fetch_sub(1, Ordering::SeqCst);
        finish_job(inner, id, wal.as_ref(), result);
        drop(wal);
        inner.idle.notify_all();
    }
}

/// Sets the calling thread's nice value.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: plain system calls on the calling thread's own id.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        tracing::debug!("could not set the checkpointer thread's nice value: {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

/// Waits for the next database to checkpoint; `None` when the checkpointer stops.
fn next_job(inner: &Inner) -> Option<(LogId, Arc<dyn CheckpointTarget>)> {
    let mut state = lock(&inner.state);
    loop {
        if state.stopping {
            return None;
        }
        if !state.paused
            && let Some(id) = state.ready.pop_front()
        {
            let Some(entry) = state.databases.get_mut(&id) else { continue };
            if !entry.queued || entry.running {
                // A stale item: never two jobs of one log at once.
                continue;
            }
            entry.queued = false;
            match entry.wal.upgrade() {
                Some(wal) => {
                    entry.running = true;
                    return Some((id, wal));
                }
                None => {
                    state.databases.remove(&id);
                    inner.idle.notify_all();
                    continue;
                }
            }
        }
        state = inner.work.wait_timeout(state, inner.config.tick).unwrap_or_else(|e| e.into_inner()).0;
    }
}

fn finish_job(inner: &Inner, id: LogId, wal: &dyn CheckpointTarget, result: crate::Result<()>) {
    let mut state = lock(&inner.state);
    let Some(entry) = state.databases.get_mut(&id) else { return };
    entry.running = false;
    match result {
        Ok(()) => {
            inner.completed.fetch_add(1, Ordering::SeqCst);
            entry.consecutive_failures = 0;
        }
        Err(e) => {
            inner.failed.fetch_add(1, Ordering::SeqCst);
            wal.record_checkpoint_error(&e);
            entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
            let delay = backoff(&inner.config, entry.consecutive_failures);
            tracing::warn!(
                db = %wal.db_path().display(),
                failures = entry.consecutive_failures,
                "background checkpoint failed, retrying in {delay:?}: {e}"
            );
            entry.retry_at = Some(Instant::now() + delay);
            entry.again = false;
            return;
        }
    }
    if std::mem::take(&mut entry.again) && !entry.queued {
        entry.queued = true;
        state.ready.push_back(id);
        inner.work.notify_one();
    }
}

fn backoff(config: &CheckpointerConfig, failures: u32) -> Duration {
    crate::backoff::retry_delay(config.retry_delay_min, config.retry_delay_max, failures)
}

/// Every tick: requeue due retries, and seal the current segment of databases whose
/// segment has grown old (each database's own `segment_age_max`).
fn ticker(inner: &Inner) {
    loop {
        // Weak references, upgraded one at a time below: the ticker holds at most one log
        // at any moment, so a log closed (or evicted) meanwhile gives its descriptors back
        // at once instead of after the whole round.
        let live: Vec<(LogId, Weak<dyn CheckpointTarget>)> = {
            let mut state = lock(&inner.state);
            if state.stopping {
                return;
            }
            let now = Instant::now();
            let due: Vec<LogId> = state
                .databases
                .iter_mut()
                .filter(|(_, e)| e.retry_at.is_some_and(|at| at <= now))
                .map(|(id, e)| {
                    e.retry_at = None;
                    *id
                })
                .collect();
            for id in due {
                if let Some(entry) = state.databases.get_mut(&id)
                    && !entry.queued
                    && !entry.running
                {
                    entry.queued = true;
                    state.ready.push_back(id);
                }
            }
            inner.work.notify_all();
            if state.paused { Vec::new() } else { state.databases.iter().map(|(id, e)| (*id, e.wal.clone())).collect() }
        };
        for (id, wal) in live {
            let Some(wal) = wal.upgrade() else { continue };
            if let Some(age_max) = wal.segment_age_max() {
                match wal.seal_if_older_than(age_max) {
                    Ok(true) => notify_inner(inner, id),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(db = %wal.db_path().display(), "sealing an old segment failed: {e}"),
                }
            }
        }
        std::thread::sleep(inner.config.tick);
    }
}

/// Queues log `id` unless it is queued, running (then: run again after) or backing off.
fn notify_inner(inner: &Inner, id: LogId) {
    let mut state = lock(&inner.state);
    let Some(entry) = state.databases.get_mut(&id) else { return };
    if entry.running {
        entry.again = true;
    } else if !entry.queued && entry.retry_at.is_none() {
        entry.queued = true;
        state.ready.push_back(id);
        inner.work.notify_one();
    }
}
