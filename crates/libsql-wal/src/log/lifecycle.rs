//! [`Lifecycle`]: what makes a log this process's (the ownership lock), when it stops
//! being so (`closed`), and whether its files can still be trusted (`sync_failure`). The
//! invariant it owns: once closed, nothing of this log touches the files again (another
//! log, here or in another process, may own them by then); once a sync failed, nothing is
//! written again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::io::IoFile;

/// Paths are not kept here (the log has them, and passes them for messages): an idle log
/// kept open costs each of its allocations once per database.
pub(crate) struct Lifecycle {
    /// The ownership lock (`ownership::take`): taken at open, released (set to `None`) once,
    /// by `release_lock` at shutdown or when the log is dropped.
    lock_file: Mutex<Option<Box<dyn IoFile>>>,
    /// Set once, by shutdown, under the writer mutex once no seal holds the write lock
    /// (`Transactions::when_no_writer`): a background checkpoint or an age-based seal that
    /// started late finds nothing to do and leaves the files alone. Never cleared.
    closed: AtomicBool,
    /// Set (once, never cleared) when a sync of a segment, the log directory or the database
    /// file failed: after a failed fsync the kernel may have dropped the dirty pages, so
    /// nobody knows what is on disk (PostgreSQL's lesson). From then on the log refuses
    /// writes, seals and checkpoints; reads go on. Only a new log (recovery) clears it.
    sync_failure: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lifecycle {
    pub fn new(lock_file: Box<dyn IoFile>) -> Lifecycle {
        Lifecycle {
            lock_file: Mutex::new(Some(lock_file)),
            closed: AtomicBool::new(false),
            sync_failure: Mutex::new(None),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// See `closed`: the caller holds the writer mutex with no writer.
    pub fn set_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Records a failed sync, if `result` is one: the log then refuses writes for good.
    pub fn watch<T>(&self, db_path: &Path, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && e.is_failed_sync()
        {
            let mut failure = lock(&self.sync_failure);
            if failure.is_none() {
                tracing::error!(db = %db_path.display(), "{e}: the log refuses writes until it is reopened");
                *failure = Some(e.to_string());
            }
        }
        result
    }

    /// Refuses when an earlier sync failed (see `sync_failure`).
    pub fn check_writable(&self, db_path: &Path) -> Result<()> {
        match lock(&self.sync_failure).as_ref() {
            Some(reason) => Err(Error::SyncFailed { path: db_path.into(), reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Lets another process (or a new log of this one) take the log. Once.
    pub fn release_lock(&self, log_dir: &Path) {
        if let Some(file) = lock(&self.lock_file).take()
            && let Err(e) = file.unlock()
        {
            tracing::warn!(dir = %log_dir.display(), "could not unlock the log: {e}");
        }
    }
}
