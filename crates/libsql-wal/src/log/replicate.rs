//! What replication asks of a log: where it is ([`Position`]), its committed frames after
//! a position it can vouch for, a consistent image of its database, and, on a replica, the
//! primary's transactions applied so that the replica's log holds the very same frames.
//!
//! A replica's log holds its primary's frames: the same frame numbers, pages and commit
//! times, each transaction whole. Its chain values are its own (a chain is seeded with each
//! segment's random salt), so where it is in the primary's history, (lineage, frame_no, the
//! primary's chain value), is kept in its upstream record (`crate::upstream`). The primary
//! serves only from a position it can vouch for: the same lineage and the same chain value
//! at that frame, so a replica never continues into another history.

use zerocopy::FromBytes;

use crate::error::{Error, Result};
use crate::format::{
    CheckpointMark, DB_HEADER_MARK_OFFSET, DB_HEADER_MARK_SIZE, FRAME_HEADER_SIZE, FRAME_SIZE, FrameHeader, PAGE_SIZE,
};
use crate::log::{SharedWal, chain_at};
use crate::segment::CommitFrame;
use crate::upstream::{Position, Upstream};

/// What a log can give after a position.
#[derive(Debug)]
pub enum FramesAfter {
    /// Whole transactions, in order: frames as segments hold them (a 32-byte frame header
    /// and the page, FORMAT.md *Frame*), the last one a commit frame; and where they end.
    Frames { frames: Vec<u8>, end: Position },
    /// Nothing was committed after the position.
    UpToDate,
    /// The log cannot continue from the position: why (another history, or frames it no
    /// longer holds). The follower starts again from an image.
    Unservable(String),
}

/// The replicas streaming a log (each at the frame it has been sent), and the last commit
/// for them to wait on. While one streams, a checkpoint keeps the frames after its
/// position (as it keeps those an open reader may need): a connected replica a moment
/// behind is never told its frames are gone.
pub(crate) struct Replication {
    followers: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    next_id: std::sync::atomic::AtomicU64,
    commits: tokio::sync::watch::Sender<u64>,
}

impl Replication {
    pub fn new(last_frame_no: u64) -> Replication {
        Replication {
            followers: Default::default(),
            next_id: Default::default(),
            commits: tokio::sync::watch::Sender::new(last_frame_no),
        }
    }

    pub fn committed(&self, frame_no: u64) {
        self.commits.send_replace(frame_no);
    }

    /// The oldest frame a streaming replica was sent (`u64::MAX`: none streams).
    pub fn floor(&self) -> u64 {
        self.lock().values().copied().min().unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, u64>> {
        self.followers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SharedWal {
    /// Registers a replica streaming this log, sent everything up to `frame_no`: from now
    /// on checkpoints keep the frames after it. Returns its id.
    pub(crate) fn register_follower(&self, frame_no: u64) -> u64 {
        let id = self.replication.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.replication.lock().insert(id, frame_no);
        id
    }

    /// The replica `id` was sent everything up to `frame_no`: older frames may go.
    pub(crate) fn advance_follower(&self, id: u64, frame_no: u64) {
        let held_the_floor = {
            let mut followers = self.replication.lock();
            let before = followers.insert(id, frame_no).unwrap_or(u64::MAX);
            before <= followers.values().copied().min().unwrap_or(u64::MAX)
        };
        // Only a follower that held checkpoints back frees anything by moving on: waking the
        // checkpointer for each commit each stream sends would cost a wake-up per commit.
        if held_the_floor {
            self.notify_checkpointer();
        }
    }

    pub(crate) fn unregister_follower(&self, id: u64) {
        self.replication.lock().remove(&id);
        self.notify_checkpointer();
    }

    /// Changes whenever a transaction commits (to the commit's frame_no).
    pub(crate) fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.replication.commits.subscribe()
    }
}

/// Frames read from a segment file per call.
const READ_FRAMES: u32 = 256;

impl SharedWal {
    /// Where this log is: its last commit.
    pub fn position(&self) -> Result<Position> {
        let frame_no = self.last_commit().frame_no;
        let chain = chain_at(self.checkpointed(), self.parts.segments.all().iter().map(|s| s.as_ref()), frame_no)?
            .ok_or_else(|| Error::corrupt(self.db_path(), format!("the log cannot tell its chain at {frame_no}")))?;
        Ok(Position { lineage: self.parts.lineage, frame_no, chain })
    }

    /// The position of the commit `frame_no` of this log's history, if the log can still
    /// tell its chain value (not past the last commit, and not checkpointed out of reach).
    pub fn position_at(&self, frame_no: u64) -> Result<Option<Position>> {
        if frame_no > self.last_commit().frame_no {
            return Ok(None);
        }
        let segments = self.parts.segments.all();
        let chain = self.chain_known_at(&segments, frame_no)?;
        Ok(chain.map(|chain| Position { lineage: self.parts.lineage, frame_no, chain }))
    }

    /// The chain value at `frame_no` from the checkpoint mark, the segment holding it, or
    /// the `prev_chain` of the segment right after it: a checkpoint may drop the segment a
    /// frame ends while keeping the next (a follower's position at a segment's end).
    fn chain_known_at(&self, segments: &[crate::segment::SegmentRef], frame_no: u64) -> Result<Option<u32>> {
        if let Some(chain) = chain_at(self.checkpointed(), segments.iter().map(|s| s.as_ref()), frame_no)? {
            return Ok(Some(chain));
        }
        Ok(segments.iter().find(|s| s.start_frame_no == frame_no + 1).map(|s| s.prev_chain))
    }

    /// Committed frames after `from`, whole transactions, about `max_bytes` of them (at
    /// least one transaction, however large).
    pub fn frames_after(&self, from: Position, max_bytes: usize) -> Result<FramesAfter> {
        let last = self.last_commit().frame_no;
        if from.lineage != self.parts.lineage {
            return Ok(FramesAfter::Unservable(format!(
                "the position is in lineage {:08x}, this database's is {:08x}: another history",
                from.lineage, self.parts.lineage
            )));
        }
        if from.frame_no > last {
            return Ok(FramesAfter::Unservable(format!(
                "frame {} is past this database's last commit ({last}): it was restored to an earlier point, or \
                 the position comes from another copy",
                from.frame_no
            )));
        }
        // Newest first; held, so a checkpoint dropping them meanwhile leaves them readable.
        let segments = self.parts.segments.all();
        match self.chain_known_at(&segments, from.frame_no)? {
            None => {
                return Ok(FramesAfter::Unservable(format!(
                    "frame {} is checkpointed: the log no longer holds the frames after it",
                    from.frame_no
                )));
            }
            Some(chain) if chain != from.chain => {
                return Ok(FramesAfter::Unservable(format!(
                    "the chain values at frame {} differ ({:08x} here, {:08x} there): another history",
                    from.frame_no, chain, from.chain
                )));
            }
            Some(_) => {}
        }
        if from.frame_no == last {
            return Ok(FramesAfter::UpToDate);
        }
        let mut frames = Vec::new();
        let mut end = from;
        let mut buf = Vec::new();
        'segments: for segment in segments.iter().rev() {
            let segment_last = segment.last_committed_frame_no().min(last);
            if segment_last <= end.frame_no {
                continue;
            }
            if !segment.is_current_format() {
                return Ok(FramesAfter::Unservable(format!(
                    "frames {}..={segment_last} are in a segment of an older format",
                    end.frame_no + 1
                )));
            }
            let mut position = (end.frame_no + 1 - segment.start_frame_no) as u32;
            let stop = (segment_last - segment.start_frame_no) as u32;
            while position <= stop {
                let count = READ_FRAMES.min(stop - position + 1);
                buf.resize(count as usize * FRAME_SIZE, 0);
                segment.read_frame_raw(position, &mut buf)?;
                for frame in buf.chunks_exact(FRAME_SIZE) {
                    frames.extend_from_slice(frame);
                    let header = frame_header(frame);
                    if header.size_after.get() != 0 {
                        end = Position { frame_no: header.frame_no.get(), chain: header.checksum.get(), ..end };
                        if frames.len() >= max_bytes {
                            break 'segments;
                        }
                    }
                }
                position += count;
            }
        }
        // Frames past the last commit read (a batch ends anywhere) are not sent.
        frames.truncate((end.frame_no - from.frame_no) as usize * FRAME_SIZE);
        Ok(FramesAfter::Frames { frames, end })
    }

    /// Streams a consistent image of the database at its last commit to `sink`, in chunks,
    /// page 1 first, page 1 carrying the checkpoint mark of that commit: the file a replica
    /// starts from (its log continues the same history). `None` for a database of no pages.
    pub fn export_image(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Option<Position>> {
        let (snapshot, _) = self.begin_read();
        let result = self.export_snapshot(snapshot, sink);
        self.end_read(snapshot);
        result
    }

    fn export_snapshot(
        &self,
        snapshot: crate::log::Snapshot,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Option<Position>> {
        if snapshot.db_size == 0 {
            return Ok(None);
        }
        // The reader registered keeps every frame up to the snapshot in the log or the file.
        let segments = self.parts.segments.all();
        let chain = chain_at(self.checkpointed(), segments.iter().map(|s| s.as_ref()), snapshot.frame_no)?
            .ok_or_else(|| Error::corrupt(self.db_path(), "the log cannot tell the chain value of its last commit"))?;
        let position = Position { lineage: self.parts.lineage, frame_no: snapshot.frame_no, chain };
        let mark = CheckpointMark {
            frame_no: snapshot.frame_no,
            db_pages: snapshot.db_size,
            lineage: position.lineage,
            chain,
        };
        let mark = mark.encode().ok_or_else(|| Error::corrupt(self.db_path(), "frame_no past what a mark holds"))?;
        let mut chunk = vec![0u8; READ_FRAMES as usize * PAGE_SIZE];
        let mut first = 1u32;
        while first <= snapshot.db_size {
            let count = READ_FRAMES.min(snapshot.db_size - first + 1);
            let pages = &mut chunk[..count as usize * PAGE_SIZE];
            for (i, page) in pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
                let page_no = first + i as u32;
                match self.find(page_no, snapshot.frame_no) {
                    Some((segment, position)) => segment.read_page(position, page)?,
                    None => self.parts.db.read(page, (page_no as u64 - 1) * PAGE_SIZE as u64)?,
                }
            }
            if first == 1 {
                let at = DB_HEADER_MARK_OFFSET as usize;
                pages[at..at + DB_HEADER_MARK_SIZE].copy_from_slice(&mark);
            }
            sink(pages)?;
            first += count;
        }
        Ok(Some(position))
    }

    /// Applies a primary's frames (whole transactions, as [`SharedWal::frames_after`]
    /// gives them) after this log's last commit, all of them published at once when synced
    /// (readers see the group's last commit, so never part of a transaction), their end
    /// recorded in `upstream` (synced) before that: the position the primary vouches for.
    /// One group costs one sync of the record and one of the log, however many
    /// transactions it holds: a replica keeps up with a primary committing faster than the
    /// disk syncs. Frames that do not follow the last commit, or end inside a transaction,
    /// are refused (`Diverged`) and nothing of them is published. Returns where the replica
    /// is then in its primary's history.
    pub(crate) fn apply_frames(&self, upstream: &mut Upstream, frames: &[u8]) -> Result<Position> {
        if !frames.len().is_multiple_of(FRAME_SIZE) {
            return Err(self.refused(format!("{} bytes are not whole frames", frames.len())));
        }
        let mut transactions = Vec::new();
        let mut rest = frames;
        while !rest.is_empty() {
            let frames_in_txn = rest
                .chunks_exact(FRAME_SIZE)
                .position(|f| frame_header(f).size_after.get() != 0)
                .ok_or_else(|| self.refused("the frames end inside a transaction".into()))?
                + 1;
            let (txn, after) = rest.split_at(frames_in_txn * FRAME_SIZE);
            transactions.push(txn);
            rest = after;
        }
        if !transactions.is_empty() {
            self.apply_transactions(upstream, &transactions)?;
        }
        self.upstream_position(upstream)
    }

    /// Where this replica is in its primary's history: the record's position at the log's
    /// last commit.
    pub(crate) fn upstream_position(&self, upstream: &Upstream) -> Result<Position> {
        let frame_no = self.last_commit().frame_no;
        upstream.position_at(frame_no).ok_or_else(|| {
            self.refused(format!(
                "its upstream record does not name frame {frame_no}, where its log ends: where it is in the \
                 primary's history is unknown (start it again from an image)"
            ))
        })
    }

    fn refused(&self, reason: String) -> Error {
        Error::Diverged { path: self.db_path().into(), reason }
    }

    fn apply_transactions(&self, upstream: &mut Upstream, transactions: &[&[u8]]) -> Result<()> {
        let last = self.last_commit();
        let at = self.upstream_position(upstream)?;
        let frames = transactions.iter().flat_map(|txn| txn.chunks_exact(FRAME_SIZE));
        for (i, frame) in frames.enumerate() {
            let frame_no = frame_header(frame).frame_no.get();
            if frame_no != last.frame_no + 1 + i as u64 {
                return Err(self
                    .refused(format!("frame {frame_no} does not follow this log's last commit ({})", last.frame_no)));
            }
        }
        let final_txn = transactions[transactions.len() - 1];
        let commit = frame_header(&final_txn[final_txn.len() - FRAME_SIZE..]);
        let end = Position { frame_no: commit.frame_no.get(), chain: commit.checksum.get(), ..at };
        let id = self.new_connection_id();
        self.begin_write(id, last)?;
        let result = self.write_transactions_of(transactions, &mut || upstream.record(end));
        self.end_write(id);
        result
    }

    /// Writes `transactions`, each ending in its commit frame, calls `record` once all are
    /// written, then syncs and publishes the last. Write lock held. Always synced: the
    /// upstream record, synced first, must never name a frame a power cut could take from
    /// the log (one of its two slots names the log's end then).
    fn write_transactions_of(&self, transactions: &[&[u8]], record: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let segment = self.current_segment_for_write()?;
        let start = segment.frames();
        self.make_durable_through(&segment)?;
        let final_header = {
            let txn = transactions[transactions.len() - 1];
            frame_header(&txn[txn.len() - FRAME_SIZE..])
        };
        let size_after = final_header.size_after.get();
        let written = (|| {
            for (i, txn) in transactions.iter().enumerate() {
                let pages: Vec<(u32, &[u8])> = txn
                    .chunks_exact(FRAME_SIZE)
                    .map(|f| (frame_header(f).page_no.get(), &f[FRAME_HEADER_SIZE..]))
                    .collect();
                // The group is one transaction here, committed on its last frame only: a
                // power cut leaves the log at the group's start or its end, the two
                // positions the upstream record's slots name (an end inside the group would
                // be neither). Each part from its own start: a page two of them write is
                // two frames, as on the primary, whose frame numbers the log keeps.
                let last = i + 1 == transactions.len();
                let commit = last.then_some(CommitFrame {
                    size_after,
                    unix_ms: final_header.commit_unix_ms.get(),
                    synced: true,
                });
                segment.write_transaction(&pages, segment.frames(), commit)?;
            }
            record()
        })();
        if let Err(e) = written {
            segment.truncate_uncommitted(start, &mut |_| {})?;
            return Err(e);
        }
        self.publish_synced_commit(&segment, size_after)
    }
}

/// The header of a frame (at least `FRAME_HEADER_SIZE` bytes; callers pass whole frames).
fn frame_header(frame: &[u8]) -> FrameHeader {
    FrameHeader::read_from_bytes(&frame[..FRAME_HEADER_SIZE]).expect("a frame holds a whole header")
}
