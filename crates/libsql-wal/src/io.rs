//! The one door to the outside world: files, directories, the clock and randomness.
//!
//! Everything the WAL does to a disk goes through [`Io`], so tests can count syncs and the
//! crash-safety suite can inject faults (failed writes, torn writes, lost unsynced data) without
//! touching the rest of the crate. [`StdIo`] is the real implementation on top of `std::fs`.
//!
//! Architecture invariant: no other module calls `std::fs` for data or log files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// An open file. Positional reads and writes only: there is no shared cursor to race on.
pub trait IoFile: Send + Sync {
    /// Fills `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and its size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Takes an exclusive advisory lock (`flock`) without waiting: `Ok(false)` if another
    /// holder has it. The lock lives as long as this handle.
    fn try_lock_exclusive(&self) -> io::Result<bool>;
    /// Releases the lock of [`IoFile::try_lock_exclusive`]. Explicitly: a child process
    /// forked meanwhile shares the open file and would keep the lock past our `close`.
    fn unlock(&self) -> io::Result<()>;
    /// Takes a write lock on one byte at `offset`, as SQLite's unix VFS would see it (an
    /// open-file-description `fcntl` lock, so it also conflicts with locks this process
    /// holds through other handles), and holds it until [`IoFile::release_byte`] or the
    /// handle closes: `Ok(false)` if anyone holds a lock there. The handle must be open
    /// for writing.
    fn try_hold_byte(&self, offset: u64) -> io::Result<bool>;
    /// Releases the lock of [`IoFile::try_hold_byte`].
    fn release_byte(&self, offset: u64) -> io::Result<()>;
    /// Does another *process* hold an `fcntl` lock on `offset..offset + len`? Asked with
    /// `F_GETLK`, which changes nothing and ignores this process's own POSIX locks (the
    /// ones SQLite's connections here hold on the same file).
    fn locked_by_another_process(&self, offset: u64, len: u64) -> io::Result<bool>;
    /// Tries a write lock on one byte at `offset` (see [`IoFile::try_hold_byte`]),
    /// released at once: this only asks "is anyone there?".
    fn try_lock_byte(&self, offset: u64) -> io::Result<bool> {
        let free = self.try_hold_byte(offset)?;
        if free {
            self.release_byte(offset)?;
        }
        Ok(free)
    }
}

/// Files, directories, time and randomness.
pub trait Io: Send + Sync + 'static {
    /// Opens `path` for reading and writing, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>>;
    /// Opens an existing `path` for reading only: what inspects (`verify`, recovery's first
    /// look at a file) never holds a file open for writing.
    fn open_read_only(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory (full paths), in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// The absolute path with symbolic links resolved (the file must exist).
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    /// What is at `path`, if anything.
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>>;
    fn now(&self) -> SystemTime;
    /// When the file at `path` was last modified: the floor of commit times
    /// (`SharedWal::open`) and where `file_stamp` looks for its stamp.
    fn modified(&self, path: &Path) -> io::Result<SystemTime> {
        std::fs::metadata(path)?.modified()
    }
    /// Sets the modification time of the file at `path`, by name (`utimensat`): opening and
    /// closing a descriptor of a database file would drop the POSIX locks SQLite holds on
    /// it. Keeps that floor at or past the last commit a checkpoint copied, and carries the
    /// file's stamp (`file_stamp`).
    fn set_modified(&self, path: &Path, time: SystemTime) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let invalid = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| invalid(&e))?;
        let since = time.duration_since(std::time::UNIX_EPOCH).map_err(|e| invalid(&e))?;
        let times = [
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            libc::timespec { tv_sec: since.as_secs() as _, tv_nsec: since.subsec_nanos() as _ },
        ];
        // SAFETY: a NUL-terminated path and two timespecs, as utimensat(2) takes them.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, name.as_ptr(), times.as_ptr(), 0) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
    fn random_u32(&self) -> u32;
}

/// Milliseconds since the Unix epoch (0 before it): how times are kept on disk and in storage.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File { len: u64 },
    Dir,
}

/// The real thing: `std::fs`, the system clock, and `fastrand`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

impl StdIo {
    pub fn shared() -> Arc<dyn Io> {
        Arc::new(StdIo)
    }
}

struct StdFile(File);

impl IoFile for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn try_hold_byte(&self, offset: u64) -> io::Result<bool> {
        self.ofd_lock(offset, libc::F_WRLCK as libc::c_short)
    }
    fn release_byte(&self, offset: u64) -> io::Result<()> {
        self.ofd_lock(offset, libc::F_UNLCK as libc::c_short).map(|_| ())
    }
    fn locked_by_another_process(&self, offset: u64, len: u64) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut lock = flock_of(libc::F_WRLCK as libc::c_short, offset, len);
        // SAFETY: a valid flock the kernel fills in; the descriptor is ours and open.
        // F_GETLK, not F_OFD_GETLK: this process's own POSIX locks must not count.
        let rc = unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_GETLK, &mut lock) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
    }
    fn unlock(&self) -> io::Result<()> {
        self.0.unlock()
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        match self.0.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl StdFile {
    fn ofd_lock(&self, offset: u64, lock_type: libc::c_short) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let lock = flock_of(lock_type, offset, 1);
        // SAFETY: a valid flock; the descriptor is ours and open.
        let rc = unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(err),
        }
    }
}

/// An `fcntl` lock description of `len` bytes from `offset` (pid 0, as OFD locks need).
fn flock_of(lock_type: libc::c_short, offset: u64, len: u64) -> libc::flock {
    // SAFETY: all-zero is a valid flock (and l_pid must be 0 for OFD locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = lock_type;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = offset as libc::off_t;
    lock.l_len = len as libc::off_t;
    lock
}

/// Only regular files hold our data: a FIFO, socket or device in their place is refused.
fn regular(file: File) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))
    }
}

impl Io for StdIo {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking: a FIFO planted where a file belongs must not hang the open.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        regular(file).map(|f| Box::new(StdFile(f)) as Box<dyn IoFile>)
    }
    fn open_read_only(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        regular(file).map(|f| Box::new(StdFile(f)) as Box<dyn IoFile>)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?.map(|entry| entry.map(|e| e.path())).collect()
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(FileKind::Dir)),
            Ok(m) => Ok(Some(FileKind::File { len: m.len() })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn random_u32(&self) -> u32 {
        fastrand::u32(..)
    }
}
