//! Errors, and their one mapping to SQLite result codes at the `Wal` boundary.

use std::path::PathBuf;

use libsql_sys::ffi;

/// Everything that can go wrong inside the WAL. Messages say what failed and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error while {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt log {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "database {path} uses {page_size}-byte pages; libsql-wal supports only 4096-byte pages \
         (the file was left untouched)"
    )]
    UnsupportedPageSize { path: PathBuf, page_size: u32 },
    #[error("log segment {path} has format version {version}; this build reads version {supported}")]
    UnsupportedVersion { path: PathBuf, version: u32, supported: u32 },
    #[error("the checkpoint callback failed with SQLite code {code}")]
    CheckpointCallback { code: i32 },
    #[error(
        "database {path} is in use by another process (it holds the database file, by this name or another, \
         or its log {log_dir})"
    )]
    InUse { path: PathBuf, log_dir: PathBuf },
    #[error(
        "database {path} has a SQLite -wal file that is not empty; \
         run `sqlite3 {path} 'PRAGMA wal_checkpoint(TRUNCATE)'` first"
    )]
    ForeignWal { path: PathBuf },
    #[error("cannot open {path}: {reason}")]
    CannotOpen { path: PathBuf, reason: String },
    #[error("{0}")]
    Sqlite(#[from] libsql_sys::rusqlite::Error),
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace { namespace: String, reason: String },
    #[error("storage {url}: {reason}")]
    Storage { url: String, reason: String },
    #[error("restore: {0}")]
    Restore(String),
    /// A benchmark found its data wrong (never raised on the `Wal` path).
    #[error("benchmark: {0}")]
    Bench(String),
    #[error(
        "the log of {path} refuses writes: an earlier sync failed ({reason}), so what is on disk is unknown; \
         close every connection to it and reopen (recovery reads the disk again)"
    )]
    SyncFailed { path: PathBuf, reason: String },
    #[error("database is locked: another connection holds the write lock")]
    Busy,
    #[error("database is locked: the snapshot is stale, another connection committed since")]
    BusySnapshot,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }

    /// Did a sync fail (an fsync whose failure leaves the disk's contents unknown)?
    pub(crate) fn is_failed_sync(&self) -> bool {
        matches!(self, Error::Io { action: "syncing", .. })
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Corrupt { path: path.into(), reason: reason.into() }
    }

    /// The SQLite extended result code for this error.
    pub fn sqlite_code(&self) -> i32 {
        match self {
            Error::Io { action, source, .. } => io_code(action, source),
            Error::Corrupt { .. } => ffi::SQLITE_CORRUPT,
            Error::CheckpointCallback { code } => *code,
            Error::UnsupportedPageSize { .. }
            | Error::UnsupportedVersion { .. }
            | Error::ForeignWal { .. }
            | Error::CannotOpen { .. }
            | Error::InvalidNamespace { .. } => ffi::SQLITE_CANTOPEN,
            Error::Storage { .. } | Error::SyncFailed { .. } => ffi::SQLITE_IOERR,
            Error::Restore(_) | Error::Bench(_) => ffi::SQLITE_ERROR,
            Error::InUse { .. } | Error::Busy => ffi::SQLITE_BUSY,
            Error::Sqlite(e) => e.sqlite_error().map_or(ffi::SQLITE_ERROR, |e| e.extended_code),
            Error::BusySnapshot => ffi::SQLITE_BUSY_SNAPSHOT,
        }
    }

    /// Logs the error and turns it into what `libsql-sys` hands back to SQLite.
    pub(crate) fn into_sqlite(self) -> libsql_sys::wal::Error {
        match self {
            Error::Busy | Error::BusySnapshot => tracing::debug!("{self}"),
            _ => tracing::error!("{self}"),
        }
        libsql_sys::wal::Error::new(self.sqlite_code())
    }
}

fn io_code(action: &str, source: &std::io::Error) -> i32 {
    // ENOSPC and EDQUOT are "disk full" to SQLite, whatever we were doing.
    if matches!(source.raw_os_error(), Some(28) | Some(122)) {
        return ffi::SQLITE_FULL;
    }
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        return ffi::SQLITE_IOERR_SHORT_READ;
    }
    match action {
        "reading" => ffi::SQLITE_IOERR_READ,
        "writing" => ffi::SQLITE_IOERR_WRITE,
        "syncing" => ffi::SQLITE_IOERR_FSYNC,
        "truncating" => ffi::SQLITE_IOERR_TRUNCATE,
        "removing" => ffi::SQLITE_IOERR_DELETE,
        "opening" | "creating" | "locking" => ffi::SQLITE_CANTOPEN,
        _ => ffi::SQLITE_IOERR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(action: &'static str, source: std::io::Error) -> Error {
        Error::Io { action, path: "x".into(), source }
    }

    #[test]
    fn each_error_maps_to_the_sqlite_code_sqlite_would_use() {
        let eio = || std::io::Error::from_raw_os_error(5);
        assert_eq!(io_error("writing", eio()).sqlite_code(), ffi::SQLITE_IOERR_WRITE);
        assert_eq!(io_error("reading", eio()).sqlite_code(), ffi::SQLITE_IOERR_READ);
        assert_eq!(io_error("syncing", eio()).sqlite_code(), ffi::SQLITE_IOERR_FSYNC);
        assert_eq!(io_error("truncating", eio()).sqlite_code(), ffi::SQLITE_IOERR_TRUNCATE);
        assert_eq!(io_error("removing", eio()).sqlite_code(), ffi::SQLITE_IOERR_DELETE);
        assert_eq!(io_error("opening", eio()).sqlite_code(), ffi::SQLITE_CANTOPEN);
        let short = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(io_error("reading", short).sqlite_code(), ffi::SQLITE_IOERR_SHORT_READ);
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(io_error("writing", full).sqlite_code(), ffi::SQLITE_FULL);
        assert_eq!(Error::corrupt("x", "bad").sqlite_code(), ffi::SQLITE_CORRUPT);
        assert_eq!(
            Error::UnsupportedPageSize { path: "x".into(), page_size: 1024 }.sqlite_code(),
            ffi::SQLITE_CANTOPEN
        );
        let version = Error::UnsupportedVersion { path: "x".into(), version: 9, supported: 1 };
        assert_eq!(version.sqlite_code(), ffi::SQLITE_CANTOPEN);
        assert_eq!(Error::Busy.sqlite_code(), ffi::SQLITE_BUSY);
        assert_eq!(Error::BusySnapshot.sqlite_code(), ffi::SQLITE_BUSY_SNAPSHOT);
        assert_eq!(Error::InUse { path: "x".into(), log_dir: "x-wal".into() }.sqlite_code(), ffi::SQLITE_BUSY);
    }
}
