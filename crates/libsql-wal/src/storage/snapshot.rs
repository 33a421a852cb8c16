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

/// What tells two snapshot objects' contents apart without reading their pages: the
/// header's state and size, and the trailer's checksum of the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub frame_no: u64,
    pub lineage: u32,
    pub chain: u32,
    pub db_pages: u32,
    pub pages_checksum: u32,
}

impl Fingerprint {
    /// The object's size.
    pub fn object_len(&self) -> u64 {
        (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE) as u64 + self.db_pages as u64 * PAGE_SIZE as u64
    }
}

/// Streams the pages of `source` (which must hold exactly the state at `of.frame_no` and
/// not change meanwhile) to `key`. Returns what it wrote, as [`Fingerprint`].
pub(crate) async fn upload(
    storage: &Storage,
    key: &str,
    source: &dyn PageSource,
    of: SnapshotOf,
) -> Result<Fingerprint> {
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
    Ok(Fingerprint { frame_no: of.frame_no, lineage: of.lineage, chain: of.chain, db_pages, pages_checksum: checksum })
}

/// A snapshot object checked and copied into a database file as its bytes arrive (restore
/// streams the download straight into the file: one copy, as a plain copy of the object
/// would make). It checks the header, the length the header gives, the trailer's magic and
/// the pages checksum (FORMAT.md, *Snapshot objects*); until [`SnapshotSink::finish`]
/// returns, what was written is not to be trusted (restore writes only into its scratch
/// directory).
pub(crate) struct SnapshotSink<'a> {
    out: &'a dyn IoFile,
    out_path: &'a Path,
    key: &'a str,
    head: Vec<u8>,
    header: Option<SnapshotHeader>,
    /// Bytes of the object seen so far.
    seen: u64,
    pages_checksum: u32,
    trailer: Vec<u8>,
}

impl<'a> SnapshotSink<'a> {
    pub fn new(out: &'a dyn IoFile, out_path: &'a Path, key: &'a str) -> Self {
        SnapshotSink {
            out,
            out_path,
            key,
            head: Vec::with_capacity(SNAPSHOT_HEADER_SIZE),
            header: None,
            seen: 0,
            pages_checksum: 0,
            trailer: Vec::with_capacity(SNAPSHOT_TRAILER_SIZE),
        }
    }

    /// The object's length its header gives (known once 64 bytes arrived).
    fn expected_len(header: &SnapshotHeader) -> u64 {
        (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE) as u64 + header.db_pages.get() as u64 * PAGE_SIZE as u64
    }

    /// Takes the next bytes of the object.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<()> {
        if self.header.is_none() {
            let take = (SNAPSHOT_HEADER_SIZE - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            (self.seen, chunk) = (self.seen + take as u64, &chunk[take..]);
            if self.head.len() < SNAPSHOT_HEADER_SIZE {
                return Ok(());
            }
            let header = SnapshotHeader::read_from_bytes(&self.head).expect("exact size");
            if let Some(problem) = header.problem() {
                return Err(Error::corrupt(self.key, problem));
            }
            self.header = Some(header);
        }
        let header = self.header.expect("set above");
        let pages_end = SNAPSHOT_HEADER_SIZE as u64 + header.db_pages.get() as u64 * PAGE_SIZE as u64;
        if self.seen < pages_end && !chunk.is_empty() {
            let take = ((pages_end - self.seen) as usize).min(chunk.len());
            let pages = &chunk[..take];
            self.out
                .write_all_at(pages, self.seen - SNAPSHOT_HEADER_SIZE as u64)
                .map_err(Error::io(IoAction::Write, self.out_path))?;
            self.pages_checksum = crc32c::crc32c_append(self.pages_checksum, pages);
            (self.seen, chunk) = (self.seen + take as u64, &chunk[take..]);
        }
        if self.trailer.len() + chunk.len() > SNAPSHOT_TRAILER_SIZE {
            let (db_pages, len) = (header.db_pages.get(), Self::expected_len(&header));
            return Err(Error::corrupt(
                self.key,
                format!("snapshot of {db_pages} pages should be {len} bytes, but it holds more"),
            ));
        }
        self.trailer.extend_from_slice(chunk);
        self.seen += chunk.len() as u64;
        Ok(())
    }

    /// Checks the end of the object: its length, trailer and pages checksum.
    pub fn finish(self) -> Result<SnapshotHeader> {
        let Some(header) = self.header else {
            return Err(Error::corrupt(self.key, format!("snapshot of {} bytes is cut short", self.seen)));
        };
        let expected = Self::expected_len(&header);
        if self.seen != expected {
            let (db_pages, seen) = (header.db_pages.get(), self.seen);
            return Err(Error::corrupt(
                self.key,
                format!("snapshot of {db_pages} pages should be {expected} bytes, not {seen}"),
            ));
        }
        let trailer = SnapshotTrailer::read_from_bytes(&self.trailer).expect("exact size");
        if trailer.magic.get() != SNAPSHOT_END_MAGIC {
            return Err(Error::corrupt(self.key, "snapshot trailer missing"));
        }
        if self.pages_checksum != trailer.pages_checksum.get() {
            return Err(Error::corrupt(self.key, "snapshot pages checksum mismatch"));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Io, StdIo};

    fn snapshot_bytes(pages: u32) -> Vec<u8> {
        let data: Vec<u8> = (0..pages as usize * PAGE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        let header = SnapshotHeader::new(9, pages, 1, 2, 3, 4);
        let trailer = SnapshotTrailer {
            pages_checksum: crc32c::crc32c(&data).into(),
            reserved: 0.into(),
            magic: SNAPSHOT_END_MAGIC.into(),
        };
        [header.as_bytes(), &data, trailer.as_bytes()].concat()
    }

    /// The streaming sink checks a snapshot whole, whatever the chunks' sizes.
    #[test]
    fn a_streamed_snapshot_is_checked_as_a_downloaded_one() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("db");
        let out = StdIo.open(&out_path, true).unwrap();
        let bytes = snapshot_bytes(3);
        for chunk in [1, 13, 64, 4096, 5000, bytes.len()] {
            let mut sink = SnapshotSink::new(out.as_ref(), &out_path, "k");
            for piece in bytes.chunks(chunk) {
                sink.feed(piece).unwrap();
            }
            assert_eq!(sink.finish().unwrap().db_pages.get(), 3);
            assert_eq!(std::fs::read(&out_path).unwrap(), bytes[SNAPSHOT_HEADER_SIZE..bytes.len() - 16], "{chunk}");
        }
        let feed_all = |bytes: &[u8]| {
            let mut sink = SnapshotSink::new(out.as_ref(), &out_path, "k");
            sink.feed(bytes).and_then(|()| sink.finish()).unwrap_err().to_string()
        };
        assert!(feed_all(&bytes[..bytes.len() - 1]).contains("should be"), "cut short");
        assert!(feed_all(&[&bytes[..], b"x"].concat()).contains("holds more"), "too long");
        let mut flipped = bytes.clone();
        flipped[SNAPSHOT_HEADER_SIZE + 5] ^= 1;
        assert!(feed_all(&flipped).contains("checksum"));
        assert!(feed_all(&bytes[..10]).contains("cut short"));
    }
}
