//! Recovery: what an open finds in a log directory, decided before anything changes.
//!
//! Two steps. [`survey`] does all the reading: it lists the segment files and opens and
//! verifies each, keeping what it found ([`FileFindings`]; a file that does not verify is a
//! finding too, since damage past the end of the log does not matter). [`plan`] then decides,
//! from the findings alone, with no I/O: what is kept, what is covered by the database file's
//! checkpoint mark (removed), where the log ends (files past it cut), which full segments are
//! sealed, or what no crash can leave (refused, with the reason). Neither changes a file.
//! `SharedWal::open` carries the plan out ([`carry_out`]); `verify` and `info` only report it.
//! The rules are FORMAT.md's *Recovery* table.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, PAGE_SIZE};
use crate::io::{Io, IoFile};
use crate::log::Snapshot;
use crate::segment::{Segment, SegmentRef};

/// What the survey found in one segment file: everything the planner's rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileFindings {
    pub path: PathBuf,
    /// The start frame_no the file's name gives (the header's may differ).
    pub named_start: u64,
    pub state: FileState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileState {
    /// No complete header: a crash cut the file's creation short
    /// (`segment::creation_cut_short`). Never opened, never sealed.
    CreationCutShort,
    /// Opened and verified: what it holds.
    Verified(SegmentFacts),
    /// It did not verify, or could not be read (the survey keeps the error). `sealed`: does
    /// it show a seal trailer, valid or damaged (`None`: that could not be read either).
    Unverified { sealed: Option<bool> },
}

/// What a verified segment holds, as the planner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentFacts {
    pub start_frame_no: u64,
    pub committed_frames: u32,
    pub sealed: bool,
    /// A committed frame carries `FRAME_SYNCED_COMMIT`.
    pub holds_synced_commit: bool,
    pub lineage: u32,
    pub prev_chain: u32,
    /// The chain value at its last committed frame (`prev_chain` when it has none).
    pub end_chain: u32,
}

impl SegmentFacts {
    fn of(segment: &Segment) -> SegmentFacts {
        SegmentFacts {
            start_frame_no: segment.start_frame_no,
            committed_frames: segment.committed_frames(),
            sealed: segment.is_sealed(),
            holds_synced_commit: segment.holds_synced_commit,
            lineage: segment.lineage,
            prev_chain: segment.prev_chain,
            end_chain: segment.end_chain(),
        }
    }

    /// frame_no of the last committed frame, or `start_frame_no - 1` when there is none.
    pub fn last_committed_frame_no(&self) -> u64 {
        (self.start_frame_no + self.committed_frames as u64).saturating_sub(1)
    }
}

/// Everything recovery read in a log directory, oldest file first: the findings the planner
/// decides on, and beside them what opening each file gave (the segment, kept open so that
/// an open does not read it twice, or the error that stands if the planner says it matters).
pub(crate) struct Survey {
    pub files: Vec<FileFindings>,
    /// One per file: `None` for a creation cut short (never opened).
    opened: Vec<Option<Result<Segment>>>,
}

/// Reads every segment file of `log_dir`, changing nothing: lists them oldest first, and for
/// each checks whether its creation was cut short, else opens and verifies it (read-only
/// when `read_only`: `verify` and `info`; an open surveys with the handles it keeps). A
/// verification error is a finding, not the survey's failure: only the planner knows whether
/// the file is within the log.
pub(crate) fn survey(io: &dyn Io, log_dir: &Path, read_only: bool) -> Result<Survey> {
    let mut survey = Survey { files: Vec::new(), opened: Vec::new() };
    for path in crate::segment::list_segment_files(io, log_dir)? {
        let (findings, opened) = survey_file(io, path, read_only);
        survey.files.push(findings);
        survey.opened.push(opened);
    }
    Ok(survey)
}

/// The findings on one segment file, and what opening it gave.
fn survey_file(io: &dyn Io, path: PathBuf, read_only: bool) -> (FileFindings, Option<Result<Segment>>) {
    let named_start = crate::segment::start_of_file_name(&path).unwrap_or(0);
    let opened = match crate::segment::creation_cut_short(io, &path) {
        Ok(true) => None,
        Ok(false) if read_only => Some(Segment::open_read_only(io, &path)),
        Ok(false) => Some(Segment::open_verified(io, &path, false)),
        Err(e) => Some(Err(e)),
    };
    let state = match &opened {
        None => FileState::CreationCutShort,
        Some(Ok(segment)) => FileState::Verified(SegmentFacts::of(segment)),
        Some(Err(_)) => FileState::Unverified { sealed: crate::segment::is_sealed_file(io, &path).ok() },
    };
    (FileFindings { path, named_start, state }, opened)
}

/// What recovery will do with a surveyed log, by index into [`Survey::files`]. The files
/// fall into three runs, in order: covered, kept, cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Segments wholly covered by the database file's checkpoint mark: leftovers of an
    /// interrupted cleanup, removed.
    pub covered: Range<usize>,
    /// The log, oldest first.
    pub kept: Range<usize>,
    /// Where the log ends early, if it does: that file and every later one are removed.
    pub cut: Option<Cut>,
    /// Kept segments a crash left full but unsealed (every kept one but the newest must be
    /// sealed): sealed at open.
    pub seal: Vec<usize>,
    pub history: History,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    /// The first file past the end of the log.
    pub from: usize,
    pub reason: String,
}

/// The history the recovered log continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum History {
    /// That of its oldest kept segment, or of the mark: the lineage, and the chain value
    /// before the first kept segment.
    Continues { lineage: u32, base_chain: u32 },
    /// None yet (no segment, no mark with a lineage): a new one starts.
    New,
}

impl History {
    /// The lineage and base chain value; a new history takes `new_lineage` and its chain starts
    /// from its own lineage. A function, so that the randomness is drawn only for a new one.
    pub fn lineage_and_chain(self, new_lineage: impl FnOnce() -> u32) -> (u32, u32) {
        match self {
            History::Continues { lineage, base_chain } => (lineage, base_chain),
            History::New => {
                let lineage = new_lineage();
                (lineage, lineage)
            }
        }
    }
}

/// Why the planner refuses a log: what no crash leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A rule found damage: `Error::Corrupt` with this path and reason.
    Corrupt { path: PathBuf, reason: String },
    /// The file at this index did not verify, and it matters (it is within the log, or it
    /// is past the end and could not be read to tell whether it was sealed): its own error.
    Unverified(usize),
}

/// What a rule of the planner gives: its finding, or the refusal of the log.
type Planned<T> = std::result::Result<T, Refusal>;

impl Refusal {
    fn corrupt(path: &Path, reason: String) -> Refusal {
        Refusal::Corrupt { path: path.to_path_buf(), reason }
    }
}

/// Where a file stands in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Covered,
    Kept,
    Cut,
}

impl Plan {
    pub fn fate(&self, index: usize) -> Fate {
        if self.covered.contains(&index) {
            Fate::Covered
        } else if self.kept.contains(&index) {
            Fate::Kept
        } else {
            Fate::Cut
        }
    }
}

/// Decides what recovery does with a surveyed log, from the findings alone: no I/O, nothing
/// random (a new history's lineage is drawn later, by [`History::lineage_and_chain`]).
/// `mark` is the database file's checkpoint mark; `None` (torn or foreign) means unknown:
/// then nothing is taken as covered and the oldest segment may start anywhere.
///
/// The log is a prefix, as SQLite's is: it ends at the first segment whose creation was cut
/// short, or at a gap in frame numbers before an unsealed segment (a power cut lost the end
/// of the segment before it, or a whole segment, under `synchronous=NORMAL`). Those files
/// and every later one are cut: none of their commits was promised durable, since a FULL
/// commit syncs every segment before its own (`SharedWal::make_durable_through`). What a
/// crash cannot leave is refused: a gap before a *sealed* segment, a sealed file past the
/// end, a segment that does not continue the chain of the one before it (or of the mark),
/// or any damage inside a segment within the log.
pub(crate) fn plan(files: &[FileFindings], mark: Option<CheckpointMark>) -> Planned<Plan> {
    let mut covered_end: usize = 0;
    let mut kept: Vec<&SegmentFacts> = Vec::new();
    let mut cut = None;
    for (i, file) in files.iter().enumerate() {
        let facts = match &file.state {
            FileState::CreationCutShort => {
                let last_covered = covered_end.checked_sub(1).and_then(|c| files.get(c)).and_then(verified);
                let log_end = log_end(kept.last().copied(), last_covered, mark);
                cut = Some(cut_at_creation_cut_short(i, file, log_end)?);
                break;
            }
            FileState::Unverified { .. } => return Err(Refusal::Unverified(i)),
            FileState::Verified(facts) => facts,
        };
        if kept.is_empty() && is_covered(facts, mark) {
            covered_end = i + 1;
            continue;
        }
        if let Some(reason) = gap_before(kept.last().copied(), mark, file, facts)? {
            cut = Some(Cut { from: i, reason });
            break;
        }
        check_continues(kept.last().copied(), mark, facts, &file.path)?;
        if kept.last().is_some_and(|previous| previous.committed_frames == 0) {
            return Err(refuse_followed_empty_segment(&files[i - 1], file));
        }
        kept.push(facts);
    }
    if let Some(cut) = &cut {
        refuse_cut_before_synced_commit(files.get(cut.from..).unwrap_or_default(), cut)?;
        refuse_sealed_past_the_cut(files, cut.from)?;
    }
    let kept_range = covered_end..covered_end + kept.len();
    Ok(Plan {
        seal: full_unsealed(kept_range.clone(), &kept),
        history: history_of(kept.first().copied(), mark),
        covered: 0..covered_end,
        kept: kept_range,
        cut,
    })
}

/// A segment without a commit followed by another: the writer starts a segment only once
/// the one before holds commits (an empty newest segment is reused, never passed), so no
/// crash leaves that (a header-only file under another's name does). Kept, open would have
/// to seal a segment holding nothing.
fn refuse_followed_empty_segment(empty: &FileFindings, next: &FileFindings) -> Refusal {
    Refusal::corrupt(
        &empty.path,
        format!(
            "holds no commit, yet {} follows it: a new segment starts only after the one before holds commits \
             (damage, or a file that is not ours); nothing was changed",
            next.path.display()
        ),
    )
}

fn verified(file: &FileFindings) -> Option<&SegmentFacts> {
    match &file.state {
        FileState::Verified(facts) => Some(facts),
        _ => None,
    }
}

/// A segment wholly at or below the mark (with at least one commit) is already in the
/// database file; only the oldest segments can be (none once one is kept).
fn is_covered(facts: &SegmentFacts, mark: Option<CheckpointMark>) -> bool {
    mark.is_some_and(|m| facts.committed_frames > 0 && facts.last_committed_frame_no() <= m.frame_no)
}

/// The last frame_no of the log so far: the newest kept segment's last commit, else the
/// mark or the newest covered segment, whichever is later (0 when there is neither).
fn log_end(previous: Option<&SegmentFacts>, last_covered: Option<&SegmentFacts>, mark: Option<CheckpointMark>) -> u64 {
    match previous {
        Some(previous) => previous.last_committed_frame_no(),
        None => mark.map(|m| m.frame_no).max(last_covered.map(|s| s.last_committed_frame_no())).unwrap_or(0),
    }
}

/// The log ends before `file` (at `index`), whose creation was cut short, if it may.
fn cut_at_creation_cut_short(index: usize, file: &FileFindings, log_end: u64) -> Planned<Cut> {
    check_creation_could_be_cut_short(log_end, file)?;
    let reason = format!("the creation of {} was cut short (no complete header)", file.path.display());
    Ok(Cut { from: index, reason })
}

/// A segment whose creation a crash cut short (no complete header) starts after the end of
/// the log before it: segments are created each from the last commit of the one before (or
/// from the database file's mark), and frame numbers start at 1. One whose name starts
/// within the log (an empty `00000000000000000000.seg`, or a file named below the mark or
/// inside a kept segment) is damage or a stranger's file, never a crash's: refused, so that
/// it never ends the log before the real segments after it.
fn check_creation_could_be_cut_short(log_end: u64, file: &FileFindings) -> Planned<()> {
    let start = file.named_start;
    if start > log_end {
        return Ok(());
    }
    Err(Refusal::corrupt(
        &file.path,
        format!(
            "segment file without a complete header, but its name starts at frame_no {start}, within the log \
             (which ends at {log_end}): no crash leaves that (damage, or a file that is not ours); nothing was changed"
        ),
    ))
}

/// Does the segment start where the log so far ends (the newest kept segment's last commit,
/// else the mark; anywhere when both are unknown)? A gap before an unsealed segment ends the
/// log there: `Some(reason)` for the cut. A gap before a sealed one, or an overlap, is refused.
fn gap_before(
    previous: Option<&SegmentFacts>,
    mark: Option<CheckpointMark>,
    file: &FileFindings,
    facts: &SegmentFacts,
) -> Planned<Option<String>> {
    let expected = match (previous, mark) {
        (Some(previous), _) => previous.last_committed_frame_no() + 1,
        (None, Some(mark)) => mark.frame_no + 1,
        (None, None) => return Ok(None),
    };
    if facts.start_frame_no == expected {
        return Ok(None);
    }
    if facts.sealed || facts.start_frame_no < expected {
        let reason = format!(
            "segment starts at frame_no {} but the log (or the database file) ends at {}: frames are missing",
            facts.start_frame_no,
            expected - 1
        );
        return Err(Refusal::corrupt(&file.path, reason));
    }
    Ok(Some(format!(
        "{} starts at frame_no {} but the log ends at {}: a power cut lost the end of the log before it",
        file.path.display(),
        facts.start_frame_no,
        expected - 1
    )))
}

/// Refuses a segment that does not continue the history of the one before it (or of the
/// database file's mark, when it starts right after it): frames of another history, whatever
/// their numbers. No crash leaves that: a segment is created from its predecessor's last commit.
fn check_continues(
    previous: Option<&SegmentFacts>,
    mark: Option<CheckpointMark>,
    facts: &SegmentFacts,
    path: &Path,
) -> Planned<()> {
    let before = match (previous, mark) {
        (Some(previous), _) => Some((previous.lineage, previous.end_chain, "the segment before it")),
        (None, Some(mark)) if mark.lineage != 0 && facts.start_frame_no == mark.frame_no + 1 => {
            Some((mark.lineage, mark.chain, "the database file's checkpoint mark"))
        }
        _ => None,
    };
    match before {
        Some((lineage, chain, what)) if (facts.lineage, facts.prev_chain) != (lineage, chain) => Err(Refusal::corrupt(
            path,
            format!(
                "does not continue the history of {what} (lineage {:08x}, chain {:08x} expected; it has {:08x}, {:08x}): \
                 frames of another database",
                lineage, chain, facts.lineage, facts.prev_chain
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuses to end the log early when a file past the cut holds a synchronous commit: that
/// frame was written only once every earlier segment was durable (`FRAME_SYNCED_COMMIT`),
/// so what made the log look cut (a missing or short segment, a gap) is damage, not a crash.
/// A file that did not verify is no evidence either way.
fn refuse_cut_before_synced_commit(past_the_cut: &[FileFindings], cut: &Cut) -> Planned<()> {
    let Some(first) = past_the_cut.first() else { return Ok(()) };
    for file in past_the_cut {
        if verified(file).is_some_and(|facts| facts.holds_synced_commit) {
            let reason = format!(
                "{}, but {} holds a synchronous commit made after everything before it was durable: frames \
                 were lost after they were synced (damage, not a crash); nothing was changed",
                cut.reason,
                file.path.display()
            );
            return Err(Refusal::corrupt(&first.path, reason));
        }
    }
    Ok(())
}

/// Refuses a sealed file past the end of the log: a seal is synced, so its segment, and every
/// frame before it, was durable. One whose seal could not even be read stands on its error.
fn refuse_sealed_past_the_cut(files: &[FileFindings], from: usize) -> Planned<()> {
    let first = files.get(from).map_or_else(String::new, |f| f.path.display().to_string());
    for (i, file) in files.iter().enumerate().skip(from) {
        let sealed = match &file.state {
            FileState::CreationCutShort => false,
            FileState::Verified(facts) => facts.sealed,
            FileState::Unverified { sealed: Some(sealed) } => *sealed,
            FileState::Unverified { sealed: None } => return Err(Refusal::Unverified(i)),
        };
        if sealed {
            let reason = format!("sealed, but the log ends before it (at {first}): frames are missing");
            return Err(Refusal::corrupt(&file.path, reason));
        }
    }
    Ok(())
}

/// The kept segments, but the newest, that are not sealed: a crash came before their seal
/// (seals deferred to the background), and the next segment shows they are whole.
fn full_unsealed(kept: Range<usize>, facts: &[&SegmentFacts]) -> Vec<usize> {
    let older = facts.len().saturating_sub(1);
    kept.zip(facts).take(older).filter(|(_, facts)| !facts.sealed).map(|(i, _)| i).collect()
}

/// The history of the oldest kept segment, else of the mark (if it has one), else a new one.
fn history_of(oldest: Option<&SegmentFacts>, mark: Option<CheckpointMark>) -> History {
    match (oldest, mark) {
        (Some(oldest), _) => History::Continues { lineage: oldest.lineage, base_chain: oldest.prev_chain },
        (None, Some(mark)) if mark.lineage != 0 => History::Continues { lineage: mark.lineage, base_chain: mark.chain },
        _ => History::New,
    }
}

/// A plan with the surveyed segments in hand: what `open` carries out ([`carry_out`]) and
/// `verify` and `info` report.
pub(crate) struct RecoveryPlan {
    /// The log, oldest first, every segment verified.
    pub kept: Vec<Segment>,
    /// Segments wholly covered by the database file's checkpoint mark, removed.
    pub covered: Vec<Segment>,
    /// Files past the end of the log (a power cut lost the end before them), removed, and why.
    pub cut: Vec<PathBuf>,
    pub cut_reason: Option<String>,
    /// Positions in `kept` of the full segments a crash left unsealed, sealed at open.
    pub seal: Vec<usize>,
    /// The history of the log, and the chain value before its first kept segment.
    pub lineage: u32,
    pub base_chain: u32,
}

/// Surveys the log and plans its recovery, changing nothing: [`survey`], then [`plan`]. A
/// new history's lineage is drawn from `io` only when the plan starts one.
pub(crate) fn plan_recovery(
    io: &dyn Io,
    log_dir: &Path,
    mark: Option<CheckpointMark>,
    read_only: bool,
) -> Result<RecoveryPlan> {
    let survey = survey(io, log_dir, read_only)?;
    match plan(&survey.files, mark) {
        Ok(plan) => Ok(survey.into_recovery_plan(plan, || io.random_u32().max(1))),
        Err(refusal) => Err(survey.into_error(refusal)),
    }
}

impl Survey {
    /// Hands the surveyed segments over to what the plan does with them.
    fn into_recovery_plan(self, plan: Plan, new_lineage: impl FnOnce() -> u32) -> RecoveryPlan {
        let (lineage, base_chain) = plan.history.lineage_and_chain(new_lineage);
        let mut recovery = RecoveryPlan {
            kept: Vec::new(),
            covered: Vec::new(),
            cut: Vec::new(),
            cut_reason: plan.cut.as_ref().map(|c| c.reason.clone()),
            seal: plan.seal.iter().map(|i| i - plan.kept.start).collect(),
            lineage,
            base_chain,
        };
        for (i, (file, opened)) in self.files.into_iter().zip(self.opened).enumerate() {
            // The planner covers and keeps verified segments only.
            match (plan.fate(i), opened) {
                (Fate::Covered, Some(Ok(segment))) => recovery.covered.push(segment),
                (Fate::Kept, Some(Ok(segment))) => recovery.kept.push(segment),
                (Fate::Cut, _) => recovery.cut.push(file.path),
                _ => {}
            }
        }
        recovery
    }

    /// The error a refusal stands for: the rule's `Corrupt`, or the file's own error.
    pub(crate) fn into_error(self, refusal: Refusal) -> Error {
        match refusal {
            Refusal::Corrupt { path, reason } => Error::corrupt(path, reason),
            Refusal::Unverified(i) => {
                let path = self.files.get(i).map(|f| f.path.clone()).unwrap_or_default();
                match self.opened.into_iter().nth(i).flatten() {
                    Some(Err(e)) => e,
                    _ => Error::corrupt(path, "the segment did not verify"),
                }
            }
        }
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
        crate::instruments::synced(crate::instruments::Synced::Directory);
        io.sync_dir(log_dir).map_err(Error::io(IoAction::Sync, log_dir))?;
    }
    let mut segments: Vec<SegmentRef> = plan.kept.into_iter().map(Arc::new).collect();
    for segment in plan.seal.iter().filter_map(|&position| segments.get(position)) {
        segment.seal(io)?;
    }
    if let Some(newest) = segments.last() {
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

#[cfg(test)]
mod tests {
    //! The planner on findings built by hand: no file is written or read.
    use super::*;

    const LINEAGE: u32 = 7;

    /// A chain value for frame_no `n` of the test history: segments built with [`segment`]
    /// continue one another whenever their frame numbers do.
    fn chain(n: u64) -> u32 {
        n as u32 ^ 0x5eed
    }

    fn path(start: u64) -> PathBuf {
        PathBuf::from(crate::segment::segment_file_name(start))
    }

    /// A verified segment of frames `start..start + frames`, all committed.
    fn segment(start: u64, frames: u32, sealed: bool) -> FileFindings {
        let facts = SegmentFacts {
            start_frame_no: start,
            committed_frames: frames,
            sealed,
            holds_synced_commit: false,
            lineage: LINEAGE,
            prev_chain: chain(start - 1),
            end_chain: chain(start + frames as u64 - 1),
        };
        FileFindings { path: path(start), named_start: start, state: FileState::Verified(facts) }
    }

    fn synced(mut file: FileFindings) -> FileFindings {
        if let FileState::Verified(facts) = &mut file.state {
            facts.holds_synced_commit = true;
        }
        file
    }

    fn cut_short(start: u64) -> FileFindings {
        FileFindings { path: path(start), named_start: start, state: FileState::CreationCutShort }
    }

    fn unverified(start: u64, sealed: Option<bool>) -> FileFindings {
        FileFindings { path: path(start), named_start: start, state: FileState::Unverified { sealed } }
    }

    fn mark(frame_no: u64) -> Option<CheckpointMark> {
        Some(CheckpointMark { frame_no, db_pages: 1, lineage: LINEAGE, chain: chain(frame_no) })
    }

    fn refused_with(result: Planned<Plan>, file: u64, words: &str) {
        match result {
            Err(Refusal::Corrupt { path: refused, reason }) => {
                assert_eq!(refused, path(file), "{reason}");
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("expected a refusal of {file} ({words}), got {other:?}"),
        }
    }

    #[test]
    fn a_whole_log_is_kept_and_its_full_unsealed_segments_sealed() {
        let files = [segment(1, 3, true), segment(4, 2, false), segment(6, 2, false)];
        let plan = plan(&files, mark(0)).unwrap();
        assert_eq!((plan.covered, plan.kept, plan.cut), (0..0, 0..3, None));
        assert_eq!(plan.seal, [1], "the newest stays current");
        assert_eq!(plan.history, History::Continues { lineage: LINEAGE, base_chain: chain(0) });
    }

    #[test]
    fn segments_covered_by_the_mark_are_removed_and_the_log_continues_after_them() {
        let files = [segment(1, 3, true), segment(4, 2, true), segment(6, 2, false)];
        let plan = plan(&files, mark(5)).unwrap();
        assert_eq!((plan.covered.clone(), plan.kept.clone(), plan.cut.clone()), (0..2, 2..3, None));
        assert!(plan.seal.is_empty());
        assert_eq!(plan.history, History::Continues { lineage: LINEAGE, base_chain: chain(5) });
        assert_eq!([plan.fate(1), plan.fate(2)], [Fate::Covered, Fate::Kept]);
    }

    #[test]
    fn an_empty_segment_followed_by_another_is_refused_never_sealed() {
        // A header-only file under the name of the log's first segment, the real one after it.
        let files = [segment(1, 0, false), segment(1, 3, false)];
        refused_with(plan(&files, mark(0)), 1, "holds no commit, yet");
        let files = [segment(1, 3, true), segment(4, 0, false), segment(4, 2, false)];
        refused_with(plan(&files, mark(0)), 4, "holds no commit, yet");
        // The newest may be empty: the writer created it and a crash came before its commit.
        let files = [segment(1, 3, true), segment(4, 0, false)];
        let plan = plan(&files, mark(0)).unwrap();
        assert_eq!((plan.kept, plan.seal), (0..2, vec![]));
    }

    #[test]
    fn a_segment_straddling_the_mark_is_refused_as_an_overlap() {
        let files = [segment(1, 3, true), segment(4, 4, false)];
        refused_with(plan(&files, mark(5)), 4, "but the log (or the database file) ends at 5");
    }

    #[test]
    fn a_gap_before_an_unsealed_segment_ends_the_log_there() {
        let files = [segment(1, 3, false), segment(6, 2, false), segment(8, 1, false)];
        let plan = plan(&files, mark(0)).unwrap();
        assert_eq!((plan.kept.clone(), plan.seal.clone()), (0..1, vec![]));
        let cut = plan.cut.clone().unwrap();
        assert_eq!(cut.from, 1);
        assert!(cut.reason.contains("starts at frame_no 6 but the log ends at 3"), "{}", cut.reason);
        assert_eq!(plan.fate(2), Fate::Cut);
    }

    #[test]
    fn a_gap_before_a_sealed_segment_is_refused() {
        let files = [segment(1, 3, false), segment(6, 2, true)];
        refused_with(plan(&files, mark(0)), 6, "frames are missing");
    }

    #[test]
    fn an_overlap_is_refused_even_before_an_unsealed_segment() {
        let files = [segment(1, 3, true), segment(3, 2, false)];
        refused_with(
            plan(&files, mark(0)),
            3,
            "segment starts at frame_no 3 but the log (or the database file) ends at 3",
        );
    }

    #[test]
    fn a_sealed_file_past_the_end_of_the_log_is_refused() {
        let files = [segment(1, 3, false), cut_short(4), segment(5, 2, true)];
        refused_with(plan(&files, mark(0)), 5, "sealed, but the log ends before it");
    }

    #[test]
    fn a_creation_cut_short_after_the_log_ends_it() {
        let files = [segment(1, 3, true), cut_short(4), segment(4, 1, false)];
        let plan = plan(&files, mark(0)).unwrap();
        assert_eq!(plan.kept, 0..1);
        let cut = plan.cut.unwrap();
        assert_eq!(cut.from, 1);
        assert!(cut.reason.contains("was cut short (no complete header)"), "{}", cut.reason);
    }

    #[test]
    fn a_creation_cut_short_within_the_log_is_refused() {
        let files = [cut_short(0), segment(1, 3, true)];
        refused_with(plan(&files, None), 0, "within the log (which ends at 0)");
        let files = [segment(1, 3, true), cut_short(3)];
        refused_with(plan(&files, mark(0)), 3, "within the log (which ends at 3)");
        // Below the mark, with the covered segments gone: the mark ends the log.
        let files = [segment(1, 3, true), cut_short(5), segment(6, 1, false)];
        refused_with(plan(&files, mark(5)), 5, "within the log (which ends at 5)");
    }

    #[test]
    fn a_synchronous_commit_past_the_cut_is_refused() {
        let files = [segment(1, 3, false), segment(6, 2, false), synced(segment(8, 1, false))];
        refused_with(plan(&files, mark(0)), 6, "holds a synchronous commit");
        let files = [segment(1, 3, false), cut_short(4), synced(segment(4, 1, false))];
        refused_with(plan(&files, mark(0)), 4, "holds a synchronous commit");
    }

    #[test]
    fn a_synchronous_commit_within_the_log_is_no_reason_to_refuse() {
        let files = [synced(segment(1, 3, true)), synced(segment(4, 1, false))];
        assert_eq!(plan(&files, mark(0)).unwrap().kept, 0..2);
    }

    #[test]
    fn a_segment_of_another_history_is_refused() {
        let mut stranger = segment(4, 2, false);
        if let FileState::Verified(facts) = &mut stranger.state {
            facts.lineage = LINEAGE + 1;
        }
        refused_with(plan(&[segment(1, 3, true), stranger.clone()], mark(0)), 4, "the segment before it");
        let mut wrong_chain = segment(1, 3, true);
        if let FileState::Verified(facts) = &mut wrong_chain.state {
            facts.prev_chain ^= 1;
        }
        refused_with(plan(&[wrong_chain], mark(0)), 1, "the database file's checkpoint mark");
    }

    #[test]
    fn damage_within_the_log_stands_on_the_files_own_error_but_past_the_cut_only_a_seal_matters() {
        let files = [segment(1, 3, true), unverified(4, Some(false))];
        assert_eq!(plan(&files, mark(0)), Err(Refusal::Unverified(1)));
        let files = [segment(1, 3, false), cut_short(4), unverified(5, Some(false))];
        assert_eq!(plan(&files, mark(0)).unwrap().cut.map(|c| c.from), Some(1));
        let files = [segment(1, 3, false), cut_short(4), unverified(5, Some(true))];
        refused_with(plan(&files, mark(0)), 5, "sealed, but the log ends before it");
        let files = [segment(1, 3, false), cut_short(4), unverified(5, None)];
        assert_eq!(plan(&files, mark(0)), Err(Refusal::Unverified(2)));
    }

    #[test]
    fn an_unknown_mark_trusts_the_segments_alone() {
        let files = [segment(10, 3, true), segment(13, 1, false)];
        let plan = plan(&files, None).unwrap();
        assert_eq!((plan.covered, plan.kept), (0..0, 0..2));
        assert_eq!(plan.history, History::Continues { lineage: LINEAGE, base_chain: chain(9) });
    }

    #[test]
    fn a_new_history_takes_the_lineage_it_is_given_and_only_then() {
        let plan = plan(&[], None).unwrap();
        assert_eq!(plan.history, History::New);
        assert_eq!(plan.history.lineage_and_chain(|| 42), (42, 42));
        let mark_without_history = Some(CheckpointMark { frame_no: 3, db_pages: 1, lineage: 0, chain: 0 });
        assert_eq!(super::plan(&[], mark_without_history).unwrap().history, History::New);
        let continued = super::plan(&[], mark(3)).unwrap().history;
        assert_eq!(continued.lineage_and_chain(|| panic!("drawn for a known history")), (LINEAGE, chain(3)));
    }
}
