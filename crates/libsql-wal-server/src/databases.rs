//! The namespaces a server holds: `<db-dir>/<namespace>.db`, each on our WAL, created and
//! opened on first use. Connections are lent to streams and come back to one bounded pool of
//! idle connections shared by every namespace, so ten thousand namespaces touched once cost
//! at most `idle_connections_max` open connections (and the WAL registry bounds the logs).
//!
//! Everything here blocks (SQLite): call it from a blocking thread.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    /// Idle connections, least recently returned first.
    idle: Mutex<VecDeque<(String, Conn)>>,
    /// Every namespace opened since start (flushed to storage at shutdown).
    used: Mutex<BTreeSet<String>>,
}

impl Databases {
    pub fn new(dir: PathBuf, manager: LibsqlWalManager, limits: Limits) -> Self {
        Databases { dir, manager, limits, idle: Mutex::new(VecDeque::new()), used: Mutex::new(BTreeSet::new()) }
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

    /// A connection to `namespace`: an idle one if there is, else a new one.
    pub fn checkout(&self, namespace: &str) -> Result<Conn, StmtError> {
        if let Some(conn) = self.take_idle(namespace) {
            return Ok(conn);
        }
        let conn =
            libsql_wal::open_connection(self.path_of(namespace), &self.manager).map_err(|e| StmtError::Sqlite {
                code: sqlite_code_name(e.sqlite_code()),
                message: format!("cannot open {namespace}: {e}"),
            })?;
        // Our connections start with SQLite's default (no busy wait); a server has many
        // writers per database and lets each wait for the others a while.
        conn.busy_timeout(self.limits.busy_timeout)?;
        self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_string());
        Ok(conn)
    }

    fn take_idle(&self, namespace: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = idle.iter().rposition(|(ns, _)| ns == namespace)?;
        idle.remove(at).map(|(_, conn)| conn)
    }

    /// Takes `conn` back. A transaction left open is rolled back first: a connection in the
    /// pool is always in autocommit mode. Beyond the bound the oldest idle one is closed.
    pub fn checkin(&self, namespace: &str, conn: Conn) {
        if !conn.is_autocommit()
            && let Err(e) = conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(namespace, error = %e, "rolling back a transaction left open failed; closing the connection");
            return;
        }
        let evicted = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push_back((namespace.to_string(), conn));
            let excess = idle.len().saturating_sub(self.limits.idle_connections_max);
            idle.drain(..excess).collect::<Vec<_>>()
        };
        // Closed outside the lock: the last close of a database checkpoints it.
        drop(evicted);
    }

    pub fn used_namespaces(&self) -> Vec<String> {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Closes every idle connection (at shutdown: each last close checkpoints its database).
    pub fn close_idle(&self) {
        let all = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(all);
    }
}

/// A namespace is a file name under `--db-dir`: the characters storage allows (A-Z a-z 0-9
/// `.` `_` `-`, not starting with a dot, at most 128), so no path can escape the directory.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    libsql_wal::storage::layout::validate_namespace(namespace).map_err(|e| e.to_string())
}
