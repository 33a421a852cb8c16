//! Recovery: what an open finds in a log directory, decided before anything changes.
//!
//! [`plan_recovery`] reads every segment and decides what is kept, what is covered by the
//! database file's checkpoint mark (removed), where the log ends (files past it cut) and
//! what no crash can leave (refused, with the reason); it changes no file. `SharedWal::open`
//! then carries the plan out ([`carry_out`]); `verify` and `info` only report it. The rules
//! are FORMAT.md's *Recovery* table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, PAGE_SIZE};
use crate::io::{Io, IoFile};
use crate::log::Snapshot;
use crate::segment::{Segment, SegmentRef};

/// What recovery found in a log directory, and what it will do about it. Computed without
/// changing any file ([`plan_recovery`]); `open` then carries it out ([`carry_out`]) and
/// `verify` only reports it.
pub(crate) struct RecoveryPlan {
    /// The log, oldest first, every segment verified.
    pub kept: Vec<Segment>,
    /// Segments wholly covered by the database file's checkpoint mark: leftovers of an
    /// interrupted cleanup, removed.
    pub covered: Vec<Segment>,
    /// Files past the end of the log (a power cut lost the end before them), removed, and why.
    pub cut: Vec<PathBuf>,
    pub cut_reason: Option<String>,
    /// The history of the log, and the chain value before its first kept segment.
    pub lineage: u32,
    pub base_chain: u32,
}

/// Reads every segment of the log and decides what recovery keeps, removes and refuses,
/// changing nothing. `mark` is the database file's checkpoint mark; `None` (torn or foreign)
/// means unknown: then nothing is taken as covered and the oldest segment may start anywhere.
///
/// The log is a prefix, as SQLite's is: it ends at the first segment whose creation was cut
/// short, or at a gap in frame numbers before an unsealed segment (a power cut lost the end
/// of the segment before it, or a whole segment, under `synchronous=NORMAL`). Those files
/// and every later one are cut: none of their commits was promised durable, since a FULL
/// commit syncs every segment before its own (`SharedWal::make_durable_through`). What a
/// crash cannot leave is refused: a gap before a *sealed* segment, a sealed file past the
/// end, a segment that does not continue the chain of the one before it (or of the mark),
/// or any damage inside a segment that was sealed.
pub(crate) fn plan_recovery(
    io: &dyn Io,
    log_dir: &Path,
    mark: Option<CheckpointMark>,
    read_only: bool,
) -> Result<RecoveryPlan> {
    let paths = crate::segment::list_segment_files(io, log_dir)?;
    let mark_frame_no = mark.map(|m| m.frame_no);
    let mut plan = RecoveryPlan {
        kept: Vec::new(),
        covered: Vec::new(),
        cut: Vec::new(),
        cut_reason: None,
        lineage: 0,
        base_chain: 0,
    };
    for (i, path) in paths.iter().enumerate() {
        if crate::segment::creation_cut_short(io, path)? {
            check_creation_could_be_cut_short(&plan, mark_frame_no, path)?;
            plan.cut_reason = Some(format!("the creation of {} was cut short (no complete header)", path.display()));
            plan.cut = paths[i..].to_vec();
            break;
        }
        let segment =
            if read_only { Segment::open_read_only(io, path)? } else { Segment::open_verified(io, path, false)? };
        if let Some(mark) = mark_frame_no
            && plan.kept.is_empty()
            && segment.committed_frames() > 0
            && segment.last_committed_frame_no() <= mark
        {
            plan.covered.push(segment);
            continue;
        }
        let expected = match (plan.kept.last(), mark_frame_no) {
            (Some(previous), _) => Some(previous.last_committed_frame_no() + 1),
            (None, Some(mark)) => Some(mark + 1),
            (None, None) => None,
        };
        if let Some(expected) = expected
            && segment.start_frame_no != expected
        {
            if segment.is_sealed() || segment.start_frame_no < expected {
                let reason = format!(
                    "segment starts at frame_no {} but the log (or the database file) ends at {}: frames are missing",
                    segment.start_frame_no,
                    expected - 1
                );
                return Err(Error::corrupt(path, reason));
            }
            plan.cut_reason = Some(format!(
                "{} starts at frame_no {} but the log ends at {}: a power cut lost the end of the log before it",
                path.display(),
                segment.start_frame_no,
                expected - 1
            ));
            plan.cut = paths[i..].to_vec();
            break;
        }
        check_continues(&plan, mark, &segment)?;
        plan.kept.push(segment);
    }
    refuse_cut_before_synced_commit(io, &plan)?;
    for path in &plan.cut {
        if crate::segment::is_sealed_file(io, path)? {
            let first = plan.cut.first().map_or_else(String::new, |p| p.display().to_string());
            let reason = format!("sealed, but the log ends before it (at {first}): frames are missing");
            return Err(Error::corrupt(path, reason));
        }
    }
    (plan.lineage, plan.base_chain) = match (plan.kept.first(), mark) {
        (Some(oldest), _) => (oldest.lineage, oldest.prev_chain),
        (None, Some(mark)) if mark.lineage != 0 => (mark.lineage, mark.chain),
        _ => {
            // A new history: its chain starts from its own lineage.
            let lineage = io.random_u32().max(1);
            (lineage, lineage)
        }
    };
    Ok(plan)
}

/// A segment whose creation a crash cut short (no complete header) starts after the end of
/// the log before it: segments are created each from the last commit of the one before (or
/// from the database file's mark), and frame numbers start at 1. One whose name starts
/// within the log (an empty `00000000000000000000.seg`, or a file named below the mark or
/// inside a kept segment) is damage or a stranger's file, never a crash's: refused, so that
/// it never ends the log before the real segments after it.
fn check_creation_could_be_cut_short(plan: &RecoveryPlan, mark_frame_no: Option<u64>, path: &Path) -> Result<()> {
    let log_end = match (plan.kept.last(), plan.covered.last()) {
        (Some(previous), _) => previous.last_committed_frame_no(),
        (None, covered) => mark_frame_no.max(covered.map(|s| s.last_committed_frame_no())).unwrap_or(0),
    };
    let start = crate::segment::start_of_file_name(path).unwrap_or(0);
    if start > log_end {
        return Ok(());
    }
    Err(Error::corrupt(
        path,
        format!(
            "segment file without a complete header, but its name starts at frame_no {start}, within the log \
             (which ends at {log_end}): no crash leaves that (damage, or a file that is not ours); nothing was changed"
        ),
    ))
}

/// Refuses to end the log early when a file past the cut holds a synchronous commit: that
/// frame was written only once every earlier segment was durable (`FRAME_SYNCED_COMMIT`),
/// so what made the log look cut (a missing or short segment, a gap) is damage, not a crash.
fn refuse_cut_before_synced_commit(io: &dyn Io, plan: &RecoveryPlan) -> Result<()> {
    let Some(first) = plan.cut.first() else { return Ok(()) };
    for path in &plan.cut {
        // A file that does not even open verified is no evidence either way.
        if Segment::open_read_only(io, path).is_ok_and(|s| s.holds_synced_commit) {
            let reason = format!(
                "{}, but {} holds a synchronous commit made after everything before it was durable: frames \
                 were lost after they were synced (damage, not a crash); nothing was changed",
                plan.cut_reason.as_deref().unwrap_or("the log ends early"),
                path.display()
            );
            return Err(Error::corrupt(first, reason));
        }
    }
    Ok(())
}

/// Refuses a segment that does not continue the history of the one before it (or of the
/// database file's mark, when it starts right after it): frames of another history, whatever
/// their numbers. No crash leaves that: a segment is created from its predecessor's last commit.
fn check_continues(plan: &RecoveryPlan, mark: Option<CheckpointMark>, segment: &Segment) -> Result<()> {
    let before = match (plan.kept.last(), mark) {
        (Some(previous), _) => Some((previous.lineage, previous.end_chain(), "the segment before it")),
        (None, Some(mark)) if mark.lineage != 0 && segment.start_frame_no == mark.frame_no + 1 => {
            Some((mark.lineage, mark.chain, "the database file's checkpoint mark"))
        }
        _ => None,
    };
    match before {
        Some((lineage, chain, what)) if (segment.lineage, segment.prev_chain) != (lineage, chain) => {
            Err(Error::corrupt(
                &segment.path,
                format!(
                    "does not continue the history of {what} (lineage {:08x}, chain {:08x} expected; it has {:08x}, {:08x}): \
                 frames of another database",
                    lineage, chain, segment.lineage, segment.prev_chain
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Carries out a plan: removes covered segments and the files past the end of the log, seals
/// the full segments a crash left unsealed, cuts the torn end of the newest. Newest first in
/// the result.
pub(crate) fn carry_out(io: &dyn Io, log_dir: &Path, plan: RecoveryPlan) -> Result<Vec<SegmentRef>> {
    for segment in &plan.covered {
        tracing::info!(path = %segment.path.display(), "removing a segment already in the database file");
        segment.remove(io)?;
    }
    if let Some(first) = plan.cut.first() {
        tracing::warn!(
            from = %first.display(),
            files = plan.cut.len(),
            "recovery: the log ends before this segment (a power cut lost unsynced commits); removing it and later ones"
        );
        for path in &plan.cut {
            io.remove_file(path).map_err(Error::io(IoAction::Remove, path))?;
        }
    }
    if !plan.covered.is_empty() || !plan.cut.is_empty() {
        io.sync_dir(log_dir).map_err(Error::io(IoAction::Sync, log_dir))?;
    }
    let mut segments: Vec<SegmentRef> = plan.kept.into_iter().map(Arc::new).collect();
    if let Some((newest, complete)) = segments.split_last() {
        for segment in complete.iter().filter(|s| !s.is_sealed()) {
            segment.seal(io)?;
        }
        newest.cut_torn_end()?;
    }
    segments.reverse();
    Ok(segments)
}

/// While a log exists nothing but us writes the database file, so it must hold every page
/// the log does not: at least what the last checkpoint left (or the database's size, if
/// smaller). A shorter file lost pages; reading on would give wrong answers (SQLite reads a
/// missing page as zeros), so refuse with a clear error instead.
pub(crate) fn check_db_file_length(
    segments: &[Segment],
    mark: Option<CheckpointMark>,
    last: &Snapshot,
    db_file: &dyn IoFile,
    db_path: &Path,
) -> Result<()> {
    let Some(mark) = mark else { return Ok(()) };
    if segments.is_empty() {
        return Ok(());
    }
    let needed = mark.db_pages.min(last.db_size) as u64;
    let pages = db_file.size().map_err(Error::io(IoAction::Read, db_path))? / PAGE_SIZE as u64;
    if pages < needed {
        let reason =
            format!("the database file holds {pages} pages but its last checkpoint left {needed}: it was cut short");
        return Err(Error::corrupt(db_path, reason));
    }
    Ok(())
}

pub(crate) fn last_commit(
    segments: &[Segment],
    mark: Option<CheckpointMark>,
    db_file: &dyn IoFile,
    db_path: &Path,
) -> Result<Snapshot> {
    for segment in segments.iter().rev() {
        if segment.committed_frames() > 0 {
            return Ok(Snapshot {
                frame_no: segment.last_committed_frame_no(),
                db_size: segment.committed_size_after(),
            });
        }
    }
    let len = db_file.size().map_err(Error::io(IoAction::Read, db_path))?;
    let frame_no = match segments.first() {
        Some(oldest) => oldest.start_frame_no - 1,
        None => mark.map_or(0, |m| m.frame_no),
    };
    Ok(Snapshot { frame_no, db_size: (len / PAGE_SIZE as u64) as u32 })
}
