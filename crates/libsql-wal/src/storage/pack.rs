//! Pack objects (level 1 of compaction): consecutive segment objects of one history in one
//! object, each byte for byte as it was stored, so every commit and every chain value of
//! theirs is kept (a pack restores to any point inside it, and continues the history exactly
//! where its segments did). Layout in `docs/FORMAT.md`: [`PackHeader`] (64 bytes), `count`
//! [`PackEntry`]s (32 bytes each), then the segments.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, IoAction, Result};
use crate::format::{PACK_ENTRY_SIZE, PACK_HEADER_SIZE, PackEntry, PackHeader};
use crate::io::{Io, IoFile};
use crate::storage::Storage;

/// Bytes copied at once between files and the store.
const COPY_CHUNK: usize = 1 << 20;

/// One segment to pack: its downloaded (and verified) file and its frames.
pub(crate) struct PackPart<'a> {
    pub path: &'a Path,
    pub len: u64,
    pub start_frame_no: u64,
    pub end_frame_no: u64,
}

/// The directory of a pack of `parts`, in order.
fn entries(parts: &[PackPart<'_>]) -> Vec<PackEntry> {
    let mut offset = (PACK_HEADER_SIZE + parts.len() * PACK_ENTRY_SIZE) as u64;
    parts
        .iter()
        .map(|part| {
            let entry = PackEntry {
                offset: offset.into(),
                len: part.len.into(),
                start_frame_no: part.start_frame_no.into(),
                end_frame_no: part.end_frame_no.into(),
            };
            offset += part.len;
            entry
        })
        .collect()
}

/// Streams a pack of `parts` (consecutive segments of `lineage`, at least one) to `key`:
/// it appears only once complete. Returns its size.
pub(crate) async fn upload(storage: &Storage, key: &str, lineage: u32, parts: &[PackPart<'_>]) -> Result<u64> {
    let (first, last) = match (parts.first(), parts.last()) {
        (Some(first), Some(last)) => (first, last),
        _ => return Err(Error::Restore(format!("a pack of no segment ({key})"))),
    };
    let entries = entries(parts);
    let entries_checksum = crc32c::crc32c(entries.as_bytes());
    let header =
        PackHeader::new(parts.len() as u32, first.start_frame_no, last.end_frame_no, lineage, entries_checksum);
    let mut writer = storage.writer(key)?;
    let put_error = |e: std::io::Error| storage.error(&format!("uploading {key}"), e);
    writer.write_all(header.as_bytes()).await.map_err(put_error)?;
    writer.write_all(entries.as_bytes()).await.map_err(put_error)?;
    let mut size = (PACK_HEADER_SIZE + entries.len() * PACK_ENTRY_SIZE) as u64;
    let mut chunk = vec![0u8; COPY_CHUNK];
    for part in parts {
        let file = std::fs::File::open(part.path).map_err(Error::io(IoAction::Open, part.path))?;
        let mut done = 0u64;
        while done < part.len {
            let n = (part.len - done).min(COPY_CHUNK as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut chunk[..n], done)
                .map_err(Error::io(IoAction::Read, part.path))?;
            writer.write_all(&chunk[..n]).await.map_err(put_error)?;
            done += n as u64;
        }
        size += part.len;
    }
    writer.shutdown().await.map_err(put_error)?;
    storage.sync_local(key).await?;
    Ok(size)
}

/// A downloaded pack whose header and directory checked out.
pub(crate) struct PackFile {
    file: Box<dyn IoFile>,
    pub header: PackHeader,
    pub entries: Vec<PackEntry>,
}

impl PackFile {
    /// Opens and checks the pack at `path` (`key` names it in errors): header, directory
    /// checksum, and segments that tile the object exactly and follow each other's frames.
    pub fn open(io: &dyn Io, path: &Path, key: &str) -> Result<PackFile> {
        let file = io.open_read_only(path).map_err(Error::io(IoAction::Open, path))?;
        let len = file.size().map_err(Error::io(IoAction::Read, path))?;
        let bad = |reason: String| Error::corrupt(key, reason);
        if len < PACK_HEADER_SIZE as u64 {
            return Err(bad(format!("pack of {len} bytes is cut short")));
        }
        let mut bytes = [0u8; PACK_HEADER_SIZE];
        file.read_exact_at(&mut bytes, 0).map_err(Error::io(IoAction::Read, path))?;
        let header = PackHeader::read_from_bytes(&bytes).expect("exact size");
        if let Some(problem) = header.problem() {
            return Err(bad(problem));
        }
        let count = header.count.get() as u64;
        let directory_end = PACK_HEADER_SIZE as u64 + count * PACK_ENTRY_SIZE as u64;
        if count == 0 || directory_end > len {
            return Err(bad(format!("pack directory of {count} entries does not fit its {len} bytes")));
        }
        let mut directory = vec![0u8; (count as usize) * PACK_ENTRY_SIZE];
        file.read_exact_at(&mut directory, PACK_HEADER_SIZE as u64).map_err(Error::io(IoAction::Read, path))?;
        if crc32c::crc32c(&directory) != header.entries_checksum.get() {
            return Err(bad("pack directory checksum mismatch".into()));
        }
        let entries: Vec<PackEntry> =
            <[PackEntry]>::ref_from_bytes(&directory).map_err(|_| bad("pack directory".into()))?.to_vec();
        let mut offset = directory_end;
        let mut next_frame_no = header.start_frame_no.get();
        for entry in &entries {
            let (start, end) = (entry.start_frame_no.get(), entry.end_frame_no.get());
            if entry.offset.get() != offset || start == 0 || start > next_frame_no || end < start {
                return Err(bad(format!("pack entry for frames {start}..={end} does not follow the one before")));
            }
            offset = offset.checked_add(entry.len.get()).ok_or_else(|| bad("pack entry length".into()))?;
            next_frame_no = end + 1;
        }
        if offset != len || next_frame_no != header.end_frame_no.get() + 1 {
            return Err(bad(format!("pack segments end at byte {offset} and frame {next_frame_no}, not as it says")));
        }
        Ok(PackFile { file, header, entries })
    }

    /// Copies segment `index` of the pack into a file of its own at `to`.
    pub fn extract(&self, index: usize, to: &Path) -> Result<()> {
        use std::io::Write;
        let entry = &self.entries[index];
        let mut out = std::fs::File::create(to).map_err(Error::io(IoAction::Create, to))?;
        let mut chunk = vec![0u8; COPY_CHUNK];
        let (mut done, len) = (0u64, entry.len.get());
        while done < len {
            let n = (len - done).min(COPY_CHUNK as u64) as usize;
            self.file
                .read_exact_at(&mut chunk[..n], entry.offset.get() + done)
                .map_err(Error::io(IoAction::Read, to))?;
            out.write_all(&chunk[..n]).map_err(Error::io(IoAction::Write, to))?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdIo;

    /// A pack of two fake segment objects (PackFile checks the layout; the segments
    /// themselves are checked as segments once extracted).
    fn pack_bytes(entries: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut offset = (PACK_HEADER_SIZE + entries.len() * PACK_ENTRY_SIZE) as u64;
        let directory: Vec<PackEntry> = entries
            .iter()
            .map(|&(start, end, bytes)| {
                let entry = PackEntry {
                    offset: offset.into(),
                    len: (bytes.len() as u64).into(),
                    start_frame_no: start.into(),
                    end_frame_no: end.into(),
                };
                offset += bytes.len() as u64;
                entry
            })
            .collect();
        let header = PackHeader::new(
            entries.len() as u32,
            entries[0].0,
            entries[entries.len() - 1].1,
            7,
            crc32c::crc32c(directory.as_bytes()),
        );
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(directory.as_bytes());
        for (_, _, bytes) in entries {
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn a_pack_opens_and_extracts_only_when_its_directory_tiles_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let io = StdIo;
        std::fs::write(&path, pack_bytes(&[(1, 10, b"first"), (11, 20, b"second!")])).unwrap();
        let pack = PackFile::open(&io, &path, "k").unwrap();
        pack.extract(1, &dir.path().join("s")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("s")).unwrap(), b"second!");

        let refused = |bytes: Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            PackFile::open(&io, &path, "k").err().map(|e| e.to_string()).unwrap_or_default()
        };
        let mut cut = pack_bytes(&[(1, 10, b"first"), (11, 20, b"second!")]);
        cut.pop();
        assert!(refused(cut).contains("not as it says"));
        let mut flipped = pack_bytes(&[(1, 10, b"first"), (11, 20, b"second!")]);
        flipped[PACK_HEADER_SIZE + 3] ^= 1;
        assert!(refused(flipped).contains("directory checksum"));
        assert!(refused(pack_bytes(&[(1, 10, b"a"), (12, 20, b"b")])).contains("does not follow"), "a gap");
        assert!(refused(pack_bytes(&[(0, 10, b"a")])).contains("does not follow"), "frame 0");
        assert!(refused(b"short".to_vec()).contains("cut short"));
    }
}
