//! Seals and swaps: when the current segment is closed for good (index, trailer, sync) and
//! a new one starts. Seals go in log order ([`SegmentList::sealable`]), so the sealed
//! segments stay a prefix of the log. A full segment is sealed on the commit path unless
//! seals happen in the background (a checkpointer, or `defer_seals`); an old one by the
//! checkpointer's ticker (`seal_if_older_than`); the current one by a checkpoint that needs
//! it, and at shutdown.
//!
//! [`SegmentList::sealable`]: crate::log::segments::SegmentList::sealable

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::error::{Error, IoAction, Result};
use crate::log::SharedWal;
use crate::log::checkpoint::CheckpointMode;
use crate::log::transactions::CHECKPOINT_WRITER_ID;
use crate::segment::{Segment, SegmentRef};

impl SharedWal {
    /// The segment the writer appends to, created (or swapped in) if needed. Write lock held.
    pub fn current_segment_for_write(&self) -> Result<SegmentRef> {
        if let Some(current) = self.parts.segments.newest()
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
        let next_frame_no = self.parts.transactions.last_commit().frame_no + 1;
        let prev_chain =
            self.parts.segments.newest_end_chain().unwrap_or_else(|| self.parts.transactions.checkpointed().1);
        let segment =
            Arc::new(Segment::create(self.io.as_ref(), &self.log_dir, next_frame_no, self.parts.lineage, prev_chain)?);
        self.parts.segments.push_current(segment.clone());
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
    /// current one too if `current` (the caller holds the write lock then). Returns whether
    /// any was sealed.
    pub(super) fn seal_in_order(&self, current: bool) -> Result<bool> {
        self.check_writable()?;
        self.watch(self.seal_in_order_unwatched(current))
    }

    fn seal_in_order_unwatched(&self, current: bool) -> Result<bool> {
        let to_seal = self.parts.segments.sealable(|position, s| current || self.is_frozen(position, s));
        if to_seal.is_empty() {
            return Ok(false);
        }
        // One directory sync for all of them (each seal would otherwise sync it again).
        if to_seal.iter().any(|s| !s.entry_durable()) {
            self.sync_log_dir(&self.parts.segments.all())?;
        }
        for segment in to_seal {
            segment.seal(self.io.as_ref())?;
        }
        if let Some(durability) = &self.durability {
            durability.schedule();
        }
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
        if self.parts.segments.durable_except(current) {
            return Ok(());
        }
        let pending = self.parts.segments.all();
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
        crate::instruments::synced(crate::instruments::Synced::Directory);
        self.io.sync_dir(&self.log_dir).map_err(Error::io(IoAction::Sync, &self.log_dir))?;
        for segment in segments {
            segment.mark_entry_durable();
        }
        Ok(())
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
        let Some(current) = self.parts.segments.newest() else { return Ok(false) };
        let now_ms = self.io.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let age = Duration::from_millis(now_ms.saturating_sub(current.created_unix_ms));
        if current.is_sealed() || current.committed_frames() == 0 || age < age_max {
            return Ok(false);
        }
        // Closed: the files may already belong to another log (see `Lifecycle::closed`).
        if !self.parts.transactions.try_begin_checkpoint_write(|| self.parts.lifecycle.is_closed()) {
            return Ok(false);
        }
        let result = self.seal_in_order(true);
        self.parts.transactions.end_write(CHECKPOINT_WRITER_ID);
        result.map(|_| true)
    }

    /// Seals the current segment so a checkpoint can take it. Returns false if a writer
    /// held the lock throughout (then the current segment stays as it is), or the log is closed.
    pub(super) fn seal_current(&self, mode: CheckpointMode, busy: &mut dyn FnMut() -> bool) -> Result<bool> {
        loop {
            let mut closed = false;
            if self.parts.transactions.try_begin_checkpoint_write(|| {
                closed = self.parts.lifecycle.is_closed();
                closed
            }) {
                let result = self.seal_in_order(true);
                self.parts.transactions.end_write(CHECKPOINT_WRITER_ID);
                return result.map(|_| true);
            }
            if closed || mode == CheckpointMode::Passive || !busy() {
                return Ok(false);
            }
        }
    }

    /// Seals the current segment, waiting (until `deadline`, if any) for a writer to finish.
    /// Returns false if the deadline passed first.
    pub fn seal_current_waiting(&self, deadline: Option<std::time::Instant>) -> Result<bool> {
        self.seal_current(CheckpointMode::Full, &mut || {
            std::thread::sleep(Duration::from_millis(1));
            deadline.is_none_or(|d| std::time::Instant::now() < d)
        })
    }
}
