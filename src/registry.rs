//! The process-wide registry: one [`SharedWal`] per database file, keyed by canonical path.
//!
//! Architecture invariant: two `SharedWal`s for one file never exist in one process; the
//! registry's lock is held while one is created (recovery) or shut down, so an open racing a
//! close either gets the live log or waits and opens a fresh one.
//!
//! Idle logs: a log whose last connection closed is shut down at once (SQLite's behaviour),
//! unless its config says `keep_open_when_idle` (a server with many databases: reopening is
//! then free). Idle logs still hold their files (the database file, the lock that makes the
//! log ours, the segments), so the registry bounds the descriptors they hold together by
//! [`set_idle_open_files_max`]: past it, the least recently used idle logs are shut down
//! (without a checkpoint: their segments stay on disk and the next open recovers them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use crate::checkpointer::Checkpointer;
use crate::error::{Error, Result};
use crate::io::{FileKind, Io};
use crate::ownership::log_dir_of;
use crate::shared::{SharedWal, WalConfig};
use crate::storage::durability::StorageBinding;

/// Descriptors idle logs may hold together unless [`set_idle_open_files_max`] says otherwise:
/// a quarter of the usual soft limit of 1,024 per process.
pub const DEFAULT_IDLE_OPEN_FILES_MAX: usize = 256;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        logs: HashMap::new(),
        idle: IdleLogs::default(),
        idle_open_files_max: DEFAULT_IDLE_OPEN_FILES_MAX,
    })
});

struct Registry {
    /// Every live log, active or idle.
    logs: HashMap<PathBuf, Weak<SharedWal>>,
    /// Logs without connections kept open (they hold the only strong references).
    idle: IdleLogs,
    idle_open_files_max: usize,
}

/// Idle logs, least recently used first, with the descriptors each held when it went idle
/// (an upper bound: an idle log only loses files, as checkpoints remove its segments).
#[derive(Default)]
struct IdleLogs {
    by_age: BTreeMap<u64, (Arc<SharedWal>, usize)>,
    age_of: HashMap<PathBuf, u64>,
    files: usize,
    next_age: u64,
}

impl IdleLogs {
    fn insert(&mut self, shared: Arc<SharedWal>) {
        let files = shared.open_files();
        let age = self.next_age;
        self.next_age += 1;
        self.files += files;
        self.age_of.insert(shared.db_path.clone(), age);
        self.by_age.insert(age, (shared, files));
    }

    fn remove(&mut self, path: &Path) -> Option<Arc<SharedWal>> {
        let age = self.age_of.remove(path)?;
        let (shared, files) = self.by_age.remove(&age)?;
        self.files -= files;
        Some(shared)
    }

    fn pop_oldest(&mut self) -> Option<Arc<SharedWal>> {
        let (_, (shared, files)) = self.by_age.pop_first()?;
        self.age_of.remove(&shared.db_path);
        self.files -= files;
        Some(shared)
    }

    /// The oldest idle log no checkpoint is copying, else the oldest: shutting down a log
    /// waits for its running checkpoint, with the registry locked.
    fn pop_eviction_victim(&mut self) -> Option<Arc<SharedWal>> {
        let quiet = self.by_age.values().find(|(shared, _)| !shared.is_checkpointing()).map(|(s, _)| s.db_path.clone());
        match quiet {
            Some(path) => self.remove(&path),
            None => self.pop_oldest(),
        }
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bounds the file descriptors that logs kept open without connections hold together
/// (`WalConfig::keep_open_when_idle`); idle logs past it are closed, least recently used
/// first, now and from then on. Connections and logs in use are not counted: they hold what
/// they need.
pub fn set_idle_open_files_max(max: usize) {
    let mut registry = registry();
    registry.idle_open_files_max = max;
    registry.evict_idle();
}

/// Closes every log kept open without connections (checkpointing it first when its config
/// says `checkpoint_on_close`), as a server does before it exits. Returns how many.
pub fn close_idle_logs() -> usize {
    let mut registry = registry();
    let mut closed = 0;
    while let Some(shared) = registry.idle.pop_oldest() {
        registry.close(&shared, true);
        closed += 1;
    }
    closed
}

/// What the process's registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Logs open, in use or idle.
    pub logs: usize,
    /// Of those, logs without connections kept open (`keep_open_when_idle`).
    pub idle_logs: usize,
    /// Descriptors the idle logs hold at most (what `set_idle_open_files_max` bounds).
    pub idle_open_files: usize,
}

pub fn registry_stats() -> RegistryStats {
    let registry = registry();
    RegistryStats {
        logs: registry.logs.len(),
        idle_logs: registry.idle.by_age.len(),
        idle_open_files: registry.idle.files,
    }
}

impl Registry {
    /// Shuts a log without connections down and forgets it (the registry's lock held, so an
    /// open of the same database waits and then recovers a fresh log).
    fn close(&mut self, shared: &SharedWal, checkpoint: bool) {
        shared.shutdown(checkpoint);
        self.logs.remove(&shared.db_path);
    }

    fn evict_idle(&mut self) {
        while self.idle.files > self.idle_open_files_max {
            let Some(shared) = self.idle.pop_eviction_victim() else { break };
            tracing::debug!(db = %shared.db_path.display(), "closing an idle log: too many idle files open");
            self.close(&shared, false);
        }
    }
}

/// The canonical path of a database file (which must exist).
pub(crate) fn canonical(io: &dyn Io, db_path: &Path) -> Result<PathBuf> {
    io.canonicalize(db_path).map_err(|e| Error::CannotOpen { path: db_path.into(), reason: e.to_string() })
}

/// The live log of `db_path`, opening (and recovering) it if this process has none yet.
/// Counts one more open connection.
pub(crate) fn acquire(
    io: &Arc<dyn Io>,
    db_path: &Path,
    config: &WalConfig,
    checkpointer: Option<&Checkpointer>,
    storage: Option<&StorageBinding>,
) -> Result<Arc<SharedWal>> {
    let path = canonical(io.as_ref(), db_path)?;
    let mut registry = registry();
    let shared = match registry.logs.get(&path).and_then(Weak::upgrade) {
        Some(shared) => {
            check_same_storage(&shared, storage)?;
            registry.idle.remove(&path);
            shared
        }
        None => {
            let shared = Arc::new(SharedWal::open(io.clone(), &path, config.clone(), storage.cloned())?);
            if let Some(checkpointer) = checkpointer {
                shared.attach_checkpointer(checkpointer);
            }
            shared.start();
            registry.logs.insert(path, Arc::downgrade(&shared));
            shared
        }
    };
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    Ok(shared)
}

/// One database has one namespace in one store: a second open asking for another is refused
/// rather than silently ignored.
fn check_same_storage(shared: &SharedWal, storage: Option<&StorageBinding>) -> Result<()> {
    let Some(wanted) = storage else { return Ok(()) };
    let current = shared.durability().and_then(|d| d.binding());
    match current {
        Some(current) if current.namespace == wanted.namespace && current.storage.url() == wanted.storage.url() => {
            Ok(())
        }
        _ => {
            let now = current
                .map_or("no storage".to_string(), |c| format!("namespace {} in {}", c.namespace, c.storage.url()));
            Err(Error::CannotOpen {
                path: shared.db_path.clone(),
                reason: format!(
                    "already open in this process with {now}; asked for namespace {} in {}",
                    wanted.namespace,
                    wanted.storage.url()
                ),
            })
        }
    }
}

/// One connection is done with `shared`; the last one shuts the log down (checkpointing
/// everything first when `checkpoint`), or leaves it open but idle when its config says so.
pub(crate) fn release(shared: &Arc<SharedWal>, checkpoint: bool) {
    let mut registry = registry();
    if shared.open_connections.fetch_sub(1, Ordering::SeqCst) != 1 {
        return;
    }
    if shared.config.keep_open_when_idle {
        registry.idle.insert(shared.clone());
        registry.evict_idle();
    } else {
        registry.close(shared, checkpoint);
    }
}

/// Does `db_path` have a log of ours that SQLite should open instead of reading the file
/// alone? An empty database file never does: SQLite would delete the log of an empty
/// file, so we let it open in rollback mode until `journal_mode=WAL` opens the log.
pub(crate) fn log_exists(io: &dyn Io, db_path: &Path) -> Result<bool> {
    let log_dir = log_dir_of(&canonical(io, db_path).unwrap_or_else(|_| db_path.into()));
    let dir = io.kind(&log_dir).map_err(Error::io("reading", &log_dir))?;
    let db = io.kind(db_path).map_err(Error::io("reading", db_path))?;
    Ok(matches!(dir, Some(FileKind::Dir)) && matches!(db, Some(FileKind::File { len }) if len > 0))
}
