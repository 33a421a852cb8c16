//! What a stored object says about its place in a history — its lineage and the chain
//! value at one of its frames — read with small range requests (a header, a directory, one
//! frame header), never the whole object. The uploader asks it of the chain's last object
//! before every upload; restore asks it at every boundary of its plan before it writes
//! anything; a dry run asks it where the plan ends.

use std::ops::Range;

use zerocopy::FromBytes;

use crate::error::{Error, Result};
use crate::format::{
    FrameLayout, PACK_ENTRY_SIZE, PACK_HEADER_SIZE, PAGE_SIZE, PackEntry, PackHeader, SEGMENT_HEADER_SIZE,
    SNAPSHOT_END_MAGIC, SNAPSHOT_HEADER_SIZE, SNAPSHOT_TRAILER_SIZE, SegmentHeader, SnapshotHeader, SnapshotTrailer,
};
use crate::storage::Storage;
use crate::storage::layout::{ObjectKind, StoredObject};
use crate::storage::snapshot::Fingerprint;

/// The lineage of an object and the chain value at its last frame (a base's: at its
/// frame_no).
pub(crate) async fn end(storage: &Storage, object: &StoredObject) -> Result<(u32, u32)> {
    chain_at(storage, object, object.end_frame_no()).await
}

/// The lineage of an object and the chain value at `frame_no`, which must be one of its
/// frames or the one just before its first (then its `prev_chain`); a base answers only for
/// its own frame_no.
pub(crate) async fn chain_at(storage: &Storage, object: &StoredObject, frame_no: u64) -> Result<(u32, u32)> {
    let reader = Reader { storage, key: &object.key };
    let outside = || {
        Error::corrupt(&object.key, format!("frame_no {frame_no} is not one of its frames (asked of a stored object)"))
    };
    match object.kind {
        ObjectKind::Origin { lineage, chain, frame_no: at, .. } if at == frame_no => Ok((lineage, chain)),
        ObjectKind::Snapshot { frame_no: at, .. } if at == frame_no => {
            let bytes = reader.get(0..SNAPSHOT_HEADER_SIZE as u64).await?;
            let header = SnapshotHeader::read_from_bytes(&bytes).map_err(|_| reader.short("header"))?;
            if let Some(problem) = header.problem() {
                return Err(Error::corrupt(&object.key, problem));
            }
            Ok((header.lineage.get(), header.chain.get()))
        }
        ObjectKind::Segment { start_frame_no, end_frame_no, .. }
            if start_frame_no - 1 <= frame_no && frame_no <= end_frame_no =>
        {
            reader.segment_chain_at(0, start_frame_no, frame_no).await
        }
        ObjectKind::Pack { start_frame_no, end_frame_no, .. }
            if start_frame_no - 1 <= frame_no && frame_no <= end_frame_no =>
        {
            let bytes = reader.get(0..PACK_HEADER_SIZE as u64).await?;
            let header = PackHeader::read_from_bytes(&bytes).map_err(|_| reader.short("header"))?;
            if let Some(problem) = header.problem() {
                return Err(Error::corrupt(&object.key, problem));
            }
            let count = header.count.get() as u64;
            let directory =
                reader.get(PACK_HEADER_SIZE as u64..PACK_HEADER_SIZE as u64 + count * PACK_ENTRY_SIZE as u64);
            let directory = directory.await?;
            if crc32c::crc32c(&directory) != header.entries_checksum.get() {
                return Err(Error::corrupt(&object.key, "pack directory checksum mismatch"));
            }
            let entries = <[PackEntry]>::ref_from_bytes(&directory).map_err(|_| reader.short("directory"))?;
            let entry = entries
                .iter()
                .find(|e| e.start_frame_no.get().saturating_sub(1) <= frame_no && frame_no <= e.end_frame_no.get())
                .ok_or_else(outside)?;
            reader.segment_chain_at(entry.offset.get(), entry.start_frame_no.get(), frame_no).await
        }
        _ => Err(outside()),
    }
}

/// The fingerprint of a snapshot object: its header and its trailer, two range requests.
pub(crate) async fn snapshot_fingerprint(storage: &Storage, object: &StoredObject) -> Result<Fingerprint> {
    let reader = Reader { storage, key: &object.key };
    let bytes = reader.get(0..SNAPSHOT_HEADER_SIZE as u64).await?;
    let header = SnapshotHeader::read_from_bytes(&bytes).map_err(|_| reader.short("header"))?;
    if let Some(problem) = header.problem() {
        return Err(Error::corrupt(&object.key, problem));
    }
    let db_pages = header.db_pages.get();
    let len = (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE) as u64 + db_pages as u64 * PAGE_SIZE as u64;
    let bytes = reader.get(len - SNAPSHOT_TRAILER_SIZE as u64..len).await?;
    let trailer = SnapshotTrailer::read_from_bytes(&bytes).map_err(|_| reader.short("trailer"))?;
    if trailer.magic.get() != SNAPSHOT_END_MAGIC {
        return Err(Error::corrupt(&object.key, "its trailer is not where its header says it ends"));
    }
    Ok(Fingerprint {
        frame_no: header.frame_no.get(),
        lineage: header.lineage.get(),
        chain: header.chain.get(),
        db_pages,
        pages_checksum: trailer.pages_checksum.get(),
    })
}

/// Range reads of one object.
struct Reader<'a> {
    storage: &'a Storage,
    key: &'a str,
}

impl Reader<'_> {
    async fn get(&self, range: Range<u64>) -> Result<Vec<u8>> {
        let location = object_store::path::Path::parse(self.key).map_err(|e| self.storage.error(self.key, e))?;
        let wanted = (range.end - range.start) as usize;
        let bytes = self.storage.store().get_range(&location, range).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                Error::ObjectGone { url: self.storage.url().to_string(), key: self.key.to_string() }
            }
            e => self.storage.error(&format!("reading {}", self.key), e),
        })?;
        if bytes.len() != wanted {
            return Err(self.short("object"));
        }
        Ok(bytes.to_vec())
    }

    fn short(&self, what: &str) -> Error {
        Error::corrupt(self.key, format!("its {what} is cut short"))
    }

    /// The lineage and chain value at `frame_no` of the segment object at byte `at` of this
    /// object, whose first frame is `start_frame_no`: its header, then (unless `frame_no`
    /// is the one before its first) that frame's header.
    async fn segment_chain_at(&self, at: u64, start_frame_no: u64, frame_no: u64) -> Result<(u32, u32)> {
        let bytes = self.get(at..at + SEGMENT_HEADER_SIZE as u64).await?;
        let header = SegmentHeader::read_from_bytes(&bytes).map_err(|_| self.short("header"))?;
        if let Some(problem) = header.problem() {
            return Err(Error::corrupt(self.key, problem));
        }
        if frame_no + 1 == start_frame_no {
            return Ok((header.lineage.get(), header.prev_chain.get()));
        }
        let position = u32::try_from(frame_no - start_frame_no).map_err(|_| self.short("frame count"))?;
        let layout = FrameLayout::of_version(header.version.get()).expect("checked by problem()");
        let frame_at = at + layout.frame_offset(position);
        let frame = self.get(frame_at..frame_at + layout.header_size() as u64).await?;
        let frame_header = layout.decode(&frame);
        if frame_header.frame_no.get() != frame_no {
            return Err(Error::corrupt(
                self.key,
                format!("its frame at frame_no {frame_no} says {}", frame_header.frame_no),
            ));
        }
        Ok((header.lineage.get(), frame_header.checksum.get()))
    }
}
