//! One statement on a connection: SQL text checked to hold exactly one statement, arguments
//! bound, rows read into Hrana values, SQLite's errors turned into Hrana errors with the
//! codes libSQL's server gives.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};

use super::proto::{self, Col, Stmt, StmtResult, Value};
use crate::limits::Limits;

/// Why a statement did not run (or stopped): a result `{"type":"error"}`, the rest of the
/// pipeline still runs. `code` and `message` are what a client sees, in the forms libSQL's
/// server (sqld) gives them.
#[derive(Debug, Clone, PartialEq)]
pub enum StmtError {
    /// SQLite's parser refused the text (a syntax error, an unrecognized token).
    SqlParse(String),
    SqlNoStmt,
    SqlManyStmts,
    ArgsInvalid(String),
    ArgsBothPositionalAndNamed,
    /// SQLite refused the statement and told where in the text (no such table, column,
    /// function…).
    SqlInput {
        message: String,
        offset: i32,
    },
    Sqlite {
        code: &'static str,
        message: String,
    },
    ResponseTooLarge(usize),
    StatementTooLarge(usize),
    SqlStoreTooMany(usize),
    SqlStoreTooLarge {
        size: usize,
        max: usize,
    },
}

impl StmtError {
    pub fn code(&self) -> &'static str {
        match self {
            StmtError::SqlParse(_) => "SQL_PARSE_ERROR",
            StmtError::SqlNoStmt => "SQL_NO_STATEMENT",
            StmtError::SqlManyStmts => "SQL_MANY_STATEMENTS",
            StmtError::ArgsInvalid(_) => "ARGS_INVALID",
            StmtError::ArgsBothPositionalAndNamed => "ARGS_BOTH_POSITIONAL_AND_NAMED",
            StmtError::SqlInput { .. } => "SQL_INPUT_ERROR",
            StmtError::Sqlite { code, .. } => code,
            StmtError::ResponseTooLarge(_) => "RESPONSE_TOO_LARGE",
            StmtError::StatementTooLarge(_) => "SQL_TOO_LARGE",
            StmtError::SqlStoreTooMany(_) => "SQL_STORE_TOO_MANY",
            StmtError::SqlStoreTooLarge { .. } => "SQL_STORE_TOO_LARGE",
        }
    }

    pub fn message(&self) -> String {
        match self {
            StmtError::SqlParse(why) => format!("SQL string could not be parsed: {why}"),
            StmtError::SqlNoStmt => "SQL string does not contain any statement".into(),
            StmtError::SqlManyStmts => "SQL string contains more than one statement".into(),
            StmtError::ArgsInvalid(why) => format!("Arguments do not match SQL parameters: {why}"),
            StmtError::ArgsBothPositionalAndNamed => {
                "Specifying both positional and named arguments is not supported".into()
            }
            StmtError::SqlInput { message, offset } => format!("SQL input error: {message} (at offset {offset})"),
            StmtError::Sqlite { message, .. } => format!("SQLite error: {message}"),
            StmtError::ResponseTooLarge(max) => format!("Response is too large (the limit is {max} bytes)"),
            StmtError::StatementTooLarge(max) => format!("SQL text is too large (the limit is {max} bytes)"),
            StmtError::SqlStoreTooMany(count) => {
                format!("The server already stores {count} SQL texts, it cannot store more")
            }
            StmtError::SqlStoreTooLarge { size, max } => {
                format!("The statement is too large to be stored: {size} B/{max} B")
            }
        }
    }

    pub fn to_proto(&self) -> proto::Error {
        proto::Error { message: self.message(), code: self.code().into() }
    }

    /// Found in the text alone, before the statement runs: sqld finds these when it parses
    /// a request, so a batch holding one fails whole (see `batch::check`).
    fn is_textual(&self) -> bool {
        matches!(
            self,
            StmtError::SqlParse(_)
                | StmtError::SqlNoStmt
                | StmtError::SqlManyStmts
                | StmtError::StatementTooLarge(_)
                | StmtError::ArgsBothPositionalAndNamed
        )
    }
}

/// A request the protocol does not allow: sqld ends the whole HTTP request with 400 and this
/// message as plain text (its `ProtocolError`), and drops the stream. A correct client never
/// sends one.
#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolError {
    SqlIdAndSqlGiven,
    SqlIdOrSqlNotGiven,
    SqlNotFound(i32),
    SqlExists(i32),
    BatchCondBadStep,
    NotSupported { what: &'static str, min_version: Version },
    StreamClosed,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::SqlIdAndSqlGiven => f.write_str("Either `sql` or `sql_id` are required, but not both"),
            ProtocolError::SqlIdOrSqlNotGiven => f.write_str("Either `sql` or `sql_id` are required"),
            ProtocolError::SqlNotFound(id) => write!(f, "SQL text {id} not found"),
            ProtocolError::SqlExists(id) => write!(f, "SQL text {id} already exists"),
            ProtocolError::BatchCondBadStep => f.write_str("Invalid reference to step in a batch condition"),
            ProtocolError::NotSupported { what, min_version } => {
                write!(f, "{what} is only supported in protocol version {min_version} and higher")
            }
            ProtocolError::StreamClosed => f.write_str("Stream for this baton was closed"),
        }
    }
}

/// The Hrana version a request came in (`/v2/…` or `/v3/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Hrana2,
    Hrana3,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::Hrana2 => "hrana2",
            Version::Hrana3 => "hrana3",
        })
    }
}

/// Either way a request can fail.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    Stmt(StmtError),
    Protocol(ProtocolError),
}

impl From<StmtError> for RequestError {
    fn from(e: StmtError) -> Self {
        RequestError::Stmt(e)
    }
}

impl From<ProtocolError> for RequestError {
    fn from(e: ProtocolError) -> Self {
        RequestError::Protocol(e)
    }
}

impl From<rusqlite::Error> for RequestError {
    fn from(e: rusqlite::Error) -> Self {
        RequestError::Stmt(e.into())
    }
}

/// SQLite's messages for text its parser refused: the same whatever the schema.
fn is_parse_message(message: &str) -> bool {
    message.ends_with("syntax error") || message.starts_with("unrecognized token") || message == "incomplete input"
}

impl From<rusqlite::Error> for StmtError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::SqliteFailure(_, Some(message)) if is_parse_message(&message) => {
                StmtError::SqlParse(message)
            }
            rusqlite::Error::SqlInputError { msg, .. } if is_parse_message(&msg) => StmtError::SqlParse(msg),
            rusqlite::Error::SqliteFailure(e, message) => StmtError::Sqlite {
                code: sqlite_code_name(e.extended_code),
                message: message.unwrap_or_else(|| e.to_string()),
            },
            // The error of a prepare that SQLite placed in the text, as rusqlite (hence sqld)
            // reports it.
            rusqlite::Error::SqlInputError { msg, offset, .. } => StmtError::SqlInput { message: msg, offset },
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

/// The text of `stmt`: its `sql`, or the stored text its `sql_id` names; exactly one given.
pub fn sql_of<'a>(sql: Option<&'a str>, sql_id: Option<i32>, stored: &'a StoredSql) -> Result<&'a str, ProtocolError> {
    match (sql, sql_id) {
        (Some(sql), None) => Ok(sql),
        (None, Some(id)) => stored.get(&id).map(String::as_str).ok_or(ProtocolError::SqlNotFound(id)),
        (Some(_), Some(_)) => Err(ProtocolError::SqlIdAndSqlGiven),
        (None, None) => Err(ProtocolError::SqlIdOrSqlNotGiven),
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

/// Prepares `stmt`'s one statement, its errors in sqld's order: what the text alone shows
/// (parse, statement count), then positional and named arguments together, then what
/// preparing against the schema finds (no such table…).
pub fn prepare_checked<'c>(
    conn: &'c Connection,
    sql: &str,
    stmt: &Stmt,
    limits: &Limits,
) -> Result<Statement<'c>, StmtError> {
    let prepared = prepare_one(conn, sql, limits);
    if let Err(e) = &prepared
        && e.is_textual()
    {
        return prepared;
    }
    if !stmt.args.is_empty() && !stmt.named_args.is_empty() {
        return Err(StmtError::ArgsBothPositionalAndNamed);
    }
    prepared
}

/// The errors of `stmt` that its text alone shows, which sqld finds for every step of a
/// batch before running any; an error that needs the schema (no such table, perhaps made by
/// an earlier step) is left for the step to meet when it runs.
pub fn check_text(conn: &Connection, sql: &str, stmt: &Stmt, limits: &Limits) -> Result<(), StmtError> {
    match prepare_checked(conn, sql, stmt, limits) {
        Err(e) if e.is_textual() => Err(e),
        _ => Ok(()),
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
    /// Only for an INSERT (or REPLACE), as sqld gives it: other statements leave SQLite's
    /// last rowid unchanged, so it would name an earlier statement's row.
    pub last_insert_rowid: Option<String>,
    /// SQLite's (libSQL's) counters of the statement: rows it read and wrote, as sqld
    /// reports them (`LIBSQL_STMTSTATUS_ROWS_READ`, `…_ROWS_WRITTEN`).
    pub rows_read: u64,
    pub rows_written: u64,
    pub query_duration_ms: f64,
}

/// Runs `stmt`, whose text is `sql`, on `conn`, sending its columns and rows to `sink`.
pub fn run(
    conn: &Connection,
    sql: &str,
    stmt: &Stmt,
    limits: &Limits,
    sink: &mut dyn RowSink,
) -> Result<StmtOutcome, StmtError> {
    let started = Instant::now();
    let mut prepared = prepare_checked(conn, sql, stmt, limits)?;
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
    // The counters are 32-bit in SQLite; read as sqld reads them.
    let counter = |status| prepared.get_status(status) as u32 as u64;
    Ok(StmtOutcome {
        affected_row_count: if changed && !readonly { conn.changes() } else { 0 },
        last_insert_rowid: is_insert(sql).then(|| conn.last_insert_rowid().to_string()),
        rows_read: counter(rusqlite::StatementStatus::RowsRead),
        rows_written: counter(rusqlite::StatementStatus::RowsWritten),
        query_duration_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Whether the one statement of `sql` is an INSERT or REPLACE (perhaps after a `WITH`
/// clause): its main verb, the first of the verbs outside parentheses, past comments,
/// strings and quoted names.
pub fn is_insert(sql: &str) -> bool {
    let mut words = Words { rest: sql, depth: 0 };
    match words.next_top() {
        Some(w) if w.eq_ignore_ascii_case("insert") || w.eq_ignore_ascii_case("replace") => true,
        Some(w) if w.eq_ignore_ascii_case("with") => {
            const VERBS: [&str; 6] = ["select", "values", "insert", "replace", "update", "delete"];
            while let Some(w) = words.next_top() {
                if VERBS.iter().any(|v| w.eq_ignore_ascii_case(v)) {
                    return w.eq_ignore_ascii_case("insert") || w.eq_ignore_ascii_case("replace");
                }
            }
            false
        }
        _ => false,
    }
}

/// The bare words of SQL text at parenthesis depth 0, in order.
struct Words<'a> {
    rest: &'a str,
    depth: usize,
}

impl<'a> Words<'a> {
    fn next_top(&mut self) -> Option<&'a str> {
        loop {
            let s = self.rest;
            let c = s.chars().next()?;
            let skip = if s.starts_with("--") {
                s.find('\n').map_or(s.len(), |i| i + 1)
            } else if let Some(comment) = s.strip_prefix("/*") {
                comment.find("*/").map_or(s.len(), |i| i + 4)
            } else if matches!(c, '\'' | '"' | '`' | '[') {
                let close = if c == '[' { ']' } else { c };
                s[1..].find(close).map_or(s.len(), |i| i + 2)
            } else if c == '(' {
                self.depth += 1;
                1
            } else if c == ')' {
                self.depth = self.depth.saturating_sub(1);
                1
            } else if c.is_ascii_alphabetic() || c == '_' {
                let len = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
                self.rest = &s[len..];
                if self.depth == 0 {
                    return Some(&s[..len]);
                }
                continue;
            } else {
                c.len_utf8()
            };
            self.rest = &s[skip..];
        }
    }
}

/// Rows changed by every INSERT, UPDATE and DELETE of the connection so far: unlike
/// `changes()`, it moves only when a statement changed rows, so DDL and SELECT report 0.
fn total_changes(conn: &Connection) -> i64 {
    // SAFETY: the handle is the live connection borrowed for this call, and
    // sqlite3_total_changes64 only reads a counter of it.
    unsafe { rusqlite::ffi::sqlite3_total_changes64(conn.handle()) }
}

/// Runs `stmt` and gathers its whole result, within the response size limit.
pub fn execute(conn: &Connection, sql: &str, stmt: &Stmt, limits: &Limits) -> Result<StmtResult, StmtError> {
    let mut sink = WholeResult { result: StmtResult::default(), bytes: 0, bytes_max: limits.response_bytes_max };
    let outcome = run(conn, sql, stmt, limits, &mut sink)?;
    Ok(sink.result.finish(outcome))
}

impl StmtResult {
    /// The result with what the statement left once its rows were out.
    pub fn finish(mut self, outcome: StmtOutcome) -> StmtResult {
        self.affected_row_count = outcome.affected_row_count;
        self.last_insert_rowid = outcome.last_insert_rowid;
        self.rows_read = outcome.rows_read;
        self.rows_written = outcome.rows_written;
        self.query_duration_ms = outcome.query_duration_ms;
        self
    }
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
