//! One statement on a connection: SQL text checked to hold exactly one statement, arguments
//! bound, rows read into Hrana values, SQLite's errors turned into Hrana errors with the
//! codes libSQL's server gives.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};

use super::proto::{self, Col, Stmt, StmtResult, Value};
use crate::limits::Limits;

/// Why a statement did not run (or stopped). `code` and `message` are what a client sees.
#[derive(Debug, Clone, PartialEq)]
pub enum StmtError {
    SqlNoStmt,
    SqlManyStmts,
    SqlMissing,
    SqlIdUnknown(i32),
    SqlIdInUse(i32),
    TooManyStoredSql(usize),
    ArgsInvalid(String),
    Sqlite { code: &'static str, message: String },
    ResponseTooLarge(usize),
    StatementTooLarge(usize),
}

impl StmtError {
    pub fn code(&self) -> &'static str {
        match self {
            StmtError::SqlNoStmt => "SQL_NO_STATEMENT",
            StmtError::SqlManyStmts => "SQL_MANY_STATEMENTS",
            StmtError::SqlMissing | StmtError::SqlIdUnknown(_) => "SQL_NOT_FOUND",
            StmtError::SqlIdInUse(_) => "SQL_ID_IN_USE",
            StmtError::TooManyStoredSql(_) => "SQL_STORE_FULL",
            StmtError::ArgsInvalid(_) => "ARGS_INVALID",
            StmtError::Sqlite { code, .. } => code,
            StmtError::ResponseTooLarge(_) => "RESPONSE_TOO_LARGE",
            StmtError::StatementTooLarge(_) => "SQL_TOO_LARGE",
        }
    }

    pub fn message(&self) -> String {
        match self {
            StmtError::SqlNoStmt => "SQL string does not contain any statement".into(),
            StmtError::SqlManyStmts => "SQL string contains more than one statement".into(),
            StmtError::SqlMissing => "Statement has neither `sql` nor `sql_id`".into(),
            StmtError::SqlIdUnknown(id) => format!("SQL text {id} not found"),
            StmtError::SqlIdInUse(id) => format!("SQL text id {id} is already in use"),
            StmtError::TooManyStoredSql(max) => format!("A stream holds at most {max} stored SQL texts"),
            StmtError::ArgsInvalid(why) => format!("Arguments do not match SQL parameters: {why}"),
            StmtError::Sqlite { message, .. } => format!("SQLite error: {message}"),
            StmtError::ResponseTooLarge(max) => format!("Response is too large (the limit is {max} bytes)"),
            StmtError::StatementTooLarge(max) => format!("SQL text is too large (the limit is {max} bytes)"),
        }
    }

    pub fn to_proto(&self) -> proto::Error {
        proto::Error { message: self.message(), code: self.code().into() }
    }
}

impl From<rusqlite::Error> for StmtError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::SqliteFailure(e, message) => StmtError::Sqlite {
                code: sqlite_code_name(e.extended_code),
                message: message.unwrap_or_else(|| e.to_string()),
            },
            rusqlite::Error::SqlInputError { error: e, msg, .. } => {
                StmtError::Sqlite { code: sqlite_code_name(e.extended_code), message: msg }
            }
            rusqlite::Error::InvalidParameterName(name) => {
                StmtError::ArgsInvalid(format!("the statement has no parameter named {name}"))
            }
            rusqlite::Error::InvalidParameterCount(given, wanted) => {
                StmtError::ArgsInvalid(format!("{given} arguments given, the statement has {wanted} parameters"))
            }
            other => StmtError::Sqlite { code: "SQLITE_UNKNOWN", message: other.to_string() },
        }
    }
}

/// The name libSQL's server gives a result code: the primary code's, with SQLITE_ERROR (the
/// generic "SQL error or missing database") spelled SQLITE_UNKNOWN as it does.
pub fn sqlite_code_name(extended_code: i32) -> &'static str {
    use rusqlite::ffi;
    match extended_code & 0xff {
        ffi::SQLITE_INTERNAL => "SQLITE_INTERNAL",
        ffi::SQLITE_PERM => "SQLITE_PERM",
        ffi::SQLITE_ABORT => "SQLITE_ABORT",
        ffi::SQLITE_BUSY => "SQLITE_BUSY",
        ffi::SQLITE_LOCKED => "SQLITE_LOCKED",
        ffi::SQLITE_NOMEM => "SQLITE_NOMEM",
        ffi::SQLITE_READONLY => "SQLITE_READONLY",
        ffi::SQLITE_INTERRUPT => "SQLITE_INTERRUPT",
        ffi::SQLITE_IOERR => "SQLITE_IOERR",
        ffi::SQLITE_CORRUPT => "SQLITE_CORRUPT",
        ffi::SQLITE_NOTFOUND => "SQLITE_NOTFOUND",
        ffi::SQLITE_FULL => "SQLITE_FULL",
        ffi::SQLITE_CANTOPEN => "SQLITE_CANTOPEN",
        ffi::SQLITE_PROTOCOL => "SQLITE_PROTOCOL",
        ffi::SQLITE_SCHEMA => "SQLITE_SCHEMA",
        ffi::SQLITE_TOOBIG => "SQLITE_TOOBIG",
        ffi::SQLITE_CONSTRAINT => "SQLITE_CONSTRAINT",
        ffi::SQLITE_MISMATCH => "SQLITE_MISMATCH",
        ffi::SQLITE_MISUSE => "SQLITE_MISUSE",
        ffi::SQLITE_NOLFS => "SQLITE_NOLFS",
        ffi::SQLITE_AUTH => "SQLITE_AUTH",
        ffi::SQLITE_RANGE => "SQLITE_RANGE",
        ffi::SQLITE_NOTADB => "SQLITE_NOTADB",
        _ => "SQLITE_UNKNOWN",
    }
}

/// The SQL texts a stream stored with `store_sql`.
pub type StoredSql = HashMap<i32, String>;

/// The text of `stmt`: its `sql`, or the stored text its `sql_id` names.
pub fn sql_of<'a>(sql: Option<&'a str>, sql_id: Option<i32>, stored: &'a StoredSql) -> Result<&'a str, StmtError> {
    match (sql, sql_id) {
        (Some(sql), _) => Ok(sql),
        (None, Some(id)) => stored.get(&id).map(String::as_str).ok_or(StmtError::SqlIdUnknown(id)),
        (None, None) => Err(StmtError::SqlMissing),
    }
}

/// Prepares the one statement `sql` holds: none, or a second one after it, is an error.
pub fn prepare_one<'c>(conn: &'c Connection, sql: &str, limits: &Limits) -> Result<Statement<'c>, StmtError> {
    if sql.len() > limits.statement_bytes_max {
        return Err(StmtError::StatementTooLarge(limits.statement_bytes_max));
    }
    let mut batch = rusqlite::Batch::new(conn, sql);
    let first = batch.next()?.ok_or(StmtError::SqlNoStmt)?;
    // Only comments, whitespace and semicolons may follow: SQLite prepares them to nothing.
    match batch.next() {
        Ok(None) => Ok(first),
        Ok(Some(_)) | Err(_) => Err(StmtError::SqlManyStmts),
    }
}

/// Something that takes a statement's output row by row: a whole result, or a cursor's
/// stream of entries.
pub trait RowSink {
    fn columns(&mut self, cols: Vec<Col>) -> Result<(), StmtError>;
    fn row(&mut self, row: Vec<Value>) -> Result<(), StmtError>;
}

/// What a statement left once all its rows are out.
pub struct StmtOutcome {
    pub affected_row_count: u64,
    pub last_insert_rowid: Option<String>,
}

/// Runs `stmt` on `conn`, sending its columns and rows to `sink`.
pub fn run(
    conn: &Connection,
    stmt: &Stmt,
    stored: &StoredSql,
    limits: &Limits,
    sink: &mut dyn RowSink,
) -> Result<StmtOutcome, StmtError> {
    let sql = sql_of(stmt.sql.as_deref(), stmt.sql_id, stored)?;
    let mut prepared = prepare_one(conn, sql, limits)?;
    bind(&mut prepared, stmt)?;
    sink.columns(columns(&prepared))?;
    let want_rows = stmt.want_rows.unwrap_or(true);
    let column_count = prepared.column_count();
    let changes_before = total_changes(conn);
    let mut rows = prepared.raw_query();
    while let Some(row) = rows.next()? {
        if !want_rows {
            continue;
        }
        let mut values = Vec::with_capacity(column_count);
        for i in 0..column_count {
            values.push(value_of(row.get_ref(i)?));
        }
        sink.row(values)?;
    }
    drop(rows);
    // `changes()` keeps the last INSERT/UPDATE/DELETE's count even across a SELECT: report
    // it only when this statement changed something, as the total tells.
    let changed = total_changes(conn) != changes_before;
    let readonly = prepared.readonly();
    Ok(StmtOutcome {
        affected_row_count: if changed && !readonly { conn.changes() } else { 0 },
        last_insert_rowid: Some(conn.last_insert_rowid().to_string()),
    })
}

/// Rows changed by every INSERT, UPDATE and DELETE of the connection so far: unlike
/// `changes()`, it moves only when a statement changed rows, so DDL and SELECT report 0.
fn total_changes(conn: &Connection) -> i64 {
    // SAFETY: the handle is the live connection borrowed for this call, and
    // sqlite3_total_changes64 only reads a counter of it.
    unsafe { rusqlite::ffi::sqlite3_total_changes64(conn.handle()) }
}

/// Runs `stmt` and gathers its whole result, within the response size limit.
pub fn execute(conn: &Connection, stmt: &Stmt, stored: &StoredSql, limits: &Limits) -> Result<StmtResult, StmtError> {
    let started = Instant::now();
    let mut sink = WholeResult { result: StmtResult::default(), bytes: 0, bytes_max: limits.response_bytes_max };
    let outcome = run(conn, stmt, stored, limits, &mut sink)?;
    let mut result = sink.result;
    result.affected_row_count = outcome.affected_row_count;
    result.rows_written = outcome.affected_row_count;
    result.rows_read = result.rows.len() as u64;
    result.last_insert_rowid = outcome.last_insert_rowid;
    result.query_duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(result)
}

struct WholeResult {
    result: StmtResult,
    bytes: usize,
    bytes_max: usize,
}

impl RowSink for WholeResult {
    fn columns(&mut self, cols: Vec<Col>) -> Result<(), StmtError> {
        self.result.cols = cols;
        Ok(())
    }

    fn row(&mut self, row: Vec<Value>) -> Result<(), StmtError> {
        self.bytes += row.iter().map(encoded_size).sum::<usize>();
        if self.bytes > self.bytes_max {
            return Err(StmtError::ResponseTooLarge(self.bytes_max));
        }
        self.result.rows.push(row);
        Ok(())
    }
}

/// About the bytes a value takes in JSON, for the response limit: never less.
pub fn encoded_size(value: &Value) -> usize {
    const OVERHEAD: usize = 32;
    OVERHEAD
        + match value {
            Value::Null | Value::Integer { .. } | Value::Float { .. } => 0,
            Value::Text { value } => value.len(),
            Value::Blob { base64 } => base64.len().div_ceil(3) * 4,
        }
}

fn columns(stmt: &Statement<'_>) -> Vec<Col> {
    stmt.columns()
        .into_iter()
        .map(|c| Col { name: Some(c.name().to_string()), decltype: c.decl_type().map(str::to_string) })
        .collect()
}

pub fn value_of(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Integer { value },
        ValueRef::Real(value) => Value::Float { value },
        // SQLite hands back whatever bytes were stored as text; invalid UTF-8 is replaced,
        // never a reason to fail the whole response.
        ValueRef::Text(bytes) => Value::Text { value: String::from_utf8_lossy(bytes).into_owned() },
        ValueRef::Blob(bytes) => Value::Blob { base64: bytes.to_vec() },
    }
}

fn to_sql(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Integer { value } => V::Integer(*value),
        Value::Float { value } => V::Real(*value),
        Value::Text { value } => V::Text(value.clone()),
        Value::Blob { base64 } => V::Blob(base64.clone()),
    }
}

/// Binds positional arguments to 1, 2, …, then named ones by name (a name without its
/// `:`, `@` or `$` is tried with each), named winning over positional. Every parameter the
/// statement has must be given, and nothing it lacks.
fn bind(stmt: &mut Statement<'_>, given: &Stmt) -> Result<(), StmtError> {
    let count = stmt.parameter_count();
    if given.args.len() > count {
        return Err(StmtError::ArgsInvalid(format!(
            "{} positional arguments given, the statement has {count} parameters",
            given.args.len()
        )));
    }
    let mut bound = vec![false; count];
    for (i, value) in given.args.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, to_sql(value))?;
        bound[i] = true;
    }
    for arg in &given.named_args {
        let index = parameter_index(stmt, &arg.name)?
            .ok_or_else(|| StmtError::ArgsInvalid(format!("the statement has no parameter named {}", arg.name)))?;
        stmt.raw_bind_parameter(index, to_sql(&arg.value))?;
        bound[index - 1] = true;
    }
    match bound.iter().position(|b| !b) {
        None => Ok(()),
        Some(i) => Err(StmtError::ArgsInvalid(match stmt.parameter_name(i + 1) {
            Some(name) => format!("no value given for parameter {name}"),
            None => format!("no value given for parameter {}", i + 1),
        })),
    }
}

fn parameter_index(stmt: &Statement<'_>, name: &str) -> Result<Option<usize>, StmtError> {
    if name.starts_with([':', '@', '$', '?']) {
        return Ok(stmt.parameter_index(name)?);
    }
    for prefix in [":", "@", "$"] {
        if let Some(index) = stmt.parameter_index(&format!("{prefix}{name}"))? {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// `describe`: parameters, columns and kind of the one statement in `sql`.
pub fn describe(conn: &Connection, sql: &str, limits: &Limits) -> Result<proto::DescribeResult, StmtError> {
    let stmt = prepare_one(conn, sql, limits)?;
    let params =
        (1..=stmt.parameter_count()).map(|i| proto::DescribeParam { name: stmt.parameter_name(i).map(str::to_string) });
    let cols = stmt
        .columns()
        .into_iter()
        .map(|c| proto::DescribeCol { name: c.name().to_string(), decltype: c.decl_type().map(str::to_string) });
    Ok(proto::DescribeResult {
        params: params.collect(),
        cols: cols.collect(),
        is_explain: stmt.is_explain() != 0,
        is_readonly: stmt.readonly(),
    })
}

/// `sequence`: every statement of `sql` in turn, rows discarded; stops at the first error.
pub fn sequence(conn: &Connection, sql: &str, limits: &Limits) -> Result<(), StmtError> {
    if sql.len() > limits.statement_bytes_max {
        return Err(StmtError::StatementTooLarge(limits.statement_bytes_max));
    }
    let mut batch = rusqlite::Batch::new(conn, sql);
    while let Some(mut stmt) = batch.next()? {
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
    }
    Ok(())
}
