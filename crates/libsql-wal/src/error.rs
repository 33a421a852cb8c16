//! Errors, and their one mapping to SQLite result codes at the `Wal` boundary.

use std::path::PathBuf;

use libsql_sys::ffi;

/// Everything that can go wrong inside the WAL. Messages say what failed and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error while {action} {path}{}: {source}", at_frame(*frame_no))]
    Io {
        action: IoAction,
        path: PathBuf,
        /// The frame being read or written, when the operation was on one.
        frame_no: Option<u64>,
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
    /// An object a restore had listed was gone when it came to read it: compaction or
    /// garbage collection replaced it meanwhile (restore lists again and retries).
    #[error("storage {url}: {key} was deleted while it was being read (compaction replaced it); restore again")]
    ObjectGone { url: String, key: String },
    /// A benchmark found its data wrong (never raised on the `Wal` path).
    #[error("benchmark: {0}")]
    Bench(String),
    #[error(
        "the log of {path} refuses writes: an earlier sync failed ({reason}), so what is on disk is unknown; \
         close every connection to it and reopen (recovery reads the disk again)"
    )]
    SyncFailed { path: PathBuf, reason: String },
    /// Frames from a primary that do not continue this replica's log (another history, a
    /// gap, a transaction cut short): nothing of them was published.
    #[error("replica {path}: {reason}")]
    Diverged { path: PathBuf, reason: String },
    /// The log is in use in this process (a connection, a replication stream), so its
    /// files cannot be replaced now ([`crate::replace_with_image`]); nothing was changed.
    #[error("database {path} is in use in this process ({users} connections or streams): it cannot be replaced now")]
    LogInUse { path: PathBuf, users: usize },
    #[error("database is locked: another connection holds the write lock")]
    Busy,
    #[error("database is locked: the snapshot is stale, another connection committed since")]
    BusySnapshot,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an I/O operation that failed was doing: it chooses the SQLite code
/// ([`Error::sqlite_code`]) and reads as the verb of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoAction {
    Open,
    Create,
    Lock,
    Read,
    Write,
    /// An fsync or fdatasync: when it fails, what is on disk is unknown.
    Sync,
    Truncate,
    Remove,
    Rename,
    Link,
    /// Setting a file's modification time (`file_stamp`).
    SetTime,
    Copy,
    /// Binding a socket (test servers).
    Bind,
    /// Starting a thread or a process.
    Start,
}

impl std::fmt::Display for IoAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoAction::Open => "opening",
            IoAction::Create => "creating",
            IoAction::Lock => "locking",
            IoAction::Read => "reading",
            IoAction::Write => "writing",
            IoAction::Sync => "syncing",
            IoAction::Truncate => "truncating",
            IoAction::Remove => "removing",
            IoAction::Rename => "renaming",
            IoAction::Link => "linking",
            IoAction::SetTime => "setting the time of",
            IoAction::Copy => "copying",
            IoAction::Bind => "binding",
            IoAction::Start => "starting",
        })
    }
}

fn at_frame(frame_no: Option<u64>) -> String {
    frame_no.map(|n| format!(" at frame {n}")).unwrap_or_default()
}

impl Error {
    /// Wraps an I/O error of `action` on `path` (for `map_err`).
    pub fn io(action: IoAction, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, frame_no: None, source }
    }

    /// As [`Error::io`], for an operation on the frame `frame_no`.
    pub(crate) fn io_at(
        action: IoAction,
        path: impl Into<PathBuf>,
        frame_no: u64,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, frame_no: Some(frame_no), source }
    }

    /// Did a sync fail (an fsync whose failure leaves the disk's contents unknown)?
    /// A sync that ran and failed: the kernel may have dropped what it was to make durable,
    /// so the log stops taking writes (`Lifecycle::watch`). A directory sync whose `open`
    /// failed (out of descriptors or memory, no permission, the directory gone) never ran:
    /// nothing was dropped, the operation fails and a later sync can still succeed.
    pub(crate) fn is_failed_sync(&self) -> bool {
        match self {
            Error::Io { action: IoAction::Sync, source, .. } => !matches!(
                source.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOMEM
                        | libc::EACCES
                        | libc::EPERM
                        | libc::ENOENT
                        | libc::ENOTDIR
                )
            ),
            _ => false,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Corrupt { path: path.into(), reason: reason.into() }
    }

    /// The SQLite extended result code for this error.
    pub fn sqlite_code(&self) -> i32 {
        match self {
            Error::Io { action, source, .. } => io_code(*action, source),
            Error::Corrupt { .. } => ffi::SQLITE_CORRUPT,
            Error::CheckpointCallback { code } => *code,
            Error::UnsupportedPageSize { .. }
            | Error::UnsupportedVersion { .. }
            | Error::ForeignWal { .. }
            | Error::CannotOpen { .. }
            | Error::InvalidNamespace { .. } => ffi::SQLITE_CANTOPEN,
            Error::Storage { .. } | Error::SyncFailed { .. } | Error::ObjectGone { .. } => ffi::SQLITE_IOERR,
            Error::Restore(_) | Error::Bench(_) | Error::Diverged { .. } => ffi::SQLITE_ERROR,
            Error::InUse { .. } | Error::LogInUse { .. } | Error::Busy => ffi::SQLITE_BUSY,
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

fn io_code(action: IoAction, source: &std::io::Error) -> i32 {
    // ENOSPC and EDQUOT are "disk full" to SQLite, whatever we were doing.
    if matches!(source.raw_os_error(), Some(28) | Some(122)) {
        return ffi::SQLITE_FULL;
    }
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        return ffi::SQLITE_IOERR_SHORT_READ;
    }
    match action {
        IoAction::Read => ffi::SQLITE_IOERR_READ,
        IoAction::Write => ffi::SQLITE_IOERR_WRITE,
        IoAction::Sync => ffi::SQLITE_IOERR_FSYNC,
        IoAction::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
        IoAction::Remove => ffi::SQLITE_IOERR_DELETE,
        IoAction::Open | IoAction::Create | IoAction::Lock => ffi::SQLITE_CANTOPEN,
        IoAction::Rename | IoAction::Link | IoAction::SetTime | IoAction::Copy | IoAction::Bind | IoAction::Start => {
            ffi::SQLITE_IOERR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(action: IoAction, source: std::io::Error) -> Error {
        Error::io(action, "x")(source)
    }

    #[test]
    fn each_error_maps_to_the_sqlite_code_sqlite_would_use() {
        let eio = || std::io::Error::from_raw_os_error(5);
        assert_eq!(io_error(IoAction::Write, eio()).sqlite_code(), ffi::SQLITE_IOERR_WRITE);
        assert_eq!(io_error(IoAction::Read, eio()).sqlite_code(), ffi::SQLITE_IOERR_READ);
        assert_eq!(io_error(IoAction::Sync, eio()).sqlite_code(), ffi::SQLITE_IOERR_FSYNC);
        assert_eq!(io_error(IoAction::Truncate, eio()).sqlite_code(), ffi::SQLITE_IOERR_TRUNCATE);
        assert_eq!(io_error(IoAction::Remove, eio()).sqlite_code(), ffi::SQLITE_IOERR_DELETE);
        assert_eq!(io_error(IoAction::Open, eio()).sqlite_code(), ffi::SQLITE_CANTOPEN);
        let short = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(io_error(IoAction::Read, short).sqlite_code(), ffi::SQLITE_IOERR_SHORT_READ);
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(io_error(IoAction::Write, full).sqlite_code(), ffi::SQLITE_FULL);
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

    #[test]
    fn an_io_error_names_its_action_path_and_frame() {
        let error = Error::io_at(IoAction::Read, "/db-wal/s", 42)(std::io::Error::from_raw_os_error(5));
        assert_eq!(error.sqlite_code(), ffi::SQLITE_IOERR_READ);
        let message = error.to_string();
        assert!(message.starts_with("I/O error while reading /db-wal/s at frame 42: "), "{message}");
        let sync = Error::io(IoAction::Sync, "/db")(std::io::Error::from_raw_os_error(5));
        assert!(sync.is_failed_sync() && !error.is_failed_sync());
        assert_eq!(sync.to_string(), format!("I/O error while syncing /db: {}", std::io::Error::from_raw_os_error(5)));
    }
}
