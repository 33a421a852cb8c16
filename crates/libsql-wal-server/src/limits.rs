//! The server's bounds, each named as the flag that sets it. Every one turns excess into an
//! error response, never into unbounded memory, threads or descriptors.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-body-bytes`: a request body larger than this is refused with 413.
    pub body_bytes_max: usize,
    /// `--max-statement-bytes`: one SQL text (also a `store_sql` one) larger is an error result.
    pub statement_bytes_max: usize,
    /// `--max-response-bytes`: rows beyond it end the statement with RESPONSE_TOO_LARGE
    /// (a pipeline's or batch's results together; a cursor's one row at a time).
    pub response_bytes_max: usize,
    /// `--max-concurrent-requests`: requests beyond it wait in line; past `request_queue_timeout`
    /// of waiting they get 503.
    pub concurrent_requests_max: usize,
    pub request_queue_timeout: Duration,
    /// `--max-batons`: open streams (interactive transactions) at once; one more gets 503.
    pub batons_max: usize,
    /// `--baton-timeout`: a stream unused this long is closed, its transaction rolled back.
    pub baton_timeout: Duration,
    /// `--max-stored-sql`: SQL texts one stream may hold with `store_sql`.
    pub stored_sql_max: usize,
    /// `--busy-timeout`: how long a statement waits for another writer of its database.
    pub busy_timeout: Duration,
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
            baton_timeout: Duration::from_secs(10),
            stored_sql_max: 1024,
            busy_timeout: Duration::from_secs(5),
        }
    }
}
