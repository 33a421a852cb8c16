//! Where a replica is in its primary's history: the `<db>-upstream` record.
//!
//! A replica's log holds the primary's frames (same frame numbers, pages, commit times) but
//! chains them with its own segments' salts, so its chain values are its own. The position
//! a primary vouches for, (lineage, frame_no, the *primary's* chain value there), is kept
//! beside the database in this record, written and synced before each applied transaction
//! commits. Two slots alternate: after a crash one of them names the frame the replica's log
//! ends at, whether the transaction being applied committed or not. FORMAT.md, *Replica
//! upstream record*.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoAction, Result};
use crate::io::{FileKind, Io};

/// Where a log is in a history (a primary's last commit, a replica's place in its primary's
/// history): frame `frame_no` of lineage `lineage`, where the chain value is `chain`. The
/// primary serves only after a position it can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub lineage: u32,
    pub frame_no: u64,
    pub chain: u32,
}

const MAGIC: u32 = u32::from_le_bytes(*b"LSQU");
const SLOT_SIZE: usize = 32;

/// The record's path for the database at `db_path`.
pub(crate) fn record_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-upstream");
    PathBuf::from(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// How many positions were written before this one: the newer slot is the higher.
    sequence: u32,
    position: Position,
}

fn encode(slot: Slot) -> [u8; SLOT_SIZE] {
    let mut bytes = [0u8; SLOT_SIZE];
    bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    bytes[4..8].copy_from_slice(&slot.sequence.to_le_bytes());
    bytes[8..16].copy_from_slice(&slot.position.frame_no.to_le_bytes());
    bytes[16..20].copy_from_slice(&slot.position.lineage.to_le_bytes());
    bytes[20..24].copy_from_slice(&slot.position.chain.to_le_bytes());
    let check = crc32c::crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&check.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<Slot> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes.len() < SLOT_SIZE || u32_at(0) != MAGIC || u32_at(28) != crc32c::crc32c(&bytes[..28]) {
        return None;
    }
    let frame_no = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Some(Slot { sequence: u32_at(4), position: Position { lineage: u32_at(16), frame_no, chain: u32_at(20) } })
}

/// The two slots of a record, newest first (a torn or missing slot is `None`).
fn read_slots(file: &dyn crate::io::IoFile, path: &Path) -> Result<(Option<Slot>, Option<Slot>)> {
    let mut bytes = [0u8; 2 * SLOT_SIZE];
    let len = file.size().map_err(Error::io(IoAction::Read, path))?.min(bytes.len() as u64) as usize;
    file.read_exact_at(&mut bytes[..len], 0).map_err(Error::io(IoAction::Read, path))?;
    let mut slots: Vec<Slot> = bytes.chunks_exact(SLOT_SIZE).filter_map(decode).collect();
    slots.sort_by_key(|s| std::cmp::Reverse(s.sequence));
    Ok((slots.first().copied(), slots.get(1).copied()))
}

/// Removes the record of `db_path` if there is one, the removal synced: a replica without
/// a record has no known position and starts again from an image.
pub(crate) fn remove(io: &dyn Io, db_path: &Path) -> Result<()> {
    let path = record_path(db_path);
    if io.kind(&path).map_err(Error::io(IoAction::Read, &path))?.is_none() {
        return Ok(());
    }
    io.remove_file(&path).map_err(Error::io(IoAction::Remove, &path))?;
    sync_parent(io, &path)
}

fn sync_parent(io: &dyn Io, path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    io.sync_dir(dir).map_err(Error::io(IoAction::Sync, dir))
}

/// The replica's record, open.
pub(crate) struct Upstream {
    path: PathBuf,
    file: Box<dyn crate::io::IoFile>,
    newest: Option<Slot>,
    older: Option<Slot>,
}

impl Upstream {
    /// Opens (`create`: or creates) the record of the database at `db_path`; `None` when
    /// there is none and `create` is false.
    pub fn open(io: &dyn Io, db_path: &Path, create: bool) -> Result<Option<Upstream>> {
        let path = record_path(db_path);
        let exists = matches!(io.kind(&path).map_err(Error::io(IoAction::Read, &path))?, Some(FileKind::File { .. }));
        if !exists && !create {
            return Ok(None);
        }
        let file = io.open(&path, true).map_err(Error::io(IoAction::Open, &path))?;
        let (newest, older) = read_slots(file.as_ref(), &path)?;
        Ok(Some(Upstream { path, file, newest, older }))
    }

    /// A new record of the database at `db_path` naming `position` alone, synced with its
    /// directory. A record already there is removed first: its slots name places in the
    /// history of a database file that is being replaced, and one of them could otherwise
    /// match the new file's frame_no.
    pub fn create_fresh(io: &dyn Io, db_path: &Path, position: Position) -> Result<()> {
        remove(io, db_path)?;
        let mut record = Upstream::open(io, db_path, true)?
            .ok_or_else(|| Error::CannotOpen { path: record_path(db_path), reason: "not created".into() })?;
        record.record(position)?;
        sync_parent(io, &record.path)
    }

    /// Reads the record of `db_path` without writing anything, and tells the position it
    /// names for `frame_no` (the log's last commit); `None` when there is no record.
    pub fn read_position_at(io: &dyn Io, db_path: &Path, frame_no: u64) -> Result<Option<Option<Position>>> {
        let path = record_path(db_path);
        if !matches!(io.kind(&path).map_err(Error::io(IoAction::Read, &path))?, Some(FileKind::File { .. })) {
            return Ok(None);
        }
        let file = io.open_read_only(&path).map_err(Error::io(IoAction::Open, &path))?;
        let (newest, older) = read_slots(file.as_ref(), &path)?;
        Ok(Some([newest, older].into_iter().flatten().map(|s| s.position).find(|p| p.frame_no == frame_no)))
    }

    /// The position recorded for frame `frame_no` (the replica log's last commit), if one is.
    pub fn position_at(&self, frame_no: u64) -> Option<Position> {
        [self.newest, self.older].into_iter().flatten().map(|s| s.position).find(|p| p.frame_no == frame_no)
    }

    /// Records `position` in the older slot and syncs it: the transaction ending there may
    /// commit now. The newest slot stays, naming where the log is until it does.
    pub fn record(&mut self, position: Position) -> Result<()> {
        let sequence = self.newest.map_or(0, |s| s.sequence.wrapping_add(1));
        let slot = Slot { sequence, position };
        let at = (sequence % 2) as u64 * SLOT_SIZE as u64;
        self.file.write_all_at(&encode(slot), at).map_err(Error::io(IoAction::Write, &self.path))?;
        self.file.sync_data().map_err(Error::io(IoAction::Sync, &self.path))?;
        self.older = self.newest;
        self.newest = Some(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdIo;

    #[test]
    fn after_a_crash_either_slot_names_the_log_end() {
        let io = StdIo::shared();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let at = |frame_no| Position { lineage: 9, frame_no, chain: frame_no as u32 * 31 };
        let mut record = Upstream::open(io.as_ref(), &db, true).unwrap().unwrap();
        for f in [10, 14, 20] {
            record.record(at(f)).unwrap();
        }
        let reopened = Upstream::open(io.as_ref(), &db, false).unwrap().unwrap();
        // The transaction ending at 20 committed, or it did not (the log ends at 14).
        assert_eq!(reopened.position_at(20), Some(at(20)));
        assert_eq!(reopened.position_at(14), Some(at(14)));
        assert_eq!(reopened.position_at(10), None, "overwritten");
        // A torn slot is ignored, the other one stands.
        let mut bytes = std::fs::read(record_path(&db)).unwrap();
        bytes[..SLOT_SIZE].fill(0xff);
        std::fs::write(record_path(&db), bytes).unwrap();
        let torn = Upstream::open(io.as_ref(), &db, false).unwrap().unwrap();
        assert_eq!((torn.position_at(20), torn.position_at(14)), (None, Some(at(14))));
        assert!(Upstream::open(io.as_ref(), &dir.path().join("none.db"), false).unwrap().is_none());
    }
}
