//! [`Transactions`]: who reads which snapshot, who holds the write lock, and where the last
//! commit and the last checkpoint are. The invariant it owns: a snapshot, once registered,
//! stays readable (the checkpoint asks [`Transactions::oldest_reader`] before it copies
//! anything past it), and commits move forward one writer at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};

/// What a read transaction sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// frame_no of the last commit frame visible (0: nothing ever committed).
    pub frame_no: u64,
    /// Database size in pages.
    pub db_size: u32,
}

/// A frame count for SQLite's 32-bit counters: past `u32::MAX` it stays there instead of
/// wrapping to a small number (which would tell SQLite the log is nearly empty).
pub(crate) fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The write lock owner used by a checkpoint or shutdown that seals the current segment.
pub(crate) const CHECKPOINT_WRITER_ID: u64 = u64::MAX;

/// Where commits and checkpoints are, and the open snapshots. All fields under
/// `Transactions::commit`, a short mutex never held across I/O.
struct CommitState {
    /// The last commit. Moved forward only by the writer holding the write lock, after its
    /// frames are written (and synced under FULL): `publish_commit`.
    last: Snapshot,
    /// snapshot frame_no → number of open read transactions on it. Added to by
    /// `begin_read` (at `last`, so never below a checkpoint's view) and removed by `end_read`.
    readers: BTreeMap<u64, usize>,
    /// Every frame up to this one is in the database file. Moved forward only by the
    /// checkpoint, once the pages and the mark are synced (`set_checkpointed`).
    checkpointed_frame_no: u64,
    /// The chain value at `checkpointed_frame_no` (what the database file's mark holds):
    /// the first segment after an emptied log continues from it.
    checkpointed_chain: u32,
    /// Where the log "restarted" in SQLite's terms: the frame counts that
    /// `PRAGMA wal_checkpoint` reports count from here, as SQLite's own WAL would. Moved
    /// forward by a writer starting on a fully checkpointed log, and by TRUNCATE.
    restart_frame_no: u64,
    /// How far the last checkpoint *SQLite asked for* got. SQLite restarts its log only
    /// after one of its own checkpoints; background checkpoints leave its counts alone.
    foreground_checkpointed_frame_no: u64,
}

/// See the module documentation.
pub(crate) struct Transactions {
    commit: Mutex<CommitState>,
    /// The id of the connection holding the write lock (or `CHECKPOINT_WRITER_ID`). Taken
    /// without waiting (`begin_write`): SQLite's busy handler does the waiting. Released by
    /// its holder only. Taken before `commit` when both are held, never after.
    writer: Mutex<Option<u64>>,
    next_connection_id: AtomicU64,
    /// A checkpoint left sealed segments behind for an open reader: set by the checkpoint,
    /// cleared by the next reader to finish, which then asks for another.
    held_back_by_readers: AtomicBool,
    /// The latest commit time handed out (ms since the epoch): commit times never go back,
    /// even when the system clock does. Starts at what recovery found (see
    /// `SharedWal::open`); moved only by the writer holding the write lock.
    commit_clock: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transactions {
    /// The state of a log recovered up to `last`, with everything up to
    /// `checkpointed_frame_no` (chain value `checkpointed_chain`) in the database file.
    /// Commit times start at `commit_clock_floor` at the earliest.
    pub fn new(
        last: Snapshot,
        checkpointed_frame_no: u64,
        checkpointed_chain: u32,
        commit_clock_floor: u64,
    ) -> Transactions {
        Transactions {
            commit: Mutex::new(CommitState {
                last,
                readers: BTreeMap::new(),
                checkpointed_frame_no,
                checkpointed_chain,
                restart_frame_no: checkpointed_frame_no,
                foreground_checkpointed_frame_no: checkpointed_frame_no,
            }),
            writer: Mutex::new(None),
            next_connection_id: AtomicU64::new(1),
            held_back_by_readers: AtomicBool::new(false),
            commit_clock: AtomicU64::new(commit_clock_floor),
        }
    }

    /// The time to record on a commit made now (`now_ms`, the system clock): never before
    /// the previous commit's, so a clock stepped back cannot make history run backwards
    /// (a point-in-time restore by timestamp relies on commit times in frame order).
    pub fn commit_time(&self, now_ms: u64) -> u64 {
        self.commit_clock.fetch_max(now_ms, Ordering::Relaxed).max(now_ms)
    }

    pub fn new_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn last_commit(&self) -> Snapshot {
        lock(&self.commit).last
    }

    /// The checkpointed frame_no and the chain value there (a snapshot's base).
    pub fn checkpointed(&self) -> (u64, u32) {
        let commit = lock(&self.commit);
        (commit.checkpointed_frame_no, commit.checkpointed_chain)
    }

    /// The checkpoint made everything up to `frame_no` (chain value `chain`) durable in
    /// the database file.
    pub fn set_checkpointed(&self, frame_no: u64, chain: u32) {
        let mut commit = lock(&self.commit);
        commit.checkpointed_frame_no = frame_no;
        commit.checkpointed_chain = chain;
    }

    /// The oldest open snapshot's frame_no (`u64::MAX`: none open).
    pub fn oldest_reader(&self) -> u64 {
        lock(&self.commit).readers.keys().next().copied().unwrap_or(u64::MAX)
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

    /// Ends a read transaction. Returns true when a checkpoint was held back by readers
    /// and should be asked for again.
    pub fn end_read(&self, snapshot: Snapshot) -> bool {
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
        self.held_back_by_readers.load(Ordering::Relaxed) && self.held_back_by_readers.swap(false, Ordering::SeqCst)
    }

    /// A checkpoint stopped before a segment an open reader still needs.
    pub fn note_held_back_by_readers(&self) {
        self.held_back_by_readers.store(true, Ordering::SeqCst);
    }

    /// Moves a connection's registered snapshot to a newer one (the writer after its commit).
    pub fn move_reader(&self, from: Snapshot, to: Snapshot) -> bool {
        let held_back = self.end_read(from);
        let mut commit = lock(&self.commit);
        *commit.readers.entry(to.frame_no).or_default() += 1;
        held_back
    }

    /// Takes the write lock for a connection whose snapshot is `snapshot`, without waiting.
    pub fn begin_write(&self, connection_id: u64, snapshot: Snapshot) -> Result<()> {
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

    /// Takes the write lock for the checkpoint if nobody holds it (and `refuse()` is false,
    /// asked under the writer mutex). Returns whether it was taken.
    pub fn try_begin_checkpoint_write(&self, refuse: impl FnOnce() -> bool) -> bool {
        let mut writer = lock(&self.writer);
        if writer.is_some() || refuse() {
            return false;
        }
        *writer = Some(CHECKPOINT_WRITER_ID);
        true
    }

    pub fn end_write(&self, connection_id: u64) {
        let mut writer = lock(&self.writer);
        if *writer == Some(connection_id) {
            *writer = None;
        }
    }

    /// Runs `f` under the writer mutex once nobody holds the write lock: what `f` sets is
    /// seen by every later writer, and no writer is midway meanwhile.
    pub fn when_no_writer(&self, f: impl FnOnce()) {
        loop {
            let writer = lock(&self.writer);
            if writer.is_none() {
                f();
                return;
            }
            drop(writer);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Publishes a commit written (and synced if asked) by the writer. Write lock held.
    pub fn publish_commit(&self, snapshot: Snapshot) {
        let mut commit = lock(&self.commit);
        assert!(snapshot.frame_no > commit.last.frame_no, "commit does not move forward");
        commit.last = snapshot;
    }

    /// SQLite restarts its log when a writer starts on a fully checkpointed log; our frame
    /// numbers never restart, but the counts we report must, to say what SQLite says.
    pub fn restart_log_counts(&self) {
        let mut commit = lock(&self.commit);
        if commit.foreground_checkpointed_frame_no == commit.last.frame_no {
            commit.restart_frame_no = commit.last.frame_no;
        }
    }

    /// After a TRUNCATE checkpoint that emptied the log: counts start again from here.
    pub fn restart_log_counts_now(&self) {
        let mut commit = lock(&self.commit);
        commit.restart_frame_no = commit.last.frame_no;
    }

    /// Frames in the log since the last restart, as SQLite would count them.
    pub fn log_frames(&self) -> u32 {
        let commit = lock(&self.commit);
        saturating_u32(commit.last.frame_no - commit.restart_frame_no)
    }

    /// At the end of a checkpoint SQLite asked for: its counts (log frames, and of those
    /// checkpointed) from the last restart.
    pub fn finish_foreground_checkpoint(&self) -> (u32, u32) {
        let mut commit = lock(&self.commit);
        commit.foreground_checkpointed_frame_no = commit.checkpointed_frame_no;
        (
            saturating_u32(commit.last.frame_no - commit.restart_frame_no),
            saturating_u32(commit.checkpointed_frame_no.saturating_sub(commit.restart_frame_no)),
        )
    }

    /// Registers an open snapshot at `frame_no` (tests: a reader that holds a checkpoint back).
    #[cfg(test)]
    pub fn add_reader(&self, frame_no: u64) {
        *lock(&self.commit).readers.entry(frame_no).or_default() += 1;
    }
}
