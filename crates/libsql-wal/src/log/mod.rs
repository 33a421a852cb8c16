//! The one log of one database in this process, shared by all its connections: a
//! [`SharedWal`] puts together parts that each own one invariant, and coordinates them.
//!
//! - [`segments::SegmentList`]: the segments, newest first, sealed ones a prefix.
//! - [`transactions::Transactions`]: readers, the writer, the last commit, the checkpointed frame.
//! - [`lifecycle::Lifecycle`]: the ownership lock, `closed`, a failed sync.
//! - [`db_file::DbFile`]: the database file (written by the checkpoint only).
//! - [`checkpoint`] (select–copy–drop) and [`seal`] (seals and swaps): what the log does
//!   with them.
//!
//! The background checkpointer and the uploader never see this type: the checkpointer
//! holds it as a `Weak<dyn CheckpointTarget>` (given at registration), the uploader a
//! [`LogView`] of the parts it reads (given when its `Durability` is opened). The log tells
//! them what happened through those handles: a seal calls `Durability::schedule`, a full
//! segment or a reader that held a checkpoint back calls `Checkpointer::notify`.
//!
//! Lock order (each taken before the ones after it, never the other way): the checkpoint
//! lock (`checkpoint_lock`); the checkpointer slot (`CheckpointerLink::slot`), then the
//! checkpointer's own state; the writer mutex, then the commit mutex
//! (`Transactions`); the segment list's lock. None of the last three is held across I/O.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::checkpointer::{CheckpointTarget, Checkpointer, LogId};
use crate::error::{Error, IoAction, Result};
use crate::io::Io;
use crate::ownership;
use crate::segment::{Segment, SegmentRef};
use crate::storage::durability::{Durability, LogView, StorageBinding};
use recovery::{carry_out, check_db_file_length, last_commit, plan_recovery};

pub(crate) mod checkpoint;
mod db_file;
mod lifecycle;
mod outside_change;
pub(crate) mod recovery;
pub(crate) mod replicate;
mod seal;
mod segments;
pub(crate) mod transactions;

pub use checkpoint::{CheckpointMode, CheckpointResult};
use db_file::DbFile;
use lifecycle::Lifecycle;
use segments::SegmentList;
pub use transactions::Snapshot;
use transactions::Transactions;

/// Tuning of one database's log.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Swap by size: the current segment is sealed once it holds at least this many frames
    /// (`u32::MAX`: never by size).
    pub segment_frames_max: u32,
    /// Swap by age: the background checkpointer seals a current segment older than this, so
    /// a quiet database still gets its tail checkpointed (`None`: never by age). Both swap
    /// strategies can be on at once; the first to fire seals.
    pub segment_age_max: Option<Duration>,
    /// Checkpoint everything when the last connection in the process closes (SQLite's
    /// behaviour), so the file is a plain SQLite database afterwards.
    pub checkpoint_on_close: bool,
    /// Keep the log open when its last connection in the process closes, so the next open
    /// finds it recovered and ready (a server holding many databases). Idle logs are closed
    /// when the descriptors they hold together pass `set_idle_open_files_max`, or by
    /// `close_idle_logs`. Off by default: SQLite closes (and checkpoints) at the last close.
    pub keep_open_when_idle: bool,
    /// Seal full segments off the commit path even without a background checkpointer: the
    /// next checkpoint (or open) seals them. With a checkpointer this is always so (its
    /// workers seal). Off by default: without a checkpointer nothing else would seal them
    /// soon. Tests turn it on to crash logs holding several unsealed segments.
    pub defer_seals: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_frames_max: 4096,
            segment_age_max: Some(Duration::from_secs(10)),
            checkpoint_on_close: true,
            keep_open_when_idle: false,
            defer_seals: false,
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// See the module documentation. The fields are set at open and never replaced; what
/// changes lives inside the parts, under their own locks.
pub(crate) struct SharedWal {
    pub log_dir: PathBuf,
    pub(crate) io: Arc<dyn Io>,
    pub config: WalConfig,
    /// What the uploader may read too (its `LogView`): one allocation for all of them.
    parts: Arc<LogParts>,
    /// One checkpoint at a time (foreground or background), and none after shutdown.
    checkpoint_lock: Mutex<()>,
    checkpoint_errors: checkpoint::CheckpointErrors,
    /// Connections open on this log in this process (the registry counts them).
    pub(crate) open_connections: AtomicUsize,
    /// The durable frame_no and its uploads, when storage is (or once was) configured.
    durability: Option<Arc<Durability>>,
    /// Replicas streaming this log, and the newest commit for them to wait on.
    replication: replicate::Replication,
}

/// The parts of a log, each owning one invariant (see the module documentation). Shared
/// by the log and, as a [`LogView`], by its uploader; nothing here refers back to the log.
struct LogParts {
    /// The history this log belongs to (see `format::SegmentHeader::lineage`): fixed at
    /// open, from the segments, the database file's mark, or new for a new history.
    lineage: u32,
    db: DbFile,
    segments: SegmentList,
    transactions: Transactions,
    lifecycle: Lifecycle,
    checkpointer: CheckpointerLink,
}

/// The background checkpointer a log is registered with, if any, and the id it knows the
/// log by: set by `attach_checkpointer`, taken by `shutdown`. Shared with the uploader's
/// view, which asks for a checkpoint once segments are durable.
#[derive(Default)]
struct CheckpointerLink {
    slot: Mutex<Option<(Checkpointer, LogId)>>,
}

impl CheckpointerLink {
    fn notify(&self) {
        if let Some((checkpointer, id)) = lock(&self.slot).as_ref() {
            checkpointer.notify(*id);
        }
    }
}

impl LogView for LogParts {
    fn segments(&self) -> Vec<SegmentRef> {
        self.segments.all()
    }

    fn is_closed(&self) -> bool {
        self.lifecycle.is_closed()
    }

    fn checkpointed(&self) -> (u64, u32) {
        self.transactions.checkpointed()
    }

    fn last_commit_frame_no(&self) -> u64 {
        self.transactions.last_commit().frame_no
    }

    fn lineage(&self) -> u32 {
        self.lineage
    }

    fn chain_at(&self, frame_no: u64) -> Result<Option<u32>> {
        chain_at(self.transactions.checkpointed(), self.segments.all().iter().map(|s| s.as_ref()), frame_no)
    }

    fn db_file_len(&self) -> u64 {
        self.db.len().unwrap_or(0)
    }

    fn read_db_file(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.db.read(buf, offset)
    }

    fn became_durable(&self) {
        self.checkpointer.notify();
    }
}

/// The earliest time the next commit may record: the newest commit time in the log, or,
/// when the log holds none (emptied by a checkpoint), the database file's modification time,
/// which the checkpoint that emptied it set to the last commit's time at the least
/// (`stamp_file_time`: the clock may have stepped back before that checkpoint).
/// So commit times keep going forward across restarts even if the clock went back.
fn commit_clock_floor(io: &dyn Io, db_path: &Path, segments: &[SegmentRef]) -> u64 {
    let in_log = segments.iter().map(|s| s.committed_unix_ms()).max().unwrap_or(0);
    let file = io.modified(db_path).ok().map_or(0, crate::io::unix_ms);
    in_log.max(file)
}

/// The chain value at `frame_no`, if a log can still tell: `checkpointed` (the checkpointed
/// frame_no and its chain value), or a committed frame of one of `segments`. The uploader
/// asks it of a live log, `inspect_read_only` of what an open would recover.
pub(crate) fn chain_at<'a>(
    checkpointed: (u64, u32),
    segments: impl IntoIterator<Item = &'a Segment>,
    frame_no: u64,
) -> Result<Option<u32>> {
    if frame_no == checkpointed.0 {
        return Ok(Some(checkpointed.1));
    }
    let mut segments = segments.into_iter();
    let holder = segments.find(|s| s.start_frame_no <= frame_no && frame_no <= s.last_committed_frame_no());
    holder.map(|s| s.chain_at(frame_no)).transpose()
}

/// How far storage is behind a log (`SharedWal::storage_lag`).
pub(crate) struct StorageLag {
    pub namespace: String,
    /// `None` while unknown (storage not listed since the log opened).
    pub durable_frame_no: Option<u64>,
    /// Frames committed past the durable frame_no (counted from 0 while it is unknown).
    pub frames: u64,
    /// Age of the oldest commit storage lacks (0 when it lacks none).
    pub seconds: f64,
}

impl SharedWal {
    /// Takes ownership of the database's log and recovers it.
    pub fn open(
        io: Arc<dyn Io>,
        db_path: &Path,
        config: WalConfig,
        storage: Option<StorageBinding>,
    ) -> Result<SharedWal> {
        let log_dir = ownership::log_dir_of(db_path);
        let db_file = io.open(db_path, false).map_err(Error::io(IoAction::Open, db_path))?;
        // Refuse a file that is not SQLite (or has other pages) before touching anything.
        ownership::read_db_header(db_file.as_ref(), db_path)?;
        let lock_file = ownership::take(io.as_ref(), db_path, db_file.as_ref())?;
        // The mark only now: the previous owner may have checkpointed (and exited) until
        // the lock was ours, and a stale mark would let frame numbers restart below it.
        let recovered = ownership::read_db_header(db_file.as_ref(), db_path).and_then(|mark| {
            if mark.is_none() {
                tracing::warn!(db = %db_path.display(), "the checkpoint mark is unreadable (torn?): trusting the segments alone");
            }
            let plan = plan_recovery(io.as_ref(), &log_dir, mark, false)?;
            let last = last_commit(&plan.kept, mark, db_file.as_ref(), db_path)?;
            check_db_file_length(&plan.kept, mark, &last, db_file.as_ref(), db_path)?;
            let (lineage, chain) = (plan.lineage, plan.base_chain);
            let segments = carry_out(io.as_ref(), &log_dir, plan)?;
            // Only a file handed back (no frames in the log) can have been written by stock
            // SQLite since; only a mark naming a history has a history to keep true.
            let may_have_changed = segments.is_empty() && mark.is_some_and(|m| m.lineage != 0);
            // A new history on a file that has pages and no segment yet: nothing else would
            // say which one it is until a checkpoint, and a base snapshot uploaded before that
            // would name a lineage the next open does not know.
            let starts_history = segments.is_empty() && mark.is_some_and(|m| m.lineage == 0) && last.db_size > 0;
            Ok((segments, last, lineage, chain, (may_have_changed, starts_history)))
        });
        let (segments, last, lineage, checkpointed_chain, (may_have_changed, starts_history)) = match recovered {
            Ok(recovered) => recovered,
            Err(e) => {
                let _ = lock_file.unlock();
                return Err(e);
            }
        };
        let checkpointed_frame_no = segments.last().map_or(last.frame_no, |s| s.start_frame_no - 1);
        let commit_clock = commit_clock_floor(io.as_ref(), db_path, &segments);
        tracing::debug!(
            db = %db_path.display(),
            segments = segments.len(),
            last_frame_no = last.frame_no,
            "log recovered"
        );
        let parts = Arc::new(LogParts {
            lineage,
            db: DbFile::new(db_path, db_file),
            segments: SegmentList::new(segments),
            transactions: Transactions::new(last, checkpointed_frame_no, checkpointed_chain, commit_clock),
            lifecycle: Lifecycle::new(lock_file),
            checkpointer: CheckpointerLink::default(),
        });
        let view: Arc<dyn LogView> = parts.clone();
        // The upload task may hold `parts` for a moment after a failure here: release the
        // lock explicitly rather than when its last handle goes.
        let durability =
            Durability::open(&io, &log_dir, storage, view).inspect_err(|_| parts.lifecycle.release_lock(&log_dir))?;
        let shared = SharedWal {
            log_dir,
            io,
            config,
            parts,
            checkpoint_lock: Mutex::new(()),
            checkpoint_errors: checkpoint::CheckpointErrors::default(),
            open_connections: AtomicUsize::new(0),
            durability,
            replication: replicate::Replication::new(last.frame_no),
        };
        // On failure, dropping `shared` releases the lock.
        if may_have_changed {
            shared.log_outside_change()?;
        }
        if starts_history && let Err(e) = shared.mark_new_history(last.frame_no) {
            // Then its first checkpoint writes it, as before; the open itself is sound.
            tracing::warn!(db = %db_path.display(), "could not write the new history's mark at open: {e}");
        }
        Ok(shared)
    }

    /// The database file (as it was named at open; the log's other names share it).
    pub fn db_path(&self) -> &Path {
        &self.parts.db.path
    }

    /// Called once by the registry right after the log is shared: starts its uploads (the
    /// sealed segments a previous process left unuploaded go first).
    pub fn start(&self) {
        if let Some(durability) = &self.durability {
            durability.schedule();
        }
    }

    pub fn durability(&self) -> Option<&Arc<Durability>> {
        self.durability.as_ref()
    }

    /// How far storage is behind this log, if it has storage (for the metrics' gauges).
    pub fn storage_lag(&self) -> Option<StorageLag> {
        let durability = self.durability.as_ref()?;
        let namespace = durability.binding()?.namespace.clone();
        let durable_frame_no = durability.frame_no();
        let durable = durable_frame_no.unwrap_or(0);
        let frames = self.last_commit().frame_no.saturating_sub(durable);
        // Uploads take whole segments: the oldest commit storage lacks is in the oldest
        // segment reaching past the durable frame_no (its first commit, as an upper bound).
        let oldest = self.parts.segments.all().into_iter().rev().find(|s| s.last_committed_frame_no() > durable);
        let seconds = match oldest {
            Some(segment) if frames > 0 => {
                let first = match segment.commit_times().0 {
                    0 => segment.created_unix_ms,
                    first => first,
                };
                crate::io::unix_ms(self.io.now()).saturating_sub(first) as f64 / 1000.0
            }
            _ => 0.0,
        };
        Some(StorageLag { namespace, durable_frame_no, frames, seconds })
    }

    /// The checkpointed frame_no and the chain value there (a snapshot's base).
    pub fn checkpointed(&self) -> (u64, u32) {
        self.parts.transactions.checkpointed()
    }

    pub fn new_connection_id(&self) -> u64 {
        self.parts.transactions.new_connection_id()
    }

    pub fn last_commit(&self) -> Snapshot {
        self.parts.transactions.last_commit()
    }

    /// See [`Transactions::begin_read`].
    pub fn begin_read(&self) -> (Snapshot, bool) {
        self.parts.transactions.begin_read()
    }

    pub fn end_read(&self, snapshot: Snapshot) {
        if self.parts.transactions.end_read(snapshot) {
            self.notify_checkpointer();
        }
    }

    /// Moves a connection's registered snapshot to a newer one (the writer after its commit).
    pub fn move_reader(&self, from: Snapshot, to: Snapshot) {
        if self.parts.transactions.move_reader(from, to) {
            self.notify_checkpointer();
        }
    }

    /// Registers this log with a background checkpointer, which then owns checkpoints
    /// (SQLite's autocheckpoint is turned off: `has_checkpointer`).
    ///
    /// A checkpointer already stopped (`Checkpointer::shutdown`) is not attached: the log
    /// checkpoints on its own.
    pub fn attach_checkpointer(self: &Arc<Self>, checkpointer: &Checkpointer) {
        // The slot is set before the registration's first notification can need it.
        let mut slot = lock(&self.parts.checkpointer.slot);
        let target: std::sync::Weak<dyn CheckpointTarget> = Arc::downgrade(self) as _;
        if let Some(id) = checkpointer.register(target) {
            *slot = Some((checkpointer.clone(), id));
        }
    }

    /// Is a background checkpointer sealing and checkpointing this log? Not once it has
    /// been shut down: then full segments are sealed on the commit path and SQLite's
    /// autocheckpoint runs again, or the log would grow without bound.
    pub fn has_checkpointer(&self) -> bool {
        lock(&self.parts.checkpointer.slot).as_ref().is_some_and(|(c, _)| !c.is_stopped())
    }

    pub(crate) fn notify_checkpointer(&self) {
        self.parts.checkpointer.notify();
    }

    /// Failed background checkpoints so far, and the last failure.
    pub fn checkpoint_errors(&self) -> (u64, Option<String>) {
        self.checkpoint_errors.get()
    }

    /// Records a failed sync, if `result` is one: the log then refuses writes for good.
    pub fn watch<T>(&self, result: Result<T>) -> Result<T> {
        self.parts.lifecycle.watch(self.db_path(), result)
    }

    /// Refuses when an earlier sync failed (see `Lifecycle::sync_failure`).
    fn check_writable(&self) -> Result<()> {
        self.parts.lifecycle.check_writable(self.db_path())
    }

    /// Takes the write lock for a connection whose snapshot is `snapshot`, without waiting.
    pub fn begin_write(&self, connection_id: u64, snapshot: Snapshot) -> Result<()> {
        self.check_writable()?;
        self.parts.transactions.begin_write(connection_id, snapshot)
    }

    pub fn end_write(&self, connection_id: u64) {
        self.parts.transactions.end_write(connection_id)
    }

    /// See [`Transactions::restart_log_counts`].
    pub fn restart_log_counts(&self) {
        self.parts.transactions.restart_log_counts()
    }

    /// Frames in the log since the last restart, as SQLite would count them.
    pub fn log_frames(&self) -> u32 {
        self.parts.transactions.log_frames()
    }

    /// Publishes a commit written (and synced if asked) by the writer. Write lock held.
    /// The commit time to record on a commit frame written now (see
    /// [`Transactions::commit_time`]).
    pub fn commit_time(&self) -> u64 {
        self.parts.transactions.commit_time(crate::io::unix_ms(self.io.now()))
    }

    /// Ends a synced commit the log writes itself (a file changed outside, a replicated
    /// transaction), its frames written under the write lock: synced, then published; a
    /// full segment is sealed (a failed seal is retried by the next transaction).
    pub(crate) fn publish_synced_commit(&self, segment: &Segment, size_after: u32) -> Result<()> {
        self.watch(segment.sync())?;
        segment.mark_committed(size_after);
        self.publish_commit(segment);
        if let Err(e) = self.swap_if_full(segment) {
            tracing::error!("sealing segment {} failed: {e}", segment.path.display());
        }
        Ok(())
    }

    pub fn publish_commit(&self, segment: &Segment) -> Snapshot {
        let snapshot =
            Snapshot { frame_no: segment.last_committed_frame_no(), db_size: segment.committed_size_after() };
        self.parts.transactions.publish_commit(snapshot);
        self.replication.committed(snapshot.frame_no);
        snapshot
    }

    /// Finds the newest frame of `page_no` no newer than `max_frame_no`.
    pub fn find(&self, page_no: u32, max_frame_no: u64) -> Option<(SegmentRef, u32)> {
        self.parts.segments.find(page_no, max_frame_no)
    }

    /// The file descriptors this log holds: the database file, the ownership locks (the
    /// `lock` file and the database file's own lock handle), each segment.
    pub fn open_files(&self) -> usize {
        3 + self.parts.segments.len()
    }

    /// All segments, newest first.
    pub fn segments(&self) -> Vec<SegmentRef> {
        self.parts.segments.all()
    }

    pub fn db_file_len(&self) -> u64 {
        self.parts.db.len().unwrap_or(0)
    }

    /// Called when the last connection of the process closes it: checkpoint everything
    /// (if configured) and, once the log is empty, hand the file back to plain SQLite by
    /// removing the log directory.
    pub fn shutdown(&self, checkpoint: bool) {
        if let Some((checkpointer, id)) = lock(&self.parts.checkpointer.slot).take() {
            checkpointer.unregister(id);
        }
        if self.durability.as_ref().is_some_and(|d| d.binding().is_some()) {
            // A clean shutdown seals the tail so it can be uploaded (now, or by the next
            // process to open the log): storage never lacks more than a crash's tail.
            if let Err(e) = self.seal_current(CheckpointMode::Passive, &mut || false) {
                tracing::error!(db = %self.db_path().display(), "sealing the log on close failed: {e}");
            }
        }
        if checkpoint && self.config.checkpoint_on_close {
            let result = self.checkpoint(CheckpointMode::Truncate, &mut || false, &mut |_, _, _| Ok(()));
            if let Err(e) = result {
                tracing::error!(db = %self.db_path().display(), "checkpoint on close failed: {e}");
            }
        }
        // From here no checkpoint of ours may touch the files: another process may own
        // them as soon as the lock is released.
        let _guard = lock(&self.checkpoint_lock);
        // Once no seal holds the write lock, under the writer mutex: a seal started by the
        // ticker (which holds the log without a connection) either finishes first or sees
        // `closed` and leaves the files alone. Without this, a late seal could write its
        // trailer into a segment that a reopened log (here or in another process) is
        // appending to.
        self.parts.transactions.when_no_writer(|| self.parts.lifecycle.set_closed());
        let segments = self.parts.segments.all();
        let log_empty = segments.is_empty();
        if let Some(current) = segments.first()
            && let Err(e) = current.trim_preallocation()
        {
            tracing::warn!(db = %self.db_path().display(), "could not give back the segment's preallocated zeros: {e}");
        }
        if let Some(durability) = &self.durability {
            durability.close(log_empty);
        }
        if !log_empty && checkpoint && self.config.checkpoint_on_close {
            // A clean close that could not give the file back: say why, or a user finds
            // stock SQLite refusing a database that was "closed" (the log directory stays).
            let waiting = match &self.durability {
                Some(d) if d.binding().is_none() => {
                    "they wait for storage, which this process was not given (open it with its storage to ship them)"
                }
                Some(_) => "they are not durable in storage yet",
                None => "the checkpoint did not take them",
            };
            tracing::warn!(
                db = %self.db_path().display(),
                "kept the log directory: {} segment(s) are not in the database file ({waiting}); \
                 stock SQLite cannot open the database until they are",
                segments.len()
            );
        }
        if log_empty {
            // No other process of ours can take the log meanwhile: our lock on the database
            // file refuses it until `release_lock` below. Files we did not create keep the
            // directory (`release` warns).
            if let Err(e) = ownership::release(self.io.as_ref(), &self.log_dir) {
                tracing::warn!(dir = %self.log_dir.display(), "could not remove the empty log directory: {e}");
            }
        }
        self.parts.lifecycle.release_lock(&self.log_dir);
    }
}

impl CheckpointTarget for SharedWal {
    fn db_path(&self) -> &Path {
        SharedWal::db_path(self)
    }

    fn segment_age_max(&self) -> Option<Duration> {
        self.config.segment_age_max
    }

    fn checkpoint_sealed(&self) -> Result<()> {
        SharedWal::checkpoint_sealed(self)
    }

    fn seal_if_older_than(&self, age_max: Duration) -> Result<bool> {
        SharedWal::seal_if_older_than(self, age_max)
    }

    fn record_checkpoint_error(&self, error: &Error) {
        self.checkpoint_errors.record(error);
    }
}

impl Drop for SharedWal {
    /// A log dropped without `shutdown` (a failed registration, a test) is closed too: the
    /// uploader, which may still hold its parts for a moment, stops at its next step.
    fn drop(&mut self) {
        self.parts.lifecycle.set_closed();
        self.parts.lifecycle.release_lock(&self.log_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdIo;

    /// A log left by a closed process: three commits in an unsealed current segment.
    fn log_with_unsealed_tail(dir: &Path) -> (PathBuf, PathBuf) {
        let db = dir.join("t.db");
        let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..WalConfig::default() };
        let manager = crate::LibsqlWalManager::new(StdIo::shared(), config);
        let conn = crate::open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);").unwrap();
        drop(conn);
        let segment = crate::segment::list_segment_files(&StdIo, &ownership::log_dir_of(&db)).unwrap().pop().unwrap();
        (db, segment)
    }

    #[test]
    fn the_checkpoint_mark_is_read_once_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::fs::canonicalize(dir.path()).unwrap().join("t.db");
        let config = WalConfig { segment_frames_max: 2, checkpoint_on_close: false, ..WalConfig::default() };
        let manager = crate::LibsqlWalManager::new(StdIo::shared(), config.clone());
        let conn = crate::open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        for i in 0..12 {
            conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        drop(conn);
        let segments_before = crate::segment::list_segment_files(&StdIo, &ownership::log_dir_of(&db)).unwrap().len();
        assert!(segments_before >= 4, "setup: a log of several segments");

        // Between our first look at the file and our lock, the previous owner comes back,
        // checkpoints part of the log (a reader holds the rest back) and exits.
        let other_db = db.clone();
        let other_config = config.clone();
        let once = std::sync::Once::new();
        // Ownership starts with the lock on the database file (`ownership::take` opens it
        // read-only for that): the other owner runs just before.
        let io = Arc::new(crate::test_io::HookIo::new(move |operation, path| {
            if operation != "open_read_only" || path.extension().is_none_or(|e| e != "db") {
                return Ok(());
            }
            once.call_once(|| {
                let other = SharedWal::open(StdIo::shared(), &other_db, other_config.clone(), None).unwrap();
                let middle = other.segments()[other.segments().len() / 2].start_frame_no;
                other.parts.transactions.add_reader(middle);
                other.checkpoint(CheckpointMode::Passive, &mut || false, &mut |_, _, _| Ok(())).unwrap();
                assert!(other.checkpointed().0 > 0, "setup: the other owner checkpointed something");
                other.shutdown(false);
            });
            Ok(())
        }));
        let last_before = {
            let wal = SharedWal::open(StdIo::shared(), &db, config.clone(), None).unwrap();
            let last = wal.last_commit();
            wal.shutdown(false);
            last
        };
        let wal = SharedWal::open(io, &db, config, None).expect("recovery used the mark written before the lock");
        assert_eq!(wal.last_commit(), last_before);
        let mark = ownership::read_db_header(wal.parts.db.file.as_ref(), &db).unwrap().unwrap();
        assert_eq!(wal.checkpointed(), (mark.frame_no, mark.chain), "recovery started from the mark on disk now");
        wal.shutdown(false);
    }

    /// A directory sync whose `open` failed (out of descriptors: EMFILE) never ran, so the
    /// kernel dropped nothing: the operation fails, the log does not turn read-only for
    /// good. Before, a checkpoint that met EMFILE once (a server with thousands of idle
    /// connections) left every later commit refused until a restart.
    #[test]
    fn a_directory_sync_that_never_ran_is_not_a_failed_sync() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let out_of_descriptors = Arc::new(AtomicBool::new(false));
        let io = {
            let out_of_descriptors = out_of_descriptors.clone();
            crate::test_io::HookIo::new(move |operation, _| {
                if operation == "sync_dir" && out_of_descriptors.load(Ordering::SeqCst) {
                    return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
                }
                Ok(())
            })
        };
        let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..WalConfig::default() };
        let manager = crate::LibsqlWalManager::new(Arc::new(io), config);
        let conn = crate::open_connection(&db, &manager).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        out_of_descriptors.store(true, Ordering::SeqCst);
        // Seals and drops segments: both sync the log directory.
        let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        assert!(!matches!(checkpoint, Ok(0)), "the checkpoint synced a directory it could not open");
        out_of_descriptors.store(false, Ordering::SeqCst);
        conn.execute("INSERT INTO t VALUES (2)", []).expect("refused after a sync that never ran");
        let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn a_seal_after_shutdown_leaves_the_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (db, segment) = log_with_unsealed_tail(dir.path());
        let db = std::fs::canonicalize(db).unwrap();
        let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..WalConfig::default() };
        let wal = SharedWal::open(StdIo::shared(), &db, config, None).unwrap();
        let len = std::fs::metadata(&segment).unwrap().len();
        // What the ticker does with a reference it took before the log was closed.
        wal.shutdown(false);
        assert!(!wal.seal_if_older_than(Duration::ZERO).unwrap(), "sealed a closed log");
        assert!(!wal.seal_current(CheckpointMode::Full, &mut || false).unwrap());
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), len, "a closed log wrote to its segment");
        assert!(!Segment::recover(&StdIo, &segment, false).unwrap().is_sealed());
    }
}
