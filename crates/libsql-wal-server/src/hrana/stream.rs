//! A Hrana stream: one connection to one namespace, the SQL texts stored on it, and whether
//! it was closed. Requests on a stream run in order, on a blocking thread (SQLite).

use rusqlite::Connection;

use super::proto::{StreamRequest, StreamResponse, StreamResult};
use super::stmt::{self, StmtError, StoredSql};
use super::{batch, proto};
use crate::databases::{Conn, Databases};
use crate::limits::Limits;

pub struct Stream {
    namespace: String,
    /// Opened at the first statement, closed when the stream ends.
    conn: Option<Conn>,
    stored: StoredSql,
    closed: bool,
    /// Opened with read-only credentials: its connection refuses writes (`query_only`).
    read_only: bool,
}

impl Stream {
    pub fn new(namespace: String, read_only: bool) -> Self {
        Stream { namespace, conn: None, stored: StoredSql::new(), closed: false, read_only }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Inside an explicit transaction (so its end would roll something back).
    pub fn in_transaction(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_autocommit())
    }

    /// The connection, opened if the stream has none yet.
    pub fn conn(&mut self, dbs: &Databases) -> Result<&Connection, StmtError> {
        if self.conn.is_none() {
            let conn = dbs.checkout(&self.namespace)?;
            // SQLite itself then refuses every write (SQLITE_READONLY), whatever the path:
            // statements, batches, sequences, even writes hidden in triggers.
            if self.read_only {
                conn.pragma_update(None, "query_only", true)?;
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_deref().expect("just set"))
    }

    /// Runs `batch` as a cursor (`/v3/cursor`), each entry to `emit` as it comes; a stream
    /// that cannot reach its database gives one `error` entry.
    pub fn run_cursor(
        &mut self,
        batch: &proto::Batch,
        dbs: &Databases,
        limits: &Limits,
        emit: &mut dyn FnMut(proto::CursorEntry) -> bool,
    ) {
        if self.closed {
            emit(proto::CursorEntry::Error {
                error: proto::Error { message: "The stream is closed".into(), code: "STREAM_CLOSED".into() },
            });
            return;
        }
        if let Err(e) = self.conn(dbs) {
            emit(proto::CursorEntry::Error { error: e.to_proto() });
            return;
        }
        let conn = self.conn.as_deref().expect("opened above");
        batch::run_cursor(conn, batch, &self.stored, limits, emit);
    }

    /// Ends the stream: any open transaction rolled back, its connection closed.
    pub fn end(mut self, dbs: &Databases) {
        if let Some(conn) = self.conn.take() {
            dbs.checkin(&self.namespace, conn);
        }
    }

    /// Runs one request. A request on a closed stream is an error, as the spec says.
    pub fn handle(&mut self, request: StreamRequest, dbs: &Databases, limits: &Limits) -> StreamResult {
        if self.closed {
            return error(proto::Error { message: "The stream is closed".into(), code: "STREAM_CLOSED".into() });
        }
        match self.respond(request, dbs, limits) {
            Ok(response) => StreamResult::Ok { response },
            Err(e) => error(e.to_proto()),
        }
    }

    fn respond(
        &mut self,
        request: StreamRequest,
        dbs: &Databases,
        limits: &Limits,
    ) -> Result<StreamResponse, StmtError> {
        Ok(match request {
            StreamRequest::Close => {
                self.closed = true;
                StreamResponse::Close
            }
            StreamRequest::Execute { stmt } => {
                self.conn(dbs)?;
                let conn = self.conn.as_deref().expect("opened above");
                StreamResponse::Execute { result: stmt::execute(conn, &stmt, &self.stored, limits)? }
            }
            StreamRequest::Batch { batch } => {
                self.conn(dbs)?;
                let conn = self.conn.as_deref().expect("opened above");
                StreamResponse::Batch { result: batch::execute(conn, &batch, &self.stored, limits) }
            }
            StreamRequest::Sequence { sql, sql_id } => {
                let sql = stmt::sql_of(sql.as_deref(), sql_id, &self.stored)?.to_string();
                stmt::sequence(self.conn(dbs)?, &sql, limits)?;
                StreamResponse::Sequence
            }
            StreamRequest::Describe { sql, sql_id } => {
                let sql = stmt::sql_of(sql.as_deref(), sql_id, &self.stored)?.to_string();
                StreamResponse::Describe { result: stmt::describe(self.conn(dbs)?, &sql, limits)? }
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
                StreamResponse::GetAutocommit { is_autocommit: self.conn(dbs)?.is_autocommit() }
            }
        })
    }

    fn store_sql(&mut self, sql_id: i32, sql: String, limits: &Limits) -> Result<(), StmtError> {
        if sql.len() > limits.statement_bytes_max {
            return Err(StmtError::StatementTooLarge(limits.statement_bytes_max));
        }
        if self.stored.contains_key(&sql_id) {
            return Err(StmtError::SqlIdInUse(sql_id));
        }
        if self.stored.len() >= limits.stored_sql_max {
            return Err(StmtError::TooManyStoredSql(limits.stored_sql_max));
        }
        self.stored.insert(sql_id, sql);
        Ok(())
    }
}

fn error(error: proto::Error) -> StreamResult {
    StreamResult::Error { error }
}
