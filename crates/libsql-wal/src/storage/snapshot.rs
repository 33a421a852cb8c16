//! Snapshot objects: a whole database file as of a frame_no, the base a namespace's chain
//! starts from when its early frames are in no stored segment (storage added to an existing
//! database). Layout in `docs/FORMAT.md`: [`SnapshotHeader`] (64 bytes), the pages, then a
//! [`SnapshotTrailer`] (16 bytes) with the pages' crc32c.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, IoAction, Result};
use crate::format::{
    PAGE_SIZE, SNAPSHOT_END_MAGIC, SNAPSHOT_HEADER_SIZE, SNAPSHOT_TRAILER_SIZE, SnapshotHeader, SnapshotTrailer,
};
use crate::io::IoFile;
use crate::storage::Storage;
use crate::storage::durability::LogView;

/// Pages read from the database file per write to the store.
const CHUNK_PAGES: usize = 256;

/// The database's pages in runs of at most `CHUNK_PAGES`: (byte offset in the database,
/// length in bytes).
fn page_chunks(db_pages: u32) -> impl Iterator<Item = (u64, usize)> {
    (0..db_pages).step_by(CHUNK_PAGES).map(move |page| {
        let n = (db_pages - page).min(CHUNK_PAGES as u32) as usize;
        (page as u64 * PAGE_SIZE as u64, n * PAGE_SIZE)
    })
}

/// The pages a snapshot is taken from: a log's database file, or a restored file.
pub(crate) trait PageSource: Send + Sync {
    fn len(&self) -> u64;
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// A log's database file, read through its [`LogView`].
pub(crate) struct LogPages<'a>(pub &'a dyn LogView);

impl PageSource for LogPages<'_> {
    fn len(&self) -> u64 {
        self.0.db_file_len()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read_db_file(buf, offset)
    }
}

/// A database file of our own (a restore's output), read as it is.
pub(crate) struct FilePages<'a> {
    pub file: &'a dyn IoFile,
    pub path: &'a Path,
}

impl PageSource for FilePages<'_> {
    fn len(&self) -> u64 {
        self.file.size().unwrap_or(0)
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(Error::io(IoAction::Read, self.path))
    }
}

/// What a snapshot's header says besides its pages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotOf {
    pub frame_no: u64,
    /// The chain value at `frame_no`.
    pub chain: u32,
    pub lineage: u32,
    /// When the commit at `frame_no` was made; 0 if unknown.
    pub commit_unix_ms: u64,
    pub taken_unix_ms: u64,
}

/// Streams the pages of `source` (which must hold exactly the state at `of.frame_no` and
/// not change meanwhile) to `key`. Returns the object's size.
pub(crate) async fn upload(storage: &Storage, key: &str, source: &dyn PageSource, of: SnapshotOf) -> Result<u64> {
    let db_pages = (source.len() / PAGE_SIZE as u64) as u32;
    let header = SnapshotHeader::new(of.frame_no, db_pages, of.taken_unix_ms, of.lineage, of.chain, of.commit_unix_ms);
    let mut writer = storage.writer(key)?;
    let put_error = |e: std::io::Error| storage.error(&format!("uploading {key}"), e);
    writer.write_all(header.as_bytes()).await.map_err(put_error)?;
    let mut checksum = 0u32;
    let mut chunk = vec![0u8; CHUNK_PAGES * PAGE_SIZE];
    for (offset, len) in page_chunks(db_pages) {
        let buf = &mut chunk[..len];
        source.read(buf, offset)?;
        checksum = crc32c::crc32c_append(checksum, buf);
        writer.write_all(buf).await.map_err(put_error)?;
    }
    let trailer =
        SnapshotTrailer { pages_checksum: checksum.into(), reserved: 0.into(), magic: SNAPSHOT_END_MAGIC.into() };
    writer.write_all(trailer.as_bytes()).await.map_err(put_error)?;
    writer.shutdown().await.map_err(put_error)?;
    storage.sync_local(key).await?;
    Ok((SNAPSHOT_HEADER_SIZE + db_pages as usize * PAGE_SIZE + SNAPSHOT_TRAILER_SIZE) as u64)
}

/// Checks a downloaded snapshot file and copies its pages into `out` from page 1. Returns
/// its header (frame_no, db_pages, lineage, chain).
pub(crate) fn apply(snapshot: &dyn IoFile, path: &Path, out: &dyn IoFile, out_path: &Path) -> Result<SnapshotHeader> {
    let len = snapshot.size().map_err(Error::io(IoAction::Read, path))?;
    let mut header_bytes = [0u8; SNAPSHOT_HEADER_SIZE];
    if len < (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE) as u64 {
        return Err(Error::corrupt(path, format!("snapshot of {len} bytes is cut short")));
    }
    snapshot.read_exact_at(&mut header_bytes, 0).map_err(Error::io(IoAction::Read, path))?;
    let header = SnapshotHeader::read_from_bytes(&header_bytes).expect("exact size");
    if let Some(problem) = header.problem() {
        return Err(Error::corrupt(path, problem));
    }
    let db_pages = header.db_pages.get();
    let expected = (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE) as u64 + db_pages as u64 * PAGE_SIZE as u64;
    if len != expected {
        return Err(Error::corrupt(
            path,
            format!("snapshot of {db_pages} pages should be {expected} bytes, not {len}"),
        ));
    }
    let mut trailer_bytes = [0u8; SNAPSHOT_TRAILER_SIZE];
    snapshot
        .read_exact_at(&mut trailer_bytes, len - SNAPSHOT_TRAILER_SIZE as u64)
        .map_err(Error::io(IoAction::Read, path))?;
    let trailer = SnapshotTrailer::read_from_bytes(&trailer_bytes).expect("exact size");
    if trailer.magic.get() != SNAPSHOT_END_MAGIC {
        return Err(Error::corrupt(path, "snapshot trailer missing"));
    }
    let mut checksum = 0u32;
    let mut chunk = vec![0u8; CHUNK_PAGES * PAGE_SIZE];
    for (offset, len) in page_chunks(db_pages) {
        let buf = &mut chunk[..len];
        snapshot.read_exact_at(buf, SNAPSHOT_HEADER_SIZE as u64 + offset).map_err(Error::io(IoAction::Read, path))?;
        checksum = crc32c::crc32c_append(checksum, buf);
        out.write_all_at(buf, offset).map_err(Error::io(IoAction::Write, out_path))?;
    }
    if checksum != trailer.pages_checksum.get() {
        return Err(Error::corrupt(path, "snapshot pages checksum mismatch"));
    }
    Ok(header)
}
