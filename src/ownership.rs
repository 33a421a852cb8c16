//! One process owns a database's log at a time, and stock SQLite never reads around it.
//!
//! The log is a *directory* named `<db>-wal`: while it exists, stock `sqlite3` (which expects
//! a file there for a WAL-mode database) fails with SQLITE_CANTOPEN, even after a crash left
//! the directory behind. Inside it, the `lock` file carries an exclusive `flock` held by the
//! owning process for as long as the log is open: a second process of ours gets
//! [`Error::InUse`]. Before taking a database over from SQLite's own WAL we make sure no
//! process still uses that WAL (the lock SQLite's unix VFS holds on its `-shm` file).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{CheckpointMark, PAGE_SIZE, sqlite_header_page_size};
use crate::io::{FileKind, Io, IoFile};

/// Byte of `<db>-shm` that every SQLite connection using the WAL keeps read-locked (the
/// "dead man switch" of SQLite's unix VFS: `UNIX_SHM_DMS`, 120 + 8).
const SQLITE_SHM_DMS_BYTE: u64 = 128;

pub(crate) fn log_dir_of(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn shm_path_of(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-shm");
    PathBuf::from(name)
}

/// Refuses a database whose page size is not 4096, before anything touches it.
pub(crate) fn check_page_size(io: &dyn Io, db_path: &Path) -> Result<()> {
    match io.kind(db_path).map_err(Error::io("opening", db_path))? {
        Some(FileKind::File { len }) if len >= 100 => {
            let file = io.open(db_path, false).map_err(Error::io("opening", db_path))?;
            read_db_header(file.as_ref(), db_path).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Reads the database header: refuses a file that is not SQLite or whose page size is not
/// 4096, and returns the checkpoint mark (see `CheckpointMark::decode`).
pub(crate) fn read_db_header(db_file: &dyn IoFile, db_path: &Path) -> Result<Option<CheckpointMark>> {
    let len = db_file.size().map_err(Error::io("reading", db_path))?;
    if len == 0 {
        return Ok(Some(CheckpointMark::default()));
    }
    if len < 100 {
        // SQLite writes whole pages: a non-empty file shorter than its header is no database.
        let reason = format!("not a SQLite database ({len} bytes, shorter than a database header)");
        return Err(Error::CannotOpen { path: db_path.into(), reason });
    }
    let mut header = [0u8; 100];
    db_file.read_exact_at(&mut header, 0).map_err(Error::io("reading", db_path))?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(Error::CannotOpen { path: db_path.into(), reason: "not a SQLite database".into() });
    }
    let page_size = sqlite_header_page_size(&header);
    if page_size as usize != PAGE_SIZE {
        return Err(Error::UnsupportedPageSize { path: db_path.into(), page_size });
    }
    let mark = crate::format::DB_HEADER_MARK_OFFSET as usize;
    Ok(CheckpointMark::decode(&header[mark..]))
}

/// Is some process (this one included) connected to the database through SQLite's WAL?
pub(crate) fn sqlite_wal_in_use(io: &dyn Io, db_path: &Path) -> Result<bool> {
    let shm = shm_path_of(db_path);
    if io.kind(&shm).map_err(Error::io("opening", &shm))?.is_none() {
        return Ok(false);
    }
    let file = io.open(&shm, false).map_err(Error::io("opening", &shm))?;
    let free = file.try_lock_byte(SQLITE_SHM_DMS_BYTE).map_err(Error::io("locking", &shm))?;
    Ok(!free)
}

/// Takes the database's log for this process: creates the log directory if needed and
/// returns the locked `lock` file, whose handle must live as long as the log is open.
pub(crate) fn take(io: &dyn Io, db_path: &Path) -> Result<Box<dyn IoFile>> {
    let log_dir = log_dir_of(db_path);
    match io.kind(&log_dir).map_err(Error::io("opening", &log_dir))? {
        Some(FileKind::Dir) => {}
        Some(FileKind::File { len }) => {
            // SQLite's own log: ours only once nobody uses it and it holds nothing.
            if len > 0 {
                return Err(Error::ForeignWal { path: db_path.into() });
            }
            if sqlite_wal_in_use(io, db_path)? {
                return Err(Error::InUse { path: db_path.into(), log_dir });
            }
            io.remove_file(&log_dir).map_err(Error::io("removing", &log_dir))?;
            create_log_dir(io, &log_dir)?;
        }
        None => {
            if sqlite_wal_in_use(io, db_path)? {
                return Err(Error::InUse { path: db_path.into(), log_dir });
            }
            create_log_dir(io, &log_dir)?;
        }
    }
    let lock_path = log_dir.join("lock");
    let lock_file = io.open(&lock_path, true).map_err(Error::io("opening", &lock_path))?;
    if !lock_file.try_lock_exclusive().map_err(Error::io("locking", &lock_path))? {
        return Err(Error::InUse { path: db_path.into(), log_dir });
    }
    Ok(lock_file)
}

fn create_log_dir(io: &dyn Io, log_dir: &Path) -> Result<()> {
    io.create_dir_all(log_dir).map_err(Error::io("creating", log_dir))?;
    if let Some(parent) = log_dir.parent() {
        io.sync_dir(parent).map_err(Error::io("syncing", parent))?;
    }
    Ok(())
}

/// Gives the database back to plain SQLite: removes the lock file and the (empty) log
/// directory. The caller holds the lock and has removed every segment.
pub(crate) fn release(io: &dyn Io, log_dir: &Path) -> std::io::Result<()> {
    io.remove_file(&log_dir.join("lock"))?;
    io.remove_dir(log_dir)
}
