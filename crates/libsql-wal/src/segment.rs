//! One segment file: a header, then frames; once sealed, an index and a trailer.
//!
//! A [`Segment`] is shared (`Arc`) between the log, readers that found a page in it, and the
//! checkpointer. Its frames before `committed_frames` never change; frames past it belong to
//! the one open write transaction and are invisible to readers (they look up frames no newer
//! than their snapshot). The in-memory index keeps *every* version of a page in the segment,
//! so a reader whose snapshot ends inside a segment still finds the right version after the
//! segment is sealed.
//!
//! Architecture invariant: this module knows nothing about SQLite, snapshots or checkpoints;
//! it stores frames, finds them and proves them intact.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::UNIX_EPOCH;

use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, IoAction, Result};
use crate::format::*;
use crate::instruments::{self, Synced};
use crate::io::{Io, IoFile};

/// Frames read at once while scanning a segment during recovery.
const SCAN_BATCH_FRAMES: u32 = 256;

/// A current segment's file is grown in steps of this many bytes of zeros, ahead of the
/// frames, for synchronous commits: a commit then overwrites blocks the file already has, so
/// its fdatasync flushes data only, not the file's new size and blocks (a journal commit),
/// except once per step. Zeros never pass for frames (frame_no 0 and page_no 0 are invalid),
/// and recovery cuts them off with the torn tail.
pub(crate) const PREALLOCATE_BYTES: u64 = 2 << 20;

/// page_no → positions (0-based) of its frames in a segment, ascending. Fx hashing: a lookup
/// is on every page read that misses SQLite's cache, and SipHash was half of `find`'s time;
/// the keys are page numbers (small, mostly dense integers, at most one per frame of the
/// segment), which Fx spreads well enough for hashbrown's probing.
pub(crate) type PageIndex = rustc_hash::FxHashMap<u32, Vec<u32>>;

pub(crate) struct Segment {
    pub path: PathBuf,
    pub start_frame_no: u64,
    pub salt: u32,
    /// The history this segment belongs to (`SegmentHeader::lineage`).
    pub lineage: u32,
    /// The chain value this segment continues from: the checksum of frame
    /// `start_frame_no - 1` of its history.
    pub prev_chain: u32,
    /// The seed of its frame checksums: `chain_seed(salt, prev_chain)`.
    seed: u32,
    pub created_unix_ms: u64,
    /// How its frames are laid out (its header's format version). Only the current version is
    /// ever written; version 2 is read from storage (restore) only.
    layout: FrameLayout,
    /// The sealed index on disk was damaged and rebuilt from the frames (reported by verify).
    pub index_rebuilt: bool,
    /// At open, a committed frame carried `FRAME_SYNCED_COMMIT` (recovery's evidence that
    /// every earlier segment was durable).
    pub holds_synced_commit: bool,
    file: Box<dyn IoFile>,
    /// page_no → positions (0-based) of its frames in this segment, ascending.
    index: RwLock<PageIndex>,
    state: Mutex<AppendState>,
    /// Frames were written since the last sync. Set before a write, cleared only after a
    /// sync succeeds: a FULL commit that sees it clear may rely on the frames being durable.
    frames_unsynced: AtomicBool,
    /// The directory was synced since this file was created or opened, so its name
    /// survives a power cut. Creation does not sync (that cost a commit ~1 ms); the first
    /// FULL commit or the seal does.
    entry_durable: AtomicBool,
}

/// Changed only by the writer holding the write lock (or by recovery, before sharing).
#[derive(Debug, Clone, Copy)]
struct AppendState {
    /// Frames in the file, committed or not.
    frames: u32,
    /// Checksum of the last frame in the file (the seed when there is none).
    last_checksum: u32,
    /// The commit time of the commit frame written and not yet marked committed.
    pending_unix_ms: u64,
    /// Frames of committed transactions. Monotonic: a rollback only drops frames past it.
    committed_frames: u32,
    committed_checksum: u32,
    /// Database size in pages after the last committed transaction in this segment.
    committed_size_after: u32,
    /// When the last committed transaction in this segment committed (0: none, or unknown).
    committed_unix_ms: u64,
    /// When the first committed transaction in this segment committed (0: none, or unknown).
    first_commit_unix_ms: u64,
    /// Position of the first frame whose checksum must be recomputed before commit
    /// (a page rewritten in place by the open transaction).
    recompute_from: Option<u32>,
    /// The file's length: frames, then (current segments) zeros preallocated for more.
    file_len: u64,
    /// A commit frame was written but the commit did not complete (its sync failed): the
    /// rollback must make its removal durable, or a crash could bring the commit back.
    unfinished_commit: bool,
    sealed: bool,
    /// A failed seal could not be cut back: the file ends with index and trailer bytes that
    /// new frames might not cover. Nothing more is appended to it.
    broken: bool,
}

/// What a scan of a segment found: the number of valid frames up to the last commit.
struct ScanResult {
    committed_frames: u32,
    committed_checksum: u32,
    committed_size_after: u32,
    committed_unix_ms: u64,
    first_commit_unix_ms: u64,
    index: PageIndex,
    /// Frames that passed their checks after the last commit frame (a torn transaction).
    uncommitted_tail: u32,
    /// Position of the first frame that failed its checks, if one did.
    first_bad: Option<u32>,
    /// A committed frame carries `FRAME_SYNCED_COMMIT`.
    synced_commit: bool,
}

pub(crate) fn segment_file_name(start_frame_no: u64) -> String {
    format!("{start_frame_no:020}.seg")
}

/// The start frame_no a file's name gives, if it is a segment's name (twenty digits, then
/// `.seg`, as [`segment_file_name`] writes it). Any other file is not ours (`notes.seg`
/// included): never read as a segment, never removed.
pub(crate) fn start_of_file_name(path: &Path) -> Option<u64> {
    let digits = path.file_name()?.to_str()?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of a log directory, oldest first (names sort as frame numbers).
pub(crate) fn list_segment_files(io: &dyn Io, log_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = io
        .list_dir(log_dir)
        .map_err(Error::io(IoAction::Read, log_dir))?
        .into_iter()
        .filter(|p| start_of_file_name(p).is_some())
        .collect();
    paths.sort();
    Ok(paths)
}

impl Segment {
    /// Creates an empty segment starting at `start_frame_no`. Nothing is synced: until the
    /// segment's first sync (a FULL commit, or its seal) its header may be lost or torn by a
    /// power cut, and recovery then takes it, and every later segment, as never written
    /// (see `recovery::plan_recovery`). A FULL commit syncs the file and its directory
    /// entry before it returns (`SharedWal::make_durable_through`).
    ///
    /// `lineage` and `prev_chain` place it in its history: the chain value it continues from
    /// is the checksum of the frame before its first (see `format::chain_seed`).
    pub fn create(io: &dyn Io, dir: &Path, start_frame_no: u64, lineage: u32, prev_chain: u32) -> Result<Segment> {
        let path = dir.join(segment_file_name(start_frame_no));
        let salt = io.random_u32();
        let seed = chain_seed(salt, prev_chain);
        let created_unix_ms = io.now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let header = SegmentHeader::new(start_frame_no, salt, created_unix_ms, lineage, prev_chain);
        let file = io.open(&path, true).map_err(Error::io(IoAction::Create, &path))?;
        file.set_len(0).map_err(Error::io(IoAction::Truncate, &path))?;
        file.write_all_at(header.as_bytes(), 0).map_err(Error::io(IoAction::Write, &path))?;
        Ok(Segment {
            path,
            start_frame_no,
            salt,
            lineage,
            prev_chain,
            seed,
            created_unix_ms,
            layout: FrameLayout::V3,
            index_rebuilt: false,
            holds_synced_commit: false,
            file,
            index: RwLock::new(PageIndex::default()),
            state: Mutex::new(AppendState {
                frames: 0,
                last_checksum: seed,
                committed_frames: 0,
                committed_checksum: seed,
                committed_size_after: 0,
                committed_unix_ms: 0,
                first_commit_unix_ms: 0,
                pending_unix_ms: 0,
                recompute_from: None,
                file_len: SEGMENT_HEADER_SIZE as u64,
                unfinished_commit: false,
                sealed: false,
                broken: false,
            }),
            frames_unsynced: AtomicBool::new(true),
            entry_durable: AtomicBool::new(false),
        })
    }

    /// Makes the file long enough for `more` frames past the last one, growing it by
    /// [`PREALLOCATE_BYTES`] steps of zeros. Called before the frames of a synchronous
    /// commit are written; the commit's fdatasync makes the zeros durable with them.
    ///
    /// Preallocation is an optimisation, never a reason for a commit to fail: when the disk
    /// has no room for a whole step (ENOSPC, EDQUOT), it grows the file by what the commit
    /// needs only, and if even that does not fit, by nothing: the commit's own write then
    /// succeeds or reports the full disk itself.
    pub fn preallocate(&self, more: u32) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let needed = self.layout.frame_offset(state.frames + more);
        if needed <= state.file_len {
            return Ok(());
        }
        let step = needed.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
        for new_len in [step, needed] {
            let zeros = vec![0u8; (new_len - state.file_len) as usize];
            match self.file.write_all_at(&zeros, state.file_len) {
                Ok(()) => {
                    state.file_len = new_len;
                    return Ok(());
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
                    // Part of the zeros may have landed: give that space back (past every
                    // frame, so nothing of ours is cut). If the cut fails, `file_len` still
                    // says where our data ends, which is all that matters.
                    let _ = self.file.set_len(state.file_len);
                    tracing::debug!(
                        segment = %self.path.display(),
                        "no room to preallocate {} bytes",
                        new_len - state.file_len
                    );
                }
                Err(e) => return Err(Error::io(IoAction::Write, &self.path)(e)),
            }
        }
        Ok(())
    }

    /// Gives back the zeros preallocated past the last frame (a log closed without being
    /// emptied keeps its current segment: 2 MiB per idle database would add up). Not synced:
    /// zeros a crash brings back are cut by recovery like any preallocation.
    pub fn trim_preallocation(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let end = self.layout.frame_offset(state.frames);
        if state.sealed || state.file_len <= end {
            return Ok(());
        }
        self.file.set_len(end).map_err(Error::io(IoAction::Truncate, &self.path))?;
        state.file_len = end;
        Ok(())
    }

    /// Opens an existing segment and verifies every frame. A sealed segment must be whole.
    /// An unsealed one (the current segment, or a full one whose seal had not happened yet)
    /// has a torn or corrupt end cut at its last valid commit frame, unless `sealed_required`
    /// (segments from storage are always sealed): then it is refused.
    pub fn recover(io: &dyn Io, path: &Path, sealed_required: bool) -> Result<Segment> {
        let segment = Segment::open_verified(io, path, sealed_required)?;
        segment.cut_torn_end()?;
        Ok(segment)
    }

    /// Cuts whatever follows the last valid commit frame of an unsealed segment opened by
    /// [`Segment::open_verified`]: a torn transaction, garbage, or preallocated zeros.
    pub fn cut_torn_end(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let keep = self.layout.frame_offset(state.committed_frames);
        if state.sealed || state.file_len == keep {
            return Ok(());
        }
        // Zeros past the frames are preallocation, not damage: cut them silently.
        if !zeros_from(self.file.as_ref(), &self.path, keep, state.file_len)? {
            tracing::warn!(
                path = %self.path.display(),
                "recovery: cutting {} bytes after the last commit frame (frame_no {})",
                state.file_len - keep,
                self.start_frame_no + state.committed_frames as u64 - 1
            );
        }
        self.file.set_len(keep).map_err(Error::io(IoAction::Truncate, &self.path))?;
        instruments::synced(Synced::Segment);
        self.file.sync_data().map_err(Error::io(IoAction::Sync, &self.path))?;
        state.file_len = keep;
        Ok(())
    }

    /// [`Segment::recover`] without changing the file: an unsealed segment keeps its torn
    /// end until [`Segment::cut_torn_end`] (or its seal), so a log refused as damaged after
    /// this is left exactly as it was found.
    pub fn open_verified(io: &dyn Io, path: &Path, sealed_required: bool) -> Result<Segment> {
        let file = io.open(path, false).map_err(Error::io(IoAction::Open, path))?;
        Segment::verify_file(file, path, sealed_required)
    }

    /// [`Segment::open_verified`] on a file opened for reading only (`verify`): the result
    /// must never be written, sealed or cut.
    pub fn open_read_only(io: &dyn Io, path: &Path) -> Result<Segment> {
        let file = io.open_read_only(path).map_err(Error::io(IoAction::Open, path))?;
        Segment::verify_file(file, path, false)
    }

    fn verify_file(file: Box<dyn IoFile>, path: &Path, sealed_required: bool) -> Result<Segment> {
        let len = file.size().map_err(Error::io(IoAction::Read, path))?;
        if len < SEGMENT_HEADER_SIZE as u64 {
            return Err(Error::corrupt(path, format!("segment file of {len} bytes has no header")));
        }
        let mut header_bytes = [0u8; SEGMENT_HEADER_SIZE];
        file.read_exact_at(&mut header_bytes, 0).map_err(Error::io(IoAction::Read, path))?;
        let header = SegmentHeader::read_from_bytes(&header_bytes).expect("exact size");
        let version = header.version.get();
        // Version 2 only from storage: a local log of it would get frames of this version
        // appended. The build that wrote it checkpoints it.
        let readable = version == FORMAT_VERSION || (sealed_required && version == FORMAT_VERSION_V2);
        if header.magic.get() == SEGMENT_MAGIC && header.checksum.get() == header.computed_checksum() && !readable {
            return Err(Error::UnsupportedVersion { path: path.into(), version, supported: FORMAT_VERSION });
        }
        if let Some(problem) = header.problem() {
            return Err(Error::corrupt(path, problem));
        }
        let layout = FrameLayout::of_version(version).expect("checked by problem()");
        let start_frame_no = header.start_frame_no.get();
        let salt = header.salt.get();
        let seed = chain_seed(salt, header.prev_chain.get());
        let trailer = read_trailer(file.as_ref(), len, salt);
        if trailer.is_none()
            && let Some(damage) = trailer_damage(file.as_ref(), len, &header)
        {
            return Err(Error::corrupt(path, damage));
        }
        let frames_in_file = match &trailer {
            Some(t) => match sealed_frames(layout, t, start_frame_no) {
                Some(n) => n,
                None => return Err(Error::corrupt(path, "seal trailer does not match the frames")),
            },
            None => whole_frames(layout, len),
        };
        let scan = scan_frames(file.as_ref(), path, layout, start_frame_no, seed, frames_in_file)?;
        let mut index_rebuilt = false;
        if let Some(t) = &trailer {
            if scan.committed_frames != frames_in_file || scan.uncommitted_tail != 0 {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "sealed segment has a bad frame at frame_no {}: checksum or header mismatch",
                        start_frame_no + scan.first_bad.unwrap_or(scan.committed_frames) as u64
                    ),
                ));
            }
            index_rebuilt = !verify_sealed_index(file.as_ref(), len, path, t, salt, &scan.index);
        } else if sealed_required {
            return Err(Error::corrupt(path, "the segment is not sealed"));
        } else if let Some(bad) = scan.first_bad
            && let Some((commit, next)) =
                synced_past_bad_frame(file.as_ref(), path, layout, start_frame_no, bad, frames_in_file)?
        {
            let reason = format!(
                "bad frame at frame_no {} (checksum or header mismatch), but frame_no {commit} after it is a \
                 synchronous commit and frame_no {next} was written after its sync: the frame was durable, so \
                 this is damage, not a crash",
                start_frame_no + bad as u64
            );
            return Err(Error::corrupt(path, reason));
        }
        let sealed = trailer.is_some();
        let file_len = len;
        Ok(Segment {
            path: path.to_path_buf(),
            start_frame_no,
            salt,
            lineage: header.lineage.get(),
            prev_chain: header.prev_chain.get(),
            seed,
            created_unix_ms: header.created_unix_ms.get(),
            layout,
            index_rebuilt,
            holds_synced_commit: scan.synced_commit,
            file,
            index: RwLock::new(scan.index),
            state: Mutex::new(AppendState {
                frames: scan.committed_frames,
                last_checksum: scan.committed_checksum,
                committed_frames: scan.committed_frames,
                committed_checksum: scan.committed_checksum,
                committed_size_after: scan.committed_size_after,
                committed_unix_ms: scan.committed_unix_ms,
                first_commit_unix_ms: scan.first_commit_unix_ms,
                pending_unix_ms: 0,
                recompute_from: None,
                file_len,
                unfinished_commit: false,
                sealed,
                broken: false,
            }),
            frames_unsynced: AtomicBool::new(!sealed),
            entry_durable: AtomicBool::new(false),
        })
    }

    fn state(&self) -> AppendState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_sealed(&self) -> bool {
        self.state().sealed
    }

    /// Is it of the format this build writes (frames of 32-byte headers)?
    pub fn is_current_format(&self) -> bool {
        self.layout == FrameLayout::V3
    }

    pub fn committed_frames(&self) -> u32 {
        self.state().committed_frames
    }

    /// Is everything after the last commit frame zeros (preallocated, never written)? What an
    /// open would cut is then no lost transaction.
    pub fn zeros_after_commits(&self) -> bool {
        let (keep, len) = (self.layout.frame_offset(self.committed_frames()), self.file_len());
        zeros_from(self.file.as_ref(), &self.path, keep, len).unwrap_or(false)
    }

    /// Frames in the file, including those of an open transaction.
    pub fn frames(&self) -> u32 {
        self.state().frames
    }

    /// Database size in pages after the last commit in this segment (0 if none).
    pub fn committed_size_after(&self) -> u32 {
        self.state().committed_size_after
    }

    /// When the last transaction committed in this segment committed (ms since the epoch):
    /// 0 when it holds none, or for a segment of format version 2 (no times recorded).
    pub fn committed_unix_ms(&self) -> u64 {
        self.state().committed_unix_ms
    }

    /// When its first and last committed transactions committed (0 for unknown, as
    /// [`Segment::committed_unix_ms`] says).
    pub fn commit_times(&self) -> (u64, u64) {
        let state = self.state();
        (state.first_commit_unix_ms, state.committed_unix_ms)
    }

    /// frame_no of the last committed frame, or `start_frame_no - 1` when empty.
    pub fn last_committed_frame_no(&self) -> u64 {
        self.start_frame_no + self.committed_frames() as u64 - 1
    }

    /// The chain value at the last committed frame (`prev_chain` when there is none): what
    /// the next segment continues from.
    pub fn end_chain(&self) -> u32 {
        let state = self.state();
        if state.committed_frames == 0 { self.prev_chain } else { state.committed_checksum }
    }

    /// The chain value at `frame_no` (from `start_frame_no - 1` to the last committed
    /// frame): `prev_chain`, or that frame's checksum as the file holds it.
    pub fn chain_at(&self, frame_no: u64) -> Result<u32> {
        let committed = self.committed_frames() as u64;
        match frame_no.checked_sub(self.start_frame_no) {
            None if frame_no + 1 == self.start_frame_no => Ok(self.prev_chain),
            Some(position) if position < committed => self.frame_checksum(position as u32),
            _ => Err(Error::corrupt(
                &self.path,
                format!(
                    "frame_no {frame_no} is outside the segment's frames {}..={}",
                    self.start_frame_no,
                    self.start_frame_no + committed - 1
                ),
            )),
        }
    }

    pub fn file_len(&self) -> u64 {
        self.file.size().unwrap_or(0)
    }

    /// Position of the newest frame of `page_no` whose frame_no is at most `max_frame_no`.
    pub fn find(&self, page_no: u32, max_frame_no: u64) -> Option<u32> {
        if max_frame_no < self.start_frame_no {
            return None;
        }
        let limit = max_frame_no - self.start_frame_no;
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let versions = index.get(&page_no)?;
        let n = versions.partition_point(|&pos| (pos as u64) <= limit);
        (n > 0).then(|| versions[n - 1])
    }

    /// The frame_no of the frame at `position` (for messages).
    fn frame_no_at(&self, position: u32) -> u64 {
        self.start_frame_no + position as u64
    }

    pub fn read_page(&self, position: u32, buf: &mut [u8]) -> Result<()> {
        let offset = self.layout.frame_offset(position) + self.layout.header_size() as u64;
        self.file.read_exact_at(buf, offset).map_err(Error::io_at(
            IoAction::Read,
            &self.path,
            self.frame_no_at(position),
        ))
    }

    /// Reads the pages of the `pages.len() / PAGE_SIZE` consecutive frames from `position`
    /// with one read of the file (into `frames`, reused between calls): a checkpoint copies
    /// runs of pages this way, a few system calls per megabyte instead of two per page.
    pub fn read_pages(&self, position: u32, frames: &mut Vec<u8>, pages: &mut [u8]) -> Result<()> {
        let count = pages.len() / PAGE_SIZE;
        let layout = self.layout;
        frames.resize(count * layout.frame_size(), 0);
        self.file.read_exact_at(frames, layout.frame_offset(position)).map_err(Error::io_at(
            IoAction::Read,
            &self.path,
            self.frame_no_at(position),
        ))?;
        for (frame, page) in frames.chunks_exact(layout.frame_size()).zip(pages.chunks_exact_mut(PAGE_SIZE)) {
            page.copy_from_slice(&frame[layout.header_size()..]);
        }
        Ok(())
    }

    pub fn read_frame_raw(&self, position: u32, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, self.layout.frame_offset(position)).map_err(Error::io_at(
            IoAction::Read,
            &self.path,
            self.frame_no_at(position),
        ))
    }

    /// Writes a batch of pages of the open transaction. A page that already has a frame in
    /// this transaction (at or after `txn_start`) is rewritten in place, as SQLite's own WAL
    /// does, except the commit frame, which is always new. With `commit_size_after`, the last
    /// page is written as the commit frame (at time 0); see [`Segment::mark_committed`].
    #[cfg(any(test, feature = "bench-internals"))]
    pub fn write_pages(&self, pages: &[(u32, &[u8])], txn_start: u32, commit_size_after: Option<u32>) -> Result<()> {
        let commit = commit_size_after.map(|size_after| CommitFrame { size_after, unix_ms: 0, synced: false });
        self.write_transaction(pages, txn_start, commit)
    }

    /// Writes a batch of pages of the open transaction, as [`Segment::write_pages`] says;
    /// with `commit`, the last page is written as the commit frame that `commit` describes.
    pub fn write_transaction(&self, pages: &[(u32, &[u8])], txn_start: u32, commit: Option<CommitFrame>) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!state.sealed, "write to a sealed segment");
        assert_eq!(self.layout, FrameLayout::V3, "write to a segment of an older format");
        let commit_size_after = commit.map(|c| c.size_after);
        if state.broken {
            let reason =
                "a failed seal could not be cut back: no more frames go into this segment until the log is reopened";
            return Err(Error::corrupt(&self.path, reason));
        }
        self.frames_unsynced.store(true, Ordering::SeqCst);
        let mut appended: Vec<(u32, &[u8], u32)> = Vec::with_capacity(pages.len());
        for (i, &(page_no, data)) in pages.iter().enumerate() {
            let is_commit_frame = commit_size_after.is_some() && i + 1 == pages.len();
            let existing = self.find(page_no, u64::MAX).filter(|&pos| pos >= txn_start);
            match existing {
                Some(pos) if !is_commit_frame => {
                    let offset = frame_offset(pos) + FRAME_HEADER_SIZE as u64;
                    self.file.write_all_at(data, offset).map_err(Error::io_at(
                        IoAction::Write,
                        &self.path,
                        self.frame_no_at(pos),
                    ))?;
                    state.recompute_from = Some(state.recompute_from.map_or(pos, |p| p.min(pos)));
                }
                _ => {
                    let size_after = if is_commit_frame { commit_size_after.unwrap_or(0) } else { 0 };
                    appended.push((page_no, data, size_after));
                }
            }
        }
        if commit_size_after.is_some()
            && let Some(from) = state.recompute_from.take()
        {
            state.last_checksum = self.rechain(from, state.frames)?;
        }
        let mut buf = Vec::with_capacity(appended.len() * FRAME_SIZE);
        let mut checksum = state.last_checksum;
        for (i, &(page_no, data, size_after)) in appended.iter().enumerate() {
            let frame_no = self.start_frame_no + state.frames as u64 + i as u64;
            let mut header = FrameHeader::new(page_no, size_after, frame_no);
            if let Some(commit) = commit.filter(|_| size_after != 0) {
                header.commit_unix_ms = commit.unix_ms.into();
                if commit.synced {
                    header.flags = FRAME_SYNCED_COMMIT.into();
                }
                state.pending_unix_ms = commit.unix_ms;
            }
            checksum = header.chained_checksum(checksum, data);
            header.checksum = checksum.into();
            buf.extend_from_slice(header.as_bytes());
            buf.extend_from_slice(data);
        }
        self.file.write_all_at(&buf, frame_offset(state.frames)).map_err(Error::io_at(
            IoAction::Write,
            &self.path,
            self.frame_no_at(state.frames),
        ))?;
        state.file_len = state.file_len.max(frame_offset(state.frames + appended.len() as u32));
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for (i, &(page_no, _, _)) in appended.iter().enumerate() {
            index.entry(page_no).or_default().push(state.frames + i as u32);
        }
        drop(index);
        state.frames += appended.len() as u32;
        state.last_checksum = checksum;
        state.unfinished_commit |= commit_size_after.is_some();
        Ok(())
    }

    /// Makes the frames written so far part of the committed log. Called only once the
    /// commit frame is written (and synced, when the commit must be durable): a commit whose
    /// write or sync failed stays uncommitted, and SQLite's rollback then drops it.
    pub fn mark_committed(&self, size_after: u32) {
        assert!(size_after > 0, "commit with database size 0");
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        assert!(state.recompute_from.is_none(), "commit with a broken checksum chain");
        if state.committed_frames == 0 {
            state.first_commit_unix_ms = state.pending_unix_ms;
        }
        state.committed_frames = state.frames;
        state.committed_checksum = state.last_checksum;
        state.committed_size_after = size_after;
        state.committed_unix_ms = state.pending_unix_ms;
        state.unfinished_commit = false;
    }

    /// Recomputes the checksum chain of frames `from..end` after in-place rewrites.
    fn rechain(&self, from: u32, end: u32) -> Result<u32> {
        let mut checksum = if from == 0 { self.seed } else { self.frame_checksum(from - 1)? };
        let mut frame = vec![0u8; FRAME_SIZE];
        for pos in from..end {
            self.read_frame_raw(pos, &mut frame)?;
            let (head, page) = frame.split_at_mut(FRAME_HEADER_SIZE);
            let mut header = FrameHeader::read_from_bytes(head).expect("exact size");
            checksum = header.chained_checksum(checksum, page);
            header.checksum = checksum.into();
            self.file.write_all_at(header.as_bytes(), frame_offset(pos)).map_err(Error::io_at(
                IoAction::Write,
                &self.path,
                self.frame_no_at(pos),
            ))?;
        }
        Ok(checksum)
    }

    fn frame_checksum(&self, position: u32) -> Result<u32> {
        let mut head = [0u8; FRAME_HEADER_SIZE];
        let head = &mut head[..self.layout.header_size()];
        self.file.read_exact_at(head, self.layout.frame_offset(position)).map_err(Error::io_at(
            IoAction::Read,
            &self.path,
            self.frame_no_at(position),
        ))?;
        Ok(self.layout.decode(head).checksum.get())
    }

    /// Makes the frames written so far durable.
    pub fn sync(&self) -> Result<()> {
        instruments::synced(Synced::Segment);
        self.file.sync_data().map_err(Error::io(IoAction::Sync, &self.path))?;
        // Cleared after the sync, never before: a FULL commit that finds it clear skips
        // syncing this segment. No frame can be written between the sync and the clear:
        // only the writer writes frames, and it syncs its own segment itself; other threads
        // sync only full segments, which nothing writes any more.
        self.frames_unsynced.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Were frames written since the last successful sync?
    pub fn frames_unsynced(&self) -> bool {
        self.frames_unsynced.load(Ordering::SeqCst)
    }

    /// Has the directory been synced since this file was created or opened?
    pub fn entry_durable(&self) -> bool {
        self.entry_durable.load(Ordering::SeqCst)
    }

    /// Records that the directory was synced after this file was created or opened.
    pub fn mark_entry_durable(&self) {
        self.entry_durable.store(true, Ordering::SeqCst);
    }

    /// Syncs the directory holding this file, unless that was done since it was created.
    pub fn make_entry_durable(&self, io: &dyn Io) -> Result<()> {
        if self.entry_durable() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        instruments::synced(Synced::Directory);
        io.sync_dir(dir).map_err(Error::io(IoAction::Sync, dir))?;
        self.mark_entry_durable();
        Ok(())
    }

    /// Drops the frames of the open transaction from position `keep` on. `undo` is called
    /// with the page number of each dropped frame.
    pub fn truncate_uncommitted(&self, keep: u32, undo: &mut dyn FnMut(u32)) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let keep = keep.max(state.committed_frames);
        if keep >= state.frames {
            return Ok(());
        }
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut dropped: Vec<(u32, u32)> = Vec::new();
        index.retain(|&page_no, versions| {
            while versions.last().is_some_and(|&pos| pos >= keep) {
                dropped.push((versions.pop().expect("non-empty"), page_no));
            }
            !versions.is_empty()
        });
        drop(index);
        dropped.sort_unstable();
        for (_, page_no) in dropped {
            undo(page_no);
        }
        state.frames = keep;
        state.recompute_from = state.recompute_from.filter(|&p| p < keep);
        // The chain at `keep` is stale if a kept frame was rewritten; the commit recomputes
        // it (recompute_from), and here we only need the last stored checksum.
        state.last_checksum = if keep == 0 { self.seed } else { self.frame_checksum(keep - 1)? };
        // Cut the file so no dropped frame can ever be mistaken for part of the log.
        self.file.set_len(frame_offset(keep)).map_err(Error::io(IoAction::Truncate, &self.path))?;
        state.file_len = frame_offset(keep);
        if state.unfinished_commit {
            self.sync()?;
            state.unfinished_commit = false;
        }
        Ok(())
    }

    /// Seals the segment: syncs its directory entry (unless done already), writes the index
    /// of latest frames and the trailer, then syncs the file. Only committed frames may be in the
    /// file. A sealed segment is durable, name included: the checkpoint and the upload take
    /// only sealed segments, and recovery never cuts one.
    pub fn seal(&self, io: &dyn Io) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(state.frames, state.committed_frames, "seal with an open transaction");
        if state.sealed {
            return Ok(());
        }
        assert!(state.committed_frames > 0, "seal of an empty segment");
        // The name first: a failure here leaves nothing written to take back.
        self.make_entry_durable(io)?;
        let mut entries: Vec<IndexEntry> = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index
                .iter()
                .map(|(&page_no, versions)| IndexEntry {
                    page_no: page_no.into(),
                    frame_index: (*versions.last().expect("non-empty")).into(),
                })
                .collect()
        };
        entries.sort_unstable_by_key(|e| e.page_no.get());
        let index_bytes = entries.as_bytes();
        let index_offset = self.layout.frame_offset(state.frames);
        let mut trailer = SealTrailer {
            magic: SEAL_MAGIC.into(),
            start_frame_no: self.start_frame_no.into(),
            last_frame_no: (self.start_frame_no + state.frames as u64 - 1).into(),
            index_offset: index_offset.into(),
            index_entry_count: (entries.len() as u32).into(),
            index_checksum: crc32c::crc32c_append(self.salt, index_bytes).into(),
            size_after: state.committed_size_after.into(),
            checksum: 0.into(),
        };
        trailer.checksum = trailer.computed_checksum(self.salt).into();
        let mut buf = Vec::with_capacity(index_bytes.len() + SEAL_TRAILER_SIZE);
        buf.extend_from_slice(index_bytes);
        buf.extend_from_slice(trailer.as_bytes());
        let end = index_offset + buf.len() as u64;
        // The trailer must end the file: preallocated zeros after it are cut first.
        let written = self
            .file
            .write_all_at(&buf, index_offset)
            .and_then(|()| if state.file_len > end { self.file.set_len(end) } else { Ok(()) })
            .map_err(Error::io(IoAction::Write, &self.path))
            .and_then(|()| self.sync());
        if let Err(e) = written {
            // Frames appended later would land over the index, and a trailer left at the end
            // of the file would claim a seal that no longer matches: cut both off. If even
            // that fails, the file ends with a trailer that later frames would not reach
            // past: the segment takes no more frames (until recovery reads it again).
            match self.file.set_len(index_offset) {
                Ok(()) => state.file_len = index_offset,
                Err(cut) => {
                    tracing::error!(path = %self.path.display(), "could not cut a failed seal back: {cut}");
                    state.broken = true;
                }
            }
            return Err(e);
        }
        state.file_len = end;
        state.sealed = true;
        Ok(())
    }

    /// The newest committed frame of every page in this segment: (page_no, position).
    pub fn latest_pages(&self) -> Vec<(u32, u32)> {
        let committed = self.committed_frames();
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .iter()
            .filter_map(|(&page_no, versions)| {
                let n = versions.partition_point(|&pos| pos < committed);
                (n > 0).then(|| (page_no, versions[n - 1]))
            })
            .collect()
    }

    /// Every commit in the segment, oldest first (reads the committed frames again: for
    /// point-in-time restores, not the log's hot paths).
    pub fn commits(&self) -> Result<Vec<CommitInfo>> {
        let mut commits = Vec::new();
        for_each_frame(self.file.as_ref(), &self.path, self.layout, 0, self.committed_frames(), |_, head, _| {
            let header = self.layout.decode(head);
            if header.size_after.get() != 0 {
                commits.push(CommitInfo {
                    frame_no: header.frame_no.get(),
                    size_after: header.size_after.get(),
                    unix_ms: header.commit_unix_ms.get(),
                });
            }
            ControlFlow::Continue(())
        })?;
        Ok(commits)
    }

    /// The newest version, at or before `max_frame_no`, of every page this segment holds
    /// one of: (page_no, position).
    pub fn pages_at(&self, max_frame_no: u64) -> Vec<(u32, u32)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let pages: Vec<u32> = index.keys().copied().collect();
        drop(index);
        pages.into_iter().filter_map(|page_no| Some((page_no, self.find(page_no, max_frame_no)?))).collect()
    }

    /// The whole file of a sealed segment (immutable, so read without locks), for upload.
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let len = self.file.size().map_err(Error::io(IoAction::Read, &self.path))?;
        let mut bytes = vec![0u8; len as usize];
        self.file.read_exact_at(&mut bytes, 0).map_err(Error::io(IoAction::Read, &self.path))?;
        Ok(bytes)
    }

    /// Removes the file. The caller has made sure nobody will look for a page in it again;
    /// readers that still hold the `Arc` keep reading from the open handle.
    pub fn remove(&self, io: &dyn Io) -> Result<()> {
        io.remove_file(&self.path).map_err(Error::io(IoAction::Remove, &self.path))
    }
}

fn read_trailer(file: &dyn IoFile, len: u64, salt: u32) -> Option<SealTrailer> {
    let min = (SEGMENT_HEADER_SIZE + SEAL_TRAILER_SIZE) as u64;
    if len < min {
        return None;
    }
    let mut bytes = [0u8; SEAL_TRAILER_SIZE];
    file.read_exact_at(&mut bytes, len - SEAL_TRAILER_SIZE as u64).ok()?;
    let trailer = SealTrailer::read_from_bytes(&bytes).ok()?;
    (trailer.magic.get() == SEAL_MAGIC && trailer.checksum.get() == trailer.computed_checksum(salt)).then_some(trailer)
}

/// The on-disk index is a convenience for tools; the frames are the truth. A damaged index
/// is reported and the index rebuilt from the (verified) frames is used instead.
fn verify_sealed_index(
    file: &dyn IoFile,
    len: u64,
    path: &Path,
    trailer: &SealTrailer,
    salt: u32,
    rebuilt: &PageIndex,
) -> bool {
    let count = trailer.index_entry_count.get() as usize;
    // The count comes from the file: never allocate more than the file can hold.
    let fits =
        trailer.index_offset.get().checked_add((count * INDEX_ENTRY_SIZE + SEAL_TRAILER_SIZE) as u64) == Some(len);
    let mut bytes = vec![0u8; if fits { count * INDEX_ENTRY_SIZE } else { 0 }];
    let ok = fits
        && file.read_exact_at(&mut bytes, trailer.index_offset.get()).is_ok()
        && crc32c::crc32c_append(salt, &bytes) == trailer.index_checksum.get()
        && count == rebuilt.len()
        && <[IndexEntry]>::ref_from_bytes(&bytes).is_ok_and(|entries| {
            entries.iter().all(|e| rebuilt.get(&e.page_no.get()).and_then(|v| v.last()) == Some(&e.frame_index.get()))
        });
    if !ok {
        tracing::warn!(path = %path.display(), "sealed segment index is damaged; rebuilt it from the frames");
    }
    ok
}

/// Opens a segment file and reads its header: the file, its length, and the header unless
/// the file is shorter than one.
fn read_header(io: &dyn Io, path: &Path) -> Result<(Box<dyn IoFile>, u64, Option<SegmentHeader>)> {
    let file = io.open_read_only(path).map_err(Error::io(IoAction::Open, path))?;
    let len = file.size().map_err(Error::io(IoAction::Read, path))?;
    if len < SEGMENT_HEADER_SIZE as u64 {
        return Ok((file, len, None));
    }
    let mut header_bytes = [0u8; SEGMENT_HEADER_SIZE];
    file.read_exact_at(&mut header_bytes, 0).map_err(Error::io(IoAction::Read, path))?;
    let header = SegmentHeader::read_from_bytes(&header_bytes).expect("exact size");
    Ok((file, len, Some(header)))
}

/// Was this segment's creation cut short by a power cut: a file shorter than a header, or a
/// header whose checksum field was never written (zero) and that does not check out, with
/// nothing in the file showing it was ever synced? A header is synced only with the
/// segment's first sync (see [`Segment::create`]), so a crash before that can leave it
/// missing or torn, and nothing in such a segment was ever promised durable. But a seal
/// trailer (valid or damaged) or a frame that checks out against the header's fields
/// proves the header was written whole: then the header is damage, and refused.
pub(crate) fn creation_cut_short(io: &dyn Io, path: &Path) -> Result<bool> {
    let (file, len, header) = read_header(io, path)?;
    let Some(header) = header else { return Ok(true) };
    if header.checksum.get() != 0 || header.problem().is_none() {
        return Ok(false);
    }
    let salt = header.salt.get();
    let written_after = read_trailer(file.as_ref(), len, salt).is_some()
        || trailer_damage(file.as_ref(), len, &header).is_some()
        || first_frame_checks_out(file.as_ref(), len, &header);
    Ok(!written_after)
}

/// Does frame 0 check out against the header's start and chain seed (the header's fields
/// were written, whatever its checksum says)?
fn first_frame_checks_out(file: &dyn IoFile, len: u64, header: &SegmentHeader) -> bool {
    let Some(layout) = FrameLayout::of_version(header.version.get()) else { return false };
    if len < layout.frame_offset(1) {
        return false;
    }
    let mut frame = vec![0u8; layout.frame_size()];
    if file.read_exact_at(&mut frame, layout.frame_offset(0)).is_err() {
        return false;
    }
    let (head, page) = frame.split_at(layout.header_size());
    let seed = chain_seed(header.salt.get(), header.prev_chain.get());
    frame_checks_out(layout, head, page, header.start_frame_no.get(), 0, seed)
}

/// Frames a valid trailer says the segment holds, if that agrees with where its index starts.
fn sealed_frames(layout: FrameLayout, trailer: &SealTrailer, start_frame_no: u64) -> Option<u32> {
    let frames = trailer.last_frame_no.get().checked_sub(start_frame_no)?.checked_add(1)?;
    let frames = u32::try_from(frames).ok()?;
    (trailer.index_offset.get() == layout.frame_offset(frames)).then_some(frames)
}

/// Whole frames a file of `len` bytes has room for past its header.
fn whole_frames(layout: FrameLayout, len: u64) -> u32 {
    let frames = len.saturating_sub(SEGMENT_HEADER_SIZE as u64) / layout.frame_size() as u64;
    frames.min(u32::MAX as u64) as u32
}

/// Is there a *damaged* seal trailer at the end of the file (one that fails its checksum,
/// yet is laid out as a whole trailer of this segment)? A seal cut short by a crash never
/// looks like that: its write keeps only a prefix, so the trailer's last bytes (the
/// checksum) are zeros or missing, and the file ends elsewhere. Damage found there means
/// the segment was sealed, so synced: it is refused, never cut or resealed.
fn trailer_damage(file: &dyn IoFile, len: u64, header: &SegmentHeader) -> Option<String> {
    if len < (SEGMENT_HEADER_SIZE + SEAL_TRAILER_SIZE) as u64 {
        return None;
    }
    let mut bytes = [0u8; SEAL_TRAILER_SIZE];
    file.read_exact_at(&mut bytes, len - SEAL_TRAILER_SIZE as u64).ok()?;
    let trailer = SealTrailer::read_from_bytes(&bytes).expect("exact size");
    if trailer.checksum.get() == 0 {
        return None;
    }
    let start = header.start_frame_no.get();
    let index_end = |t: &SealTrailer| {
        t.index_offset
            .get()
            .checked_add(t.index_entry_count.get() as u64 * INDEX_ENTRY_SIZE as u64 + SEAL_TRAILER_SIZE as u64)
    };
    // One damaged byte spoils one field: two that agree with the segment show a trailer.
    let layout = FrameLayout::of_version(header.version.get()).unwrap_or(FrameLayout::V3);
    let signs = [
        trailer.magic.get() == SEAL_MAGIC,
        trailer.start_frame_no.get() == start,
        sealed_frames(layout, &trailer, start).is_some(),
        index_end(&trailer) == Some(len),
    ];
    (signs.iter().filter(|&&s| s).count() >= 2).then(|| {
        "the seal trailer is damaged (checksum mismatch): the segment was sealed, so this is not a crash".into()
    })
}

/// Does this file hold a valid header and a seal trailer (or a damaged one)? Recovery asks
/// before removing segments past the end of a log: a sealed one was durable, so finding one
/// there is damage.
pub(crate) fn is_sealed_file(io: &dyn Io, path: &Path) -> Result<bool> {
    Ok(match read_header(io, path)? {
        (file, len, Some(header)) if header.magic.get() == SEGMENT_MAGIC => {
            read_trailer(file.as_ref(), len, header.salt.get()).is_some()
                || trailer_damage(file.as_ref(), len, &header).is_some()
        }
        _ => false,
    })
}

/// Are bytes `from..len` of `file` all zero (preallocated, never written)?
fn zeros_from(file: &dyn IoFile, path: &Path, from: u64, len: u64) -> Result<bool> {
    let mut buf = vec![0u8; len.saturating_sub(from).min(1 << 20) as usize];
    let mut offset = from;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset).map_err(Error::io(IoAction::Read, path))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

/// Calls `visit` with the position, header and page of frames `from..to` in order, reading
/// them in batches, until it returns `Break`. Whole frames only (`to` comes from the length):
/// a failed read is an I/O problem to report, never a reason to cut the log.
fn for_each_frame(
    file: &dyn IoFile,
    path: &Path,
    layout: FrameLayout,
    from: u32,
    to: u32,
    mut visit: impl FnMut(u32, &[u8], &[u8]) -> ControlFlow<()>,
) -> Result<()> {
    let frame_size = layout.frame_size();
    let mut buf = vec![0u8; SCAN_BATCH_FRAMES.min(to.saturating_sub(from)) as usize * frame_size];
    let mut position = from;
    while position < to {
        let batch = (to - position).min(SCAN_BATCH_FRAMES);
        let bytes = &mut buf[..batch as usize * frame_size];
        file.read_exact_at(bytes, layout.frame_offset(position)).map_err(Error::io(IoAction::Read, path))?;
        for frame in bytes.chunks_exact(frame_size) {
            let (head, page) = frame.split_at(layout.header_size());
            if visit(position, head, page).is_break() {
                return Ok(());
            }
            position += 1;
        }
    }
    Ok(())
}

/// Does the frame at `position` check out when chained from `previous` (the checksum before
/// it)? Its number must be the one its position gives, and page 0 is never written.
fn frame_checks_out(
    layout: FrameLayout,
    head: &[u8],
    page: &[u8],
    start_frame_no: u64,
    position: u32,
    previous: u32,
) -> bool {
    let header = layout.decode(head);
    header.frame_no.get() == start_frame_no + position as u64
        && header.page_no.get() != 0
        && layout.chained_checksum(head, previous, page) == header.checksum.get()
}

/// Verifies frames `0..frames_in_file` in order and stops at the first one that fails:
/// wrong frame_no, broken checksum chain, or a short read.
fn scan_frames(
    file: &dyn IoFile,
    path: &Path,
    layout: FrameLayout,
    start_frame_no: u64,
    seed: u32,
    frames_in_file: u32,
) -> Result<ScanResult> {
    let mut result = ScanResult {
        committed_frames: 0,
        committed_checksum: seed,
        committed_size_after: 0,
        committed_unix_ms: 0,
        first_commit_unix_ms: 0,
        index: PageIndex::default(),
        uncommitted_tail: 0,
        first_bad: None,
        synced_commit: false,
    };
    let mut pending: Vec<(u32, u32)> = Vec::new();
    let mut checksum = seed;
    for_each_frame(file, path, layout, 0, frames_in_file, |position, head, page| {
        if !frame_checks_out(layout, head, page, start_frame_no, position, checksum) {
            result.first_bad = Some(position);
            return ControlFlow::Break(());
        }
        let header = layout.decode(head);
        checksum = header.checksum.get();
        pending.push((header.page_no.get(), position));
        if header.size_after.get() != 0 {
            for (page_no, pos) in pending.drain(..) {
                result.index.entry(page_no).or_default().push(pos);
            }
            if result.committed_frames == 0 {
                result.first_commit_unix_ms = header.commit_unix_ms.get();
            }
            result.committed_frames = position + 1;
            result.committed_checksum = checksum;
            result.committed_size_after = header.size_after.get();
            result.committed_unix_ms = header.commit_unix_ms.get();
            result.synced_commit |= header.flags.get() & FRAME_SYNCED_COMMIT != 0;
        }
        ControlFlow::Continue(())
    })?;
    result.uncommitted_tail = pending.len() as u32;
    Ok(result)
}

/// Past a bad frame at `first_bad`, is there proof that it was synced? A crash tears only
/// what was never synced; but a synchronous commit (`FRAME_SYNCED_COMMIT`) returned only
/// after its fsync, which covered every frame before it in the file, and the writer wrote
/// the next frame only after that. So a flagged commit frame past the bad one, followed by
/// a frame chained from that commit's own checksum, shows the bad frame was durable: damage.
///
/// Each frame is checked against the checksum stored in the frame before it, since the
/// chain from the start is broken at the bad frame. Requiring the next frame to chain from
/// the commit itself keeps stale frames out: frames of a rolled-back transaction that a
/// crash brought back (its truncate never synced) chain from their own predecessors, never
/// from a later commit written over them. Returns the frame_nos of the commit and the frame
/// after it.
fn synced_past_bad_frame(
    file: &dyn IoFile,
    path: &Path,
    layout: FrameLayout,
    start_frame_no: u64,
    first_bad: u32,
    frames_in_file: u32,
) -> Result<Option<(u64, u64)>> {
    let mut previous: Option<u32> = None;
    let mut synced_commit_before: Option<u32> = None;
    let mut found = None;
    for_each_frame(file, path, layout, first_bad, frames_in_file, |position, head, page| {
        let chained = previous.is_some_and(|p| frame_checks_out(layout, head, page, start_frame_no, position, p));
        let header = layout.decode(head);
        if let (true, Some(commit)) = (chained, synced_commit_before)
            && commit + 1 == position
        {
            found = Some((start_frame_no + commit as u64, start_frame_no + position as u64));
            return ControlFlow::Break(());
        }
        let flagged = header.size_after.get() != 0 && header.flags.get() & FRAME_SYNCED_COMMIT != 0;
        synced_commit_before = (chained && flagged).then_some(position);
        previous = Some(header.checksum.get());
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

/// What a commit frame records: the database size after the transaction, when it
/// committed, and whether the commit is synchronous (`FRAME_SYNCED_COMMIT`: the caller made
/// every earlier segment durable first).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitFrame {
    pub size_after: u32,
    pub unix_ms: u64,
    pub synced: bool,
}

/// A commit as its frame records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitInfo {
    pub frame_no: u64,
    pub size_after: u32,
    /// 0: not recorded (format version 2).
    pub unix_ms: u64,
}

pub(crate) type SegmentRef = Arc<Segment>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdIo;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    fn read(segment: &Segment, pos: u32) -> u8 {
        let mut buf = vec![0; PAGE_SIZE];
        segment.read_page(pos, &mut buf).unwrap();
        buf[0]
    }

    #[test]
    fn preallocated_zeros_are_overwritten_cut_at_recovery_and_at_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let segment = Segment::create(&StdIo, dir.path(), 1, 1, 1).unwrap();
        let a = page(7);
        for i in 0..3u32 {
            segment.preallocate(1).unwrap();
            segment.write_pages(&[(i + 1, &a)], i, Some(i + 1)).unwrap();
            segment.mark_committed(i + 1);
        }
        assert_eq!(segment.file_len(), PREALLOCATE_BYTES, "one step of zeros holds all three frames");
        let check = Segment::open_read_only(&StdIo, &path).unwrap();
        assert!(check.zeros_after_commits(), "preallocation is no torn transaction");
        assert_eq!(check.committed_frames(), 3);
        drop(segment);

        let recovered = Segment::recover(&StdIo, &path, false).unwrap();
        assert_eq!(recovered.committed_frames(), 3);
        assert_eq!(recovered.file_len(), frame_offset(3), "recovery cut the zeros");
        recovered.preallocate(1).unwrap();
        recovered.trim_preallocation().unwrap();
        assert_eq!(recovered.file_len(), frame_offset(3), "a close gives the zeros back");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), frame_offset(3));
        recovered.preallocate(1).unwrap();
        recovered.seal(&StdIo).unwrap();
        drop(recovered);
        let sealed = Segment::recover(&StdIo, &path, true).unwrap();
        assert!(sealed.is_sealed(), "the trailer ends the file once sealed");
        assert_eq!(sealed.committed_frames(), 3);
    }

    #[test]
    fn a_failed_seal_that_cannot_be_cut_back_takes_no_more_frames() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let failing = armed.clone();
        let io = crate::test_io::HookIo::new(move |operation, _| match operation {
            "sync_data" | "set_len" if failing.load(Ordering::SeqCst) => Err(std::io::Error::other("injected")),
            _ => Ok(()),
        });
        let segment = Segment::create(&io, dir.path(), 1, 1, 1).unwrap();
        segment.write_pages(&[(1, &page(1))], 0, Some(1)).unwrap();
        segment.mark_committed(1);
        // The seal: directory sync, index and trailer written, then its sync fails, and so
        // does the truncate that would take the trailer back.
        armed.store(true, Ordering::SeqCst);
        assert!(segment.seal(&io).is_err());
        assert!(!segment.is_sealed());
        let refused = segment.write_pages(&[(2, &page(2))], 1, Some(2));
        assert!(refused.is_err(), "frames were appended after a trailer that could not be cut back");
    }

    #[test]
    fn readers_find_the_newest_version_within_their_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(&StdIo, dir.path(), 10, 1, 1).unwrap();
        let (a, b) = (page(1), page(2));
        segment.write_pages(&[(1, &a), (2, &a)], 0, Some(2)).unwrap();
        segment.mark_committed(2);
        segment.write_pages(&[(1, &b)], 2, Some(2)).unwrap();
        segment.mark_committed(2);
        assert_eq!(segment.find(1, 11).map(|p| read(&segment, p)), Some(1));
        assert_eq!(segment.find(1, 12).map(|p| read(&segment, p)), Some(2));
        assert_eq!(segment.find(2, u64::MAX), Some(1));
        assert_eq!(segment.find(1, 9), None, "frames before the segment's start");
        assert_eq!(segment.find(3, u64::MAX), None);
        assert_eq!(segment.last_committed_frame_no(), 12);
    }

    #[test]
    fn rewritten_pages_are_rechained_and_survive_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(&StdIo, dir.path(), 1, 1, 1).unwrap();
        let (a, b, c) = (page(1), page(2), page(3));
        // A spilled transaction rewrites page 1 in place, then commits with page 2.
        segment.write_pages(&[(1, &a), (3, &a)], 0, None).unwrap();
        segment.write_pages(&[(1, &b)], 0, None).unwrap();
        assert_eq!(segment.frames(), 2, "page 1 was rewritten in place, not appended");
        segment.write_pages(&[(1, &c), (2, &c)], 0, Some(3)).unwrap();
        segment.mark_committed(3);
        drop(segment);
        let recovered = Segment::recover(&StdIo, &dir.path().join(segment_file_name(1)), false).unwrap();
        assert_eq!(recovered.committed_frames(), 3);
        assert_eq!(recovered.find(1, u64::MAX).map(|p| read(&recovered, p)), Some(3));
        assert_eq!(recovered.find(3, u64::MAX).map(|p| read(&recovered, p)), Some(1));
    }

    #[test]
    fn uncommitted_frames_are_dropped_by_rollback_and_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(&StdIo, dir.path(), 1, 1, 1).unwrap();
        let a = page(1);
        segment.write_pages(&[(1, &a)], 0, Some(1)).unwrap();
        segment.mark_committed(1);
        segment.write_pages(&[(2, &a), (3, &a)], 1, None).unwrap();
        let mut undone = Vec::new();
        segment.truncate_uncommitted(1, &mut |p| undone.push(p)).unwrap();
        assert_eq!(undone, [2, 3]);
        assert_eq!(segment.find(2, u64::MAX), None);
        // Frames of an unfinished transaction left in the file are cut by recovery.
        segment.write_pages(&[(4, &a)], 1, None).unwrap();
        drop(segment);
        let recovered = Segment::recover(&StdIo, &dir.path().join(segment_file_name(1)), false).unwrap();
        assert_eq!(recovered.committed_frames(), 1);
        assert_eq!(recovered.find(4, u64::MAX), None);
        assert_eq!(recovered.file_len(), frame_offset(1));
    }

    /// Commits `pages` (one frame each) as one synchronous transaction at the segment's end.
    fn commit_synced(segment: &Segment, pages: &[u32], byte: u8) {
        let data = page(byte);
        let frames: Vec<(u32, &[u8])> = pages.iter().map(|&p| (p, data.as_slice())).collect();
        segment
            .write_transaction(&frames, segment.frames(), Some(CommitFrame { size_after: 8, unix_ms: 0, synced: true }))
            .unwrap();
        segment.mark_committed(8);
    }

    fn flip_page_byte(path: &Path, position: u32) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let offset = frame_offset(position) + FRAME_HEADER_SIZE as u64 + 100;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
    }

    #[test]
    fn a_bad_frame_before_a_synchronous_commit_that_was_followed_is_damage_and_nothing_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let segment = Segment::create(&StdIo, dir.path(), 1, 1, 1).unwrap();
        commit_synced(&segment, &[1, 2], 1);
        commit_synced(&segment, &[3], 2);
        commit_synced(&segment, &[4], 3);
        drop(segment);
        flip_page_byte(&path, 0);
        let before = std::fs::read(&path).unwrap();
        let err = Segment::recover(&StdIo, &path, false).err().expect("damage refused");
        let message = err.to_string();
        assert!(message.contains("frame_no 1") && message.contains("not a crash"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "the refused segment was left as found");
        assert!(Segment::open_read_only(&StdIo, &path).is_err(), "verify's read-only look refuses it too");
    }

    #[test]
    fn a_torn_last_transaction_is_cut_even_if_its_commit_frame_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let segment = Segment::create(&StdIo, dir.path(), 1, 1, 1).unwrap();
        commit_synced(&segment, &[1], 1);
        // Its sync never returned: the power cut kept the commit frame but tore the first.
        commit_synced(&segment, &[2, 3, 4], 2);
        drop(segment);
        flip_page_byte(&path, 1);
        let recovered = Segment::recover(&StdIo, &path, false).unwrap();
        assert_eq!(recovered.committed_frames(), 1, "the unsynced transaction is a crash's, cut");
    }

    #[test]
    fn frames_of_a_rolled_back_transaction_brought_back_by_a_crash_are_no_proof_of_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let segment = Segment::create(&StdIo, dir.path(), 1, 1, 1).unwrap();
        commit_synced(&segment, &[1], 1);
        // A spilled transaction rolled back: its frames were cut, but the cut was never synced.
        let spilled = page(9);
        let frames: Vec<(u32, &[u8])> = (2..7).map(|p| (p, spilled.as_slice())).collect();
        segment.write_pages(&frames, 1, None).unwrap();
        let stale = std::fs::read(&path).unwrap();
        segment.truncate_uncommitted(1, &mut |_| {}).unwrap();
        // The next transaction commits over the first two of them, then the power cut tears
        // its first frame and brings the rolled-back ones after it back.
        commit_synced(&segment, &[2, 3], 2);
        drop(segment);
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let from = frame_offset(3) as usize;
            file.write_all_at(&stale[from..frame_offset(6) as usize], from as u64).unwrap();
        }
        flip_page_byte(&path, 1);
        let recovered = Segment::recover(&StdIo, &path, false).unwrap();
        assert_eq!(recovered.committed_frames(), 1, "a crash's state: the torn transaction is cut");
    }

    #[test]
    fn sealed_segment_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(&StdIo, dir.path(), 5, 1, 1).unwrap();
        let (a, b) = (page(1), page(2));
        segment.write_pages(&[(7, &a), (8, &a)], 0, Some(8)).unwrap();
        segment.mark_committed(8);
        segment.write_pages(&[(7, &b)], 2, Some(8)).unwrap();
        segment.mark_committed(8);
        segment.seal(&StdIo).unwrap();
        drop(segment);
        let recovered = Segment::recover(&StdIo, &dir.path().join(segment_file_name(5)), true).unwrap();
        assert!(recovered.is_sealed());
        assert_eq!(recovered.committed_size_after(), 8);
        let mut latest = recovered.latest_pages();
        latest.sort();
        assert_eq!(latest, [(7, 2), (8, 1)]);
    }
}
