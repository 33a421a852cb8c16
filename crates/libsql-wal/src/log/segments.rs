//! [`SegmentList`]: the segments of one log, newest first, and the rule that keeps them a
//! log: frame numbers follow on from one segment to the next, and the sealed segments are
//! always the oldest ones (a sealed segment never follows an unsealed one). Recovery relies
//! on it (it may cut the log before an unsealed segment, never before a sealed one), and the
//! checkpoint and the upload each take a prefix of sealed segments.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::segment::{Segment, SegmentRef};

/// What keeps a sealed segment out of the database file for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocker {
    None,
    /// An open snapshot older than the segment's end (invariant 5).
    Reader,
    /// The segment is not durable yet (invariant 7).
    Storage,
}

/// The list itself: `[0]` is the current segment unless it is sealed or the list is empty.
/// A segment is pushed at the front by the writer (under the write lock: `push_current`),
/// sealed in list order (`sealable`), and dropped from the back by the checkpoint (under
/// the checkpoint lock: `remove`). Readers (`find`) take the read lock for a lookup only.
pub(crate) struct SegmentList {
    segments: RwLock<Vec<SegmentRef>>,
}

impl SegmentList {
    /// The segments recovery kept, newest first.
    pub fn new(segments: Vec<SegmentRef>) -> SegmentList {
        SegmentList { segments: RwLock::new(segments) }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<SegmentRef>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<SegmentRef>> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }

    /// All segments, newest first.
    pub fn all(&self) -> Vec<SegmentRef> {
        self.read().clone()
    }

    pub fn newest(&self) -> Option<SegmentRef> {
        self.read().first().cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// The chain value a new segment continues from: the newest segment's end, if any.
    pub fn newest_end_chain(&self) -> Option<u32> {
        self.read().first().map(|s| s.end_chain())
    }

    /// A new current segment (the writer, write lock held): it starts after the newest.
    pub fn push_current(&self, segment: SegmentRef) {
        self.write().insert(0, segment);
    }

    /// Finds the newest frame of `page_no` no newer than `max_frame_no`.
    pub fn find(&self, page_no: u32, max_frame_no: u64) -> Option<(SegmentRef, u32)> {
        self.read()
            .iter()
            .filter(|s| s.start_frame_no <= max_frame_no)
            .find_map(|s| s.find(page_no, max_frame_no).map(|pos| (s.clone(), pos)))
    }

    /// The unsealed segments to seal, oldest first, keeping the sealed prefix a prefix: from
    /// the oldest unsealed one on, as long as each holds commits and `may_seal(position,
    /// segment)` (position in the newest-first list) says nothing appends to it any more.
    pub fn sealable(&self, may_seal: impl Fn(usize, &Segment) -> bool) -> Vec<SegmentRef> {
        self.read()
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, s)| !s.is_sealed())
            .take_while(|(position, s)| s.committed_frames() > 0 && may_seal(*position, s))
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Is every segment's directory entry durable, and every segment but `current` synced?
    /// (The common case before a synchronous commit: nothing to do.)
    pub fn durable_except(&self, current: &Segment) -> bool {
        self.read().iter().all(|s| s.entry_durable() && (std::ptr::eq(s.as_ref(), current) || !s.frames_unsynced()))
    }

    /// Sealed segments (oldest first) that may be copied now — none past `oldest_reader`
    /// (a reader older than a segment's end could still need an older version of one of
    /// its pages from the database file: invariant 5) or past `durable` (invariant 7:
    /// nothing leaves the log before storage has it) — and what holds back the next one.
    pub fn checkpointable(&self, oldest_reader: u64, durable: u64) -> (Vec<SegmentRef>, Blocker) {
        let segments = self.read();
        let mut ready = Vec::new();
        // A prefix of the log: seals go in order, and the current segment ends it.
        for segment in segments.iter().rev().take_while(|s| s.is_sealed()) {
            let end = segment.last_committed_frame_no();
            if end > durable {
                return (ready, Blocker::Storage);
            }
            if end > oldest_reader {
                return (ready, Blocker::Reader);
            }
            ready.push(segment.clone());
        }
        (ready, Blocker::None)
    }

    /// Is some sealed segment past `durable` (waiting to be uploaded)?
    pub fn sealed_past(&self, durable: u64) -> bool {
        self.read().iter().any(|s| s.is_sealed() && s.last_committed_frame_no() > durable)
    }

    /// Forgets the checkpointed segments `done` (the checkpoint, under its lock).
    pub fn remove(&self, done: &[SegmentRef]) {
        self.write().retain(|s| !done.iter().any(|d| Arc::ptr_eq(s, d)));
    }

    /// Takes the current segment out of the list if it is the only one and holds no frame
    /// at all (after a TRUNCATE checkpoint; write lock held by the caller).
    pub fn take_empty_current(&self) -> Option<SegmentRef> {
        let mut segments = self.write();
        if segments.len() == 1 && segments[0].committed_frames() == 0 && segments[0].frames() == 0 {
            segments.pop()
        } else {
            None
        }
    }
}
