//! [`SharedWal`]: the one log of one database in this process, shared by all its connections.
//!
//! Shared state and who may change it:
//! - `segments` (newest first; `[0]` is the current segment unless it is sealed or the list
//!   is empty): appended to by the writer; a segment is pushed at the front by a swap (under
//!   the write lock) and dropped from the back by a checkpoint (under `checkpoint_lock`).
//! - `commit.last`: the last commit (frame_no, database size). Moved forward only by the
//!   writer holding the write lock, after its frames are written (and synced under FULL).
//! - `commit.readers`: open snapshots, by frame_no. A checkpoint never copies a segment
//!   whose last frame is newer than the oldest open snapshot (invariant 5).
//! - `writer`: the id of the connection holding the write lock. Taken without waiting:
//!   SQLite's busy handler does the waiting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use crate::checkpointer::Checkpointer;
use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, DB_HEADER_MARK_OFFSET, DB_HEADER_MARK_SIZE, PAGE_SIZE};
use crate::io::{Io, IoFile};
use crate::ownership;
use crate::recovery::{carry_out, check_db_file_length, last_commit, plan_recovery};
use crate::segment::{Segment, SegmentRef};
use crate::storage::durability::{Durability, StorageBinding};

/// Sees each page a checkpoint copies: (page_no, page, frame_no it came from).
pub(crate) type PageVisitor<'a> = dyn FnMut(u32, &[u8], u64) -> Result<()> + 'a;

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

/// What a read transaction sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// frame_no of the last commit frame visible (0: nothing ever committed).
    pub frame_no: u64,
    /// Database size in pages.
    pub db_size: u32,
}

struct CommitState {
    last: Snapshot,
    /// snapshot frame_no → number of open read transactions on it.
    readers: BTreeMap<u64, usize>,
    /// Every frame up to this one is in the database file.
    checkpointed_frame_no: u64,
    /// The chain value at `checkpointed_frame_no` (what the database file's mark holds):
    /// the first segment after an emptied log continues from it.
    checkpointed_chain: u32,
    /// Where the log "restarted" in SQLite's terms: the frame counts that
    /// `PRAGMA wal_checkpoint` reports count from here, as SQLite's own WAL would.
    restart_frame_no: u64,
    /// How far the last checkpoint *SQLite asked for* got. SQLite restarts its log only
    /// after one of its own checkpoints; background checkpoints leave its counts alone.
    foreground_checkpointed_frame_no: u64,
}

/// What keeps a sealed segment out of the database file for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocker {
    None,
    /// An open snapshot older than the segment's end (invariant 5).
    Reader,
    /// The segment is not durable yet (invariant 7).
    Storage,
}

/// The write lock owner used by a checkpoint that seals the current segment.
const CHECKPOINT_WRITER_ID: u64 = u64::MAX;

pub(crate) struct SharedWal {
    pub db_path: PathBuf,
    pub log_dir: PathBuf,
    pub(crate) io: Arc<dyn Io>,
    pub config: WalConfig,
    db_file: Box<dyn IoFile>,
    lock_file: Mutex<Option<Box<dyn IoFile>>>,
    segments: RwLock<Vec<SegmentRef>>,
    /// The history this log belongs to (see `format::SegmentHeader::lineage`): fixed at
    /// open, from the segments, the database file's mark, or new for a new history.
    lineage: u32,
    commit: Mutex<CommitState>,
    writer: Mutex<Option<u64>>,
    checkpoint_lock: Mutex<()>,
    next_connection_id: AtomicU64,
    pub(crate) open_connections: AtomicUsize,
    /// The background checkpointer this log is registered with, if any, and the id it
    /// knows the log by.
    checkpointer: Mutex<Option<(Checkpointer, crate::checkpointer::LogId)>>,
    /// A checkpoint left sealed segments behind for an open reader: the next reader to
    /// finish asks for another.
    held_back_by_readers: AtomicBool,
    checkpoint_errors: AtomicU64,
    last_checkpoint_error: Mutex<Option<String>>,
    /// Set by `shutdown` (`mark_closed`): a background checkpoint or an age-based seal that
    /// started late finds nothing to do and leaves the files, which another log may own by
    /// then, alone.
    closed: AtomicBool,
    /// The durable frame_no and its uploads, when storage is (or once was) configured.
    durability: Option<Arc<Durability>>,
    /// Set (once, never cleared) when a sync of a segment, the log directory or the database
    /// file failed: after a failed fsync the kernel may have dropped the dirty pages, so
    /// nobody knows what is on disk (PostgreSQL's lesson). From then on the log refuses
    /// writes, seals and checkpoints; reads go on. Only a new log (recovery) clears it.
    sync_failure: Mutex<Option<String>>,
    /// Set once by the registry: lets `&self` methods start tasks that outlive the call.
    this: OnceLock<Weak<SharedWal>>,
}

/// Checkpoint modes, as SQLite names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointMode {
    /// Copy what no reader needs; never wait.
    Passive,
    /// Wait (through the busy handler) for the writer and for readers, then copy everything.
    Full,
    /// As `Full`; SQLite's log restart has no separate meaning for segments.
    Restart,
    /// As `Full`, then remove every segment file.
    Truncate,
}

/// What a checkpoint reports, in SQLite's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    /// Not everything could be checkpointed: a writer or reader was in the way.
    pub busy: bool,
    /// Frames in the log (since SQLite's notion of the last log restart).
    pub log_frames: u32,
    /// Of those, frames now in the database file.
    pub checkpointed_frames: u32,
}

/// A frame count for SQLite's 32-bit counters: past `u32::MAX` it stays there instead of
/// wrapping to a small number (which would tell SQLite the log is nearly empty).
pub(crate) fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let lock_file = ownership::take(io.as_ref(), db_path)?;
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
            let durability = Durability::open(&io, &log_dir, storage)?;
            Ok((segments, last, durability, lineage, chain))
        });
        let (segments, last, durability, lineage, checkpointed_chain) = match recovered {
            Ok(recovered) => recovered,
            Err(e) => {
                let _ = lock_file.unlock();
                return Err(e);
            }
        };
        let checkpointed_frame_no = segments.last().map_or(last.frame_no, |s| s.start_frame_no - 1);
        tracing::debug!(
            db = %db_path.display(),
            segments = segments.len(),
            last_frame_no = last.frame_no,
            "log recovered"
        );
        Ok(SharedWal {
            db_path: db_path.into(),
            log_dir,
            io,
            config,
            db_file,
            lock_file: Mutex::new(Some(lock_file)),
            segments: RwLock::new(segments),
            lineage,
            commit: Mutex::new(CommitState {
                last,
                readers: BTreeMap::new(),
                checkpointed_frame_no,
                checkpointed_chain,
                restart_frame_no: checkpointed_frame_no,
                foreground_checkpointed_frame_no: checkpointed_frame_no,
            }),
            writer: Mutex::new(None),
            checkpoint_lock: Mutex::new(()),
            next_connection_id: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            checkpointer: Mutex::new(None),
            held_back_by_readers: AtomicBool::new(false),
            checkpoint_errors: AtomicU64::new(0),
            last_checkpoint_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            durability,
            sync_failure: Mutex::new(None),
            this: OnceLock::new(),
        })
    }

    /// Called once by the registry right after the log is shared: starts its uploads (the
    /// sealed segments a previous process left unuploaded go first).
    pub fn start(self: &Arc<Self>) {
        let _ = self.this.set(Arc::downgrade(self));
        self.notify_uploader();
    }

    pub fn durability(&self) -> Option<&Arc<Durability>> {
        self.durability.as_ref()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The checkpointed frame_no and the chain value there (a snapshot's base).
    pub fn checkpointed(&self) -> (u64, u32) {
        let commit = lock(&self.commit);
        (commit.checkpointed_frame_no, commit.checkpointed_chain)
    }

    pub fn lineage(&self) -> u32 {
        self.lineage
    }

    /// The chain value at `frame_no`, if this log can still tell: the checkpointed frame, or
    /// a committed frame of one of its segments.
    pub fn chain_at(&self, frame_no: u64) -> Result<Option<u32>> {
        let (checkpointed, chain) = self.checkpointed();
        if frame_no == checkpointed {
            return Ok(Some(chain));
        }
        let segments = self.segments();
        let holder = segments.iter().find(|s| s.start_frame_no <= frame_no && frame_no <= s.last_committed_frame_no());
        holder.map(|s| s.chain_at(frame_no)).transpose()
    }

    /// Reads from the database file (for snapshots: the caller keeps it from changing).
    pub fn read_db_file(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.db_file.read_exact_at(buf, offset).map_err(Error::io(IoAction::Read, &self.db_path))
    }

    /// A segment was sealed (or the log opened): upload what is not durable yet.
    fn notify_uploader(&self) {
        if let (Some(durability), Some(this)) = (&self.durability, self.this.get().and_then(Weak::upgrade)) {
            durability.schedule(&this);
        }
    }

    pub fn new_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn last_commit(&self) -> Snapshot {
        lock(&self.commit).last
    }

    /// Opens a snapshot at the last commit and registers it, atomically with respect to
    /// checkpoints (which read the registrations under the same lock). Also says whether the
    /// log is fully checkpointed by SQLite's own checkpoints (`foreground_checkpointed_frame_no`),
    /// read under the same lock (SQLite restarts its log only after one of its own checkpoints
    /// copied everything): one lock per read transaction, not two (every statement
    /// outside a transaction is one).
    pub fn begin_read(&self) -> (Snapshot, bool) {
        let mut commit = lock(&self.commit);
        let snapshot = commit.last;
        let restartable = commit.foreground_checkpointed_frame_no == commit.last.frame_no;
        *commit.readers.entry(snapshot.frame_no).or_default() += 1;
        (snapshot, restartable)
    }

    pub fn end_read(&self, snapshot: Snapshot) {
        let mut commit = lock(&self.commit);
        if let Some(count) = commit.readers.get_mut(&snapshot.frame_no) {
            *count -= 1;
            if *count == 0 {
                commit.readers.remove(&snapshot.frame_no);
            }
        }
        drop(commit);
        // Load first: a swap on every read transaction would bounce the cache line between
        // the readers' cores for a flag that is almost always false.
        if self.held_back_by_readers.load(Ordering::Relaxed) && self.held_back_by_readers.swap(false, Ordering::SeqCst)
        {
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
        let mut slot = lock(&self.checkpointer);
        if let Some(id) = checkpointer.register(self) {
            *slot = Some((checkpointer.clone(), id));
        }
    }

    /// Is a background checkpointer sealing and checkpointing this log? Not once it has
    /// been shut down: then full segments are sealed on the commit path and SQLite's
    /// autocheckpoint runs again, or the log would grow without bound.
    pub fn has_checkpointer(&self) -> bool {
        lock(&self.checkpointer).as_ref().is_some_and(|(c, _)| !c.is_stopped())
    }

    pub(crate) fn notify_checkpointer(&self) {
        if let Some((checkpointer, id)) = lock(&self.checkpointer).as_ref() {
            checkpointer.notify(*id);
        }
    }

    pub fn record_checkpoint_error(&self, error: &Error) {
        self.checkpoint_errors.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last_checkpoint_error) = Some(error.to_string());
    }

    /// Failed background checkpoints so far, and the last failure.
    pub fn checkpoint_errors(&self) -> (u64, Option<String>) {
        (self.checkpoint_errors.load(Ordering::SeqCst), lock(&self.last_checkpoint_error).clone())
    }

    /// Records a failed sync, if `result` is one: the log then refuses writes for good.
    pub fn watch<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && e.is_failed_sync()
        {
            let mut failure = lock(&self.sync_failure);
            if failure.is_none() {
                tracing::error!(db = %self.db_path.display(), "{e}: the log refuses writes until it is reopened");
                *failure = Some(e.to_string());
            }
        }
        result
    }

    /// Refuses when an earlier sync failed (see `sync_failure`).
    fn check_writable(&self) -> Result<()> {
        match lock(&self.sync_failure).as_ref() {
            Some(reason) => Err(Error::SyncFailed { path: self.db_path.clone(), reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Takes the write lock for a connection whose snapshot is `snapshot`, without waiting.
    pub fn begin_write(&self, connection_id: u64, snapshot: Snapshot) -> Result<()> {
        self.check_writable()?;
        let mut writer = lock(&self.writer);
        match *writer {
            Some(id) if id == connection_id => return Ok(()),
            Some(_) => return Err(Error::Busy),
            None => {}
        }
        // Nobody commits without the write lock, which we now hold: this check cannot race.
        if lock(&self.commit).last.frame_no != snapshot.frame_no {
            return Err(Error::BusySnapshot);
        }
        *writer = Some(connection_id);
        Ok(())
    }

    pub fn end_write(&self, connection_id: u64) {
        let mut writer = lock(&self.writer);
        if *writer == Some(connection_id) {
            *writer = None;
        }
    }

    /// SQLite restarts its log when a writer starts on a fully checkpointed log; our frame
    /// numbers never restart, but the counts we report must, to say what SQLite says.
    pub fn restart_log_counts(&self) {
        let mut commit = lock(&self.commit);
        if commit.foreground_checkpointed_frame_no == commit.last.frame_no {
            commit.restart_frame_no = commit.last.frame_no;
        }
    }

    /// Frames in the log since the last restart, as SQLite would count them.
    pub fn log_frames(&self) -> u32 {
        let commit = lock(&self.commit);
        saturating_u32(commit.last.frame_no - commit.restart_frame_no)
    }

    /// The segment the writer appends to, created (or swapped in) if needed. Write lock held.
    pub fn current_segment_for_write(&self) -> Result<SegmentRef> {
        let current = self.segments.read().unwrap_or_else(|e| e.into_inner()).first().cloned();
        if let Some(current) = current
            && !current.is_sealed()
        {
            if !self.is_full(&current) {
                return Ok(current);
            }
            if !self.seals_in_background() {
                // A seal that failed after an earlier commit: retry it now, or keep appending.
                if let Err(e) = self.seal_in_order(true) {
                    // Gone with its directory (removed from outside): appending to the
                    // unlinked file would acknowledge commits no reopen can find.
                    if !matches!(self.io.kind(&self.log_dir), Ok(Some(crate::io::FileKind::Dir))) {
                        return Err(e);
                    }
                    tracing::error!("sealing segment {} failed again: {e}", current.path.display());
                    return Ok(current);
                }
            }
        }
        let (next_frame_no, prev_chain) = {
            let commit = lock(&self.commit);
            let newest = self.segments.read().unwrap_or_else(|e| e.into_inner()).first().map(|s| s.end_chain());
            (commit.last.frame_no + 1, newest.unwrap_or(commit.checkpointed_chain))
        };
        let segment =
            Arc::new(Segment::create(self.io.as_ref(), &self.log_dir, next_frame_no, self.lineage, prev_chain)?);
        self.segments.write().unwrap_or_else(|e| e.into_inner()).insert(0, segment.clone());
        Ok(segment)
    }

    /// Are full segments sealed off the commit path? With a background checkpointer, its
    /// workers seal them (`checkpoint_sealed`); with `defer_seals` alone, the next checkpoint
    /// or open does. A full segment is then never written again: the next transaction
    /// starts a new one.
    fn seals_in_background(&self) -> bool {
        self.config.defer_seals || self.has_checkpointer()
    }

    /// May `segment` (at `position` in the newest-first list) be sealed without the write
    /// lock? Yes when nothing will append to it again: it is not the newest, or it is full
    /// and seals happen in the background (see `current_segment_for_write`).
    fn is_frozen(&self, position: usize, segment: &Segment) -> bool {
        position > 0 || (self.seals_in_background() && self.is_full(segment))
    }

    /// Has `segment` reached the size threshold? (A threshold of 0 counts as 1: a segment
    /// is never full, nor sealed, without a commit.)
    fn is_full(&self, segment: &Segment) -> bool {
        segment.committed_frames() >= self.config.segment_frames_max.max(1)
    }

    /// Seals, oldest first, the unsealed segments nothing appends to any more, and the
    /// current one too if `current` (the caller holds the write lock then). Seals go in log
    /// order, so a sealed segment never follows an unsealed one: recovery relies on it (it
    /// may cut the log before an unsealed segment, never before a sealed one), and the
    /// checkpoint and the upload take a prefix of sealed segments. Returns whether any was
    /// sealed.
    fn seal_in_order(&self, current: bool) -> Result<bool> {
        self.check_writable()?;
        self.watch(self.seal_in_order_unwatched(current))
    }

    fn seal_in_order_unwatched(&self, current: bool) -> Result<bool> {
        let segments = self.segments();
        let to_seal: Vec<&SegmentRef> = segments
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, s)| !s.is_sealed())
            .take_while(|(position, s)| s.committed_frames() > 0 && (current || self.is_frozen(*position, s)))
            .map(|(_, s)| s)
            .collect();
        if to_seal.is_empty() {
            return Ok(false);
        }
        // One directory sync for all of them (each seal would otherwise sync it again).
        if to_seal.iter().any(|s| !s.entry_durable()) {
            self.sync_log_dir(&segments)?;
        }
        for segment in to_seal {
            segment.seal(self.io.as_ref())?;
        }
        self.notify_uploader();
        Ok(true)
    }

    /// Called before a synchronous (FULL) commit in `current` is synced: makes durable the
    /// frames of every older segment not yet sealed (NORMAL commits before it), and every
    /// segment's directory entry. Without this a power cut could keep the FULL commit but
    /// lose a commit before it, or the file holding it. Usually nothing to do: one pass
    /// over the list under its read lock.
    pub fn make_durable_through(&self, current: &Segment) -> Result<()> {
        self.watch(self.make_durable_through_unwatched(current))
    }

    fn make_durable_through_unwatched(&self, current: &Segment) -> Result<()> {
        let pending: Vec<SegmentRef> = {
            let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
            if segments.iter().all(|s| s.entry_durable() && (std::ptr::eq(s.as_ref(), current) || !s.frames_unsynced()))
            {
                return Ok(());
            }
            segments.clone()
        };
        for segment in pending.iter().rev().filter(|s| !std::ptr::eq(s.as_ref(), current)) {
            if segment.frames_unsynced() {
                segment.sync()?;
            }
        }
        if pending.iter().any(|s| !s.entry_durable()) {
            self.sync_log_dir(&pending)?;
        }
        Ok(())
    }

    /// Syncs the log directory: the names of `segments` (all created before) are durable.
    fn sync_log_dir(&self, segments: &[SegmentRef]) -> Result<()> {
        self.io.sync_dir(&self.log_dir).map_err(Error::io(IoAction::Sync, &self.log_dir))?;
        for segment in segments {
            segment.mark_entry_durable();
        }
        Ok(())
    }

    /// Publishes a commit written (and synced if asked) by the writer. Write lock held.
    pub fn publish_commit(&self, segment: &Segment) -> Snapshot {
        let snapshot =
            Snapshot { frame_no: segment.last_committed_frame_no(), db_size: segment.committed_size_after() };
        let mut commit = lock(&self.commit);
        assert!(snapshot.frame_no > commit.last.frame_no, "commit does not move forward");
        commit.last = snapshot;
        snapshot
    }

    /// Moves a connection's registered snapshot to a newer one (the writer after its commit).
    pub fn move_reader(&self, from: Snapshot, to: Snapshot) {
        self.end_read(from);
        let mut commit = lock(&self.commit);
        *commit.readers.entry(to.frame_no).or_default() += 1;
    }

    /// After a commit: if the current segment is past the size threshold, seals it (write
    /// lock held), or with background seals leaves that to the checkpointer: a seal syncs
    /// the whole segment, milliseconds a commit should not wait for.
    pub fn swap_if_full(&self, segment: &Segment) -> Result<()> {
        if !self.is_full(segment) {
            return Ok(());
        }
        if !self.seals_in_background() {
            self.seal_in_order(true)?;
        }
        self.notify_checkpointer();
        Ok(())
    }

    /// Seals the current segment if it holds commits and was created at least `age_max` ago,
    /// unless a writer holds the lock (then it is not quiet: try again later). The seal is
    /// short (index, trailer, one sync); the copy happens later, without the lock.
    pub fn seal_if_older_than(&self, age_max: Duration) -> Result<bool> {
        let Some(current) = self.segments.read().unwrap_or_else(|e| e.into_inner()).first().cloned() else {
            return Ok(false);
        };
        let now_ms = self.io.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let age = Duration::from_millis(now_ms.saturating_sub(current.created_unix_ms));
        if current.is_sealed() || current.committed_frames() == 0 || age < age_max {
            return Ok(false);
        }
        {
            let mut writer = lock(&self.writer);
            // Closed: the files may already belong to another log (see `mark_closed`).
            if writer.is_some() || self.is_closed() {
                return Ok(false);
            }
            *writer = Some(CHECKPOINT_WRITER_ID);
        }
        let result = self.seal_current_locked();
        self.end_write(CHECKPOINT_WRITER_ID);
        result.map(|()| true)
    }

    /// Finds the newest frame of `page_no` no newer than `max_frame_no`.
    pub fn find(&self, page_no: u32, max_frame_no: u64) -> Option<(SegmentRef, u32)> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments
            .iter()
            .filter(|s| s.start_frame_no <= max_frame_no)
            .find_map(|s| s.find(page_no, max_frame_no).map(|pos| (s.clone(), pos)))
    }

    /// Is a checkpoint copying (or about to) right now? Shutting the log down would wait for it.
    pub fn is_checkpointing(&self) -> bool {
        matches!(self.checkpoint_lock.try_lock(), Err(std::sync::TryLockError::WouldBlock))
    }

    /// The file descriptors this log holds: the database file, the ownership locks (the
    /// `lock` file and the database file's own lock handle), each segment.
    pub fn open_files(&self) -> usize {
        3 + self.segments.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// All segments, newest first.
    pub fn segments(&self) -> Vec<SegmentRef> {
        self.segments.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn db_file_len(&self) -> u64 {
        self.db_file.size().unwrap_or(0)
    }

    /// Copies sealed segments into the database file, oldest first, as far as open
    /// snapshots allow; see [`CheckpointMode`] for waiting. `busy` is asked whether to retry
    /// when a writer or reader is in the way; `on_page` sees every page copied.
    pub fn checkpoint(
        &self,
        mode: CheckpointMode,
        busy: &mut dyn FnMut() -> bool,
        on_page: &mut PageVisitor<'_>,
    ) -> Result<CheckpointResult> {
        let _guard = lock(&self.checkpoint_lock);
        // Full segments left for a background seal need no write lock: sealed in any mode.
        self.seal_in_order(false)?;
        let mut blocked = false;
        if self.durability.is_some() && (mode == CheckpointMode::Passive || self.uploads_pending()) {
            // With storage, sealing cannot let this checkpoint copy the current segment (it
            // is not durable yet), only cut it short; and SQLite's autocheckpoint (PASSIVE)
            // asks at every commit while the log is long, as it stays during an upload: a
            // seal each time would chop the log into tiny segments. Segments are sealed by
            // size, age, `flush_to_storage`, shutdown, or a FULL/RESTART/TRUNCATE
            // checkpoint with no upload pending.
            blocked = self.segments().first().is_some_and(|s| !s.is_sealed() && s.committed_frames() > 0);
        } else {
            blocked |= !self.seal_current(mode, busy)?;
        }
        blocked |= self.copy_ready_segments(mode, busy, on_page)?;
        if mode == CheckpointMode::Truncate && !blocked {
            self.remove_empty_current()?;
            let mut commit = lock(&self.commit);
            commit.restart_frame_no = commit.last.frame_no;
        }
        let mut commit = lock(&self.commit);
        commit.foreground_checkpointed_frame_no = commit.checkpointed_frame_no;
        Ok(CheckpointResult {
            busy: blocked,
            log_frames: saturating_u32(commit.last.frame_no - commit.restart_frame_no),
            checkpointed_frames: saturating_u32(commit.checkpointed_frame_no.saturating_sub(commit.restart_frame_no)),
        })
    }

    /// The background checkpoint: copies what is already sealed, never waits, never takes
    /// the write lock.
    pub fn checkpoint_sealed(&self) -> Result<()> {
        let _guard = lock(&self.checkpoint_lock);
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Full segments the writer left behind (background seals): under the checkpoint
        // lock, so never after `shutdown` has handed the files on.
        self.seal_in_order(false)?;
        self.copy_ready_segments(CheckpointMode::Passive, &mut || false, &mut |_, _, _| Ok(())).map(|_| ())
    }

    /// Copies and drops sealed segments as far as readers allow; in the waiting modes, asks
    /// `busy` while a reader holds some back. Returns whether some were left behind.
    fn copy_ready_segments(
        &self,
        mode: CheckpointMode,
        busy: &mut dyn FnMut() -> bool,
        on_page: &mut PageVisitor<'_>,
    ) -> Result<bool> {
        loop {
            let (ready, blocker) = self.checkpointable_segments();
            if !ready.is_empty() {
                self.check_writable()?;
                self.watch(self.copy_segments(&ready, on_page))?;
                self.watch(self.drop_segments(&ready))?;
            }
            let give_up = match blocker {
                Blocker::None => return Ok(false),
                _ if mode == CheckpointMode::Passive => true,
                _ => !busy(),
            };
            if give_up {
                if blocker == Blocker::Reader {
                    self.held_back_by_readers.store(true, Ordering::SeqCst);
                }
                // Not durable yet: the upload that makes it durable notifies the checkpointer.
                return Ok(true);
            }
        }
    }

    /// Seals the current segment so the checkpoint can take it. Returns false if a writer
    /// held the lock throughout (then the current segment stays as it is).
    fn seal_current(&self, mode: CheckpointMode, busy: &mut dyn FnMut() -> bool) -> Result<bool> {
        loop {
            {
                let mut writer = lock(&self.writer);
                if writer.is_none() {
                    if self.is_closed() {
                        return Ok(false);
                    }
                    *writer = Some(CHECKPOINT_WRITER_ID);
                    drop(writer);
                    let result = self.seal_current_locked();
                    self.end_write(CHECKPOINT_WRITER_ID);
                    return result.map(|()| true);
                }
            }
            if mode == CheckpointMode::Passive || !busy() {
                return Ok(false);
            }
        }
    }

    /// Is some sealed segment still waiting to be uploaded?
    fn uploads_pending(&self) -> bool {
        let Some(durability) = &self.durability else { return false };
        let durable = durability.gate_frame_no();
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments.iter().any(|s| s.is_sealed() && s.last_committed_frame_no() > durable)
    }

    /// Seals the current segment, waiting (until `deadline`, if any) for a writer to finish.
    /// Returns false if the deadline passed first.
    pub fn seal_current_waiting(&self, deadline: Option<std::time::Instant>) -> Result<bool> {
        self.seal_current(CheckpointMode::Full, &mut || {
            std::thread::sleep(Duration::from_millis(1));
            deadline.is_none_or(|d| std::time::Instant::now() < d)
        })
    }

    fn seal_current_locked(&self) -> Result<()> {
        self.seal_in_order(true).map(|_| ())
    }

    /// Sealed segments (oldest first) that may be copied now, and what holds back the next
    /// sealed one, if anything does.
    fn checkpointable_segments(&self) -> (Vec<SegmentRef>, Blocker) {
        let segments = self.segments();
        let oldest_reader = lock(&self.commit).readers.keys().next().copied().unwrap_or(u64::MAX);
        // Invariant 7: nothing leaves the log before storage has it.
        let durable = self.durability.as_ref().map_or(u64::MAX, |d| d.gate_frame_no());
        let mut ready = Vec::new();
        // A prefix of the log: seals go in order, and the current segment ends it.
        for segment in segments.iter().rev().take_while(|s| s.is_sealed()) {
            let end = segment.last_committed_frame_no();
            if end > durable {
                return (ready, Blocker::Storage);
            }
            // A reader older than the segment's end could still need an older version of
            // one of its pages from the database file (invariant 5).
            if end > oldest_reader {
                return (ready, Blocker::Reader);
            }
            ready.push(segment.clone());
        }
        (ready, Blocker::None)
    }

    /// Writes the newest version of every page of `segments` (oldest first) into the
    /// database file, fixes its size, syncs, then records the new checkpointed frame_no.
    fn copy_segments(&self, segments: &[SegmentRef], on_page: &mut PageVisitor<'_>) -> Result<()> {
        let newest = segments.last().expect("non-empty");
        // page_no → (segment, position) of its newest frame: older versions are not copied.
        let mut pages: BTreeMap<u32, (usize, u32)> = BTreeMap::new();
        for (i, segment) in segments.iter().enumerate() {
            for (page_no, pos) in segment.latest_pages() {
                pages.insert(page_no, (i, pos));
            }
        }
        let db_size = newest.committed_size_after();
        let durable_mark = self.read_mark_bytes()?;
        let (mut frames, mut run_pages) = (Vec::new(), Vec::new());
        for run in page_runs(pages.range(..=db_size).map(|(&page_no, &at)| (page_no, at))) {
            let segment = &segments[run.segment];
            run_pages.resize(run.len as usize * PAGE_SIZE, 0);
            segment.read_pages(run.position, &mut frames, &mut run_pages)?;
            for (i, page) in run_pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
                let (page_no, position) = (run.first_page_no + i as u32, run.position + i as u32);
                on_page(page_no, page, segment.start_frame_no + position as u64)?;
                if page_no == 1 {
                    // The log's page 1 holds whatever mark SQLite had cached: keep the durable
                    // one until the pages it would vouch for are durable too.
                    let at = DB_HEADER_MARK_OFFSET as usize;
                    page[at..at + DB_HEADER_MARK_SIZE].copy_from_slice(&durable_mark);
                }
            }
            let offset = (run.first_page_no as u64 - 1) * PAGE_SIZE as u64;
            self.db_file.write_all_at(&run_pages, offset).map_err(Error::io(IoAction::Write, &self.db_path))?;
        }
        let db_len = db_size as u64 * PAGE_SIZE as u64;
        self.db_file.set_len(db_len).map_err(Error::io(IoAction::Truncate, &self.db_path))?;
        self.db_file.sync_data().map_err(Error::io(IoAction::Sync, &self.db_path))?;
        // Only now that the pages are durable may the mark say they are there.
        let frame_no = newest.last_committed_frame_no();
        let chain = newest.end_chain();
        let mark = CheckpointMark { frame_no, db_pages: db_size, lineage: self.lineage, chain };
        let mark_bytes = mark.encode().ok_or_else(|| {
            Error::corrupt(&self.db_path, format!("frame_no {frame_no} is past what a checkpoint mark holds (2^48)"))
        })?;
        self.db_file
            .write_all_at(&mark_bytes, DB_HEADER_MARK_OFFSET)
            .map_err(Error::io(IoAction::Write, &self.db_path))?;
        self.db_file.sync_data().map_err(Error::io(IoAction::Sync, &self.db_path))?;
        let mut commit = lock(&self.commit);
        commit.checkpointed_frame_no = frame_no;
        commit.checkpointed_chain = chain;
        Ok(())
    }

    /// The mark bytes as the database file holds them now (zeros for a file too short).
    fn read_mark_bytes(&self) -> Result<[u8; DB_HEADER_MARK_SIZE]> {
        let mut bytes = [0u8; DB_HEADER_MARK_SIZE];
        if self.db_file.size().map_err(Error::io(IoAction::Read, &self.db_path))? >= 100 {
            self.db_file
                .read_exact_at(&mut bytes, DB_HEADER_MARK_OFFSET)
                .map_err(Error::io(IoAction::Read, &self.db_path))?;
        }
        Ok(bytes)
    }

    /// Forgets checkpointed segments and removes their files. Whatever a crash leaves of
    /// them is at or below the checkpoint mark, and recovery removes it.
    fn drop_segments(&self, done: &[SegmentRef]) -> Result<()> {
        self.segments.write().unwrap_or_else(|e| e.into_inner()).retain(|s| !done.iter().any(|d| Arc::ptr_eq(s, d)));
        for segment in done {
            segment.remove(self.io.as_ref())?;
        }
        self.io.sync_dir(&self.log_dir).map_err(Error::io(IoAction::Sync, &self.log_dir))
    }

    /// After a truncate checkpoint: no segment file at all, if the writer lets us.
    fn remove_empty_current(&self) -> Result<()> {
        let mut writer = lock(&self.writer);
        if writer.is_some() {
            return Ok(());
        }
        *writer = Some(CHECKPOINT_WRITER_ID);
        drop(writer);
        let removed = {
            let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
            if segments.len() == 1 && segments[0].committed_frames() == 0 && segments[0].frames() == 0 {
                segments.pop()
            } else {
                None
            }
        };
        let result = match removed {
            Some(segment) => segment
                .remove(self.io.as_ref())
                .and_then(|()| self.io.sync_dir(&self.log_dir).map_err(Error::io(IoAction::Sync, &self.log_dir))),
            None => Ok(()),
        };
        self.end_write(CHECKPOINT_WRITER_ID);
        result
    }

    /// Called when the last connection of the process closes it: checkpoint everything
    /// (if configured) and, once the log is empty, hand the file back to plain SQLite by
    /// removing the log directory.
    pub fn shutdown(&self, checkpoint: bool) {
        if let Some((checkpointer, id)) = lock(&self.checkpointer).take() {
            checkpointer.unregister(id);
        }
        if self.durability.as_ref().is_some_and(|d| d.binding().is_some()) {
            // A clean shutdown seals the tail so it can be uploaded (now, or by the next
            // process to open the log): storage never lacks more than a crash's tail.
            if let Err(e) = self.seal_current(CheckpointMode::Passive, &mut || false) {
                tracing::error!(db = %self.db_path.display(), "sealing the log on close failed: {e}");
            }
        }
        if checkpoint && self.config.checkpoint_on_close {
            let result = self.checkpoint(CheckpointMode::Truncate, &mut || false, &mut |_, _, _| Ok(()));
            if let Err(e) = result {
                tracing::error!(db = %self.db_path.display(), "checkpoint on close failed: {e}");
            }
        }
        // From here no checkpoint of ours may touch the files: another process may own
        // them as soon as the lock is released.
        let _guard = lock(&self.checkpoint_lock);
        self.mark_closed();
        let segments = self.segments();
        let log_empty = segments.is_empty();
        if let Some(current) = segments.first()
            && let Err(e) = current.trim_preallocation()
        {
            tracing::warn!(db = %self.db_path.display(), "could not give back the segment's preallocated zeros: {e}");
        }
        if let Some(durability) = &self.durability {
            durability.close(log_empty);
        }
        if log_empty {
            // No other process of ours can take the log meanwhile: our lock on the database
            // file refuses it until `release_lock` below. Files we did not create keep the
            // directory (`release` warns).
            if let Err(e) = ownership::release(self.io.as_ref(), &self.log_dir) {
                tracing::warn!(dir = %self.log_dir.display(), "could not remove the empty log directory: {e}");
            }
        }
        self.release_lock();
    }

    /// Sets `closed` once no seal holds the write lock, under the writer mutex: a seal started
    /// by the ticker (which holds the log without a connection) either finishes first or sees
    /// `closed` and leaves the files alone. Without this, a late seal could write its trailer
    /// into a segment that a reopened log (here or in another process) is appending to.
    fn mark_closed(&self) {
        loop {
            let writer = lock(&self.writer);
            if writer.is_none() {
                self.closed.store(true, Ordering::SeqCst);
                return;
            }
            drop(writer);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn release_lock(&self) {
        if let Some(file) = lock(&self.lock_file).take()
            && let Err(e) = file.unlock()
        {
            tracing::warn!(dir = %self.log_dir.display(), "could not unlock the log: {e}");
        }
    }
}

impl Drop for SharedWal {
    fn drop(&mut self) {
        self.release_lock();
    }
}

/// Consecutive pages whose newest frames are consecutive in one segment: read and written
/// with one call each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageRun {
    first_page_no: u32,
    segment: usize,
    position: u32,
    len: u32,
}

/// Frames per run at most: 128 KiB of pages per read and write. Runs of 256 (1 MiB) made
/// the commits running meanwhile slower (docs/BENCHMARKS.md).
const PAGE_RUN_MAX: u32 = 32;

/// Groups (page_no, (segment, position)) in page order into runs.
fn page_runs(pages: impl Iterator<Item = (u32, (usize, u32))>) -> impl Iterator<Item = PageRun> {
    let mut pages = pages.peekable();
    std::iter::from_fn(move || {
        let (first_page_no, (segment, position)) = pages.next()?;
        let mut run = PageRun { first_page_no, segment, position, len: 1 };
        while run.len < PAGE_RUN_MAX
            && pages
                .next_if(|&(page_no, (s, pos))| {
                    page_no == run.first_page_no + run.len && s == run.segment && pos == run.position + run.len
                })
                .is_some()
        {
            run.len += 1;
        }
        Some(run)
    })
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
                lock(&other.commit).readers.insert(middle, 1);
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
        let mark = ownership::read_db_header(wal.db_file.as_ref(), &db).unwrap().unwrap();
        assert_eq!(wal.checkpointed(), (mark.frame_no, mark.chain), "recovery started from the mark on disk now");
        wal.shutdown(false);
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

    #[test]
    fn page_runs_join_consecutive_pages_of_consecutive_frames_of_one_segment() {
        let pages = [
            (1, (0, 10)),
            (2, (0, 11)),
            (3, (0, 12)),
            (4, (1, 13)), // another segment
            (5, (1, 14)),
            (7, (1, 15)), // a page missing
            (8, (1, 3)),  // frames not in order
            (9, (1, 4)),
        ];
        let runs: Vec<(u32, usize, u32, u32)> =
            page_runs(pages.into_iter()).map(|r| (r.first_page_no, r.segment, r.position, r.len)).collect();
        assert_eq!(runs, [(1, 0, 10, 3), (4, 1, 13, 2), (7, 1, 15, 1), (8, 1, 3, 2)]);

        let long = (1..=600u32).map(|p| (p, (0, p)));
        let lens: Vec<u32> = page_runs(long).map(|r| r.len).collect();
        let full = (600 / PAGE_RUN_MAX) as usize;
        assert_eq!(lens.len(), full + 1);
        assert!(lens[..full].iter().all(|&l| l == PAGE_RUN_MAX));
        assert_eq!(lens[full], 600 % PAGE_RUN_MAX);
    }
}
