//! Batches: steps run in order, each under an optional condition on earlier steps' outcomes.
//! One runner serves both shapes of result: a whole `BatchResult` (`batch` request) and a
//! cursor's entries (`/v3/cursor`), so the two can never disagree on which steps ran.

use rusqlite::Connection;

use super::proto::{Batch, BatchCond, BatchResult, Col, CursorEntry, StmtResult, Value};
use super::stmt::{self, ProtocolError, RequestError, RowSink, StmtError, StoredSql, Version};
use crate::limits::Limits;

/// What sqld checks of a batch before running any step, step by step in order: the step's
/// SQL text is given once (`sql` or a stored `sql_id`); with `conn`, what its text alone
/// shows (parse errors, statement count, positional and named arguments together); then its
/// condition refers only to earlier steps and, on `/v2`, holds no `is_autocommit`. Returns
/// each step's SQL text. A cursor passes no `conn`: text errors are its steps' `step_error`.
pub fn check<'a>(
    batch: &'a Batch,
    stored: &'a StoredSql,
    version: Version,
    conn: Option<&Connection>,
    limits: &Limits,
) -> Result<Vec<&'a str>, RequestError> {
    let mut texts = Vec::with_capacity(batch.steps.len());
    for (i, step) in batch.steps.iter().enumerate() {
        let sql = stmt::sql_of(step.stmt.sql.as_deref(), step.stmt.sql_id, stored)?;
        if let Some(conn) = conn {
            stmt::check_text(conn, sql, &step.stmt, limits)?;
        }
        if let Some(cond) = &step.condition {
            check_cond(cond, i, version)?;
        }
        texts.push(sql);
    }
    Ok(texts)
}

fn check_cond(cond: &BatchCond, step: usize, version: Version) -> Result<(), ProtocolError> {
    match cond {
        BatchCond::Ok { step: s } | BatchCond::Error { step: s } if *s as usize >= step => {
            Err(ProtocolError::BatchCondBadStep)
        }
        BatchCond::Ok { .. } | BatchCond::Error { .. } => Ok(()),
        BatchCond::Not { cond } => check_cond(cond, step, version),
        BatchCond::And { conds } | BatchCond::Or { conds } => {
            conds.iter().try_for_each(|c| check_cond(c, step, version))
        }
        BatchCond::IsAutocommit if version < Version::Hrana3 => {
            Err(ProtocolError::NotSupported { what: "BatchCond of type `is_autocommit`", min_version: Version::Hrana3 })
        }
        BatchCond::IsAutocommit => Ok(()),
    }
}

/// What became of each step so far: `None` not run (yet, or skipped).
#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Error,
}

fn holds(cond: &BatchCond, outcomes: &[Option<Outcome>], conn: &Connection) -> bool {
    let outcome = |step: u32| outcomes.get(step as usize).copied().flatten();
    match cond {
        BatchCond::Ok { step } => outcome(*step) == Some(Outcome::Ok),
        BatchCond::Error { step } => outcome(*step) == Some(Outcome::Error),
        BatchCond::Not { cond } => !holds(cond, outcomes, conn),
        BatchCond::And { conds } => conds.iter().all(|c| holds(c, outcomes, conn)),
        BatchCond::Or { conds } => conds.iter().any(|c| holds(c, outcomes, conn)),
        BatchCond::IsAutocommit => conn.is_autocommit(),
    }
}

/// Receives a batch's steps as they run.
trait StepSink {
    fn begin(&mut self, step: u32) -> &mut dyn RowSink;
    fn end(&mut self, step: u32, outcome: stmt::StmtOutcome);
    fn error(&mut self, step: u32, error: StmtError);
    /// Whether to stop: the sink can take no more (a cursor whose client went away).
    fn stopped(&self) -> bool {
        false
    }
}

fn run_steps(conn: &Connection, batch: &Batch, texts: &[&str], limits: &Limits, sink: &mut dyn StepSink) {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.steps.len()];
    for (i, step) in batch.steps.iter().enumerate() {
        if sink.stopped() {
            return;
        }
        if let Some(cond) = &step.condition
            && !holds(cond, &outcomes[..i], conn)
        {
            continue;
        }
        let index = i as u32;
        let result = stmt::run(conn, texts[i], &step.stmt, limits, sink.begin(index));
        match result {
            Ok(outcome) => {
                outcomes[i] = Some(Outcome::Ok);
                sink.end(index, outcome);
            }
            Err(error) => {
                outcomes[i] = Some(Outcome::Error);
                sink.error(index, error);
            }
        }
    }
}

/// A `batch` request's whole result, its steps' texts from [`check`].
pub fn execute(conn: &Connection, batch: &Batch, texts: &[&str], limits: &Limits) -> BatchResult {
    let steps = batch.steps.len();
    let mut sink = WholeBatch {
        result: BatchResult { step_results: (0..steps).map(|_| None).collect(), step_errors: vec![None; steps] },
        current: Rows::default(),
        bytes_max: limits.response_bytes_max,
        bytes: 0,
    };
    run_steps(conn, batch, texts, limits, &mut sink);
    sink.result
}

#[derive(Default)]
struct Rows {
    cols: Vec<Col>,
    rows: Vec<Vec<Value>>,
    bytes: usize,
    bytes_max: usize,
}

impl RowSink for Rows {
    fn columns(&mut self, cols: Vec<Col>) -> Result<(), StmtError> {
        self.cols = cols;
        Ok(())
    }

    fn row(&mut self, row: Vec<Value>) -> Result<(), StmtError> {
        self.bytes += row.iter().map(stmt::encoded_size).sum::<usize>();
        if self.bytes > self.bytes_max {
            return Err(StmtError::ResponseTooLarge(self.bytes_max));
        }
        self.rows.push(row);
        Ok(())
    }
}

struct WholeBatch {
    result: BatchResult,
    current: Rows,
    /// The response limit is for the whole batch: `bytes` counts the steps done.
    bytes_max: usize,
    bytes: usize,
}

impl StepSink for WholeBatch {
    fn begin(&mut self, _step: u32) -> &mut dyn RowSink {
        self.current = Rows { bytes: self.bytes, bytes_max: self.bytes_max, ..Rows::default() };
        &mut self.current
    }

    fn end(&mut self, step: u32, outcome: stmt::StmtOutcome) {
        let rows = std::mem::take(&mut self.current);
        self.bytes = rows.bytes;
        let result = StmtResult { cols: rows.cols, rows: rows.rows, ..StmtResult::default() };
        self.result.step_results[step as usize] = Some(result.finish(outcome));
    }

    fn error(&mut self, step: u32, error: StmtError) {
        self.current = Rows::default();
        self.result.step_errors[step as usize] = Some(error.to_proto());
    }
}

/// Runs `batch` as a cursor, its steps' texts from [`check`]: each entry goes to `emit` as
/// it is produced. `emit` returns false once nobody reads any more (the client went away):
/// the batch stops there.
pub fn run_cursor(
    conn: &Connection,
    batch: &Batch,
    texts: &[&str],
    limits: &Limits,
    emit: &mut dyn FnMut(CursorEntry) -> bool,
) {
    let mut sink = CursorSink { emit, step: 0, open: true, bytes_max: limits.response_bytes_max };
    run_steps(conn, batch, texts, limits, &mut sink);
}

struct CursorSink<'a> {
    emit: &'a mut dyn FnMut(CursorEntry) -> bool,
    step: u32,
    open: bool,
    bytes_max: usize,
}

impl CursorSink<'_> {
    fn send(&mut self, entry: CursorEntry) {
        if self.open {
            self.open = (self.emit)(entry);
        }
    }
}

impl RowSink for CursorSink<'_> {
    fn columns(&mut self, cols: Vec<Col>) -> Result<(), StmtError> {
        self.send(CursorEntry::StepBegin { step: self.step, cols });
        Ok(())
    }

    fn row(&mut self, row: Vec<Value>) -> Result<(), StmtError> {
        // A cursor streams, so the response limit bounds one row, not the sum.
        let bytes = row.iter().map(stmt::encoded_size).sum::<usize>();
        if bytes > self.bytes_max {
            return Err(StmtError::ResponseTooLarge(self.bytes_max));
        }
        self.send(CursorEntry::Row { row });
        if self.open {
            Ok(())
        } else {
            Err(StmtError::Sqlite { code: "SQLITE_INTERRUPT", message: "client went away".into() })
        }
    }
}

impl StepSink for CursorSink<'_> {
    fn begin(&mut self, step: u32) -> &mut dyn RowSink {
        self.step = step;
        self
    }

    fn end(&mut self, _step: u32, outcome: stmt::StmtOutcome) {
        self.send(CursorEntry::StepEnd {
            affected_row_count: outcome.affected_row_count,
            last_insert_rowid: outcome.last_insert_rowid,
        });
    }

    fn error(&mut self, step: u32, error: StmtError) {
        self.send(CursorEntry::StepError { step, error: error.to_proto() });
    }

    fn stopped(&self) -> bool {
        !self.open
    }
}
