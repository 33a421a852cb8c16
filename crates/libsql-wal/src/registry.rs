//! The process-wide registry: one [`SharedWal`] per database file, keyed by the file's
//! identity (device and inode), not by its name: two names of one file (hard links) share
//! one log, as they share one file. The log lives under the name it was first opened by.
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
use crate::error::{Error, IoAction, Result};
use crate::io::{FileKind, Io};
use crate::log::{SharedWal, WalConfig};
use crate::ownership::log_dir_of;
use crate::storage::durability::StorageBinding;

/// Descriptors idle logs may hold together unless [`set_idle_open_files_max`] says otherwise:
/// a quarter of the usual soft limit of 1,024 per process.
pub const DEFAULT_IDLE_OPEN_FILES_MAX: usize = 256;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        logs: HashMap::new(),
        ids: HashMap::new(),
        idle: IdleLogs::default(),
        idle_open_files_max: DEFAULT_IDLE_OPEN_FILES_MAX,
    })
});

struct Registry {
    /// Every live log, active or idle, by the identity of its database file.
    logs: HashMap<FileId, Weak<SharedWal>>,
    /// What each live log was registered with, by the log's address (a log only knows its
    /// path, and the name may have been removed or replaced since).
    ids: HashMap<usize, Registered>,
    /// Logs without connections kept open (they hold the only strong references).
    idle: IdleLogs,
    idle_open_files_max: usize,
}

/// Idle logs, least recently used first, with the descriptors each held when it went idle
/// (an upper bound: an idle log only loses files, as checkpoints remove its segments).
#[derive(Default)]
struct IdleLogs {
    by_age: BTreeMap<u64, (Arc<SharedWal>, usize, FileId)>,
    age_of: HashMap<FileId, u64>,
    files: usize,
    next_age: u64,
}

impl IdleLogs {
    fn insert(&mut self, shared: Arc<SharedWal>, id: FileId) {
        let files = shared.open_files();
        let age = self.next_age;
        self.next_age += 1;
        self.files += files;
        self.age_of.insert(id, age);
        self.by_age.insert(age, (shared, files, id));
    }

    fn remove(&mut self, id: FileId) -> Option<Arc<SharedWal>> {
        let age = self.age_of.remove(&id)?;
        let (shared, files, _) = self.by_age.remove(&age)?;
        self.files -= files;
        Some(shared)
    }

    fn pop_oldest(&mut self) -> Option<Arc<SharedWal>> {
        let (_, (shared, files, id)) = self.by_age.pop_first()?;
        self.age_of.remove(&id);
        self.files -= files;
        Some(shared)
    }

    /// The oldest idle log no checkpoint is copying, else the oldest: shutting down a log
    /// waits for its running checkpoint, with the registry locked.
    fn pop_eviction_victim(&mut self) -> Option<Arc<SharedWal>> {
        let quiet = self.by_age.values().find(|(shared, _, _)| !shared.is_checkpointing()).map(|(_, _, id)| *id);
        match quiet {
            Some(id) => self.remove(id),
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

/// The logs open in the process, in use or idle (for the gauges of `metrics::update_gauges`).
/// Taken under the registry's lock, looked at outside it: a log closing meanwhile is only
/// kept in memory a moment longer (its shutdown does not wait for these references).
pub(crate) fn live_logs() -> Vec<Arc<SharedWal>> {
    registry().logs.values().filter_map(Weak::upgrade).collect()
}

impl Registry {
    /// Shuts a log without connections down and forgets it (the registry's lock held, so an
    /// open of the same database waits and then recovers a fresh log).
    fn close(&mut self, shared: &Arc<SharedWal>, checkpoint: bool) {
        shared.shutdown(checkpoint);
        if let Some(Registered { id, .. }) = self.ids.remove(&address(shared)) {
            // Only if it is still this log's entry (never another's, registered since).
            if self.logs.get(&id).is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(shared))) {
                self.logs.remove(&id);
            }
        }
    }

    fn evict_idle(&mut self) {
        while self.idle.files > self.idle_open_files_max {
            let Some(shared) = self.idle.pop_eviction_victim() else { break };
            tracing::debug!(db = %shared.db_path().display(), "closing an idle log: too many idle files open");
            self.close(&shared, false);
        }
    }
}

/// A file's identity: (device, inode). Two names of one file have the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

/// The identity of the file at `path` (which must exist). A `stat`, not data I/O: asked of
/// the file system directly, since `Io` has no notion of identity and every `Io` of ours
/// works on real files.
pub(crate) fn file_id(path: &Path) -> Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::CannotOpen { path: path.into(), reason: e.to_string() })?;
    Ok(FileId { dev: meta.dev(), ino: meta.ino() })
}

/// What the registry keeps of a live log's first open.
#[derive(Debug, Clone, Copy)]
struct Registered {
    id: FileId,
    /// The id of the checkpointer the first open asked for (attached, unless it was
    /// already stopped).
    checkpointer: Option<u64>,
}

fn address(shared: &Arc<SharedWal>) -> usize {
    Arc::as_ptr(shared) as usize
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
    // Under the registry's lock: a rename between the look-up and the open cannot give one
    // file two logs (the open's own lock on the file would refuse the second anyway).
    let id = file_id(&path)?;
    let shared = match registry.logs.get(&id).and_then(Weak::upgrade) {
        Some(shared) => {
            let opened_with = registry.ids.get(&address(&shared)).and_then(|r| r.checkpointer);
            check_same_config(&shared, opened_with, config, checkpointer)?;
            check_same_storage(&shared, storage)?;
            registry.idle.remove(id);
            shared
        }
        None => {
            // A log shipped to another store is refused before its recovery changes anything.
            if let Some(binding) = storage {
                let log_dir = crate::ownership::log_dir_of(&path);
                crate::storage::durability::refuse_if_shipped_elsewhere(io.as_ref(), &log_dir, binding)?;
                // A file with no log yet (just restored) at an earlier point of the namespace.
                if io.kind(&log_dir).map_err(crate::error::Error::io(crate::error::IoAction::Read, &log_dir))?.is_none()
                {
                    crate::storage::durability::refuse_a_fork(io.as_ref(), &path, binding)?;
                }
            }
            let shared = Arc::new(SharedWal::open(io.clone(), &path, config.clone(), storage.cloned())?);
            if let Some(checkpointer) = checkpointer {
                shared.attach_checkpointer(checkpointer);
            }
            shared.start();
            registry.logs.insert(id, Arc::downgrade(&shared));
            registry.ids.insert(address(&shared), Registered { id, checkpointer: checkpointer.map(Checkpointer::id) });
            shared
        }
    };
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    Ok(shared)
}

/// One log has one configuration: a second open (in this process, through another manager)
/// asking for another is refused, naming what differs, rather than silently given the log
/// as the first open configured it (its checkpointer never attached, its directory left at
/// the last close against its `checkpoint_on_close`). The `Io` is not compared: it has no
/// identity to compare (two `StdIo`s are the same), and the log keeps the first open's.
fn check_same_config(
    shared: &SharedWal,
    opened_with: Option<u64>,
    wanted: &WalConfig,
    checkpointer: Option<&Checkpointer>,
) -> Result<()> {
    // Destructured, so a new setting cannot be forgotten here.
    let WalConfig { segment_frames_max, segment_age_max, checkpoint_on_close, keep_open_when_idle, defer_seals } =
        wanted;
    let live = &shared.config;
    let mut differences = Vec::new();
    let mut differ = |name: &str, live: String, wanted: String| {
        if live != wanted {
            differences.push(format!("{name} {wanted} (open with {live})"));
        }
    };
    differ("segment_frames_max", live.segment_frames_max.to_string(), segment_frames_max.to_string());
    differ("segment_age_max", format!("{:?}", live.segment_age_max), format!("{segment_age_max:?}"));
    differ("checkpoint_on_close", live.checkpoint_on_close.to_string(), checkpoint_on_close.to_string());
    differ("keep_open_when_idle", live.keep_open_when_idle.to_string(), keep_open_when_idle.to_string());
    differ("defer_seals", live.defer_seals.to_string(), defer_seals.to_string());
    let name = |id: Option<u64>| id.map_or("none".to_string(), |id| format!("#{id}"));
    differ("checkpointer", name(opened_with), name(checkpointer.map(Checkpointer::id)));
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::CannotOpen {
        path: shared.db_path().to_path_buf(),
        reason: format!(
            "already open in this process with another configuration: asked for {}",
            differences.join(", ")
        ),
    })
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
                path: shared.db_path().to_path_buf(),
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
        let Some(&Registered { id, .. }) = registry.ids.get(&address(shared)) else {
            // Not registered (cannot happen: every shared log came from `acquire`): close it.
            registry.close(shared, checkpoint);
            return;
        };
        registry.idle.insert(shared.clone(), id);
        registry.evict_idle();
    } else {
        registry.close(shared, checkpoint);
    }
}

/// Runs `replace` while the log of `db_path` is closed and no open of any database can
/// start in this process (the registry's lock is held throughout): a database's files can
/// then be swapped without a connection ever seeing part of the old and part of the new.
/// Refused with [`Error::LogInUse`], changing nothing, while a connection, a follower or an
/// inspection holds the log. An idle log is shut down first, without a checkpoint: its files
/// are about to go.
pub(crate) fn with_log_closed<T>(io: &dyn Io, db_path: &Path, replace: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut registry = registry();
    let live = canonical(io, db_path)
        .and_then(|path| file_id(&path))
        .ok()
        .and_then(|id| Some((id, registry.logs.get(&id).and_then(Weak::upgrade)?)));
    if let Some((id, shared)) = live {
        let users = shared.open_connections.load(Ordering::SeqCst);
        if users > 0 {
            return Err(Error::LogInUse { path: db_path.into(), users });
        }
        registry.idle.remove(id);
        registry.close(&shared, false);
    }
    replace()
}

/// Does `db_path` have a log of ours that SQLite should open instead of reading the file
/// alone? An empty database file never does: SQLite would delete the log of an empty
/// file, so we let it open in rollback mode until `journal_mode=WAL` opens the log.
pub(crate) fn log_exists(io: &dyn Io, db_path: &Path) -> Result<bool> {
    let log_dir = log_dir_of(&canonical(io, db_path).unwrap_or_else(|_| db_path.into()));
    let dir = io.kind(&log_dir).map_err(Error::io(IoAction::Read, &log_dir))?;
    let db = io.kind(db_path).map_err(Error::io(IoAction::Read, db_path))?;
    let non_empty = matches!(db, Some(FileKind::File { len }) if len > 0);
    // Another name of this file may have the live log (its directory is beside that name).
    let live = || file_id(db_path).is_ok_and(|id| registry().logs.get(&id).is_some_and(|w| w.strong_count() > 0));
    Ok(non_empty && (matches!(dir, Some(FileKind::Dir)) || live()))
}
