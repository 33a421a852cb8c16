//! The namespaces a server holds: `<db-dir>/<namespace>.db`, each on our WAL, created and
//! opened on first use. Each stream gets a connection of its own, closed when the stream
//! ends: a connection carries session state (TEMP tables, PRAGMAs, ATTACHed files,
//! `last_insert_rowid`) that must never pass from one client to the next, as it would
//! through a pool. Opening stays cheap because the log stays open between connections (the
//! WAL registry keeps idle logs within its descriptor bound), so ten thousand namespaces
//! touched once hold no connection afterwards.
//!
//! Everything here blocks (SQLite): call it from a blocking thread.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use libsql_wal::{LibsqlWal, LibsqlWalManager};

use crate::hrana::stmt::{StmtError, sqlite_code_name};
use crate::limits::Limits;

/// A connection of ours, as streams use it.
pub type Conn = libsql_sys::Connection<LibsqlWal>;

/// The namespace of a request that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

pub struct Databases {
    dir: PathBuf,
    manager: LibsqlWalManager,
    limits: Limits,
    /// Every namespace opened since start (flushed to storage at shutdown).
    used: Mutex<BTreeSet<String>>,
    /// The primary this server is a replica of (`--replica-of`): its databases are written
    /// by replication only, and a namespace is served once replication created it.
    replica_of: Option<String>,
    /// On a replica: where a namespace asked for and not held yet is sent, to be followed.
    wanted: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// On a replica: namespaces whose files are being replaced by a new image of the
    /// primary. No connection to them opens meanwhile ([`Databases::hold_opens`]).
    replacing: Mutex<BTreeSet<String>>,
    replaced: Condvar,
}

/// While it lives, no connection to its namespace opens (see [`Databases::hold_opens`]).
pub struct OpensHeld {
    dbs: Arc<Databases>,
    namespace: String,
}

impl Drop for OpensHeld {
    fn drop(&mut self) {
        self.dbs.replacing.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.namespace);
        self.dbs.replaced.notify_all();
    }
}

impl Databases {
    pub fn new(dir: PathBuf, manager: LibsqlWalManager, limits: Limits) -> Self {
        Databases {
            dir,
            manager,
            limits,
            used: Mutex::new(BTreeSet::new()),
            replica_of: None,
            wanted: Mutex::new(None),
            replacing: Mutex::new(BTreeSet::new()),
            replaced: Condvar::new(),
        }
    }

    /// Makes these the databases of a replica of `primary` (see [`Databases::checkout`]).
    pub fn replica_of(mut self, primary: String) -> Self {
        self.replica_of = Some(primary);
        self
    }

    pub fn primary(&self) -> Option<&str> {
        self.replica_of.as_deref()
    }

    /// On a replica: namespaces clients ask for and this replica does not hold yet go to
    /// `wanted` (the server then follows them).
    pub fn send_wanted_to(&self, wanted: tokio::sync::mpsc::UnboundedSender<String>) {
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = Some(wanted);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manager(&self) -> &LibsqlWalManager {
        &self.manager
    }

    /// Where `namespace` lives. The name was checked by [`check_namespace`].
    pub fn path_of(&self, namespace: &str) -> PathBuf {
        self.dir.join(format!("{namespace}.db"))
    }

    /// Holds back every new connection to `namespace` until the returned guard is dropped:
    /// its files are being replaced. The library refuses the replacement while a
    /// connection is open, so this only keeps new ones from starting meanwhile (a steady
    /// flow of readers would otherwise hold it off for ever).
    pub fn hold_opens(self: &Arc<Self>, namespace: &str) -> OpensHeld {
        self.replacing.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_string());
        OpensHeld { dbs: self.clone(), namespace: namespace.to_string() }
    }

    /// Waits while `namespace`'s files are being replaced, up to the busy timeout (as a
    /// statement waits for a writer), then refuses with SQLITE_BUSY.
    fn wait_for_replacement(&self, namespace: &str) -> Result<(), StmtError> {
        let replacing = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        let (replacing, waited) = self
            .replaced
            .wait_timeout_while(replacing, self.limits.busy_timeout, |r| r.contains(namespace))
            .unwrap_or_else(|e| e.into_inner());
        drop(replacing);
        if waited.timed_out() {
            return Err(StmtError::Sqlite {
                code: "SQLITE_BUSY",
                message: format!("namespace {namespace} is being replaced by a new image of the primary; retry"),
            });
        }
        Ok(())
    }

    /// A new connection to `namespace`, for one stream; `read_only` for a stream opened
    /// with read-only credentials (see [`guard`]); its SQL stops when `deadline` passes.
    pub fn checkout(&self, namespace: &str, read_only: bool, deadline: Arc<Deadline>) -> Result<Conn, StmtError> {
        // On a replica every stream reads only (SQLite refuses its writes: SQLITE_READONLY),
        // and a namespace replication has not created yet is not made empty here.
        let read_only = read_only || self.replica_of.is_some();
        if let Some(primary) = &self.replica_of
            && !self.path_of(namespace).exists()
        {
            if let Some(wanted) = self.wanted.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                let _ = wanted.send(namespace.to_string());
            }
            return Err(StmtError::Sqlite {
                code: "SQLITE_CANTOPEN",
                message: format!(
                    "this server is a replica of {primary} and holds no copy of namespace {namespace} yet: it \
                     follows it from now on (writes go to the primary)"
                ),
            });
        }
        self.wait_for_replacement(namespace)?;
        let conn =
            libsql_wal::open_connection(self.path_of(namespace), &self.manager).map_err(|e| StmtError::Sqlite {
                code: sqlite_code_name(e.sqlite_code()),
                message: format!("cannot open {namespace}: {e}"),
            })?;
        // Our connections start with SQLite's default (no busy wait); a server has many
        // writers per database and lets each wait for the others a while.
        conn.busy_timeout(self.limits.busy_timeout)?;
        // SQLite itself then refuses every write of a read-only stream (SQLITE_READONLY),
        // whatever the path: statements, batches, sequences, writes hidden in triggers.
        if read_only {
            conn.pragma_update(None, "query_only", true)?;
        }
        // What a commit's acknowledgement promises (FULL: synced in the local log), read
        // before the guard is set; a stream may raise it, never lower it.
        let synchronous = conn.pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0))?;
        conn.authorizer(Some(move |context: rusqlite::hooks::AuthContext<'_>| guard(context, read_only, synchronous)));
        // No string or blob larger than a response could carry (zeroblob(1e9) would take a
        // gigabyte before the response limit saw it).
        let length = i32::try_from(self.limits.response_bytes_max).unwrap_or(i32::MAX).max(1);
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, length);
        // Checked every few thousand virtual-machine steps: a query that never ends is
        // interrupted (SQLITE_INTERRUPT) once its request has run too long.
        conn.progress_handler(PROGRESS_STEPS, Some(move || deadline.passed()));
        self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_string());
        Ok(conn)
    }

    /// Ends a stream's connection. A transaction left open is rolled back first, so that a
    /// failure to roll back is logged rather than lost in the close (which rolls back too).
    pub fn checkin(&self, namespace: &str, conn: Conn) {
        if !conn.is_autocommit()
            && let Err(e) = conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(namespace, error = %e, "rolling back a transaction left open failed");
        }
        drop(conn);
    }

    pub fn used_namespaces(&self) -> Vec<String> {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}

/// A namespace is a file name under `--db-dir`: the characters storage allows (A-Z a-z 0-9
/// `.` `_` `-`, not starting with a dot, at most 128), so no path can escape the directory.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    libsql_wal::storage::layout::validate_namespace(namespace).map_err(|e| e.to_string())
}

/// What a client's SQL may not do to the server's databases (SQLITE_AUTH otherwise).
///
/// - Attach a file: a client reaches a database by its namespace, with that namespace's
///   credentials; `ATTACH 'path'` (and `VACUUM INTO 'path'`, which attaches its target)
///   would reach any file the server may open, another namespace's database past its
///   credentials and around its log, or make a new file anywhere. SQLite's temporary and
///   in-memory databases (an empty name, `:memory:`) stay allowed: plain `VACUUM` needs one.
/// - Leave the WAL: `PRAGMA journal_mode` to anything but WAL would take the database off
///   our log, so its commits would bypass storage and `--ack durable`.
/// - Rewrite the schema behind SQLite's back: `PRAGMA writable_schema` and setting
///   `PRAGMA schema_version` can leave a schema no later connection opens, which no
///   request could then repair.
/// - On a read-only stream, undo its `PRAGMA query_only` (which makes SQLite refuse its
///   writes): read-only credentials would otherwise write.
/// - Set what is the whole process's, not the connection's: `PRAGMA hard_heap_limit`,
///   `soft_heap_limit` (`--max-sqlite-memory` is the server's), `temp_store_directory`,
///   `data_store_directory`. Reading them stays allowed.
/// - Lower `PRAGMA synchronous` below `synchronous` (the level the connection was opened
///   with, 0 to 3): an acknowledged commit would no longer be what the server promises
///   (with FULL, synced in the local log). Reading it and raising it stay allowed.
fn guard(
    context: rusqlite::hooks::AuthContext<'_>,
    read_only: bool,
    synchronous: i64,
) -> rusqlite::hooks::Authorization {
    use rusqlite::hooks::{AuthAction, Authorization};
    let refused = match context.action {
        AuthAction::Attach { filename } => !filename.is_empty() && filename != ":memory:",
        AuthAction::Pragma { pragma_name, pragma_value: Some(value) } => {
            let name = pragma_name.to_ascii_lowercase();
            let value = value.trim_matches(['\'', '"']);
            match name.as_str() {
                "journal_mode" => !value.eq_ignore_ascii_case("wal"),
                "writable_schema" | "schema_version" => true,
                // Process-wide: one client would set them for every namespace and client
                // (a heap limit that fails every request with SQLITE_NOMEM until a restart;
                // directories SQLite documents as unsafe to change with connections open).
                "hard_heap_limit" | "soft_heap_limit" | "temp_store_directory" | "data_store_directory" => true,
                "query_only" => read_only,
                "synchronous" => synchronous > 0 && synchronous_level(value).is_none_or(|level| level < synchronous),
                _ => false,
            }
        }
        _ => false,
    };
    if refused { Authorization::Deny } else { Authorization::Allow }
}

/// The `synchronous` level (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA) SQLite sets for `value`, for
/// the spellings whose reading is plain; `None` for the rest, which [`guard`] refuses: SQLite
/// takes an unknown word for NORMAL and wraps a number round (`4` acts as FULL, a number too
/// large for 32 bits as OFF), so only these are let through.
fn synchronous_level(value: &str) -> Option<i64> {
    match value.to_ascii_lowercase().as_str() {
        "off" | "no" | "false" | "0" => Some(0),
        "normal" | "on" | "yes" | "true" | "1" => Some(1),
        "full" | "2" => Some(2),
        "extra" | "3" => Some(3),
        _ => None,
    }
}

/// Virtual-machine steps between two looks at a stream's [`Deadline`]: a look is a clock
/// read, a few tens of nanoseconds against the microseconds these steps take.
const PROGRESS_STEPS: i32 = 10_000;

/// When the SQL of a stream's current request must stop, shared by the stream (which arms
/// it for each request: `--max-request-duration`), the HTTP request that runs it (which
/// cancels it if its client goes away) and the connection's progress handler.
#[derive(Debug, Default)]
pub struct Deadline {
    at: Mutex<Option<Instant>>,
    /// For good: the client that would have learnt the stream's next baton is gone.
    cancelled: AtomicBool,
}

impl Deadline {
    pub fn arm(&self, after: Duration) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now().checked_add(after);
    }

    pub fn disarm(&self) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Ends the current request's time now (its SQL stops; the next request arms afresh).
    pub fn expire(&self) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn passed(&self) -> bool {
        self.is_cancelled() || self.at.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|at| Instant::now() >= at)
    }
}
