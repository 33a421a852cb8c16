//! A Hrana stream: one connection to one namespace, the SQL texts stored on it, and whether
//! it was closed. Requests on a stream run in order, on a blocking thread (SQLite).

use std::sync::Arc;

use rusqlite::Connection;

use super::proto::{StreamRequest, StreamResponse, StreamResult};
use super::stmt::{self, ProtocolError, RequestError, StmtError, StoredSql, Version};
use super::{batch, proto};
use crate::databases::{Conn, Databases, Deadline};
use crate::limits::Limits;

pub struct Stream {
    namespace: String,
    /// Opened at the first statement, closed when the stream ends.
    conn: Option<Conn>,
    stored: StoredSql,
    closed: bool,
    /// Opened with read-only credentials: its connection refuses writes (`query_only`,
    /// which the connection's authorizer keeps on: `Databases::checkout`).
    read_only: bool,
    /// Armed for each request (`--max-request-duration`); the connection's SQL stops past it.
    deadline: Arc<Deadline>,
}

impl Stream {
    pub fn new(namespace: String, read_only: bool) -> Self {
        let deadline = Arc::new(Deadline::default());
        Stream { namespace, conn: None, stored: StoredSql::new(), closed: false, read_only, deadline }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// What stops this stream's SQL; see [`Deadline`]. A cursor's caller arms it
    /// (`--max-request-duration`) before [`Stream::run_cursor`]; `handle` arms it itself.
    pub fn deadline(&self) -> Arc<Deadline> {
        self.deadline.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Holds a connection to its database (opened at its first statement).
    pub fn has_connection(&self) -> bool {
        self.conn.is_some()
    }

    /// Inside an explicit transaction (so its end would roll something back).
    pub fn in_transaction(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_autocommit())
    }

    /// The connection, opened if the stream has none yet.
    pub fn conn(&mut self, dbs: &Databases) -> Result<&Connection, StmtError> {
        if self.conn.is_none() {
            self.conn = Some(dbs.checkout(&self.namespace, self.read_only, self.deadline.clone())?);
        }
        Ok(self.conn.as_deref().expect("just set"))
    }

    /// What sqld refuses of a cursor's batch before answering (400): see [`batch::check`].
    pub fn check_cursor(&self, batch: &proto::Batch, version: Version, limits: &Limits) -> Result<(), ProtocolError> {
        match batch::check(batch, &self.stored, version, None, limits) {
            Err(RequestError::Protocol(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs `batch` as a cursor (`/v3/cursor`), each entry to `emit` as it comes; a stream
    /// that cannot reach its database gives one `error` entry.
    pub fn run_cursor(
        &mut self,
        batch: &proto::Batch,
        version: Version,
        dbs: &Databases,
        limits: &Limits,
        emit: &mut dyn FnMut(proto::CursorEntry) -> bool,
    ) {
        // Armed by the caller before this runs (see `Stream::deadline`): the client may
        // leave, expiring it, before this blocking thread even starts.
        let primary = dbs.primary();
        let emit = &mut |mut entry: proto::CursorEntry| {
            if let proto::CursorEntry::StepError { error, .. } | proto::CursorEntry::Error { error } = &mut entry {
                name_primary(error, primary);
            }
            emit(entry)
        };
        self.run_cursor_armed(batch, version, dbs, limits, emit);
        self.deadline.disarm();
    }

    fn run_cursor_armed(
        &mut self,
        batch: &proto::Batch,
        version: Version,
        dbs: &Databases,
        limits: &Limits,
        emit: &mut dyn FnMut(proto::CursorEntry) -> bool,
    ) {
        if let Err(e) = self.conn(dbs) {
            emit(proto::CursorEntry::Error { error: e.to_proto() });
            return;
        }
        let conn = self.conn.as_deref().expect("opened above");
        // Checked by `check_cursor` before the response began; a text error is a step's.
        let texts = match batch::check(batch, &self.stored, version, None, limits) {
            Ok(texts) => texts,
            Err(e) => {
                let error = match e {
                    RequestError::Stmt(e) => e.to_proto(),
                    RequestError::Protocol(e) => proto::Error { message: e.to_string(), code: "PROTOCOL_ERROR".into() },
                };
                emit(proto::CursorEntry::Error { error });
                return;
            }
        };
        batch::run_cursor(conn, batch, &texts, limits, emit);
    }

    /// Ends the stream: any open transaction rolled back, its connection closed.
    pub fn end(mut self, dbs: &Databases) {
        if let Some(conn) = self.conn.take() {
            dbs.checkin(&self.namespace, conn);
        }
    }

    /// Runs one request, which came in protocol `version`. A request the protocol does not
    /// allow (see [`ProtocolError`]) fails the whole HTTP request, as in sqld.
    pub fn handle(
        &mut self,
        request: StreamRequest,
        version: Version,
        dbs: &Databases,
        limits: &Limits,
    ) -> Result<StreamResult, ProtocolError> {
        self.deadline.arm(limits.request_duration_max);
        let responded = self.respond(request, version, dbs, limits);
        self.deadline.disarm();
        let primary = dbs.primary();
        match responded {
            Ok(StreamResponse::Batch { mut result }) => {
                result.step_errors.iter_mut().flatten().for_each(|e| name_primary(e, primary));
                Ok(StreamResult::Ok { response: StreamResponse::Batch { result } })
            }
            Ok(response) => Ok(StreamResult::Ok { response }),
            Err(RequestError::Stmt(e)) => {
                let mut error = e.to_proto();
                name_primary(&mut error, primary);
                Ok(StreamResult::Error { error })
            }
            Err(RequestError::Protocol(e)) => Err(e),
        }
    }

    /// The connection for a request that needs one: none once the stream is closed (in
    /// sqld a protocol error, not a result).
    fn open_conn(&mut self, dbs: &Databases) -> Result<&Connection, RequestError> {
        if self.closed {
            return Err(ProtocolError::StreamClosed.into());
        }
        Ok(self.conn(dbs)?)
    }

    fn respond(
        &mut self,
        request: StreamRequest,
        version: Version,
        dbs: &Databases,
        limits: &Limits,
    ) -> Result<StreamResponse, RequestError> {
        Ok(match request {
            StreamRequest::Close => {
                self.closed = true;
                StreamResponse::Close
            }
            StreamRequest::Execute { stmt } => {
                self.open_conn(dbs)?;
                let conn = self.conn.as_deref().expect("opened above");
                let sql = stmt::sql_of(stmt.sql.as_deref(), stmt.sql_id, &self.stored)?;
                StreamResponse::Execute { result: stmt::execute(conn, sql, &stmt, limits)? }
            }
            StreamRequest::Batch { batch } => {
                self.open_conn(dbs)?;
                let conn = self.conn.as_deref().expect("opened above");
                let texts = batch::check(&batch, &self.stored, version, Some(conn), limits)?;
                StreamResponse::Batch { result: batch::execute(conn, &batch, &texts, limits) }
            }
            StreamRequest::Sequence { sql, sql_id } => {
                self.open_conn(dbs)?;
                let conn = self.conn.as_deref().expect("opened above");
                let sql = stmt::sql_of(sql.as_deref(), sql_id, &self.stored)?;
                stmt::sequence(conn, sql, limits)?;
                StreamResponse::Sequence
            }
            StreamRequest::Describe { sql, sql_id } => {
                self.open_conn(dbs)?;
                let conn = self.conn.as_deref().expect("opened above");
                let sql = stmt::sql_of(sql.as_deref(), sql_id, &self.stored)?;
                StreamResponse::Describe { result: stmt::describe(conn, sql, limits)? }
            }
            StreamRequest::StoreSql { sql_id, sql } => {
                self.store_sql(sql_id, sql, limits)?;
                StreamResponse::StoreSql
            }
            StreamRequest::CloseSql { sql_id } => {
                self.stored.remove(&sql_id);
                StreamResponse::CloseSql
            }
            StreamRequest::GetAutocommit => {
                if version < Version::Hrana3 {
                    return Err(ProtocolError::NotSupported {
                        what: "The `get_autocommit` request",
                        min_version: Version::Hrana3,
                    }
                    .into());
                }
                StreamResponse::GetAutocommit { is_autocommit: self.open_conn(dbs)?.is_autocommit() }
            }
        })
    }

    /// sqld's order: an id in use (a protocol error), then too many texts, then too large
    /// (our limits, sqld's codes).
    fn store_sql(&mut self, sql_id: i32, sql: String, limits: &Limits) -> Result<(), RequestError> {
        if self.stored.contains_key(&sql_id) {
            return Err(ProtocolError::SqlExists(sql_id).into());
        }
        if self.stored.len() >= limits.stored_sql_max {
            return Err(StmtError::SqlStoreTooMany(self.stored.len()).into());
        }
        if sql.len() > limits.statement_bytes_max {
            return Err(StmtError::SqlStoreTooLarge { size: sql.len(), max: limits.statement_bytes_max }.into());
        }
        // Bounded per stream in bytes too: texts × streams would otherwise reach a terabyte.
        let stored: usize = self.stored.values().map(String::len).sum();
        if stored + sql.len() > limits.stored_sql_bytes_max {
            return Err(
                StmtError::SqlStoreTooLarge { size: stored + sql.len(), max: limits.stored_sql_bytes_max }.into()
            );
        }
        self.stored.insert(sql_id, sql);
        Ok(())
    }
}

/// On a replica, a write refused (every stream there reads only) says where to send it.
fn name_primary(error: &mut proto::Error, primary: Option<&str>) {
    if let Some(primary) = primary
        && error.code == "SQLITE_READONLY"
    {
        error.message.push_str(&format!(" (this server is a replica of {primary}: send writes to the primary)"));
    }
}
