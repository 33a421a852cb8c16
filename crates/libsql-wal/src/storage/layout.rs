//! Where things live in the object store, and which objects make up a namespace's history.
//!
//! Keys (under the store URL's own prefix; numbers zero-padded so that names sort as numbers):
//!
//! ```text
//! <namespace>/segments/<start_frame_no:020>-<end_frame_no:020>-<first_commit_ms:013>-<last_commit_ms:013>.seg
//! <namespace>/snapshots/<frame_no:020>-<commit_ms:013>-<taken_unix_ms:013>.snap
//! <namespace>/packs/<start_frame_no:020>-<end_frame_no:020>-<first_commit_ms:013>-<last_commit_ms:013>.pack
//! <namespace>/branches/<frame_no:020>-<child>                    a branch starts at frame_no
//! <namespace>/branch/<frame_no:020>-<commit_ms:013>-<lineage:08x>-<chain:08x>-<parent>
//!                                                                 this namespace is a branch
//! ```
//!
//! Format version 2 wrote `<start>-<end>-<created_ms>.seg` and `<frame_no>-<taken_ms>.snap`:
//! still read, as objects without commit times.
//!
//! A segment object is a sealed segment file, byte for byte; a snapshot object is a whole
//! database file at a frame_no (see `docs/FORMAT.md`). The *chain* of a namespace is the
//! newest snapshot (or an empty database at frame 0 when there is none), followed by segments
//! each starting at most one frame after the previous one ends; its end is the namespace's
//! durable frame_no as storage sees it.

use std::fmt;

use crate::error::{Error, Result};

/// Longest namespace name accepted.
pub const NAMESPACE_LEN_MAX: usize = 128;

/// Checks a namespace name: 1 to 128 characters of `[A-Za-z0-9._-]`, not starting with a
/// dot (so never `.` or `..`). Names become key prefixes: nothing may escape or nest.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    let ok = !namespace.is_empty()
        && namespace.len() <= NAMESPACE_LEN_MAX
        && !namespace.starts_with('.')
        && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidNamespace {
            namespace: namespace.to_string(),
            reason: format!("use 1 to {NAMESPACE_LEN_MAX} characters of A-Z a-z 0-9 . _ - (not starting with a dot)"),
        })
    }
}

/// When the first and the last commit of a segment object were made (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTimes {
    pub first: u64,
    pub last: u64,
}

/// One object of a namespace, as its key describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKind {
    /// Frames `start_frame_no..=end_frame_no`. `commit_times`: `None` for an object of format
    /// version 2 (its key and frames hold no commit times).
    Segment { start_frame_no: u64, end_frame_no: u64, commit_times: Option<CommitTimes> },
    /// The whole database as of `frame_no`, the state after the commit made at
    /// `commit_unix_ms` (`None`: not known, as for a version 2 key).
    Snapshot { frame_no: u64, commit_unix_ms: Option<u64>, taken_unix_ms: u64 },
    /// Consecutive segment objects, byte for byte, in one object (level 1, written by
    /// compaction): frames `start_frame_no..=end_frame_no`, every commit of them kept.
    Pack { start_frame_no: u64, end_frame_no: u64, commit_times: CommitTimes },
    /// The origin of a branch (an empty marker object): this namespace's history is
    /// `parent`'s up to `frame_no` (the commit made at `commit_unix_ms`, where the history
    /// is `lineage` and its chain value `chain`), then its own. A base, like a snapshot.
    Origin { frame_no: u64, commit_unix_ms: Option<u64>, lineage: u32, chain: u32, parent: String },
}

/// An object of a namespace: its key (relative to the store root), size and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub kind: ObjectKind,
}

impl StoredObject {
    /// The last frame_no this object brings the database to.
    pub fn end_frame_no(&self) -> u64 {
        match self.kind {
            ObjectKind::Segment { end_frame_no, .. } | ObjectKind::Pack { end_frame_no, .. } => end_frame_no,
            ObjectKind::Snapshot { frame_no, .. } | ObjectKind::Origin { frame_no, .. } => frame_no,
        }
    }

    /// Is it a base (a snapshot, or a branch's origin): the state at one frame_no?
    pub fn is_base(&self) -> bool {
        matches!(self.kind, ObjectKind::Snapshot { .. } | ObjectKind::Origin { .. })
    }

    /// The frames a segment or a pack holds (`None` for a snapshot).
    pub fn frames(&self) -> Option<(u64, u64)> {
        match self.kind {
            ObjectKind::Segment { start_frame_no, end_frame_no, .. }
            | ObjectKind::Pack { start_frame_no, end_frame_no, .. } => Some((start_frame_no, end_frame_no)),
            ObjectKind::Snapshot { .. } | ObjectKind::Origin { .. } => None,
        }
    }

    /// The first frame_no it holds (a snapshot's own frame_no).
    pub fn first_frame_no(&self) -> u64 {
        self.frames().map_or(self.end_frame_no(), |(start, _)| start)
    }

    /// When its first and last commits were made, if recorded (a snapshot: its one commit).
    pub fn commit_times(&self) -> Option<CommitTimes> {
        match self.kind {
            ObjectKind::Segment { commit_times, .. } => commit_times,
            ObjectKind::Pack { commit_times, .. } => Some(commit_times),
            ObjectKind::Snapshot { commit_unix_ms, .. } | ObjectKind::Origin { commit_unix_ms, .. } => {
                commit_unix_ms.map(|t| CommitTimes { first: t, last: t })
            }
        }
    }
}

impl fmt::Display for StoredObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ObjectKind::Segment { start_frame_no, end_frame_no, commit_times } => {
                write!(f, "segment  frames {start_frame_no}..={end_frame_no}  {} bytes  ", self.size)?;
                match commit_times {
                    Some(t) => write!(f, "commits {} .. {}", format_unix_ms(t.first), format_unix_ms(t.last)),
                    None => write!(f, "commit times unknown (format 2)"),
                }
            }
            ObjectKind::Pack { start_frame_no, end_frame_no, commit_times: t } => write!(
                f,
                "pack     frames {start_frame_no}..={end_frame_no}  {} bytes  commits {} .. {}",
                self.size,
                format_unix_ms(t.first),
                format_unix_ms(t.last)
            ),
            ObjectKind::Origin { frame_no, ref parent, .. } => {
                write!(f, "branch   of namespace {parent} at frame {frame_no}")
            }
            ObjectKind::Snapshot { frame_no, commit_unix_ms, taken_unix_ms } => {
                write!(f, "snapshot at frame {frame_no}  {} bytes  ", self.size)?;
                match commit_unix_ms {
                    Some(t) => write!(f, "commit {}  ", format_unix_ms(t))?,
                    None => write!(f, "commit time unknown  ")?,
                }
                write!(f, "taken {}", format_unix_ms(taken_unix_ms))
            }
        }
    }
}

/// `2026-11-27T21:38:26.123Z` (RFC 3339, UTC, milliseconds) from milliseconds since the
/// Unix epoch.
pub fn format_unix_ms(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn segment_key(namespace: &str, start_frame_no: u64, end_frame_no: u64, times: CommitTimes) -> String {
    let CommitTimes { first, last } = times;
    format!("{namespace}/segments/{start_frame_no:020}-{end_frame_no:020}-{first:013}-{last:013}.seg")
}

pub fn pack_key(namespace: &str, start_frame_no: u64, end_frame_no: u64, times: CommitTimes) -> String {
    let CommitTimes { first, last } = times;
    format!("{namespace}/packs/{start_frame_no:020}-{end_frame_no:020}-{first:013}-{last:013}.pack")
}

/// A snapshot's key; a commit time of 0 (unknown) is written as 0.
pub fn snapshot_key(namespace: &str, frame_no: u64, commit_unix_ms: u64, taken_unix_ms: u64) -> String {
    format!("{namespace}/snapshots/{frame_no:020}-{commit_unix_ms:013}-{taken_unix_ms:013}.snap")
}

/// Reads a key written by [`segment_key`] or [`snapshot_key`]; anything else is `None`
/// (foreign or temporary objects are ignored, never guessed at).
pub fn parse_key(namespace: &str, key: &str) -> Option<ObjectKind> {
    let rest = key.strip_prefix(namespace)?.strip_prefix('/')?;
    if let Some(name) = rest.strip_prefix("segments/").and_then(|n| n.strip_suffix(".seg")) {
        let parts: Vec<&str> = name.split('-').collect();
        let (start_frame_no, end_frame_no) = (parse_number(parts.first()?, 20)?, parse_number(parts.get(1)?, 20)?);
        let commit_times = match parts[2..] {
            // Format version 2: the third number was the creation time, no commit times.
            [created] => parse_number(created, 13).map(|_| None)?,
            [first, last] => Some(CommitTimes { first: parse_number(first, 13)?, last: parse_number(last, 13)? }),
            _ => return None,
        };
        if start_frame_no == 0 || end_frame_no < start_frame_no || commit_times.is_some_and(|t| t.last < t.first) {
            return None;
        }
        return Some(ObjectKind::Segment { start_frame_no, end_frame_no, commit_times });
    }
    if let Some(name) = rest.strip_prefix("branch/") {
        return parse_origin(name);
    }
    if let Some(name) = rest.strip_prefix("packs/").and_then(|n| n.strip_suffix(".pack")) {
        let parts: Vec<&str> = name.split('-').collect();
        let [start, end, first, last] = parts[..] else { return None };
        let (start_frame_no, end_frame_no) = (parse_number(start, 20)?, parse_number(end, 20)?);
        let commit_times = CommitTimes { first: parse_number(first, 13)?, last: parse_number(last, 13)? };
        if start_frame_no == 0 || end_frame_no < start_frame_no || commit_times.last < commit_times.first {
            return None;
        }
        return Some(ObjectKind::Pack { start_frame_no, end_frame_no, commit_times });
    }
    if let Some(name) = rest.strip_prefix("snapshots/").and_then(|n| n.strip_suffix(".snap")) {
        let parts: Vec<&str> = name.split('-').collect();
        let frame_no = parse_number(parts.first()?, 20)?;
        let (commit_unix_ms, taken_unix_ms) = match parts[1..] {
            [taken] => (None, parse_number(taken, 13)?),
            [commit, taken] => (Some(parse_number(commit, 13)?).filter(|&t| t != 0), parse_number(taken, 13)?),
            _ => return None,
        };
        return Some(ObjectKind::Snapshot { frame_no, commit_unix_ms, taken_unix_ms });
    }
    None
}

/// The marker a branch leaves in its parent's prefix, so that the parent's garbage
/// collection keeps the branch point restorable: `<parent>/branches/<frame_no:020>-<child>`
/// (empty; the key says it all).
pub fn branch_marker_key(parent: &str, frame_no: u64, child: &str) -> String {
    format!("{parent}/branches/{frame_no:020}-{child}")
}

/// The branch point and child namespace of a key written by [`branch_marker_key`].
pub fn parse_branch_marker(parent: &str, key: &str) -> Option<(u64, String)> {
    let name = key.strip_prefix(parent)?.strip_prefix("/branches/")?;
    let (frame_no, child) = name.split_once('-')?;
    validate_namespace(child).ok()?;
    Some((parse_number(frame_no, 20)?, child.to_string()))
}

/// The marker that makes `child` a branch (read back as [`ObjectKind::Origin`]): its
/// history is `parent`'s up to `frame_no`, then its own. Everything is in the key.
pub fn origin_key(child: &str, parent: &str, frame_no: u64, commit_unix_ms: u64, lineage: u32, chain: u32) -> String {
    format!("{child}/branch/{frame_no:020}-{commit_unix_ms:013}-{lineage:08x}-{chain:08x}-{parent}")
}

fn parse_origin(name: &str) -> Option<ObjectKind> {
    let (frame_no, rest) = name.split_once('-')?;
    let (commit, rest) = rest.split_once('-')?;
    let (lineage, rest) = rest.split_once('-')?;
    let (chain, parent) = rest.split_once('-')?;
    validate_namespace(parent).ok()?;
    let hex = |digits: &str| (digits.len() == 8).then(|| u32::from_str_radix(digits, 16).ok()).flatten();
    Some(ObjectKind::Origin {
        frame_no: parse_number(frame_no, 20)?,
        commit_unix_ms: Some(parse_number(commit, 13)?).filter(|&t| t != 0),
        lineage: hex(lineage)?,
        chain: hex(chain)?,
        parent: parent.to_string(),
    })
}

fn parse_number(digits: &str, width: usize) -> Option<u64> {
    if digits.len() != width || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The objects to apply, in order, to rebuild a namespace's newest state: a base snapshot
/// (if any) then segments. `end_frame_no` is where the chain ends (0: nothing stored).
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub snapshot: Option<StoredObject>,
    pub segments: Vec<StoredObject>,
    pub end_frame_no: u64,
    /// Segments past a gap in the chain (unusable; reported, never applied).
    pub stranded: Vec<StoredObject>,
    /// Segments that compete with the chain: not in it, yet ending after its base. A sealed
    /// segment is uploaded under one key only (its key is its file's), so two objects for
    /// overlapping frames are two histories (writers racing between a listing and their
    /// uploads): restore refuses, and an uploader that sees one stops.
    pub conflicts: Vec<StoredObject>,
}

impl Chain {
    pub fn objects(&self) -> impl Iterator<Item = &StoredObject> {
        self.snapshot.iter().chain(self.segments.iter())
    }

    pub fn bytes(&self) -> u64 {
        self.objects().map(|o| o.size).sum()
    }
}

/// Builds the chain from a namespace's objects (any order). Duplicates (the same segment
/// uploaded twice) collapse; where segments overlap, the one reaching furthest is taken.
pub fn chain(objects: &[StoredObject]) -> Chain {
    let snapshot = objects.iter().filter(|o| o.is_base()).max_by_key(|o| (o.end_frame_no(), o.key.clone())).cloned();
    let mut end = snapshot.as_ref().map_or(0, StoredObject::end_frame_no);
    let mut segments: Vec<&StoredObject> = objects.iter().filter(|o| o.frames().is_some()).collect();
    segments.sort_by_key(|o| {
        let (start, end) = o.frames().expect("segments and packs only");
        (start, u64::MAX - end, !matches!(o.kind, ObjectKind::Pack { .. }))
    });
    let packs: Vec<(u64, u64)> =
        objects.iter().filter(|o| matches!(o.kind, ObjectKind::Pack { .. })).filter_map(StoredObject::frames).collect();
    let base = end;
    let mut chain = Chain { snapshot, ..Chain::default() };
    for segment in segments {
        let (start_frame_no, end_frame_no) = segment.frames().expect("segments and packs only");
        if end_frame_no <= end {
            // Covered by the base snapshot (superseded), by a pack that holds it (compaction
            // copies segments into packs byte for byte), or by a segment already taken.
            let in_pack = packs.iter().any(|&(s, e)| s <= start_frame_no && end_frame_no <= e);
            if end_frame_no > base && !in_pack && !chain.segments.iter().any(|s| s.key == segment.key) {
                chain.conflicts.push(segment.clone());
            }
            continue;
        }
        if start_frame_no > end + 1 {
            chain.stranded.push(segment.clone());
            continue;
        }
        chain.segments.push(segment.clone());
        end = end_frame_no;
    }
    chain.stranded.retain(|s| s.end_frame_no() > end);
    chain.end_frame_no = end;
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: CommitTimes = CommitTimes { first: 1, last: 2 };

    fn segment(start: u64, end: u64) -> StoredObject {
        StoredObject {
            key: segment_key("ns", start, end, TIMES),
            size: 1,
            kind: ObjectKind::Segment { start_frame_no: start, end_frame_no: end, commit_times: Some(TIMES) },
        }
    }

    #[test]
    fn namespace_names_cannot_escape_or_nest() {
        for good in ["shop", "a", "my-db_2.v1", &"x".repeat(128)] {
            validate_namespace(good).unwrap();
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a\\b", "with space", "é", &"x".repeat(129)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_round_trip_and_sort_as_numbers() {
        let times = CommitTimes { first: 1_764_279_506_123, last: 1_764_279_507_000 };
        let key = segment_key("ns", 4097, 8192, times);
        assert_eq!(key, "ns/segments/00000000000000004097-00000000000000008192-1764279506123-1764279507000.seg");
        assert_eq!(
            parse_key("ns", &key),
            Some(ObjectKind::Segment { start_frame_no: 4097, end_frame_no: 8192, commit_times: Some(times) })
        );
        assert!(segment_key("ns", 9, 10, TIMES) < segment_key("ns", 10, 11, TIMES));
        let snap = snapshot_key("ns", 7, 4, 5);
        assert_eq!(
            parse_key("ns", &snap),
            Some(ObjectKind::Snapshot { frame_no: 7, commit_unix_ms: Some(4), taken_unix_ms: 5 })
        );
        assert_eq!(parse_key("other", &snap), None);
        // Keys of format version 2: read, without commit times.
        let v2 = "ns/segments/00000000000000004097-00000000000000008192-1764279506123.seg";
        assert_eq!(
            parse_key("ns", v2),
            Some(ObjectKind::Segment { start_frame_no: 4097, end_frame_no: 8192, commit_times: None })
        );
        let v2 = "ns/snapshots/00000000000000000007-0000000000005.snap";
        assert_eq!(
            parse_key("ns", v2),
            Some(ObjectKind::Snapshot { frame_no: 7, commit_unix_ms: None, taken_unix_ms: 5 })
        );
        let unknown = snapshot_key("ns", 7, 0, 5);
        assert_eq!(
            parse_key("ns", &unknown),
            Some(ObjectKind::Snapshot { frame_no: 7, commit_unix_ms: None, taken_unix_ms: 5 })
        );
        let backwards = "ns/segments/00000000000000000001-00000000000000000002-0000000000009-0000000000008.seg";
        assert_eq!(parse_key("ns", backwards), None, "a last commit before the first is not our key");
        assert_eq!(parse_key("ns", "ns/segments/1-2-3.seg"), None);
        assert_eq!(parse_key("ns", "ns/segments/tmp.seg.part"), None);
    }

    #[test]
    fn chain_follows_contiguous_segments_and_reports_gaps() {
        let objects = vec![segment(11, 20), segment(1, 10), segment(1, 10), segment(31, 40)];
        let chain = chain(&objects);
        assert_eq!(chain.end_frame_no, 20);
        assert_eq!(chain.segments.len(), 2);
        assert_eq!(chain.stranded.len(), 1);
    }

    #[test]
    fn overlapping_segments_past_the_base_are_conflicts_not_duplicates() {
        let mut other = segment(11, 20);
        other.key = segment_key("ns", 11, 20, CommitTimes { first: 1, last: 3 });
        let chain = chain(&[segment(1, 10), segment(11, 20), segment(11, 20), other.clone(), segment(11, 15)]);
        assert_eq!(chain.end_frame_no, 20);
        assert_eq!(chain.conflicts.len(), 2, "another 11..=20 and a 11..=15: {:?}", chain.conflicts);
        assert!(chain.conflicts.contains(&other));
        let clean = super::chain(&[segment(1, 10), segment(1, 10), segment(11, 20)]);
        assert!(clean.conflicts.is_empty(), "the same object listed twice is no conflict");
    }

    #[test]
    fn chain_starts_at_the_newest_snapshot() {
        let snapshot = StoredObject {
            key: snapshot_key("ns", 15, 1, 1),
            size: 1,
            kind: ObjectKind::Snapshot { frame_no: 15, commit_unix_ms: Some(1), taken_unix_ms: 1 },
        };
        let chain = chain(&[segment(1, 10), segment(11, 20), segment(21, 30), snapshot]);
        assert_eq!(chain.snapshot.as_ref().map(StoredObject::end_frame_no), Some(15));
        // 11..=20 overlaps the snapshot and still brings frames 16..=20.
        assert_eq!(chain.segments.iter().map(StoredObject::end_frame_no).collect::<Vec<_>>(), vec![20, 30]);
        assert_eq!(chain.end_frame_no, 30);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(1_764_279_506_123), "2025-11-27T21:38:26.123Z");
    }
}
