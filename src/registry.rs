//! The process-wide registry: one [`SharedWal`] per database file, keyed by canonical path.
//!
//! Architecture invariant: two `SharedWal`s for one file never exist in one process; the
//! registry's lock is held while one is created (recovery) or shut down, so an open racing a
//! close either gets the live log or waits and opens a fresh one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use crate::checkpointer::Checkpointer;
use crate::error::{Error, Result};
use crate::io::{FileKind, Io};
use crate::ownership::log_dir_of;
use crate::shared::{SharedWal, WalConfig};
use crate::storage::durability::StorageBinding;

static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<SharedWal>>>> = LazyLock::new(Default::default);

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
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let shared = match registry.get(&path).and_then(Weak::upgrade) {
        Some(shared) => {
            check_same_storage(&shared, storage)?;
            shared
        }
        None => {
            let shared = Arc::new(SharedWal::open(io.clone(), &path, config.clone(), storage.cloned())?);
            if let Some(checkpointer) = checkpointer {
                shared.attach_checkpointer(checkpointer);
            }
            shared.start();
            registry.insert(path, Arc::downgrade(&shared));
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
/// everything first when `checkpoint`).
pub(crate) fn release(shared: &Arc<SharedWal>, checkpoint: bool) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if shared.open_connections.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.shutdown(checkpoint);
        registry.remove(&shared.db_path);
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
