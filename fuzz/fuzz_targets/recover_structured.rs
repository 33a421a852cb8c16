//! Structure-aware fuzzing of recovery and `verify`: the input does not spell out segment
//! files byte by byte (most such files die at the first checksum); it *describes* a log —
//! up to four segments continuing the database file's checkpoint mark, their frames, which
//! are committed and which sealed — that this target writes out correctly, then applies the
//! input's mutations to header, frame, index and trailer fields and **recomputes the
//! checksums** of what it changed, so damage reaches the checks behind the checksums.
//!
//! What must hold: `verify` and an open (`inspect`, which recovers) return errors for
//! damage, never panic, and no single allocation of ours is larger than the files on disk
//! plus the fixed scan buffers (a length or count read from a file is never trusted).
//!
//! And the recovery planner (`fuzz_internals::plan_log`: the survey and plan `verify` and an
//! open share) is checked against this target's own reading of the files: the kept segments'
//! frames run on from the mark and from one another, each continuing the chain before it;
//! covered ones lie wholly at or below the mark; nothing sealed is cut, and the log ends
//! before a cut file's start; only full segments before the newest are sealed at open. Then
//! the open carries it out: afterwards the directory holds exactly the kept files (sealed as
//! planned, the newest cut back to its commits), and a new plan keeps them all. A refused log
//! is left byte for byte as found. `verify` and `inspect_read_only` agree with the open: all
//! refuse, or all accept with the same last frame_no.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run recover_structured -s none -- -max_len=4096`.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use libsql_wal::format::{
    CheckpointMark, DB_HEADER_MARK_OFFSET, FRAME_HEADER_SIZE, FrameHeader, INDEX_ENTRY_SIZE, IndexEntry, PAGE_SIZE,
    SEAL_MAGIC, SEAL_TRAILER_SIZE, SEGMENT_HEADER_SIZE, SealTrailer, SegmentHeader, chain_seed, frame_offset,
};
use libsql_wal::fuzz_internals::{PlannedFate, PlannedFile, PlannedLog, plan_log};
use libsql_wal::{
    Error, LibsqlWalManager, LogInfo, VerifyReport, WalConfig, inspect, inspect_read_only, io::StdIo, verify,
};
use zerocopy::{FromBytes, IntoBytes};

/// The largest single allocation allowed while recovering the current input (0: no check).
static LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Fails an input that makes us allocate more than the files could justify.
struct Bounded;

// SAFETY: every call is forwarded unchanged to the system allocator; the check only reads an
// atomic and never allocates.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let limit = LIMIT.load(Ordering::Relaxed);
        if limit != 0 && layout.size() > limit {
            // An abort, not a panic: a panic inside the allocator would allocate again.
            eprintln!("allocation of {} bytes with at most {limit} bytes of files", layout.size());
            std::process::abort();
        }
        // SAFETY: the caller's layout, as the GlobalAlloc contract requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Scan buffers recovery allocates whatever the file's size: 256 frames, and up to 1 MiB of
/// zeros checked at once.
const FIXED_BUFFERS: usize = 256 * (FRAME_HEADER_SIZE + PAGE_SIZE) + (1 << 20);

static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().expect("temp dir"));
/// A small valid database file with its checkpoint mark.
static DB: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("seed.db");
    let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig::default());
    let conn = libsql_wal::open_connection(&path, &manager).expect("open");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").expect("create");
    drop(conn);
    std::fs::read(&path).expect("read")
});

/// Reads the input a byte or a number at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }
    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | (self.byte() as u64) << (8 * i))
    }
}

/// One segment file as written, with where its structures are.
struct SegmentFile {
    bytes: Vec<u8>,
    frames: u32,
    index_entries: u32,
    sealed: bool,
}

/// Writes a correct segment continuing `prev_chain`: `frames` frames, commits where the input
/// says (always on the last one if sealed), sealed or not. Returns it and its end chain value.
fn write_segment(input: &mut Input, start: u64, lineage: u32, prev_chain: u32, sealed: bool) -> (SegmentFile, u32) {
    let frames = 1 + input.below(6) as u32;
    let salt = input.byte() as u32 * 0x0101_0101;
    let header = SegmentHeader::new(start, salt, 1, lineage, prev_chain);
    let mut bytes = header.as_bytes().to_vec();
    let mut checksum = chain_seed(salt, prev_chain);
    let mut latest = std::collections::BTreeMap::new();
    for position in 0..frames {
        let page_no = 1 + input.below(4) as u32;
        let last = position + 1 == frames;
        let size_after = if (sealed && last) || input.below(3) == 0 { 4 } else { 0 };
        let page = vec![input.byte(); PAGE_SIZE];
        let mut frame = FrameHeader::new(page_no, size_after, start + position as u64);
        checksum = frame.chained_checksum(checksum, &page);
        frame.checksum = checksum.into();
        bytes.extend_from_slice(frame.as_bytes());
        bytes.extend_from_slice(&page);
        latest.insert(page_no, position);
    }
    let mut index_entries = 0;
    if sealed {
        let entries: Vec<IndexEntry> = latest
            .iter()
            .map(|(&page_no, &at)| IndexEntry { page_no: page_no.into(), frame_index: at.into() })
            .collect();
        index_entries = entries.len() as u32;
        let index = entries.as_bytes();
        let mut trailer = SealTrailer {
            magic: SEAL_MAGIC.into(),
            start_frame_no: start.into(),
            last_frame_no: (start + frames as u64 - 1).into(),
            index_offset: frame_offset(frames).into(),
            index_entry_count: index_entries.into(),
            index_checksum: crc32c::crc32c_append(salt, index).into(),
            size_after: 4.into(),
            checksum: 0.into(),
        };
        trailer.checksum = trailer.computed_checksum(salt).into();
        bytes.extend_from_slice(index);
        bytes.extend_from_slice(trailer.as_bytes());
    }
    (SegmentFile { bytes, frames, index_entries, sealed }, checksum)
}

/// Changes one field the input picks to a value it gives, then makes the structure's
/// checksums right again (header; every frame from the changed one on; index and trailer).
fn mutate(input: &mut Input, file: &mut SegmentFile) {
    let value = input.u64();
    let len = file.bytes.len();
    match input.below(4) {
        // Every arm first checks that what it changes is still in the file (an earlier
        // mutation may have cut it).
        0 if len >= SEGMENT_HEADER_SIZE => {
            let mut header = SegmentHeader::read_from_bytes(&file.bytes[..SEGMENT_HEADER_SIZE]).expect("header");
            match input.below(5) {
                0 => header.start_frame_no = value.into(),
                1 => header.version = (value as u32).into(),
                2 => header.lineage = (value as u32).into(),
                3 => header.prev_chain = (value as u32).into(),
                _ => header.page_size = (value as u32).into(),
            }
            header.checksum = header.computed_checksum().into();
            file.bytes[..SEGMENT_HEADER_SIZE].copy_from_slice(header.as_bytes());
            rechain(file, 0);
        }
        1 if frame_offset(file.frames) as usize <= len => {
            let position = input.below(file.frames as u8) as u32;
            let at = frame_offset(position) as usize;
            let mut frame = FrameHeader::read_from_bytes(&file.bytes[at..at + FRAME_HEADER_SIZE]).expect("frame");
            match input.below(3) {
                0 => frame.page_no = (value as u32).into(),
                1 => frame.size_after = (value as u32).into(),
                _ => frame.frame_no = value.into(),
            }
            file.bytes[at..at + FRAME_HEADER_SIZE].copy_from_slice(frame.as_bytes());
            rechain(file, position);
        }
        2 if file.sealed && len >= frame_offset(file.frames) as usize + SEAL_TRAILER_SIZE => {
            let end = file.bytes.len();
            let mut trailer = SealTrailer::read_from_bytes(&file.bytes[end - SEAL_TRAILER_SIZE..]).expect("trailer");
            match input.below(5) {
                0 => trailer.index_entry_count = (value as u32).into(),
                1 => trailer.index_offset = value.into(),
                2 => trailer.last_frame_no = value.into(),
                3 => trailer.start_frame_no = value.into(),
                _ => trailer.size_after = (value as u32).into(),
            }
            file.bytes[end - SEAL_TRAILER_SIZE..].copy_from_slice(trailer.as_bytes());
            reseal(file);
        }
        3 if file.sealed
            && file.index_entries > 0
            && len >= frame_offset(file.frames) as usize + file.index_entries as usize * INDEX_ENTRY_SIZE =>
        {
            let entry = input.below(file.index_entries as u8) as usize;
            let at = frame_offset(file.frames) as usize + entry * INDEX_ENTRY_SIZE;
            let bytes = if input.byte() % 2 == 0 { (value as u32).to_le_bytes() } else { [0; 4] };
            file.bytes[at + 4 * (input.below(2) as usize)..][..4].copy_from_slice(&bytes);
            reseal(file);
        }
        _ => {
            // Cut the file somewhere: what a truncation or a lost tail leaves.
            file.bytes.truncate(len - (value as usize % len.max(1)));
        }
    }
}

fn header_of(file: &SegmentFile) -> Option<SegmentHeader> {
    SegmentHeader::read_from_bytes(file.bytes.get(..SEGMENT_HEADER_SIZE)?).ok()
}

/// Recomputes the frame checksum chain from frame `from` on, as the header seeds it.
fn rechain(file: &mut SegmentFile, from: u32) {
    let Some(header) = header_of(file) else { return };
    let mut checksum = if from == 0 {
        chain_seed(header.salt.get(), header.prev_chain.get())
    } else {
        let at = frame_offset(from - 1) as usize;
        FrameHeader::read_from_bytes(&file.bytes[at..at + FRAME_HEADER_SIZE]).expect("frame").checksum.get()
    };
    for position in from..file.frames {
        let at = frame_offset(position) as usize;
        if at + FRAME_HEADER_SIZE + PAGE_SIZE > file.bytes.len() {
            return;
        }
        let (head, rest) = file.bytes[at..].split_at_mut(FRAME_HEADER_SIZE);
        let mut frame = FrameHeader::read_from_bytes(head).expect("frame");
        checksum = frame.chained_checksum(checksum, &rest[..PAGE_SIZE]);
        frame.checksum = checksum.into();
        head.copy_from_slice(frame.as_bytes());
    }
}

/// Recomputes the index and trailer checksums of a sealed file as laid out.
fn reseal(file: &mut SegmentFile) {
    let Some(header) = header_of(file) else { return };
    let salt = header.salt.get();
    let end = file.bytes.len();
    let index_start = frame_offset(file.frames) as usize;
    if end < index_start + SEAL_TRAILER_SIZE {
        return;
    }
    let mut trailer = SealTrailer::read_from_bytes(&file.bytes[end - SEAL_TRAILER_SIZE..]).expect("trailer");
    trailer.index_checksum = crc32c::crc32c_append(salt, &file.bytes[index_start..end - SEAL_TRAILER_SIZE]).into();
    trailer.checksum = trailer.computed_checksum(salt).into();
    file.bytes[end - SEAL_TRAILER_SIZE..].copy_from_slice(trailer.as_bytes());
}

fn write_log(input: &mut Input, log: &Path) -> usize {
    let mark = CheckpointMark::decode(&DB[DB_HEADER_MARK_OFFSET as usize..]).unwrap_or_default();
    let (mut start, mut chain) = (mark.frame_no + 1, mark.chain);
    let count = 1 + input.below(4) as usize;
    let mut files = Vec::new();
    for i in 0..count {
        let sealed = i + 1 < count || input.below(2) == 0;
        let (file, end_chain) = write_segment(input, start, mark.lineage, chain, sealed);
        start += file.frames as u64;
        chain = end_chain;
        files.push(file);
    }
    for _ in 0..input.below(4) {
        let target = input.below(files.len() as u8) as usize;
        mutate(input, &mut files[target]);
    }
    let mut total = 0;
    let mut first_frame_no = mark.frame_no + 1;
    for file in &files {
        // Named by the start frame it was written for (a mutated header may say otherwise).
        std::fs::write(log.join(format!("{first_frame_no:020}.seg")), &file.bytes).expect("segment");
        first_frame_no += file.frames as u64;
        total += file.bytes.len();
    }
    total
}

/// This target's own reading of a segment file, as FORMAT.md describes the format and apart
/// from the crate's scan: a valid header, whether a valid seal trailer ends the file, and the
/// frames that check out from the first on, up to the last commit among them.
struct Reading {
    start: u64,
    lineage: u32,
    prev_chain: u32,
    committed: u32,
    /// The chain value at the last commit (`prev_chain` without one).
    end_chain: u32,
    sealed: bool,
}

impl Reading {
    /// frame_no of the last commit, `start - 1` without one.
    fn last(&self) -> u64 {
        self.start + self.committed as u64 - 1
    }
}

fn read_segment(bytes: &[u8]) -> Option<Reading> {
    let header = SegmentHeader::read_from_bytes(bytes.get(..SEGMENT_HEADER_SIZE)?).ok()?;
    if header.problem().is_some() {
        return None;
    }
    let (start, salt, prev_chain) = (header.start_frame_no.get(), header.salt.get(), header.prev_chain.get());
    let trailer = bytes
        .len()
        .checked_sub(SEAL_TRAILER_SIZE)
        .filter(|&at| at >= SEGMENT_HEADER_SIZE)
        .and_then(|at| SealTrailer::read_from_bytes(&bytes[at..]).ok())
        .filter(|t| t.magic.get() == SEAL_MAGIC && t.checksum.get() == t.computed_checksum(salt));
    let whole_frames = ((bytes.len() - SEGMENT_HEADER_SIZE) / (FRAME_HEADER_SIZE + PAGE_SIZE)) as u64;
    let frames = match &trailer {
        Some(t) => t.last_frame_no.get().saturating_sub(start).saturating_add(1).min(whole_frames),
        None => whole_frames,
    };
    let mut reading = Reading {
        start,
        lineage: header.lineage.get(),
        prev_chain,
        committed: 0,
        end_chain: prev_chain,
        sealed: trailer.is_some(),
    };
    let mut checksum = chain_seed(salt, prev_chain);
    for position in 0..frames as u32 {
        let at = frame_offset(position) as usize;
        let (head, page) = bytes[at..at + FRAME_HEADER_SIZE + PAGE_SIZE].split_at(FRAME_HEADER_SIZE);
        let frame = FrameHeader::read_from_bytes(head).ok()?;
        let checks_out = frame.frame_no.get() == start + position as u64
            && frame.page_no.get() != 0
            && frame.chained_checksum(checksum, page) == frame.checksum.get();
        if !checks_out {
            break;
        }
        checksum = frame.checksum.get();
        if frame.size_after.get() != 0 {
            (reading.committed, reading.end_chain) = (position + 1, checksum);
        }
    }
    Some(reading)
}

/// The segment files of the log directory and their bytes, oldest first (none once an open
/// removed the directory).
fn segment_files(log: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(log) else { return Vec::new() };
    let mut paths: Vec<PathBuf> =
        entries.map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("segment"))).collect()
}

/// Checks an accepted plan against the files it was made from; returns the last frame_no
/// of the recovered log (as `SharedWal::open`'s last commit reckons it).
fn check_plan(plan: &PlannedLog, files: &[(PathBuf, Vec<u8>)], mark: Option<CheckpointMark>) -> u64 {
    let paths: Vec<&PathBuf> = files.iter().map(|(p, _)| p).collect();
    assert_eq!(plan.files.iter().map(|f| &f.path).collect::<Vec<_>>(), paths, "the plan covers every file");
    let rank = |fate: &PlannedFate| match fate {
        PlannedFate::Covered => 0,
        PlannedFate::Kept { .. } => 1,
        PlannedFate::Cut => 2,
    };
    assert!(plan.files.is_sorted_by_key(|f| rank(&f.fate)), "covered, then kept, then cut: {plan:?}");
    let newest_kept = plan.files.iter().rposition(|f| matches!(f.fate, PlannedFate::Kept { .. }));
    let mut log_end = mark.map(|m| m.frame_no);
    let mut history = mark.filter(|m| m.lineage != 0).map(|m| (m.lineage, m.chain));
    let mut last_commit = None;
    let mut first_cut = true;
    for (i, (file, (_, bytes))) in plan.files.iter().zip(files).enumerate() {
        let reading = read_segment(bytes);
        match file.fate {
            PlannedFate::Covered => {
                let (reading, mark) = (reading.expect("a covered segment reads"), mark.expect("covered needs a mark"));
                assert!(reading.committed > 0 && reading.last() <= mark.frame_no, "covered: {file:?}");
            }
            PlannedFate::Kept { sealed_at_open } => {
                let reading = reading.expect("a kept segment reads");
                assert_eq!(file.frames, Some((reading.start, reading.last())), "kept frames: {file:?}");
                assert_eq!(file.sealed, reading.sealed, "kept seal: {file:?}");
                if let Some(end) = log_end {
                    assert_eq!(reading.start, end + 1, "kept segments run on: {file:?}");
                }
                if let Some(before) = history {
                    assert_eq!((reading.lineage, reading.prev_chain), before, "kept segments chain: {file:?}");
                }
                assert_eq!(sealed_at_open, !reading.sealed && Some(i) != newest_kept, "sealed at open: {file:?}");
                (log_end, history) = (Some(reading.last()), Some((reading.lineage, reading.end_chain)));
                if reading.committed > 0 {
                    last_commit = Some(reading.last());
                }
            }
            PlannedFate::Cut => {
                assert!(!reading.as_ref().is_some_and(|r| r.sealed), "a sealed file is never cut: {file:?}");
                if first_cut && let (Some(reading), Some(end)) = (&reading, log_end) {
                    assert!(reading.start > end + 1, "a cut starts past a gap: {file:?}");
                }
                first_cut = false;
            }
        }
    }
    assert_eq!(plan.cut_reason.is_some(), !first_cut, "a reason for every cut");
    let oldest_kept = plan.files.iter().find(|f| matches!(f.fate, PlannedFate::Kept { .. }));
    last_commit.unwrap_or_else(|| match oldest_kept.and_then(|f| f.frames) {
        Some((first, _)) => first - 1,
        None => mark.map_or(0, |m| m.frame_no),
    })
}

/// After an open carried out `plan`: the directory holds exactly the kept files, those to
/// seal are sealed, the newest is cut back to its last commit, and a new plan keeps them all.
fn check_carried_out(plan: &PlannedLog, log: &Path, mark: Option<CheckpointMark>, opened: &LogInfo) {
    let kept: Vec<&PlannedFile> = plan.files.iter().filter(|f| matches!(f.fate, PlannedFate::Kept { .. })).collect();
    let after = segment_files(log);
    let kept_paths: Vec<&PathBuf> = kept.iter().map(|f| &f.path).collect();
    assert_eq!(after.iter().map(|(p, _)| p).collect::<Vec<_>>(), kept_paths, "the open keeps the kept files");
    assert_eq!(opened.segments.iter().map(|s| &s.path).collect::<Vec<_>>(), kept_paths, "the open's segments");
    for (i, (file, (_, bytes))) in kept.iter().zip(&after).enumerate() {
        let reading = read_segment(bytes).expect("a kept file reads after the open");
        if file.fate == (PlannedFate::Kept { sealed_at_open: true }) {
            assert!(reading.sealed, "sealed at open: {file:?}");
        }
        if i + 1 == kept.len() && !reading.sealed {
            assert_eq!(bytes.len() as u64, frame_offset(reading.committed), "the newest is cut back: {file:?}");
        }
    }
    if after.is_empty() {
        return;
    }
    let again = plan_log(log, mark).expect("a recovered log plans again");
    let clean = again.files.iter().all(|f| f.fate == PlannedFate::Kept { sealed_at_open: false });
    assert!(clean && again.cut_reason.is_none(), "a recovered log is kept whole: {again:?}");
}

/// `verify` refuses what the planner refuses (reporting the same error), and reads the rest.
fn check_verify_agrees(planned: &Result<PlannedLog, Error>, report: &VerifyReport) {
    let damaged = report.lines.iter().any(|l| l == "integrity_check skipped: the log is damaged");
    match planned {
        Ok(_) => assert!(!damaged, "verify refuses a log the planner accepts: {report:?}"),
        Err(Error::Io { .. }) => {}
        Err(e) => {
            let line = format!("ERROR    {e}");
            assert!(damaged && report.lines.contains(&line), "verify does not report {e}: {report:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let db = DIR.path().join("d.db");
    let log = DIR.path().join("d.db-wal");
    let _ = std::fs::remove_dir_all(&log);
    std::fs::create_dir_all(&log).expect("log dir");
    std::fs::write(&db, &*DB).expect("db");
    let files = write_log(&mut Input(data), &log) + DB.len();
    let mark = CheckpointMark::decode(&DB[DB_HEADER_MARK_OFFSET as usize..]);
    let before = segment_files(&log);
    let config = WalConfig { checkpoint_on_close: false, segment_age_max: None, ..Default::default() };
    let manager = LibsqlWalManager::new(StdIo::shared(), config);
    LIMIT.store(files + FIXED_BUFFERS, Ordering::Relaxed);
    // Damage must come back as errors: any panic (or oversized allocation) is a finding.
    let planned = plan_log(&log, mark);
    let verified = verify(&db, &manager);
    let read_only = inspect_read_only(&db, &manager);
    let opened = inspect(&db, &manager);
    LIMIT.store(0, Ordering::Relaxed);
    if let Ok(report) = &verified {
        check_verify_agrees(&planned, report);
    }
    match (&planned, &read_only, &opened) {
        (Ok(plan), Ok(read_only), Ok(opened)) => {
            let last = check_plan(plan, &before, mark);
            assert_eq!((read_only.last_frame_no, opened.last_frame_no), (last, last), "the last frame_no");
            check_carried_out(plan, &log, mark, opened);
        }
        (Err(_), Err(_), Err(_)) => assert!(segment_files(&log) == before, "a refused log is left as found"),
        _ => panic!(
            "the planner, inspect_read_only and the open disagree: {:?} / {:?} / {:?}",
            planned.as_ref().map(|_| ()),
            read_only.as_ref().map(|i| i.last_frame_no),
            opened.as_ref().map(|i| i.last_frame_no)
        ),
    }
});
