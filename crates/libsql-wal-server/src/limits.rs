//! The server's bounds, each named as the flag that sets it. Every one turns excess into an
//! error response, never into unbounded memory, threads or descriptors.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-body-bytes`: a request body larger than this is refused: 413 `BODY_TOO_LARGE`.
    pub body_bytes_max: usize,
    /// `--max-statement-bytes`: one SQL text (also a `store_sql` one) larger is an
    /// `SQL_TOO_LARGE` result.
    pub statement_bytes_max: usize,
    /// `--max-response-bytes`: rows beyond it end the statement with `RESPONSE_TOO_LARGE`:
    /// an `execute`'s rows on their own, a `batch`'s steps together, a cursor's one row at a
    /// time (sizes as [`crate::hrana::stmt::encoded_size`] counts them). It is also SQLite's
    /// length limit for one string or blob (`SQLITE_LIMIT_LENGTH`: `SQLITE_TOOBIG`), so no
    /// value larger than a response could carry is ever built in memory.
    pub response_bytes_max: usize,
    /// `--max-concurrent-requests`: requests beyond it wait in line.
    pub concurrent_requests_max: usize,
    /// `--request-queue-timeout`: past this long in line a request gets 503 `SERVER_BUSY`.
    pub request_queue_timeout: Duration,
    /// `--max-batons`: open streams (interactive transactions) at once, counted from the
    /// request that opens one to the end of the stream; one more gets 503 `STREAMS_EXHAUSTED`.
    pub batons_max: usize,
    /// `--max-batons-per-client`: open streams one client may hold (by JWT with JWT auth,
    /// else by peer address; see [`crate::batons::Client`]); one more gets 429
    /// `CLIENT_STREAMS_EXHAUSTED`. 0, the default, sets no such bound.
    pub batons_per_client_max: usize,
    /// `--baton-timeout`: a stream unused this long is closed, its transaction rolled back.
    pub baton_timeout: Duration,
    /// `--max-stored-sql`: SQL texts one stream may hold with `store_sql`; one more is an
    /// `SQL_STORE_TOO_MANY` result.
    pub stored_sql_max: usize,
    /// `--max-stored-sql-bytes`: the bytes of the SQL texts one stream holds together; a
    /// `store_sql` past it is an `SQL_STORE_TOO_LARGE` result. With `--max-batons`, it
    /// bounds the memory stored SQL takes (1024 streams × 1 MiB by default).
    pub stored_sql_bytes_max: usize,
    /// `--busy-timeout`: how long a statement waits for another writer of its database (then
    /// `SQLITE_BUSY`).
    pub busy_timeout: Duration,
    /// `--max-request-duration`: SQL running longer for one request (a pipeline request, a
    /// cursor's batch) is interrupted: `SQLITE_INTERRUPT`. It also bounds how long a
    /// shutdown waits for such a request.
    pub request_duration_max: Duration,
    /// `--max-sqlite-memory`: the memory SQLite may take in the whole process (page caches,
    /// values, in-memory and temporary databases): an allocation past it fails its
    /// statement with `SQLITE_NOMEM`; past half of it SQLite first gives back cache.
    pub sqlite_memory_max: u64,
    /// `--idle-connection-timeout`: a connection over which nothing went either way for
    /// this long while the server waited for its client is closed (see [`crate::idle`]).
    pub idle_connection_timeout: Duration,
    /// `--body-read-timeout`: a request's whole body must arrive within this long of its
    /// handler asking for it (and with no quiet of `idle_connection_timeout` on the way), or
    /// the request ends with 408 `BODY_TIMEOUT` (see [`crate::idle::timed_body`]).
    pub body_read_timeout: Duration,
    /// `--sync-log-keep-bytes`: how much of a database's log after its current embedded-replica
    /// generation's base is kept for its replicas; past it, a replica further behind than
    /// the log holds gets a new image (see [`crate::sync`]).
    pub sync_log_keep_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 10 << 20,
            statement_bytes_max: 1 << 20,
            response_bytes_max: 64 << 20,
            concurrent_requests_max: 256,
            request_queue_timeout: Duration::from_secs(10),
            batons_max: 1024,
            batons_per_client_max: 0,
            baton_timeout: Duration::from_secs(10),
            stored_sql_max: 1024,
            stored_sql_bytes_max: 1 << 20,
            busy_timeout: Duration::from_secs(5),
            request_duration_max: Duration::from_secs(30),
            sqlite_memory_max: 1 << 30,
            idle_connection_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            sync_log_keep_bytes: 256 << 20,
        }
    }
}

/// Sets SQLite's heap limits for the process (`sqlite3_hard_heap_limit64`, and the soft
/// limit at half, which makes SQLite shrink its caches before anything fails). Process-wide,
/// as SQLite keeps them: the last server bound in a process sets them.
pub fn bound_sqlite_memory(max: u64) {
    let hard = i64::try_from(max).unwrap_or(i64::MAX).max(1);
    // SAFETY: both calls only set SQLite's global limits (thread-safe by SQLite's contract)
    // and return the previous ones.
    unsafe {
        rusqlite::ffi::sqlite3_hard_heap_limit64(hard);
        rusqlite::ffi::sqlite3_soft_heap_limit64(hard / 2);
    }
}
