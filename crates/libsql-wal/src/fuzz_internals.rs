//! Recovery's survey and planner seen from outside, for the `recover_structured` fuzz target
//! (`fuzz/`), which checks the planner's decisions against its own reading of the files.
//! Behind the `fuzz-internals` feature and not a stable API: the planner's types stay private
//! to the crate.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::format::CheckpointMark;
use crate::io::StdIo;
use crate::log::recovery::{self, Fate, FileState};

/// What an open would do with one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedFate {
    /// Wholly covered by the checkpoint mark: removed.
    Covered,
    /// Part of the log; `sealed_at_open`: a full segment a crash left unsealed.
    Kept { sealed_at_open: bool },
    /// Past the end of the log: removed.
    Cut,
}

/// One segment file of a planned log, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub fate: PlannedFate,
    /// First and last committed frame_no, for a file that verified (`None` for one whose
    /// creation was cut short, or that did not verify). The last is `first - 1` when the
    /// segment holds no commit.
    pub frames: Option<(u64, u64)>,
    /// The survey found a valid seal trailer.
    pub sealed: bool,
}

/// The planner's verdict on a log directory that it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLog {
    pub files: Vec<PlannedFile>,
    /// Why the log ends early, when files are cut.
    pub cut_reason: Option<String>,
}

/// Surveys `log_dir` read-only (as `verify` does) and plans its recovery against `mark`,
/// changing nothing. A refusal comes back as the error an open would return.
pub fn plan_log(log_dir: &Path, mark: Option<CheckpointMark>) -> Result<PlannedLog> {
    let survey = recovery::survey(&StdIo, log_dir, true)?;
    let plan = match recovery::plan(&survey.files, mark) {
        Ok(plan) => plan,
        Err(refusal) => return Err(survey.into_error(refusal)),
    };
    let files = survey.files.iter().enumerate().map(|(i, file)| planned_file(&plan, i, file)).collect();
    Ok(PlannedLog { files, cut_reason: plan.cut.map(|c| c.reason) })
}

fn planned_file(plan: &recovery::Plan, index: usize, file: &recovery::FileFindings) -> PlannedFile {
    let fate = match plan.fate(index) {
        Fate::Covered => PlannedFate::Covered,
        Fate::Kept => PlannedFate::Kept { sealed_at_open: plan.seal.contains(&index) },
        Fate::Cut => PlannedFate::Cut,
    };
    let facts = match &file.state {
        FileState::Verified(facts) => Some(facts),
        _ => None,
    };
    PlannedFile {
        path: file.path.clone(),
        fate,
        frames: facts.map(|f| (f.start_frame_no, f.last_committed_frame_no())),
        sealed: facts.is_some_and(|f| f.sealed),
    }
}
