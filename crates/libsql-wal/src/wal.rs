//! The `libsql-sys` boundary: [`LibsqlWalManager`] (one per process or program, cheap to
//! clone) and [`LibsqlWal`] (one per SQLite connection). Errors become SQLite codes here and
//! only here.

use std::cell::Cell;
use std::ffi::{CStr, OsStr, c_int};
use std::num::NonZeroU32;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use libsql_sys::ffi;
use libsql_sys::wal::{
    BusyHandler, CheckpointCallback, CheckpointMode as SqliteCheckpointMode, PageHeaders, Sqlite3Db, Sqlite3File,
    UndoHandler, Vfs, Wal, WalManager,
};

use crate::checkpointer::Checkpointer;
use crate::error::Error;
use crate::format::{FRAME_SIZE, PAGE_SIZE};
use crate::io::{FileKind, Io, StdIo};
use crate::log::{CheckpointMode, SharedWal, Snapshot, WalConfig};
use crate::registry;
use crate::segment::{CommitFrame, SegmentRef};
use crate::storage::Storage;
use crate::storage::durability::StorageBinding;

type SqlResult<T> = libsql_sys::wal::Result<T>;

/// Opens our WAL for SQLite connections. Clone it freely: clones share the process-wide
/// registry, so every connection to one file shares one log.
#[derive(Clone)]
pub struct LibsqlWalManager {
    io: Arc<dyn Io>,
    config: WalConfig,
    checkpointer: Option<Checkpointer>,
    storage: Option<Storage>,
    /// The namespace of every database opened through this manager; `None`: each file's stem.
    namespace: Option<String>,
    /// Open a log whose durable record counts in another store or namespace (a deliberate
    /// move) instead of refusing it.
    move_to_store: bool,
}

/// The real file system, the default configuration and the process's shared background
/// checkpointer ([`Checkpointer::global`]).
impl Default for LibsqlWalManager {
    fn default() -> Self {
        LibsqlWalManager::new(StdIo::shared(), WalConfig::default()).with_checkpointer(Checkpointer::global())
    }
}

impl LibsqlWalManager {
    /// A manager without a background checkpointer: SQLite's autocheckpoint (on the
    /// committing connection, past 1000 frames), `PRAGMA wal_checkpoint` and the last close
    /// checkpoint, synchronously. Add one with [`LibsqlWalManager::with_checkpointer`].
    pub fn new(io: Arc<dyn Io>, config: WalConfig) -> Self {
        LibsqlWalManager { io, config, checkpointer: None, storage: None, namespace: None, move_to_store: false }
    }

    /// Databases first opened through this manager are checkpointed in the background by
    /// `checkpointer`, and SQLite's autocheckpoint is turned off for them (`callback` is 0).
    pub fn with_checkpointer(mut self, checkpointer: Checkpointer) -> Self {
        self.checkpointer = Some(checkpointer);
        self
    }

    /// Databases first opened through this manager ship their sealed segments to `storage`
    /// and are checkpointed only as far as storage has them.
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The storage namespace of the databases opened through this manager (default: each
    /// database file's name without its extension). Checked when set.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> crate::error::Result<Self> {
        let namespace = namespace.into();
        crate::storage::layout::validate_namespace(&namespace)?;
        self.namespace = Some(namespace);
        Ok(self)
    }

    /// Lets a database whose log was shipped to another store or namespace (its durable
    /// record says frames are durable there) open with this manager's storage: the log is
    /// then counted in this store from scratch and its history uploaded here. Without it
    /// such an open is refused (`Error::CannotOpen`): a mistyped URL or namespace must not
    /// silently re-target a log.
    pub fn with_move_to_store(mut self, move_to_store: bool) -> Self {
        self.move_to_store = move_to_store;
        self
    }

    pub fn storage(&self) -> Option<&Storage> {
        self.storage.as_ref()
    }

    /// Where `db_path`'s segments go, if storage is configured.
    pub(crate) fn storage_binding(&self, db_path: &Path) -> crate::error::Result<Option<StorageBinding>> {
        let Some(storage) = &self.storage else { return Ok(None) };
        let namespace = match &self.namespace {
            Some(namespace) => namespace.clone(),
            None => namespace_of(db_path)?,
        };
        Ok(Some(StorageBinding { storage: storage.clone(), namespace, move_to_store: self.move_to_store }))
    }

    pub fn checkpointer(&self) -> Option<&Checkpointer> {
        self.checkpointer.as_ref()
    }

    pub fn io(&self) -> &Arc<dyn Io> {
        &self.io
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }
}

/// A database file's default namespace: its name without the extension.
pub fn namespace_of(db_path: &Path) -> crate::error::Result<String> {
    let stem = db_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    crate::storage::layout::validate_namespace(&stem)?;
    Ok(stem)
}

fn path_of(db_path: &CStr) -> &Path {
    Path::new(OsStr::from_bytes(db_path.to_bytes()))
}

impl WalManager for LibsqlWalManager {
    type Wal = LibsqlWal;

    fn use_shared_memory(&self) -> bool {
        false
    }

    fn open(
        &self,
        _vfs: &mut Vfs,
        _file: &mut Sqlite3File,
        _no_shm_mode: c_int,
        _max_log_size: i64,
        db_path: &CStr,
    ) -> SqlResult<LibsqlWal> {
        let db_path = path_of(db_path);
        let shared = self
            .storage_binding(db_path)
            .and_then(|binding| {
                registry::acquire(&self.io, db_path, &self.config, self.checkpointer.as_ref(), binding.as_ref())
            })
            .map_err(Error::into_sqlite)?;
        Ok(LibsqlWal::new(shared))
    }

    fn close(
        &self,
        wal: &mut LibsqlWal,
        _db: &mut Sqlite3Db,
        _sync_flags: c_int,
        scratch: Option<&mut [u8]>,
    ) -> SqlResult<()> {
        // SQLite passes no scratch buffer when the connection asked not to checkpoint on
        // close (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE).
        wal.close(scratch.is_some());
        Ok(())
    }

    /// SQLite asks this only for an empty database file with a log beside it, to delete a
    /// stale log. Our log is never stale (see `registry::log_exists`), so nothing is deleted.
    fn destroy_log(&self, _vfs: &mut Vfs, db_path: &CStr) -> SqlResult<()> {
        tracing::debug!(db = %path_of(db_path).display(), "SQLite asked to destroy the log: kept");
        Ok(())
    }

    fn log_exists(&self, _vfs: &mut Vfs, db_path: &CStr) -> SqlResult<bool> {
        registry::log_exists(self.io.as_ref(), path_of(db_path)).map_err(Error::into_sqlite)
    }

    fn destroy(self) {}
}

/// The open write transaction of a connection.
struct WriteTxn {
    segment: Option<SegmentRef>,
    /// Position in `segment` of the transaction's first frame.
    start: u32,
}

/// One SQLite connection's view of a [`SharedWal`].
pub struct LibsqlWal {
    shared: Arc<SharedWal>,
    id: u64,
    read: Option<Snapshot>,
    /// frame_no of the previous snapshot, to tell SQLite whether its page cache is stale.
    previous_frame_no: Option<u64>,
    /// Whether the open read transaction began on a fully checkpointed log.
    read_on_checkpointed_log: bool,
    write: Option<WriteTxn>,
    /// The last frame found by `find_frame`, read by the `read_frame` that follows.
    last_found: Option<(u32, SegmentRef, u32)>,
    callback_frames: Cell<u32>,
    closed: bool,
}

impl LibsqlWal {
    fn new(shared: Arc<SharedWal>) -> Self {
        let id = shared.new_connection_id();
        LibsqlWal {
            shared,
            id,
            read: None,
            previous_frame_no: None,
            read_on_checkpointed_log: false,
            write: None,
            last_found: None,
            callback_frames: Cell::new(0),
            closed: false,
        }
    }

    fn close(&mut self, checkpoint: bool) {
        if self.closed {
            return;
        }
        self.closed = true;
        let _ = self.rollback_uncommitted(None);
        if self.write.take().is_some() {
            self.shared.end_write(self.id);
        }
        self.end_read_txn();
        registry::release(&self.shared, checkpoint);
    }

    fn max_visible_frame_no(&self) -> u64 {
        match (&self.write, &self.read) {
            // The writer sees its own uncommitted frames: only it has any.
            (Some(_), _) => u64::MAX,
            (None, Some(read)) => read.frame_no,
            (None, None) => self.shared.last_commit().frame_no,
        }
    }

    fn locate(&mut self, page_no: u32) -> Option<(SegmentRef, u32)> {
        if let Some((found_page, segment, pos)) = &self.last_found
            && *found_page == page_no
        {
            return Some((segment.clone(), *pos));
        }
        self.shared.find(page_no, self.max_visible_frame_no())
    }

    fn rollback_uncommitted(&mut self, undo: Option<&mut dyn FnMut(u32) -> SqlResult<()>>) -> SqlResult<()> {
        let Some(txn) = &self.write else { return Ok(()) };
        let Some(segment) = &txn.segment else { return Ok(()) };
        let mut pages = Vec::new();
        self.shared
            .watch(segment.truncate_uncommitted(txn.start, &mut |page_no| pages.push(page_no)))
            .map_err(Error::into_sqlite)?;
        self.last_found = None;
        if let Some(undo) = undo {
            for page_no in pages {
                undo(page_no)?;
            }
        }
        Ok(())
    }
}

/// A failed write of the log, as SQLite will see it. If the log directory has gone
/// (removed from outside while we hold it), the bare error ("unable to open database file"
/// for a segment that cannot be created) says nothing useful: the message logged names the
/// directory and what happened instead.
fn commit_error(shared: &SharedWal, e: Error) -> libsql_sys::wal::Error {
    if matches!(e, Error::Busy | Error::BusySnapshot) {
        // Routine, and asked again and again by a busy handler: no look at the disk.
        return e.into_sqlite();
    }
    let log_dir = &shared.log_dir;
    let e = match shared.io.kind(log_dir) {
        Ok(Some(FileKind::Dir)) => e,
        _ => Error::CannotOpen {
            path: log_dir.clone(),
            reason: format!(
                "the log directory disappeared while the database was open (removed by another \
                 program?); commits cannot go on ({e})"
            ),
        },
    };
    e.into_sqlite()
}

impl Drop for LibsqlWal {
    fn drop(&mut self) {
        self.close(false);
    }
}

/// A count for one of SQLite's `int`s: `i32::MAX` at most, never a negative wrap.
fn saturating_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn not_4096(page_size: usize) -> libsql_sys::wal::Error {
    Error::UnsupportedPageSize { path: "<page buffer>".into(), page_size: page_size as u32 }.into_sqlite()
}

impl Wal for LibsqlWal {
    fn limit(&mut self, _size: i64) {
        // journal_size_limit bounds SQLite's single WAL file; our log is bounded by
        // segment_frames_max and checkpoints instead.
    }

    fn begin_read_txn(&mut self) -> SqlResult<bool> {
        if self.read.is_some() {
            self.end_read_txn();
        }
        let (snapshot, restartable) = self.shared.begin_read();
        self.read_on_checkpointed_log = restartable;
        self.read = Some(snapshot);
        self.last_found = None;
        let changed = self.previous_frame_no != Some(snapshot.frame_no);
        self.previous_frame_no = Some(snapshot.frame_no);
        Ok(changed)
    }

    /// Also ends a write transaction still open, as SQLite's own WAL does
    /// (`sqlite3WalEndReadTransaction` calls `sqlite3WalEndWriteTransaction` first): the
    /// pager relies on it when it unlocks in its error state (after a failed commit it may
    /// never call `end_write_txn`), and a write lock outliving the read transaction would
    /// lock every other connection out ("database is locked") for good.
    fn end_read_txn(&mut self) {
        if self.write.is_some()
            && let Err(e) = self.end_write_txn()
        {
            // The lock is released whatever happened; the uncommitted frames that could
            // not be cut are past the last commit, never visible, and cut by the next
            // writer's rollback or by recovery.
            tracing::warn!(
                db = %self.shared.db_path().display(),
                "ending a write transaction with the read: {}",
                e.extended_code
            );
        }
        if let Some(snapshot) = self.read.take() {
            self.shared.end_read(snapshot);
        }
        self.last_found = None;
    }

    fn find_frame(&mut self, page_no: NonZeroU32) -> SqlResult<Option<NonZeroU32>> {
        let page_no = page_no.get();
        self.last_found = None;
        Ok(self.shared.find(page_no, self.max_visible_frame_no()).map(|(segment, pos)| {
            self.last_found = Some((page_no, segment, pos));
            // The handle SQLite passes back to read_frame is the page number itself:
            // frame numbers are 64-bit and do not fit SQLite's u32.
            NonZeroU32::new(page_no).expect("page numbers start at 1")
        }))
    }

    fn read_frame(&mut self, frame: NonZeroU32, buffer: &mut [u8]) -> SqlResult<()> {
        if buffer.len() != PAGE_SIZE {
            return Err(not_4096(buffer.len()));
        }
        let (segment, pos) = self.locate(frame.get()).ok_or_else(|| {
            Error::corrupt(self.shared.db_path(), format!("page {} vanished from the log", frame.get())).into_sqlite()
        })?;
        segment.read_page(pos, buffer).map_err(Error::into_sqlite)
    }

    fn read_frame_raw(&mut self, frame: NonZeroU32, buffer: &mut [u8]) -> SqlResult<()> {
        if buffer.len() != FRAME_SIZE {
            return Err(libsql_sys::wal::Error::new(ffi::SQLITE_MISUSE));
        }
        let (segment, pos) =
            self.locate(frame.get()).ok_or_else(|| libsql_sys::wal::Error::new(ffi::SQLITE_IOERR_READ))?;
        segment.read_frame_raw(pos, buffer).map_err(Error::into_sqlite)
    }

    fn db_size(&self) -> u32 {
        self.read.map_or(0, |s| s.db_size)
    }

    fn begin_write_txn(&mut self) -> SqlResult<()> {
        let snapshot = self.read.ok_or_else(|| libsql_sys::wal::Error::new(ffi::SQLITE_MISUSE))?;
        if self.write.is_some() {
            return Ok(());
        }
        // A log refusing writes after a failed sync may be refusing because its directory
        // went away: say so (`commit_error`).
        self.shared.begin_write(self.id, snapshot).map_err(|e| commit_error(&self.shared, e))?;
        self.write = Some(WriteTxn { segment: None, start: 0 });
        Ok(())
    }

    fn end_write_txn(&mut self) -> SqlResult<()> {
        if self.write.is_some() {
            let result = self.rollback_uncommitted(None);
            self.write = None;
            self.shared.end_write(self.id);
            result?;
        }
        Ok(())
    }

    fn undo<U: UndoHandler>(&mut self, handler: Option<&mut U>) -> SqlResult<()> {
        match handler {
            Some(handler) => self.rollback_uncommitted(Some(&mut |page_no| handler.handle_undo(page_no))),
            None => self.rollback_uncommitted(None),
        }
    }

    fn savepoint(&mut self, rollback_data: &mut [u32]) {
        let position = match &self.write {
            Some(WriteTxn { segment: Some(segment), .. }) => segment.frames(),
            Some(WriteTxn { segment: None, .. }) | None => 0,
        };
        rollback_data[0] = position;
    }

    fn savepoint_undo(&mut self, rollback_data: &mut [u32]) -> SqlResult<()> {
        let Some(WriteTxn { segment: Some(segment), start }) = &self.write else { return Ok(()) };
        let keep = rollback_data[0].max(*start);
        self.shared.watch(segment.truncate_uncommitted(keep, &mut |_| {})).map_err(Error::into_sqlite)?;
        self.last_found = None;
        Ok(())
    }

    fn frame_count(&self, _locked: i32) -> SqlResult<u32> {
        Ok(self.shared.log_frames())
    }

    fn insert_frames(
        &mut self,
        page_size: c_int,
        page_headers: &mut PageHeaders,
        size_after: u32,
        is_commit: bool,
        sync_flags: c_int,
    ) -> SqlResult<usize> {
        if page_size as usize != PAGE_SIZE {
            return Err(not_4096(page_size as usize));
        }
        let Some(txn) = self.write.as_mut() else {
            return Err(libsql_sys::wal::Error::new(ffi::SQLITE_MISUSE));
        };
        if txn.segment.is_none() {
            if self.read_on_checkpointed_log {
                self.shared.restart_log_counts();
            }
            let segment = self.shared.current_segment_for_write().map_err(|e| commit_error(&self.shared, e))?;
            txn.start = segment.frames();
            txn.segment = Some(segment);
        }
        let segment = txn.segment.clone().expect("set above");
        let start = txn.start;
        let pages: Vec<(u32, &[u8])> = page_headers.iter().collect();
        if pages.is_empty() {
            // Nothing to write (SQLite never asks this): no frame, so no commit either.
            return Ok(0);
        }
        let commit = (is_commit && size_after > 0).then_some(size_after);
        self.last_found = None;
        // `sync_flags & 3` is SQLite's WAL_SYNC_FLAGS: set under synchronous=FULL (and
        // EXTRA), clear under NORMAL. A FULL commit is on stable storage before we return.
        let synchronous = sync_flags & 0x03 != 0;
        let synced_commit = commit.is_some() && synchronous;
        if synced_commit {
            segment.preallocate(pages.len() as u32).map_err(|e| commit_error(&self.shared, e))?;
            // Every earlier segment durable *before* the commit frame is written: a valid
            // flagged frame then proves to recovery that none of them can be missing.
            self.shared.make_durable_through(&segment).map_err(|e| commit_error(&self.shared, e))?;
        }
        let commit_frame = commit.map(|size_after| CommitFrame {
            size_after,
            unix_ms: self.shared.commit_time(),
            synced: synced_commit,
        });
        segment.write_transaction(&pages, start, commit_frame).map_err(|e| commit_error(&self.shared, e))?;
        if commit.is_none() {
            return Ok(0);
        }
        if synchronous {
            self.shared.watch(segment.sync()).map_err(|e| commit_error(&self.shared, e))?;
        }
        segment.mark_committed(size_after);
        let committed = self.shared.publish_commit(&segment);
        if let Some(read) = self.read.replace(committed) {
            self.shared.move_reader(read, committed);
        }
        self.previous_frame_no = Some(committed.frame_no);
        self.callback_frames.set(self.shared.log_frames());
        let frames = segment.committed_frames() - start;
        let metrics = crate::instruments::get();
        metrics.commits.increment(1);
        metrics.frames_written.increment(frames as u64);
        if let Some(txn) = self.write.as_mut() {
            txn.segment = None;
        }
        if let Err(e) = self.shared.swap_if_full(&segment) {
            // The commit stands; the next transaction's first write retries the seal.
            tracing::error!("sealing segment {} failed: {e}", segment.path.display());
        }
        Ok(frames as usize)
    }

    fn checkpoint(
        &mut self,
        _db: &mut Sqlite3Db,
        mode: SqliteCheckpointMode,
        busy_handler: Option<&mut dyn BusyHandler>,
        _sync_flags: u32,
        _buf: &mut [u8],
        checkpoint_cb: Option<&mut dyn CheckpointCallback>,
        in_wal: Option<&mut i32>,
        backfilled: Option<&mut i32>,
    ) -> SqlResult<()> {
        let mode = match mode {
            SqliteCheckpointMode::Passive => CheckpointMode::Passive,
            SqliteCheckpointMode::Full => CheckpointMode::Full,
            SqliteCheckpointMode::Restart => CheckpointMode::Restart,
            SqliteCheckpointMode::Truncate => CheckpointMode::Truncate,
        };
        let mut busy_handler = busy_handler;
        let mut busy = || busy_handler.as_mut().is_some_and(|h| h.handle_busy());
        let mut callback = checkpoint_cb;
        let mut on_page = |page_no: u32, page: &[u8], frame_no: u64| -> crate::Result<()> {
            if let Some(cb) = callback.as_mut() {
                let page_no = NonZeroU32::new(page_no).expect("page numbers start at 1");
                let frame_no = NonZeroU32::new(frame_no.min(u32::MAX as u64) as u32).expect("frame_no > 0");
                cb.frame(u32::MAX, page, page_no, frame_no)
                    .map_err(|e| Error::CheckpointCallback { code: e.extended_code })?;
            }
            Ok(())
        };
        let result = self.shared.checkpoint(mode, &mut busy, &mut on_page).map_err(Error::into_sqlite)?;
        if let Some(cb) = callback.as_mut() {
            cb.finish()?;
        }
        // SQLite's outputs are `int`: saturate rather than wrap to a negative count.
        if let Some(out) = in_wal {
            *out = saturating_i32(result.log_frames);
        }
        if let Some(out) = backfilled {
            *out = saturating_i32(result.checkpointed_frames);
        }
        if result.busy && mode != CheckpointMode::Passive {
            return Err(libsql_sys::wal::Error::new(ffi::SQLITE_BUSY));
        }
        Ok(())
    }

    fn exclusive_mode(&mut self, _op: c_int) -> SqlResult<()> {
        // We never hold SQLite's exclusive WAL mode: answering "not exclusive" is the truth.
        Ok(())
    }

    fn uses_heap_memory(&self) -> bool {
        // No shared-memory index; but answering false keeps `PRAGMA locking_mode` behaving
        // as it does on SQLite's WAL (SQLite refuses to change it for heap-memory WALs).
        false
    }

    fn set_db(&mut self, _db: &mut Sqlite3Db) {}

    /// With a background checkpointer, 0: SQLite's autocheckpoint never runs on the commit
    /// path. Without one, the frames in the log since the last commit was reported, which
    /// drives SQLite's autocheckpoint as on its own WAL.
    fn callback(&self) -> i32 {
        let frames = self.callback_frames.replace(0);
        if self.shared.has_checkpointer() { 0 } else { saturating_i32(frames) }
    }

    fn frames_in_wal(&self) -> u32 {
        self.shared.log_frames()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_for_sqlite_saturate_instead_of_wrapping() {
        assert_eq!(saturating_i32(7), 7);
        assert_eq!(saturating_i32(i32::MAX as u32 + 1), i32::MAX, "wrapped to a negative count");
        assert_eq!(saturating_i32(u32::MAX), i32::MAX);
        assert_eq!(crate::log::transactions::saturating_u32(u32::MAX as u64 + 1), u32::MAX, "wrapped to 0");
        assert_eq!(crate::log::transactions::saturating_u32(5), 5);
    }

    /// SQLite's pager, unlocking in its error state, ends the read transaction without
    /// ending the write transaction first; SQLite's own WAL then releases the write lock
    /// too (`sqlite3WalEndReadTransaction`). Ours must, or every other connection is
    /// locked out for good.
    #[test]
    fn ending_the_read_transaction_releases_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let manager = LibsqlWalManager::new(StdIo::shared(), crate::WalConfig::default());
        let conn = crate::open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        let acquire = || registry::acquire(manager.io(), &db, manager.config(), None, None).unwrap();
        let mut a = LibsqlWal::new(acquire());
        let mut b = LibsqlWal::new(acquire());
        assert!(a.begin_read_txn().is_ok());
        a.begin_write_txn().unwrap();
        a.end_read_txn();
        b.begin_read_txn().unwrap();
        let code = b.begin_write_txn().err().map(|e| e.extended_code);
        assert_eq!(code, None, "the write lock outlived the read transaction that held it");
        b.end_write_txn().unwrap();
        b.end_read_txn();
        // And SQLite's connection too can write.
        conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        drop((a, b));
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }
}
