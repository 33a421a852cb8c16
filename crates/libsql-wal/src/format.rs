//! On-disk layout of a segment file. `docs/FORMAT.md` is the prose of this module; the
//! golden-bytes test at the bottom keeps the two from drifting apart.
//!
//! All integers are little-endian. A segment file is:
//!
//! ```text
//! [SegmentHeader: 64 bytes][frame 0][frame 1]...[frame n-1]            (current)
//! [SegmentHeader: 64 bytes][frame 0]...[frame n-1][index][SealTrailer] (sealed)
//! frame = [FrameHeader: 32 bytes][page: 4096 bytes]      (version 2: 24-byte header)
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The only page size we accept: `libsql-sys`'s page header iterator assumes it.
pub const PAGE_SIZE: usize = 4096;
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"LSQLWSEG");
pub const SEAL_MAGIC: u64 = u64::from_le_bytes(*b"LSQLSEAL");
/// Bumped on any incompatible change; a reader refuses versions it does not know.
/// Version 2: segments, snapshots and the checkpoint mark carry the history's lineage and the
/// chain value they continue from (see [`chain_seed`]).
/// Version 3: a commit frame carries its commit time (`FrameHeader::commit_unix_ms`, so the
/// frame header grows to 32 bytes), and a snapshot the time of the commit it is the state at.
pub const FORMAT_VERSION: u32 = 3;
/// The version before [`FORMAT_VERSION`]: read from storage (restore), never written, and
/// refused in a local log (see `Segment::open_verified`).
pub const FORMAT_VERSION_V2: u32 = 2;

pub const SEGMENT_HEADER_SIZE: usize = 64;
/// Frame flag: the commit frame of a synchronous commit, written only once every earlier
/// segment (frames, header and directory entry) was durable. Recovery reads a valid one as
/// proof that no earlier segment can be missing or cut short by a crash.
pub const FRAME_SYNCED_COMMIT: u32 = 1;
pub const FRAME_HEADER_SIZE: usize = 32;
pub const FRAME_SIZE: usize = FRAME_HEADER_SIZE + PAGE_SIZE;
/// The frame header of format version 2 ([`FrameHeaderV2`]).
pub const FRAME_HEADER_SIZE_V2: usize = 24;
pub const INDEX_ENTRY_SIZE: usize = 8;
pub const SEAL_TRAILER_SIZE: usize = 48;

/// Where in the database header we keep the checkpoint mark (see [`CheckpointMark`]):
/// 20 bytes at 72..92, the whole range SQLite reserves "for expansion" and never reads.
pub const DB_HEADER_MARK_OFFSET: u64 = 72;
pub const DB_HEADER_MARK_SIZE: usize = 20;

/// What the last checkpoint left in the database file: frames up to `frame_no` are in it,
/// and it is `db_pages` pages long. Frame numbers keep counting from it after the log is
/// emptied; recovery removes segments it covers and refuses a file shorter than it says.
/// `lineage` and `chain` say which history the file is at `frame_no` of: the next segment
/// continues the chain from `chain` (see [`chain_seed`]). `lineage` 0: none yet (a plain
/// SQLite file, or one with no mark): the next log starts a new history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointMark {
    pub frame_no: u64,
    pub db_pages: u32,
    pub lineage: u32,
    pub chain: u32,
}

impl CheckpointMark {
    /// The largest frame_no a mark holds (48 bits: the 20 bytes SQLite leaves us hold
    /// lineage and chain too). At 4 KiB a frame that is an exabyte of writes.
    pub const FRAME_NO_MAX: u64 = (1 << 48) - 1;

    /// frame_no (u48 at 0..6), db_pages (u32 at 6..10), lineage (u32 at 10..14), chain (u32
    /// at 14..18), check (u16 at 18..20) = the low 16 bits of crc32c_append(crc32c("LSQLMARK"),
    /// bytes 0..18). The check makes bytes some other tool left there, or a torn write, read
    /// as "unknown" rather than as a frame_no. `None` past [`CheckpointMark::FRAME_NO_MAX`].
    pub fn encode(self) -> Option<[u8; DB_HEADER_MARK_SIZE]> {
        if self.frame_no > Self::FRAME_NO_MAX {
            return None;
        }
        let mut mark = [0u8; DB_HEADER_MARK_SIZE];
        mark[..6].copy_from_slice(&self.frame_no.to_le_bytes()[..6]);
        mark[6..10].copy_from_slice(&self.db_pages.to_le_bytes());
        mark[10..14].copy_from_slice(&self.lineage.to_le_bytes());
        mark[14..18].copy_from_slice(&self.chain.to_le_bytes());
        let check = mark_check(&mark[..18]);
        mark[18..].copy_from_slice(&check.to_le_bytes());
        Some(mark)
    }

    /// `Some(default)` for no mark at all (zeros, as SQLite leaves the bytes), `None` when
    /// the bytes are not a valid mark: then nobody knows how far checkpoints got, and
    /// recovery trusts only the segments.
    pub fn decode(bytes: &[u8]) -> Option<CheckpointMark> {
        let bytes = bytes.get(..DB_HEADER_MARK_SIZE)?;
        if bytes.iter().all(|&b| b == 0) {
            return Some(CheckpointMark::default());
        }
        if u16::from_le_bytes([bytes[18], bytes[19]]) != mark_check(&bytes[..18]) {
            return None;
        }
        let mut frame_no = [0u8; 8];
        frame_no[..6].copy_from_slice(&bytes[..6]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Some(CheckpointMark {
            frame_no: u64::from_le_bytes(frame_no),
            db_pages: u32_at(6),
            lineage: u32_at(10),
            chain: u32_at(14),
        })
    }
}

fn mark_check(bytes: &[u8]) -> u16 {
    crc32c::crc32c_append(crc32c::crc32c(b"LSQLMARK"), bytes) as u16
}

/// The seed of a segment's frame checksum chain: its random salt, then the chain value it
/// continues from (the checksum of the frame before its first, as the previous segment, the
/// database file's mark or a snapshot holds it). So a frame's checksum vouches for the whole
/// history before it, across segment and object boundaries: a segment of another history
/// never continues this one, whatever its frame numbers.
pub fn chain_seed(salt: u32, prev_chain: u32) -> u32 {
    crc32c::crc32c_append(salt, &prev_chain.to_le_bytes())
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: U64,
    pub version: U32,
    pub page_size: U32,
    /// frame_no of the first frame in this segment.
    pub start_frame_no: U64,
    /// Random per segment: seeds the checksums (with `prev_chain`, see [`chain_seed`]), so
    /// frames left over from an older file at the same place can never chain onto this one.
    pub salt: U32,
    /// The history this segment belongs to: random when a database's first log starts it,
    /// then carried by every segment, snapshot and checkpoint mark of that history.
    pub lineage: U32,
    pub created_unix_ms: U64,
    /// The chain value at `start_frame_no - 1`: the checksum of the history's previous frame.
    pub prev_chain: U32,
    pub reserved1: [u8; 16],
    /// crc32c of bytes 0..60.
    pub checksum: U32,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FrameHeader {
    pub page_no: U32,
    /// Database size in pages after the transaction: non-zero only on a commit frame.
    pub size_after: U32,
    pub frame_no: U64,
    /// On a commit frame, when the transaction committed: ms since the Unix epoch, never
    /// decreasing within a database (see `Transactions::commit_time`). 0 on other frames, and
    /// on every frame of format version 2 (no time known).
    pub commit_unix_ms: U64,
    /// [`FRAME_SYNCED_COMMIT`] on the commit frame of a synchronous (FULL) commit; else 0.
    pub flags: U32,
    /// crc32c chained: crc32c_append(previous checksum, header bytes 0..28 ++ page).
    pub checksum: U32,
}

/// The frame header of format version 2, kept to read stored objects of that version.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FrameHeaderV2 {
    pub page_no: U32,
    pub size_after: U32,
    pub frame_no: U64,
    pub flags: U32,
    /// crc32c chained: crc32c_append(previous checksum, header bytes 0..20 ++ page).
    pub checksum: U32,
}

/// How frames are laid out in a segment of a given format version. Everything that reads
/// frames asks the segment's layout; only [`FrameLayout::V3`] is ever written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLayout {
    V2,
    V3,
}

impl FrameLayout {
    /// The layout of a format version we read, if we read it.
    pub fn of_version(version: u32) -> Option<FrameLayout> {
        match version {
            FORMAT_VERSION => Some(FrameLayout::V3),
            FORMAT_VERSION_V2 => Some(FrameLayout::V2),
            _ => None,
        }
    }

    pub fn header_size(self) -> usize {
        match self {
            FrameLayout::V2 => FRAME_HEADER_SIZE_V2,
            FrameLayout::V3 => FRAME_HEADER_SIZE,
        }
    }

    pub fn frame_size(self) -> usize {
        self.header_size() + PAGE_SIZE
    }

    /// Byte offset of frame `index` (0-based) in a segment file.
    pub fn frame_offset(self, index: u32) -> u64 {
        SEGMENT_HEADER_SIZE as u64 + index as u64 * self.frame_size() as u64
    }

    /// The header at the start of `head` (at least [`FrameLayout::header_size`] bytes), as a
    /// version 3 header: a version 2 one has no commit time (0).
    pub fn decode(self, head: &[u8]) -> FrameHeader {
        match self {
            FrameLayout::V3 => FrameHeader::read_from_bytes(&head[..FRAME_HEADER_SIZE]).expect("exact size"),
            FrameLayout::V2 => {
                let v2 = FrameHeaderV2::read_from_bytes(&head[..FRAME_HEADER_SIZE_V2]).expect("exact size");
                FrameHeader {
                    page_no: v2.page_no,
                    size_after: v2.size_after,
                    frame_no: v2.frame_no,
                    commit_unix_ms: 0.into(),
                    flags: v2.flags,
                    checksum: v2.checksum,
                }
            }
        }
    }

    /// The chained checksum of a frame as its bytes hold it: the header bytes before the
    /// checksum field (`head` is at least a header long), then the page.
    pub fn chained_checksum(self, head: &[u8], previous: u32, page: &[u8]) -> u32 {
        let crc = crc32c::crc32c_append(previous, &head[..self.header_size() - 4]);
        crc32c::crc32c_append(crc, page)
    }
}

/// One entry of a sealed segment's index: the latest frame of `page_no` in the segment.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IndexEntry {
    pub page_no: U32,
    /// Position of the frame in the segment, 0-based.
    pub frame_index: U32,
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SealTrailer {
    pub magic: U64,
    pub start_frame_no: U64,
    pub last_frame_no: U64,
    /// Byte offset of the index in the file (= end of the last frame).
    pub index_offset: U64,
    pub index_entry_count: U32,
    /// crc32c_append(salt, index bytes).
    pub index_checksum: U32,
    /// Database size in pages after the last (commit) frame.
    pub size_after: U32,
    /// crc32c_append(salt, trailer bytes 0..44).
    pub checksum: U32,
}

const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_SIZE);
const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_SIZE);
const _: () = assert!(size_of::<FrameHeaderV2>() == FRAME_HEADER_SIZE_V2);
const _: () = assert!(size_of::<IndexEntry>() == INDEX_ENTRY_SIZE);
const _: () = assert!(size_of::<SealTrailer>() == SEAL_TRAILER_SIZE);

impl SegmentHeader {
    pub fn new(start_frame_no: u64, salt: u32, created_unix_ms: u64, lineage: u32, prev_chain: u32) -> Self {
        let mut header = SegmentHeader {
            magic: SEGMENT_MAGIC.into(),
            version: FORMAT_VERSION.into(),
            page_size: (PAGE_SIZE as u32).into(),
            start_frame_no: start_frame_no.into(),
            salt: salt.into(),
            lineage: lineage.into(),
            created_unix_ms: created_unix_ms.into(),
            prev_chain: prev_chain.into(),
            reserved1: [0; 16],
            checksum: 0.into(),
        };
        header.checksum = header.computed_checksum().into();
        header
    }

    pub fn computed_checksum(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..SEGMENT_HEADER_SIZE - 4])
    }

    /// Why this header cannot be trusted, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.magic.get() != SEGMENT_MAGIC {
            return Some("not a libsql-wal segment (bad magic)".into());
        }
        if self.checksum.get() != self.computed_checksum() {
            return Some("segment header checksum mismatch".into());
        }
        if FrameLayout::of_version(self.version.get()).is_none() {
            return Some(format!(
                "segment format version {} is not supported (this build reads versions {FORMAT_VERSION_V2} and \
                 {FORMAT_VERSION})",
                self.version.get()
            ));
        }
        if self.page_size.get() as usize != PAGE_SIZE {
            return Some(format!("segment page size {} is not 4096", self.page_size.get()));
        }
        if self.start_frame_no.get() == 0 {
            return Some("segment starts at frame_no 0".into());
        }
        if self.start_frame_no.get() > CheckpointMark::FRAME_NO_MAX {
            return Some(format!("segment starts at frame_no {}, past 2^48", self.start_frame_no.get()));
        }
        None
    }
}

impl FrameHeader {
    pub fn new(page_no: u32, size_after: u32, frame_no: u64) -> Self {
        FrameHeader {
            page_no: page_no.into(),
            size_after: size_after.into(),
            frame_no: frame_no.into(),
            commit_unix_ms: 0.into(),
            flags: 0.into(),
            checksum: 0.into(),
        }
    }

    /// The chained checksum of this header (bytes 0..28) and its page.
    pub fn chained_checksum(&self, previous: u32, page: &[u8]) -> u32 {
        FrameLayout::V3.chained_checksum(self.as_bytes(), previous, page)
    }
}

impl SealTrailer {
    pub fn computed_checksum(&self, salt: u32) -> u32 {
        crc32c::crc32c_append(salt, &self.as_bytes()[..SEAL_TRAILER_SIZE - 4])
    }
}

pub const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"LSQLSNAP");
pub const SNAPSHOT_END_MAGIC: u64 = u64::from_le_bytes(*b"LSQLSEND");
pub const SNAPSHOT_HEADER_SIZE: usize = 64;
pub const SNAPSHOT_TRAILER_SIZE: usize = 16;

/// The head of a snapshot object: the whole database as of `frame_no`, `db_pages` pages
/// following the header, then a [`SnapshotTrailer`].
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SnapshotHeader {
    pub magic: U64,
    pub version: U32,
    pub page_size: U32,
    pub frame_no: U64,
    pub db_pages: U32,
    /// The history the snapshot is a state of (see [`SegmentHeader::lineage`]).
    pub lineage: U32,
    pub taken_unix_ms: U64,
    /// The chain value at `frame_no`: the next segment continues from it.
    pub chain: U32,
    /// When the commit at `frame_no` was made (ms since the epoch); 0 if unknown (nothing
    /// committed yet, or a snapshot of format version 2).
    pub commit_unix_ms: U64,
    pub reserved1: [u8; 8],
    /// crc32c of bytes 0..60.
    pub checksum: U32,
}

/// The end of a snapshot object; an object without it was cut short.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SnapshotTrailer {
    /// crc32c of every page, in order.
    pub pages_checksum: U32,
    pub reserved: U32,
    pub magic: U64,
}

const _: () = assert!(size_of::<SnapshotHeader>() == SNAPSHOT_HEADER_SIZE);
const _: () = assert!(size_of::<SnapshotTrailer>() == SNAPSHOT_TRAILER_SIZE);

impl SnapshotHeader {
    pub fn new(
        frame_no: u64,
        db_pages: u32,
        taken_unix_ms: u64,
        lineage: u32,
        chain: u32,
        commit_unix_ms: u64,
    ) -> Self {
        let mut header = SnapshotHeader {
            magic: SNAPSHOT_MAGIC.into(),
            version: FORMAT_VERSION.into(),
            page_size: (PAGE_SIZE as u32).into(),
            frame_no: frame_no.into(),
            db_pages: db_pages.into(),
            lineage: lineage.into(),
            taken_unix_ms: taken_unix_ms.into(),
            chain: chain.into(),
            commit_unix_ms: commit_unix_ms.into(),
            reserved1: [0; 8],
            checksum: 0.into(),
        };
        header.checksum = crc32c::crc32c(&header.as_bytes()[..SNAPSHOT_HEADER_SIZE - 4]).into();
        header
    }

    /// Why this header cannot be trusted, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.magic.get() != SNAPSHOT_MAGIC {
            return Some("not a libsql-wal snapshot (bad magic)".into());
        }
        if self.checksum.get() != crc32c::crc32c(&self.as_bytes()[..SNAPSHOT_HEADER_SIZE - 4]) {
            return Some("snapshot header checksum mismatch".into());
        }
        // Version 2 differs only in bytes 44..52, then reserved (zeros): a commit time of 0.
        if FrameLayout::of_version(self.version.get()).is_none() || self.page_size.get() != PAGE_SIZE as u32 {
            return Some(format!(
                "snapshot version {} with {}-byte pages; this build reads versions {FORMAT_VERSION_V2} and \
                 {FORMAT_VERSION}, 4096-byte pages",
                self.version.get(),
                self.page_size.get()
            ));
        }
        None
    }
}

pub const PACK_MAGIC: u64 = u64::from_le_bytes(*b"LSQLPACK");
pub const PACK_HEADER_SIZE: usize = 64;
pub const PACK_ENTRY_SIZE: usize = 32;

/// The head of a pack object (level 1): `count` segment objects follow a directory of
/// [`PackEntry`]s, each byte for byte as it was stored.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PackHeader {
    pub magic: U64,
    pub version: U32,
    /// Segments in the pack.
    pub count: U32,
    /// The first segment's first frame_no and the last one's last.
    pub start_frame_no: U64,
    pub end_frame_no: U64,
    /// The history its segments belong to.
    pub lineage: U32,
    /// crc32c of the directory (the `count` entries after this header).
    pub entries_checksum: U32,
    pub reserved1: [u8; 20],
    /// crc32c of bytes 0..60.
    pub checksum: U32,
}

/// Where one segment lies in a pack.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PackEntry {
    /// Byte offset of the segment in the pack object.
    pub offset: U64,
    pub len: U64,
    pub start_frame_no: U64,
    pub end_frame_no: U64,
}

const _: () = assert!(size_of::<PackHeader>() == PACK_HEADER_SIZE);
const _: () = assert!(size_of::<PackEntry>() == PACK_ENTRY_SIZE);

impl PackHeader {
    pub fn new(count: u32, start_frame_no: u64, end_frame_no: u64, lineage: u32, entries_checksum: u32) -> Self {
        let mut header = PackHeader {
            magic: PACK_MAGIC.into(),
            version: FORMAT_VERSION.into(),
            count: count.into(),
            start_frame_no: start_frame_no.into(),
            end_frame_no: end_frame_no.into(),
            lineage: lineage.into(),
            entries_checksum: entries_checksum.into(),
            reserved1: [0; 20],
            checksum: 0.into(),
        };
        header.checksum = crc32c::crc32c(&header.as_bytes()[..PACK_HEADER_SIZE - 4]).into();
        header
    }

    /// Why this header cannot be trusted, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.magic.get() != PACK_MAGIC {
            return Some("not a libsql-wal pack (bad magic)".into());
        }
        if self.checksum.get() != crc32c::crc32c(&self.as_bytes()[..PACK_HEADER_SIZE - 4]) {
            return Some("pack header checksum mismatch".into());
        }
        if self.version.get() != FORMAT_VERSION {
            return Some(format!("pack version {}; this build reads version {FORMAT_VERSION}", self.version.get()));
        }
        None
    }
}

/// The local record of a database's durable frame_no (`<db>-wal/durable`, 16 bytes):
/// frame_no (u64), the identity of the store and namespace it counts in (u32, see
/// [`storage_identity`]), crc32c of bytes 0..12 (u32). A record failing its check is ignored
/// and rebuilt from storage; one for another store or namespace is not trusted either.
pub const DURABLE_RECORD_SIZE: usize = 16;

/// What a durable record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableRecord {
    pub frame_no: u64,
    pub identity: u32,
}

impl DurableRecord {
    pub fn encode(self) -> [u8; DURABLE_RECORD_SIZE] {
        let mut bytes = [0u8; DURABLE_RECORD_SIZE];
        bytes[..8].copy_from_slice(&self.frame_no.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.identity.to_le_bytes());
        let check = crc32c::crc32c(&bytes[..12]);
        bytes[12..].copy_from_slice(&check.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<DurableRecord> {
        if bytes.len() != DURABLE_RECORD_SIZE {
            return None;
        }
        let check = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
        (crc32c::crc32c(&bytes[..12]) == check).then(|| DurableRecord {
            frame_no: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            identity: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
        })
    }
}

/// The identity a durable record is bound to: crc32c of `url`, a zero byte, `namespace`.
pub fn storage_identity(url: &str, namespace: &str) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(url.as_bytes()), &[0]), namespace.as_bytes())
}

/// Byte offset of frame `index` (0-based) in a segment file of the current version.
pub fn frame_offset(index: u32) -> u64 {
    FrameLayout::V3.frame_offset(index)
}

/// Reads a page size from a SQLite database header (bytes 16..18, big-endian; 1 means 65536).
pub fn sqlite_header_page_size(header: &[u8]) -> u32 {
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => n as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FORMAT.md table that follows the first line starting with `heading`: (offset,
    /// size, type, field) of each row whose field is a `code` name.
    fn documented_fields(heading: &str) -> Vec<(usize, usize, String, String)> {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/FORMAT.md"));
        let after = doc.lines().skip_while(|l| !l.starts_with(heading)).skip(1);
        let table = after.skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|'));
        table
            .filter_map(|row| {
                let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
                let field = cells.get(3)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((cells[0].parse().ok()?, cells[1].parse().ok()?, cells[2].to_string(), field.to_string()))
            })
            .collect()
    }

    /// (offset, size, type, field) of each field of a struct, in declaration order.
    macro_rules! code_fields {
        ($t:ty { $($field:ident),* $(,)? }) => {{
            let zero = <$t as zerocopy::FromZeros>::new_zeroed();
            let type_of = |size: usize, array: bool| match (size, array) {
                (_, true) => "bytes",
                (8, false) => "u64",
                (4, false) => "u32",
                _ => "?",
            };
            vec![$({
                let size = std::mem::size_of_val(&zero.$field);
                let array = stringify!($field).starts_with("reserved") && size != 4;
                (std::mem::offset_of!($t, $field), size, type_of(size, array).to_string(), stringify!($field).to_string())
            }),*]
        }};
    }

    /// The tables of FORMAT.md are the structs: every field at its offset, with its size and
    /// type, in order, and nothing else. Edit one, and this says which to fix.
    #[test]
    fn format_md_tables_are_the_structs() {
        let cases = [
            (
                "### SegmentHeader",
                code_fields!(SegmentHeader {
                    magic,
                    version,
                    page_size,
                    start_frame_no,
                    salt,
                    lineage,
                    created_unix_ms,
                    prev_chain,
                    reserved1,
                    checksum
                }),
            ),
            ("### Frame", code_fields!(FrameHeader { page_no, size_after, frame_no, commit_unix_ms, flags, checksum })),
            ("### Frame of version 2", code_fields!(FrameHeaderV2 { page_no, size_after, frame_no, flags, checksum })),
            ("### Index", code_fields!(IndexEntry { page_no, frame_index })),
            (
                "### SealTrailer",
                code_fields!(SealTrailer {
                    magic,
                    start_frame_no,
                    last_frame_no,
                    index_offset,
                    index_entry_count,
                    index_checksum,
                    size_after,
                    checksum
                }),
            ),
            (
                "**SnapshotHeader",
                code_fields!(SnapshotHeader {
                    magic,
                    version,
                    page_size,
                    frame_no,
                    db_pages,
                    lineage,
                    taken_unix_ms,
                    chain,
                    commit_unix_ms,
                    reserved1,
                    checksum
                }),
            ),
            ("**SnapshotTrailer", code_fields!(SnapshotTrailer { pages_checksum, reserved, magic })),
            (
                "**PackHeader",
                code_fields!(PackHeader {
                    magic,
                    version,
                    count,
                    start_frame_no,
                    end_frame_no,
                    lineage,
                    entries_checksum,
                    reserved1,
                    checksum
                }),
            ),
            ("**PackEntry", code_fields!(PackEntry { offset, len, start_frame_no, end_frame_no })),
        ];
        for (heading, code) in cases {
            assert_eq!(documented_fields(heading), code, "FORMAT.md's table under {heading:?} differs from the struct");
        }
    }

    /// The bytes FORMAT.md documents, field by field. If this fails, fix the doc too.
    #[test]
    fn golden_bytes_match_format_md() {
        let header = SegmentHeader::new(0x0102, 0xAABBCCDD, 7, 0x11223344, 0x55667788);
        let b = header.as_bytes();
        assert_eq!(&b[0..8], b"LSQLWSEG");
        assert_eq!(&b[8..12], &[3, 0, 0, 0]);
        assert_eq!(&b[12..16], &4096u32.to_le_bytes());
        assert_eq!(&b[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..28], &[0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(&b[28..32], &0x11223344u32.to_le_bytes());
        assert_eq!(&b[32..40], &7u64.to_le_bytes());
        assert_eq!(&b[40..44], &0x55667788u32.to_le_bytes());
        assert_eq!(&b[44..60], &[0; 16]);
        assert_eq!(&b[60..64], &crc32c::crc32c(&b[..60]).to_le_bytes());
        assert_eq!(chain_seed(0xAABBCCDD, 0x55667788), crc32c::crc32c_append(0xAABBCCDD, &[0x88, 0x77, 0x66, 0x55]));
        assert!(header.problem().is_none());

        let mut frame = FrameHeader::new(3, 9, 0x10);
        frame.commit_unix_ms = 0x0102_0304_0506.into();
        frame.flags = FRAME_SYNCED_COMMIT.into();
        let f = frame.as_bytes();
        assert_eq!(&f[0..4], &3u32.to_le_bytes());
        assert_eq!(&f[4..8], &9u32.to_le_bytes());
        assert_eq!(&f[8..16], &0x10u64.to_le_bytes());
        assert_eq!(&f[16..24], &0x0102_0304_0506u64.to_le_bytes());
        assert_eq!(&f[24..28], &1u32.to_le_bytes());
        let page = [0x5Au8; PAGE_SIZE];
        let expected = crc32c::crc32c_append(crc32c::crc32c_append(42, &f[..28]), &page);
        assert_eq!(frame.chained_checksum(42, &page), expected);
        assert_eq!(frame_offset(2), 64 + 2 * 4128);
        assert_eq!(FrameLayout::V3.decode(f).commit_unix_ms.get(), 0x0102_0304_0506);

        // Version 2: 24 bytes, flags at 16, checksum at 20 over bytes 0..20; no commit time.
        let v2 = FrameHeaderV2 {
            page_no: 3.into(),
            size_after: 9.into(),
            frame_no: 0x10.into(),
            flags: 1.into(),
            checksum: 0xCAFE.into(),
        };
        let f2 = v2.as_bytes();
        assert_eq!(&f2[16..20], &1u32.to_le_bytes());
        assert_eq!(&f2[20..24], &0xCAFEu32.to_le_bytes());
        let decoded = FrameLayout::V2.decode(f2);
        assert_eq!((decoded.page_no.get(), decoded.size_after.get(), decoded.frame_no.get()), (3, 9, 0x10));
        assert_eq!((decoded.commit_unix_ms.get(), decoded.flags.get(), decoded.checksum.get()), (0, 1, 0xCAFE));
        let expected = crc32c::crc32c_append(crc32c::crc32c_append(42, &f2[..20]), &page);
        assert_eq!(FrameLayout::V2.chained_checksum(f2, 42, &page), expected);
        assert_eq!(FrameLayout::V2.frame_offset(2), 64 + 2 * 4120);

        let entry = IndexEntry { page_no: 5.into(), frame_index: 9.into() };
        assert_eq!(entry.as_bytes(), &[5, 0, 0, 0, 9, 0, 0, 0]);

        let mut trailer = SealTrailer {
            magic: SEAL_MAGIC.into(),
            start_frame_no: 1.into(),
            last_frame_no: 2.into(),
            index_offset: 3.into(),
            index_entry_count: 4.into(),
            index_checksum: 5.into(),
            size_after: 6.into(),
            checksum: 0.into(),
        };
        trailer.checksum = trailer.computed_checksum(42).into();
        let t = trailer.as_bytes();
        assert_eq!(&t[0..8], b"LSQLSEAL");
        assert_eq!(&t[8..16], &1u64.to_le_bytes());
        assert_eq!(&t[16..24], &2u64.to_le_bytes());
        assert_eq!(&t[24..32], &3u64.to_le_bytes());
        assert_eq!(&t[32..36], &4u32.to_le_bytes());
        assert_eq!(&t[36..40], &5u32.to_le_bytes());
        assert_eq!(&t[40..44], &6u32.to_le_bytes());
        assert_eq!(&t[44..48], &crc32c::crc32c_append(42, &t[..44]).to_le_bytes());

        let mark = CheckpointMark { frame_no: 0x0605_0403_0201, db_pages: 5, lineage: 0xA1B2C3D4, chain: 9 };
        let m = mark.encode().unwrap();
        assert_eq!(m.len(), 20);
        assert_eq!(&m[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&m[6..10], &5u32.to_le_bytes());
        assert_eq!(&m[10..14], &0xA1B2C3D4u32.to_le_bytes());
        assert_eq!(&m[14..18], &9u32.to_le_bytes());
        let check = crc32c::crc32c_append(crc32c::crc32c(b"LSQLMARK"), &m[..18]) as u16;
        assert_eq!(&m[18..], &check.to_le_bytes());
        assert_eq!(CheckpointMark::decode(&m), Some(mark));
        assert_eq!(CheckpointMark::decode(&[0; 20]), Some(CheckpointMark::default()), "zeros: no checkpoint yet");
        assert_eq!(CheckpointMark::decode(&[0xAB; 20]), None, "foreign or torn bytes are no mark");
        let mut torn = m;
        torn[3] ^= 1;
        assert_eq!(CheckpointMark::decode(&torn), None);
        assert!(CheckpointMark { frame_no: 1 << 48, ..mark }.encode().is_none(), "past 48 bits: refused, never cut");
    }

    #[test]
    fn snapshot_and_durable_record_bytes_match_format_md() {
        let header = SnapshotHeader::new(0x0102, 3, 9, 0x0A0B0C0D, 0x01020304, 0x0B0C);
        let b = header.as_bytes();
        assert_eq!(&b[0..8], b"LSQLSNAP");
        assert_eq!(&b[8..12], &3u32.to_le_bytes());
        assert_eq!(&b[12..16], &4096u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x0102u64.to_le_bytes());
        assert_eq!(&b[24..28], &3u32.to_le_bytes());
        assert_eq!(&b[28..32], &0x0A0B0C0Du32.to_le_bytes());
        assert_eq!(&b[32..40], &9u64.to_le_bytes());
        assert_eq!(&b[40..44], &0x01020304u32.to_le_bytes());
        assert_eq!(&b[44..52], &0x0B0Cu64.to_le_bytes());
        assert_eq!(&b[52..60], &[0; 8]);
        assert_eq!(&b[60..64], &crc32c::crc32c(&b[..60]).to_le_bytes());
        assert!(header.problem().is_none());
        let trailer =
            SnapshotTrailer { pages_checksum: 7.into(), reserved: 0.into(), magic: SNAPSHOT_END_MAGIC.into() };
        assert_eq!(&trailer.as_bytes()[8..], b"LSQLSEND");

        let identity = storage_identity("s3://bucket/prefix", "shop");
        let record = DurableRecord { frame_no: 4096, identity };
        let bytes = record.encode();
        assert_eq!(&bytes[..8], &4096u64.to_le_bytes());
        assert_eq!(&bytes[8..12], &identity.to_le_bytes());
        assert_eq!(&bytes[12..], &crc32c::crc32c(&bytes[..12]).to_le_bytes());
        assert_eq!(DurableRecord::decode(&bytes), Some(record));
        let mut torn = bytes;
        torn[3] ^= 1;
        assert_eq!(DurableRecord::decode(&torn), None);
        assert_ne!(identity, storage_identity("s3://bucket/prefix", "shop2"));
        assert_ne!(identity, storage_identity("s3://bucket/prefi", "xshop"));
    }

    #[test]
    fn damaged_header_is_refused_with_a_reason() {
        let mut header = SegmentHeader::new(1, 5, 0, 1, 1);
        header.version = 4.into();
        assert!(header.problem().unwrap().contains("checksum"));
        header.checksum = header.computed_checksum().into();
        assert!(header.problem().unwrap().contains("version 4"));
        header.version = FORMAT_VERSION_V2.into();
        header.checksum = header.computed_checksum().into();
        assert!(header.problem().is_none(), "version 2 is read (from storage)");
        // Frame numbers from a file are bounded before any arithmetic on them.
        let far = SegmentHeader::new(CheckpointMark::FRAME_NO_MAX + 1, 5, 0, 1, 1);
        assert!(far.problem().unwrap().contains("past 2^48"));
        assert!(SegmentHeader::new(CheckpointMark::FRAME_NO_MAX, 5, 0, 1, 1).problem().is_none());
    }
}
