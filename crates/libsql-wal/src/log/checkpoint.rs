//! The checkpoint: select the sealed segments no reader and no upload still needs (a prefix
//! of the log: [`SegmentList::checkpointable`]), copy the newest version of each of their
//! pages into the database file, sync, write the checkpoint mark, sync, then drop the
//! segments. One checkpoint at a time per log (`SharedWal::checkpoint_lock`). The
//! invariant it owns: the database file's mark never says a frame is in the file before
//! the pages that frame vouches for are durable there.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, DB_HEADER_MARK_OFFSET, DB_HEADER_MARK_SIZE, PAGE_SIZE};
use crate::instruments::{self, Synced};
use crate::io::Io;
use crate::log::db_file::DbFile;
use crate::log::segments::{Blocker, SegmentList};
use crate::log::{SharedWal, lock};
use crate::segment::SegmentRef;

/// Sees each page a checkpoint copies: (page_no, page, frame_no it came from).
pub(crate) type PageVisitor<'a> = dyn FnMut(u32, &[u8], u64) -> Result<()> + 'a;

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

/// Failed background checkpoints of one log (`info` shows them). Changed by the
/// checkpointer's worker only, read by anyone; the mutex is taken last, alone.
#[derive(Default)]
pub(crate) struct CheckpointErrors {
    count: std::sync::atomic::AtomicU64,
    last: Mutex<Option<String>>,
}

impl CheckpointErrors {
    pub fn record(&self, error: &Error) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *lock(&self.last) = Some(error.to_string());
    }

    pub fn get(&self) -> (u64, Option<String>) {
        (self.count.load(std::sync::atomic::Ordering::SeqCst), lock(&self.last).clone())
    }
}

impl SharedWal {
    /// Copies sealed segments into the database file, oldest first, as far as open
    /// snapshots allow; see [`CheckpointMode`] for waiting. `busy` is asked whether to retry
    /// when a writer or reader is in the way; `on_page` sees every page copied.
    pub fn checkpoint(
        &self,
        mode: CheckpointMode,
        busy: &mut dyn FnMut() -> bool,
        on_page: &mut PageVisitor<'_>,
    ) -> Result<CheckpointResult> {
        self.checkpoint_unmetered(mode, busy, on_page)
            .inspect_err(|_| instruments::get().checkpoint_errors.increment(1))
    }

    fn checkpoint_unmetered(
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
            blocked = self.parts.segments.newest().is_some_and(|s| !s.is_sealed() && s.committed_frames() > 0);
        } else {
            blocked |= !self.seal_current(mode, busy)?;
        }
        blocked |= self.copy_ready_segments(mode, busy, on_page)?;
        if mode == CheckpointMode::Truncate && !blocked {
            self.remove_empty_current()?;
            self.parts.transactions.restart_log_counts_now();
        }
        let (log_frames, checkpointed_frames) = self.parts.transactions.finish_foreground_checkpoint();
        Ok(CheckpointResult { busy: blocked, log_frames, checkpointed_frames })
    }

    /// The background checkpoint: copies what is already sealed, never waits, never takes
    /// the write lock.
    pub fn checkpoint_sealed(&self) -> Result<()> {
        self.checkpoint_sealed_unmetered().inspect_err(|_| instruments::get().checkpoint_errors.increment(1))
    }

    fn checkpoint_sealed_unmetered(&self) -> Result<()> {
        let _guard = lock(&self.checkpoint_lock);
        if self.parts.lifecycle.is_closed() {
            return Ok(());
        }
        // Full segments the writer left behind (background seals): under the checkpoint
        // lock, so never after `shutdown` has handed the files on.
        self.seal_in_order(false)?;
        self.copy_ready_segments(CheckpointMode::Passive, &mut || false, &mut |_, _, _| Ok(())).map(|_| ())
    }

    /// Is a checkpoint copying (or about to) right now? Shutting the log down would wait for it.
    pub fn is_checkpointing(&self) -> bool {
        matches!(self.checkpoint_lock.try_lock(), Err(std::sync::TryLockError::WouldBlock))
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
            let durable = self.durability.as_ref().map_or(u64::MAX, |d| d.gate_frame_no());
            // A replica streaming the log reads it as a reader does: its frames stay.
            let oldest_reader = self.parts.transactions.oldest_reader().min(self.replication.floor());
            let (ready, blocker) = self.parts.segments.checkpointable(oldest_reader, durable);
            if !ready.is_empty() {
                self.check_writable()?;
                let started = std::time::Instant::now();
                let (frame_no, chain) =
                    self.watch(copy_segments(&self.parts.db, &ready, self.parts.lineage, on_page))?;
                stamp_file_time(self.io.as_ref(), &self.parts.db, ready.last().expect("non-empty"));
                self.parts.transactions.set_checkpointed(frame_no, chain);
                self.watch(drop_segments(self.io.as_ref(), &self.log_dir, &self.parts.segments, &ready))?;
                let metrics = instruments::get();
                metrics.checkpoints.increment(1);
                metrics.checkpointed_frames.increment(ready.iter().map(|s| s.committed_frames() as u64).sum());
                metrics.checkpoint_duration.record(started.elapsed().as_secs_f64());
            }
            let give_up = match blocker {
                Blocker::None => return Ok(false),
                _ if mode == CheckpointMode::Passive => true,
                _ => !busy(),
            };
            if give_up {
                if blocker == Blocker::Reader {
                    self.parts.transactions.note_held_back_by_readers();
                }
                // Not durable yet: the upload that makes it durable notifies the checkpointer.
                return Ok(true);
            }
        }
    }

    /// Is some sealed segment still waiting to be uploaded?
    fn uploads_pending(&self) -> bool {
        let Some(durability) = &self.durability else { return false };
        self.parts.segments.sealed_past(durability.gate_frame_no())
    }

    /// After a truncate checkpoint: no segment file at all, if the writer lets us.
    fn remove_empty_current(&self) -> Result<()> {
        if !self.parts.transactions.try_begin_checkpoint_write(|| false) {
            return Ok(());
        }
        let result = match self.parts.segments.take_empty_current() {
            Some(segment) => segment.remove(self.io.as_ref()).and_then(|()| sync_dir(self.io.as_ref(), &self.log_dir)),
            None => Ok(()),
        };
        self.parts.transactions.end_write(crate::log::transactions::CHECKPOINT_WRITER_ID);
        result
    }
}

/// Stamps the database file's modification time for its new mark (`file_stamp`: the next
/// open can tell whether anything else wrote the file since), at or past `newest`'s last
/// commit: once the log is emptied, that time is where the next open starts commit times
/// from (`commit_clock_floor`), and the write that just copied `newest` set it to the
/// clock's time, which is before that commit if the clock stepped back since.
/// Best effort: on failure the floor is only lower and the next open sees a change that
/// was not one (and logs the file again); the checkpoint itself succeeded.
fn stamp_file_time(io: &dyn Io, db: &DbFile, newest: &SegmentRef) {
    let stamped = db.read_mark_bytes().and_then(|mark| {
        crate::file_stamp::stamp(io, &db.path, &mark, newest.committed_unix_ms())
            .map_err(Error::io(IoAction::SetTime, &db.path))
    });
    if let Err(e) = stamped {
        tracing::warn!(db = %db.path.display(), "could not stamp the file's time after a checkpoint: {e}");
    }
}

fn sync_dir(io: &dyn Io, dir: &Path) -> Result<()> {
    instruments::synced(Synced::Directory);
    io.sync_dir(dir).map_err(Error::io(IoAction::Sync, dir))
}

/// Writes the newest version of every page of `segments` (oldest first) into the
/// database file, fixes its size, syncs, then writes and syncs the mark. Returns the new
/// checkpointed frame_no and its chain value.
fn copy_segments(
    db: &DbFile,
    segments: &[SegmentRef],
    lineage: u32,
    on_page: &mut PageVisitor<'_>,
) -> Result<(u64, u32)> {
    let newest = segments.last().expect("non-empty");
    // page_no → (segment, position) of its newest frame: older versions are not copied.
    let mut pages: BTreeMap<u32, (usize, u32)> = BTreeMap::new();
    for (i, segment) in segments.iter().enumerate() {
        for (page_no, pos) in segment.latest_pages() {
            pages.insert(page_no, (i, pos));
        }
    }
    let db_size = newest.committed_size_after();
    let durable_mark = db.read_mark_bytes()?;
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
        db.write(&run_pages, (run.first_page_no as u64 - 1) * PAGE_SIZE as u64)?;
    }
    db.set_len(db_size as u64 * PAGE_SIZE as u64)?;
    db.sync()?;
    // Only now that the pages are durable may the mark say they are there.
    let frame_no = newest.last_committed_frame_no();
    let chain = newest.end_chain();
    let mark = CheckpointMark { frame_no, db_pages: db_size, lineage, chain };
    let mark_bytes = mark.encode().ok_or_else(|| {
        Error::corrupt(&db.path, format!("frame_no {frame_no} is past what a checkpoint mark holds (2^48)"))
    })?;
    db.write(&mark_bytes, DB_HEADER_MARK_OFFSET)?;
    db.sync()?;
    Ok((frame_no, chain))
}

/// Forgets checkpointed segments and removes their files. Whatever a crash leaves of
/// them is at or below the checkpoint mark, and recovery removes it.
fn drop_segments(io: &dyn Io, log_dir: &Path, list: &SegmentList, done: &[SegmentRef]) -> Result<()> {
    list.remove(done);
    for segment in done {
        segment.remove(io)?;
    }
    sync_dir(io, log_dir)
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
