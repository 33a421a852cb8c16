//! One process owns a database's log at a time, and stock SQLite never reads around it.
//!
//! The log is a *directory* named `<db>-wal`: while it exists, stock `sqlite3` (which expects
//! a file there for a WAL-mode database) fails with SQLITE_CANTOPEN, even after a crash left
//! the directory behind. Inside it, the `lock` file carries an exclusive `flock` held by the
//! owning process for as long as the log is open, and so does the database file itself (a
//! `flock` that follows the file, not its name: a hard link is the same file): a second
//! process of ours gets [`Error::InUse`]. Before taking a database over from SQLite's own
//! WAL we make sure no process still uses that WAL, and that none can start to while we
//! take it: the [`SqliteGate`], SQLite's own lock protocol on the database file.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, PAGE_SIZE, sqlite_header_page_size};
use crate::io::{FileKind, Io, IoFile};

/// Byte of `<db>-shm` that every SQLite connection using the WAL keeps read-locked (the
/// "dead man switch" of SQLite's unix VFS: `UNIX_SHM_DMS`, 120 + 8).
const SQLITE_SHM_DMS_BYTE: u64 = 128;

/// SQLite's lock bytes in the database file (os_unix.c): a connection takes SHARED as a
/// read lock on the `SHARED_SIZE` bytes from `SHARED_FIRST`, and only while holding a read
/// lock on `PENDING_BYTE`, which a writer's write lock there keeps new readers out of.
const SQLITE_PENDING_BYTE: u64 = 0x4000_0000;
const SQLITE_SHARED_FIRST: u64 = SQLITE_PENDING_BYTE + 2;
const SQLITE_SHARED_SIZE: u64 = 510;

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
    match io.kind(db_path).map_err(Error::io(IoAction::Open, db_path))? {
        Some(FileKind::File { len }) if len >= 100 => {
            let file = io.open(db_path, false).map_err(Error::io(IoAction::Open, db_path))?;
            read_db_header(file.as_ref(), db_path).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Reads the database header: refuses a file that is not SQLite or whose page size is not
/// 4096, and returns the checkpoint mark (see `CheckpointMark::decode`).
pub(crate) fn read_db_header(db_file: &dyn IoFile, db_path: &Path) -> Result<Option<CheckpointMark>> {
    let len = db_file.size().map_err(Error::io(IoAction::Read, db_path))?;
    if len == 0 {
        return Ok(Some(CheckpointMark::default()));
    }
    if len < 100 {
        // SQLite writes whole pages: a non-empty file shorter than its header is no database.
        let reason = format!("not a SQLite database ({len} bytes, shorter than a database header)");
        return Err(Error::CannotOpen { path: db_path.into(), reason });
    }
    let mut header = [0u8; 100];
    db_file.read_exact_at(&mut header, 0).map_err(Error::io(IoAction::Read, db_path))?;
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
    if io.kind(&shm).map_err(Error::io(IoAction::Open, &shm))?.is_none() {
        return Ok(false);
    }
    let file = io.open(&shm, false).map_err(Error::io(IoAction::Open, &shm))?;
    let free = file.try_lock_byte(SQLITE_SHM_DMS_BYTE).map_err(Error::io(IoAction::Lock, &shm))?;
    Ok(!free)
}

/// What makes a log this process's, held for as long as the log is open (as the
/// `SharedWal`'s lock handle): the flock on the database file itself, which follows the
/// file whatever name it was opened by, and the flock on `<db>-wal/lock`, which is what
/// older versions of ours look at. `unlock` releases both.
struct Ownership {
    db_lock: Box<dyn IoFile>,
    lock_file: Box<dyn IoFile>,
}

impl IoFile for Ownership {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.lock_file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.lock_file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.lock_file.sync_data()
    }
    fn size(&self) -> std::io::Result<u64> {
        self.lock_file.size()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.lock_file.set_len(len)
    }
    fn try_lock_exclusive(&self) -> std::io::Result<bool> {
        Ok(self.db_lock.try_lock_exclusive()? && self.lock_file.try_lock_exclusive()?)
    }
    fn unlock(&self) -> std::io::Result<()> {
        // Both, even if the first fails: a lock left behind would refuse the next owner.
        let log = self.lock_file.unlock();
        let db = self.db_lock.unlock();
        log.and(db)
    }
    fn try_hold_byte(&self, offset: u64) -> std::io::Result<bool> {
        self.lock_file.try_hold_byte(offset)
    }
    fn release_byte(&self, offset: u64) -> std::io::Result<()> {
        self.lock_file.release_byte(offset)
    }
    fn locked_by_another_process(&self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.lock_file.locked_by_another_process(offset, len)
    }
}

/// Takes the database's log for this process: locks the database file, creates the log
/// directory if needed and locks its `lock` file. The returned handle holds both locks and
/// must live as long as the log is open.
///
/// The first lock is a `flock` on the database file itself. A log directory is found by
/// name (`<db>-wal`), so two names of one file (hard links) have two directories and two
/// `lock` files; the lock on the file's inode is what makes a second name refused while the
/// first is owned. `flock` locks are independent of the POSIX (`fcntl`) locks SQLite's unix
/// VFS takes on the same file (on Linux), so SQLite's own locking is not disturbed. It is
/// taken first, before anything is created: a process refused leaves no trace.
///
/// `db_file` is the log's own read-write handle of the database file (kept open as long as
/// the log): the gate that keeps stock SQLite out while the log directory is taken is a lock
/// on it (see [`SqliteGate`]).
pub(crate) fn take(io: &dyn Io, db_path: &Path, db_file: &dyn IoFile) -> Result<Box<dyn IoFile>> {
    let log_dir = log_dir_of(db_path);
    // Read-only: the handle only carries the lock.
    let db_lock = io.open_read_only(db_path).map_err(Error::io(IoAction::Open, db_path))?;
    if !db_lock.try_lock_exclusive().map_err(Error::io(IoAction::Lock, db_path))? {
        return Err(Error::InUse { path: db_path.into(), log_dir });
    }
    if let Some(other) = log_under_another_name(db_path)? {
        let _ = db_lock.unlock();
        return Err(other_name_error(db_path, &other));
    }
    match take_log_dir(io, db_file, db_path, &log_dir) {
        Ok(lock_file) => Ok(Box::new(Ownership { db_lock, lock_file })),
        Err(e) => {
            // Explicitly: a child forked meanwhile would keep the lock past our close.
            let _ = db_lock.unlock();
            Err(e)
        }
    }
}

/// Another name of the database file, in its directory (a hard link), whose log holds what
/// the file does not yet: `<other>-wal/` with segments (ours, left by a process that died)
/// or a non-empty `<other>-wal` file (SQLite's). A log is found by name, so opening the file
/// by this name would not see those commits, and a checkpoint here would write over pages
/// that they change. Links in other directories cannot be found short of searching the
/// whole file system; they are a documented limitation.
///
/// Asked of the file system directly (`stat` and directory listings, no data I/O), as for
/// [`crate::registry::file_id`]: `Io` has no notion of identity.
pub(crate) fn log_under_another_name(db_path: &Path) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let stat_error = |e: std::io::Error| Error::CannotOpen { path: db_path.into(), reason: e.to_string() };
    let meta = std::fs::metadata(db_path).map_err(stat_error)?;
    if meta.nlink() < 2 {
        return Ok(None);
    }
    let dir = match db_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let own_name = db_path.file_name();
    for entry in std::fs::read_dir(dir).map_err(stat_error)? {
        let Ok(entry) = entry else { continue };
        let other = entry.path();
        if entry.file_name().as_os_str() == own_name.unwrap_or_default() {
            continue;
        }
        let same_file = std::fs::symlink_metadata(&other).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if same_file && holds_a_log(&log_dir_of(&other)) {
            return Ok(Some(other));
        }
    }
    Ok(None)
}

/// Is there a log with something in it at `log_dir`: our directory with a segment, or
/// SQLite's non-empty `-wal` file?
fn holds_a_log(log_dir: &Path) -> bool {
    match std::fs::symlink_metadata(log_dir) {
        Ok(m) if m.is_dir() => std::fs::read_dir(log_dir)
            .is_ok_and(|entries| entries.flatten().any(|e| crate::segment::start_of_file_name(&e.path()).is_some())),
        Ok(m) => m.is_file() && m.len() > 0,
        Err(_) => false,
    }
}

pub(crate) fn other_name_error(db_path: &Path, other: &Path) -> Error {
    if holds_a_log(&log_dir_of(db_path)) {
        let reason = format!(
            "this file is also named {} (a hard link), and both {} and {} hold a log of it: two histories of one \
             file, which no open can merge; keep one log (move the other away) and open the file by its name",
            other.display(),
            log_dir_of(db_path).display(),
            log_dir_of(other).display()
        );
        return Error::CannotOpen { path: db_path.into(), reason };
    }
    let reason = format!(
        "this file is also named {} (a hard link), and {} holds its log, with commits the file does not have yet: \
         open it by that name (a clean close there gives the file back whole)",
        other.display(),
        log_dir_of(other).display()
    );
    Error::CannotOpen { path: db_path.into(), reason }
}

/// Attempts at taking the log directory when a race keeps changing it under our feet.
const TAKE_ATTEMPTS: usize = 5;

/// Creates (or takes over) the log directory and locks its `lock` file, behind the
/// [`SqliteGate`] (no other process's SQLite can open `<db>-wal` meanwhile). What is at
/// `<db>-wal` may still change between our look and our action: another process of ours
/// removing the directory at its shutdown, or a program that is not SQLite. A race
/// lost that way is never reported as its raw error ("File exists"): we look again and
/// decide again (SQLite's file in use: `InUse`), and after a few lost races in a row,
/// report `InUse` (someone else is busy with the file right now).
fn take_log_dir(io: &dyn Io, db_file: &dyn IoFile, db_path: &Path, log_dir: &Path) -> Result<Box<dyn IoFile>> {
    for _ in 0..TAKE_ATTEMPTS {
        let gate = SqliteGate::close(db_file, db_path, log_dir)?;
        let taken = try_take_log_dir(io, db_path, log_dir);
        gate.open()?;
        match taken {
            Err(Error::Io { source, .. }) if lost_race(&source) => {
                tracing::debug!(
                    dir = %log_dir.display(),
                    "the log directory changed while we took it ({source}): looking again"
                );
            }
            result => return result,
        }
    }
    Err(Error::InUse { path: db_path.into(), log_dir: log_dir.into() })
}

/// Errors that mean "what we looked at a moment ago is not there any more": a file created
/// where we create the directory, a file or directory removed before we removed or used it.
fn lost_race(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::AlreadyExists | ErrorKind::NotFound | ErrorKind::NotADirectory)
        || matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Keeps stock SQLite (another process's connection through SQLite's own WAL) out of the
/// database while we look at `<db>-wal` and take it.
///
/// SQLite opens a database's `-wal` only while its connection holds SHARED, which it keeps
/// for as long as that connection uses the WAL, and it takes SHARED only through a read
/// lock on PENDING_BYTE. So with our write lock on PENDING_BYTE held, and nobody else
/// holding SHARED, no other process has `-wal` open or can open it until we are done: an
/// empty `-wal` file is safe to remove, and whoever comes after finds our directory
/// (SQLITE_CANTOPEN) instead of a file. Without the gate, a `sqlite3` that had just opened
/// its (empty) `-wal` but not yet mapped `-shm` (the lock [`sqlite_wal_in_use`] looks at)
/// went on committing into the file we removed, and lost those commits.
///
/// A `sqlite3` arriving while the gate is closed gets SQLITE_BUSY (its busy handler waits
/// the moment out); one holding SHARED already makes us refuse with [`Error::InUse`], as it
/// is using the database.
struct SqliteGate<'a> {
    db_file: &'a dyn IoFile,
    db_path: &'a Path,
}

impl<'a> SqliteGate<'a> {
    fn close(db_file: &'a dyn IoFile, db_path: &'a Path, log_dir: &Path) -> Result<SqliteGate<'a>> {
        let in_use = || Error::InUse { path: db_path.into(), log_dir: log_dir.into() };
        // Refused: a connection is on its way in (or a writer on its way to EXCLUSIVE).
        if !db_file.try_hold_byte(SQLITE_PENDING_BYTE).map_err(Error::io(IoAction::Lock, db_path))? {
            return Err(in_use());
        }
        let gate = SqliteGate { db_file, db_path };
        let connected = db_file
            .locked_by_another_process(SQLITE_SHARED_FIRST, SQLITE_SHARED_SIZE)
            .map_err(Error::io(IoAction::Lock, db_path));
        match connected {
            Ok(false) => Ok(gate),
            Ok(true) => {
                gate.open()?;
                Err(in_use())
            }
            Err(e) => {
                let _ = gate.open();
                Err(e)
            }
        }
    }

    /// Lets SQLite in again. An error here would leave other processes' SQLite busy until
    /// the log closes, so it is the open's error.
    fn open(self) -> Result<()> {
        self.db_file.release_byte(SQLITE_PENDING_BYTE).map_err(Error::io(IoAction::Lock, self.db_path))
    }
}

fn try_take_log_dir(io: &dyn Io, db_path: &Path, log_dir: &Path) -> Result<Box<dyn IoFile>> {
    let log_dir = log_dir.to_path_buf();
    match io.kind(&log_dir).map_err(Error::io(IoAction::Open, &log_dir))? {
        Some(FileKind::Dir) => {}
        Some(FileKind::File { len }) => {
            // SQLite's own log: ours only once nobody uses it and it holds nothing.
            if len > 0 {
                return Err(Error::ForeignWal { path: db_path.into() });
            }
            if sqlite_wal_in_use(io, db_path)? {
                return Err(Error::InUse { path: db_path.into(), log_dir });
            }
            io.remove_file(&log_dir).map_err(Error::io(IoAction::Remove, &log_dir))?;
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
    let lock_file = io.open(&lock_path, true).map_err(Error::io(IoAction::Open, &lock_path))?;
    if !lock_file.try_lock_exclusive().map_err(Error::io(IoAction::Lock, &lock_path))? {
        return Err(Error::InUse { path: db_path.into(), log_dir });
    }
    Ok(lock_file)
}

fn create_log_dir(io: &dyn Io, log_dir: &Path) -> Result<()> {
    io.create_dir_all(log_dir).map_err(Error::io(IoAction::Create, log_dir))?;
    if let Some(parent) = log_dir.parent() {
        crate::instruments::synced(crate::instruments::Synced::Directory);
        io.sync_dir(parent).map_err(Error::io(IoAction::Sync, parent))?;
    }
    Ok(())
}

/// Gives the database back to plain SQLite: removes the lock file and the (empty) log
/// directory. The caller holds the locks and has removed every segment (and the durable
/// record). A file we did not create (say `notes.txt`) is never deleted: the directory is
/// then kept, with a warning naming the file, since stock SQLite cannot open the database
/// while `<db>-wal` is a directory. Returns whether the directory was removed.
pub(crate) fn release(io: &dyn Io, log_dir: &Path) -> std::io::Result<bool> {
    let lock = log_dir.join("lock");
    let left: Vec<PathBuf> = io.list_dir(log_dir)?.into_iter().filter(|p| *p != lock).collect();
    io.remove_file(&lock)?;
    // Ours but still there (a removal that failed, already reported): not a stranger's.
    let ours =
        |p: &&PathBuf| p.file_name().is_some_and(|n| n == "durable") || crate::segment::start_of_file_name(p).is_some();
    let foreign: Vec<&PathBuf> = left.iter().filter(|p| !ours(p)).collect();
    if !foreign.is_empty() {
        let names: Vec<String> = foreign.iter().map(|p| p.display().to_string()).collect();
        tracing::warn!(
            dir = %log_dir.display(),
            "kept the log directory: it holds files libsql-wal did not create ({}). The database \
             is checkpointed, but stock SQLite cannot open it until they are moved away and the \
             directory is removed",
            names.join(", ")
        );
    }
    if !left.is_empty() {
        return Ok(false);
    }
    io.remove_dir(log_dir)?;
    Ok(true)
}
