//! A fault-injecting [`Io`] for tests, driven by a seed so every failure replays exactly.
//!
//! It works on real files (SQLite reads the database file through its own VFS, so the files
//! must be real) and keeps, per file, an undo log of everything not yet synced. Faults:
//! - **fail**: the N-th counted operation (open, write, sync, truncate, remove, directory
//!   sync) returns an I/O error (EIO, or ENOSPC) once, and the process goes on; reads are
//!   counted apart, and the N-th read can fail the same way ([`FaultyIo::arm_read`]);
//! - **crash**: at the N-th mutating operation the "machine" stops: that write is torn (a
//!   random prefix of it lands), and every later call fails. [`FaultyIo::power_cut`] then
//!   throws away what the disk had not been told to keep: writes and truncations since the
//!   file's last `sync_data` (all of them, or a random prefix of them in order, tearing the
//!   first one lost), and file creations and removals since their directory's last
//!   `sync_dir`.
//!
//! Operations are counted across all files in call order, so a seed, a workload and an
//! operation number name one exact fault.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use libsql_wal::io::{FileKind, Io, IoFile, StdIo};

/// What happens at the chosen operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// That operation fails with EIO; the following ones work.
    Fail,
    /// That operation fails with ENOSPC (the disk is full); the following ones work.
    NoSpace,
    /// The machine stops there (a torn write if it is one); see [`FaultyIo::power_cut`].
    Crash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostWrites {
    /// A power cut loses every unsynced write.
    All,
    /// A power cut keeps a random prefix of each file's unsynced writes, tearing the next.
    RandomPrefix,
}

/// One thing to undo after a power cut.
enum Undo {
    /// Bytes `[offset, offset + before.len())` held `before`; the file was `len_before` long.
    Write {
        offset: u64,
        before: Vec<u8>,
        len_before: u64,
        written: Vec<u8>,
    },
    SetLen {
        len_before: u64,
        cut: Vec<u8>,
    },
}

enum DirChange {
    Created(PathBuf),
    Removed { path: PathBuf, content: Vec<u8> },
}

struct State {
    rng: fastrand::Rng,
    ops: u64,
    /// File and directory syncs that succeeded.
    syncs: u64,
    fault_at: Option<(u64, Fault)>,
    /// Operations after `fault_at` that fail the same way (`arm_run`).
    more_faults: u64,
    reads: u64,
    /// The read (counted apart from mutating operations) that fails with EIO.
    read_fault_at: Option<u64>,
    crashed: bool,
    lost_writes: LostWrites,
    /// Per file: what happened since its last sync, oldest first.
    unsynced: HashMap<PathBuf, Vec<Undo>>,
    /// Creations and removals not yet made durable by a directory sync, oldest first.
    dir_changes: Vec<DirChange>,
}

/// The fault-injecting `Io`; clones share the same state.
#[derive(Clone)]
pub struct FaultyIo {
    state: Arc<Mutex<State>>,
}

/// The error an injected failure returns.
fn failure(fault: Fault, what: &str) -> io::Error {
    match fault {
        Fault::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
        _ => eio(what),
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl FaultyIo {
    pub fn new(seed: u64, lost_writes: LostWrites) -> Self {
        FaultyIo {
            state: Arc::new(Mutex::new(State {
                rng: fastrand::Rng::with_seed(seed),
                ops: 0,
                syncs: 0,
                fault_at: None,
                more_faults: 0,
                reads: 0,
                read_fault_at: None,
                crashed: false,
                lost_writes,
                unsynced: HashMap::new(),
                dir_changes: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a fault at the `op`-th mutating operation from now (1 = the next one).
    pub fn arm(&self, op: u64, fault: Fault) {
        let mut state = self.state();
        let at = state.ops + op.max(1);
        state.fault_at = Some((at, fault));
        state.more_faults = 0;
    }

    /// As [`FaultyIo::arm`], for `count` operations in a row (a disk that keeps failing).
    pub fn arm_run(&self, op: u64, count: u64, fault: Fault) {
        self.arm(op, fault);
        self.state().more_faults = count.saturating_sub(1);
    }

    /// Makes the `n`-th read from now (1 = the next one) fail with EIO, once. Reads are
    /// counted apart: they happen at every page lookup, and their number varies with
    /// SQLite's page cache.
    pub fn arm_read(&self, n: u64) {
        let mut state = self.state();
        let at = state.reads + n.max(1);
        state.read_fault_at = Some(at);
    }

    /// Mutating operations so far.
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// File and directory syncs done so far: what a commit or a swap cost in flushes.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    pub fn crashed(&self) -> bool {
        self.state().crashed
    }

    /// Applies what a power cut does to the files (see the module doc) and "reboots": the
    /// `Io` works again afterwards, with nothing unsynced.
    pub fn power_cut(&self) -> io::Result<()> {
        let mut state = self.state();
        let unsynced = std::mem::take(&mut state.unsynced);
        for (path, undos) in unsynced {
            let keep = match state.lost_writes {
                LostWrites::All => 0,
                LostWrites::RandomPrefix => state.rng.usize(0..=undos.len()),
            };
            let tear = state.rng.usize(0..=4096);
            undo_file(&path, undos, keep, tear)?;
        }
        for change in std::mem::take(&mut state.dir_changes).into_iter().rev() {
            match change {
                DirChange::Created(path) => {
                    let _ = std::fs::remove_file(&path);
                }
                DirChange::Removed { path, content } => {
                    // The directory may have been removed after it emptied; its removal
                    // is as undurable as the file's.
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&path, content)?
                }
            }
        }
        state.crashed = false;
        state.fault_at = None;
        Ok(())
    }

    /// Counts one mutating operation and says whether it must fail (and how).
    fn step(&self, what: &str) -> io::Result<Option<Fault>> {
        let mut state = self.state();
        if state.crashed {
            return Err(eio(&format!("{what} after the crash")));
        }
        state.ops += 1;
        match state.fault_at {
            Some((at, fault)) if at == state.ops => {
                state.fault_at = None;
                if state.more_faults > 0 {
                    state.more_faults -= 1;
                    state.fault_at = Some((at + 1, fault));
                }
                if fault == Fault::Crash {
                    state.crashed = true;
                }
                Ok(Some(fault))
            }
            _ => Ok(None),
        }
    }

    fn record(&self, path: &Path, undo: Undo) {
        self.state().unsynced.entry(path.to_path_buf()).or_default().push(undo);
    }
}

/// Undoes all but the first `keep` operations of a file, newest first; the first undone
/// write keeps `tear` bytes of what it wrote (a torn write).
fn undo_file(path: &Path, undos: Vec<Undo>, keep: usize, tear: usize) -> io::Result<()> {
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    use std::os::unix::fs::FileExt;
    let first_lost = keep;
    for (i, undo) in undos.into_iter().enumerate().skip(keep).rev() {
        match undo {
            Undo::Write { offset, before, len_before, written } => {
                file.write_all_at(&before, offset)?;
                file.set_len(len_before)?;
                if i == first_lost {
                    let torn = &written[..tear.min(written.len())];
                    file.write_all_at(torn, offset)?;
                }
            }
            Undo::SetLen { len_before, cut } => {
                let len_now = file.metadata()?.len();
                file.set_len(len_before)?;
                file.write_all_at(&cut, len_now)?;
            }
        }
    }
    Ok(())
}

/// The content a file had at its last sync, from its content now and its undo log.
fn durable_image(mut content: Vec<u8>, undos: Vec<Undo>) -> Vec<u8> {
    for undo in undos.into_iter().rev() {
        match undo {
            Undo::Write { offset, before, len_before, .. } => {
                let at = offset as usize;
                content[at..at + before.len()].copy_from_slice(&before);
                content.resize(len_before as usize, 0);
            }
            Undo::SetLen { len_before, cut } => {
                let at = content.len();
                content.resize(len_before as usize, 0);
                content[at..at + cut.len()].copy_from_slice(&cut);
            }
        }
    }
    content
}

struct FaultyFile {
    io: FaultyIo,
    path: PathBuf,
    inner: Box<dyn IoFile>,
}

impl IoFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        {
            let mut state = self.io.state();
            if state.crashed {
                return Err(eio("read after the crash"));
            }
            state.reads += 1;
            if state.read_fault_at == Some(state.reads) {
                state.read_fault_at = None;
                return Err(eio("read"));
            }
        }
        self.inner.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let fault = self.io.step("write")?;
        if let Some(f @ (Fault::Fail | Fault::NoSpace)) = fault {
            return Err(failure(f, "write"));
        }
        let len_before = self.inner.size()?;
        let overlap = len_before.saturating_sub(offset).min(buf.len() as u64) as usize;
        let mut before = vec![0u8; overlap];
        if overlap > 0 {
            self.inner.read_exact_at(&mut before, offset)?;
        }
        self.io.record(&self.path, Undo::Write { offset, before, len_before, written: buf.to_vec() });
        if fault == Some(Fault::Crash) {
            // The machine stops in the middle of this write: part of it may be on the disk.
            let torn = self.io.state().rng.usize(0..=buf.len());
            self.inner.write_all_at(&buf[..torn], offset)?;
            return Err(eio("crash during write"));
        }
        self.inner.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        match self.io.step("sync")? {
            Some(f @ (Fault::Fail | Fault::NoSpace)) => Err(failure(f, "sync")),
            Some(Fault::Crash) => Err(eio("crash during sync")),
            None => {
                self.inner.sync_data()?;
                let mut state = self.io.state();
                state.unsynced.remove(&self.path);
                state.syncs += 1;
                drop(state);
                Ok(())
            }
        }
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match self.io.step("truncate")? {
            Some(f @ (Fault::Fail | Fault::NoSpace)) => return Err(failure(f, "truncate")),
            Some(Fault::Crash) => return Err(eio("crash during truncate")),
            None => {}
        }
        let len_before = self.inner.size()?;
        let mut cut = vec![0u8; len_before.saturating_sub(len) as usize];
        if !cut.is_empty() {
            self.inner.read_exact_at(&mut cut, len)?;
        }
        self.io.record(&self.path, Undo::SetLen { len_before, cut });
        self.inner.set_len(len)
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }

    fn unlock(&self) -> io::Result<()> {
        self.inner.unlock()
    }

    fn try_hold_byte(&self, offset: u64) -> io::Result<bool> {
        self.inner.try_hold_byte(offset)
    }
    fn release_byte(&self, offset: u64) -> io::Result<()> {
        self.inner.release_byte(offset)
    }
    fn locked_by_another_process(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.inner.locked_by_another_process(offset, len)
    }
}

impl Io for FaultyIo {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>> {
        let existed = path.exists();
        match self.step("open")? {
            Some(f @ (Fault::Fail | Fault::NoSpace)) => return Err(failure(f, "open")),
            Some(Fault::Crash) => return Err(eio("crash during open")),
            None => {}
        }
        let inner = StdIo.open(path, create)?;
        if create && !existed {
            self.state().dir_changes.push(DirChange::Created(path.to_path_buf()));
        }
        Ok(Box::new(FaultyFile { io: self.clone(), path: path.to_path_buf(), inner }))
    }

    fn open_read_only(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        match self.step("open")? {
            Some(f @ (Fault::Fail | Fault::NoSpace)) => return Err(failure(f, "open")),
            Some(Fault::Crash) => return Err(eio("crash during open")),
            None => {}
        }
        let inner = StdIo.open_read_only(path)?;
        Ok(Box::new(FaultyFile { io: self.clone(), path: path.to_path_buf(), inner }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Directories are treated as durable once made: the log directory is created and its
        // parent synced before anything goes in it.
        StdIo.create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        match self.step("directory sync")? {
            Some(f @ (Fault::Fail | Fault::NoSpace)) => Err(failure(f, "directory sync")),
            Some(Fault::Crash) => Err(eio("crash during directory sync")),
            None => {
                StdIo.sync_dir(path)?;
                self.state().syncs += 1;
                self.state().dir_changes.retain(|change| {
                    let p = match change {
                        DirChange::Created(p) | DirChange::Removed { path: p, .. } => p,
                    };
                    p.parent() != Some(path)
                });
                Ok(())
            }
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self.step("remove")? {
            Some(f @ (Fault::Fail | Fault::NoSpace)) => return Err(failure(f, "remove")),
            Some(Fault::Crash) => return Err(eio("crash during remove")),
            None => {}
        }
        let content = std::fs::read(path)?;
        StdIo.remove_file(path)?;
        let mut state = self.state();
        // If the removal is lost, the file comes back as the disk last held it durably.
        let undos = state.unsynced.remove(path).unwrap_or_default();
        let content = durable_image(content, undos);
        state.dir_changes.push(DirChange::Removed { path: path.to_path_buf(), content });
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        if self.crashed() {
            return Err(eio("remove_dir after the crash"));
        }
        StdIo.remove_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        StdIo.list_dir(path)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        StdIo.canonicalize(path)
    }

    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        StdIo.kind(path)
    }

    fn now(&self) -> SystemTime {
        StdIo.now()
    }

    fn random_u32(&self) -> u32 {
        self.state().rng.u32(..)
    }
}

/// The real file system (`StdIo`), with `hook(operation, path)` called before every call:
/// for tests that need something to happen at one exact point (another process taking a
/// lock, a file appearing) without faking the I/O itself. `operation` is the `Io` method's
/// name.
pub struct HookIo<F: Fn(&str, &Path) + Send + Sync + 'static> {
    hook: F,
}

impl<F: Fn(&str, &Path) + Send + Sync + 'static> HookIo<F> {
    pub fn new(hook: F) -> Self {
        HookIo { hook }
    }
}

impl<F: Fn(&str, &Path) + Send + Sync + 'static> Io for HookIo<F> {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>> {
        (self.hook)("open", path);
        StdIo.open(path, create)
    }
    fn open_read_only(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        (self.hook)("open_read_only", path);
        StdIo.open_read_only(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        (self.hook)("create_dir_all", path);
        StdIo.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        (self.hook)("sync_dir", path);
        StdIo.sync_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        (self.hook)("remove_file", path);
        StdIo.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        (self.hook)("remove_dir", path);
        StdIo.remove_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        (self.hook)("list_dir", path);
        StdIo.list_dir(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        (self.hook)("canonicalize", path);
        StdIo.canonicalize(path)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        (self.hook)("kind", path);
        StdIo.kind(path)
    }
    fn now(&self) -> SystemTime {
        StdIo.now()
    }
    fn random_u32(&self) -> u32 {
        StdIo.random_u32()
    }
}
