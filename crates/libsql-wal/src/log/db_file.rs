//! [`DbFile`]: the database file as the log sees it. Only the checkpoint writes it
//! (under the checkpoint lock); readers, snapshots and recovery read it.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoAction, Result};
use crate::format::DB_HEADER_MARK_OFFSET;
use crate::format::DB_HEADER_MARK_SIZE;
use crate::io::IoFile;

pub(crate) struct DbFile {
    pub path: PathBuf,
    pub file: Box<dyn IoFile>,
}

impl DbFile {
    pub fn new(path: &Path, file: Box<dyn IoFile>) -> DbFile {
        DbFile { path: path.into(), file }
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(Error::io(IoAction::Read, &self.path))
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(Error::io(IoAction::Write, &self.path))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(Error::io(IoAction::Truncate, &self.path))
    }

    pub fn sync(&self) -> Result<()> {
        crate::instruments::synced(crate::instruments::Synced::Database);
        self.file.sync_data().map_err(Error::io(IoAction::Sync, &self.path))
    }

    pub fn len(&self) -> Result<u64> {
        self.file.size().map_err(Error::io(IoAction::Read, &self.path))
    }

    /// The mark bytes as the file holds them now (zeros for a file too short).
    pub fn read_mark_bytes(&self) -> Result<[u8; DB_HEADER_MARK_SIZE]> {
        let mut bytes = [0u8; DB_HEADER_MARK_SIZE];
        if self.len()? >= 100 {
            self.read(&mut bytes, DB_HEADER_MARK_OFFSET)?;
        }
        Ok(bytes)
    }
}
