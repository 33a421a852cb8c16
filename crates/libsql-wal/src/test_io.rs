//! For the unit tests only: the real file system with a hook called before every `Io` and
//! file operation, which can fail it. The full fault injector (torn writes, power cuts,
//! lost unsynced data) is the testkit's `faulty` module; these tests need one exact point.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::io::{FileKind, Io, IoFile, StdIo};

/// `hook(operation, path)` runs before each call (`operation` is the `Io` or `IoFile`
/// method's name, `path` the file's); an `Err` it returns is the call's result.
pub(crate) struct HookIo {
    hook: Hook,
}

type Hook = Arc<dyn Fn(&str, &Path) -> io::Result<()> + Send + Sync>;

impl HookIo {
    pub(crate) fn new(hook: impl Fn(&str, &Path) -> io::Result<()> + Send + Sync + 'static) -> Self {
        HookIo { hook: Arc::new(hook) }
    }

    fn file(&self, path: &Path, file: Box<dyn IoFile>) -> Box<dyn IoFile> {
        Box::new(HookFile { hook: self.hook.clone(), path: path.into(), file })
    }
}

struct HookFile {
    hook: Hook,
    path: PathBuf,
    file: Box<dyn IoFile>,
}

impl IoFile for HookFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (self.hook)("read_exact_at", &self.path)?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (self.hook)("write_all_at", &self.path)?;
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        (self.hook)("sync_data", &self.path)?;
        self.file.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        (self.hook)("size", &self.path)?;
        self.file.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (self.hook)("set_len", &self.path)?;
        self.file.set_len(len)
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        (self.hook)("try_lock_exclusive", &self.path)?;
        self.file.try_lock_exclusive()
    }
    fn unlock(&self) -> io::Result<()> {
        (self.hook)("unlock", &self.path)?;
        self.file.unlock()
    }
    fn try_hold_byte(&self, offset: u64) -> io::Result<bool> {
        (self.hook)("try_hold_byte", &self.path)?;
        self.file.try_hold_byte(offset)
    }
    fn release_byte(&self, offset: u64) -> io::Result<()> {
        (self.hook)("release_byte", &self.path)?;
        self.file.release_byte(offset)
    }
    fn locked_by_another_process(&self, offset: u64, len: u64) -> io::Result<bool> {
        (self.hook)("locked_by_another_process", &self.path)?;
        self.file.locked_by_another_process(offset, len)
    }
}

impl Io for HookIo {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn IoFile>> {
        (self.hook)("open", path)?;
        Ok(self.file(path, StdIo.open(path, create)?))
    }
    fn open_read_only(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        (self.hook)("open_read_only", path)?;
        Ok(self.file(path, StdIo.open_read_only(path)?))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        (self.hook)("create_dir_all", path)?;
        StdIo.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        (self.hook)("sync_dir", path)?;
        StdIo.sync_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        (self.hook)("remove_file", path)?;
        StdIo.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        (self.hook)("remove_dir", path)?;
        StdIo.remove_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        (self.hook)("list_dir", path)?;
        StdIo.list_dir(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        (self.hook)("canonicalize", path)?;
        StdIo.canonicalize(path)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        (self.hook)("kind", path)?;
        StdIo.kind(path)
    }
    fn now(&self) -> SystemTime {
        StdIo.now()
    }
    fn random_u32(&self) -> u32 {
        StdIo.random_u32()
    }
}
