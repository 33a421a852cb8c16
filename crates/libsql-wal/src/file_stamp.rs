//! Did the database file change outside our log since we last wrote it?
//!
//! Once a log is emptied and closed, the file is a plain SQLite database again, and stock
//! `sqlite3` may write it. Its checkpoint mark still says "the state at frame K of lineage
//! L", which is no longer true: a log opened on it would continue K with frames on top of a
//! state that storage, replicas and point-in-time restore know differently. SQLite leaves no
//! trace of such a write we could read cheaply (in WAL mode it bumps the change counter only
//! when page 1 changes), and the mark has no room left for a checksum of the pages.
//!
//! So every writer of a mark (a checkpoint, a restore) *stamps* the file's modification
//! time: the low 20 bits of its nanoseconds since the epoch are set to a hash of the mark's
//! 20 bytes (moving the time forward by at most about a millisecond, never back: the
//! commit clock's floor is that time). Any later write through the file system sets the
//! time to "now", whose low bits match the stamp with a chance of one in a million. An open
//! that finds the stamp missing probes whether this file system keeps nanoseconds at all
//! (setting a time and reading it back); if it does, the file changed outside. If it does
//! not (or the time is not ours to set), nothing can be told, and the open must take the
//! file as changed.
//!
//! A `touch`, or a copy that does not keep times, reads as a change too: the reaction to
//! one (logging the whole file again, see `SharedWal::log_outside_change`) is correct for
//! an unchanged file as well, only costly.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::DB_HEADER_MARK_SIZE;
use crate::io::Io;

/// The low bits of the modification time (in nanoseconds since the epoch) that hold a stamp.
const STAMP_BITS: u32 = 20;
const STAMP_MASK: u128 = (1 << STAMP_BITS) - 1;

/// The stamp of a mark: never 0 (a file system that keeps only seconds or milliseconds
/// leaves those bits 0), its lowest bit always set.
fn stamp_of(mark: &[u8; DB_HEADER_MARK_SIZE]) -> u128 {
    let hash = crc32c::crc32c_append(crc32c::crc32c(b"LSQLSTMP"), mark);
    (hash as u128 & STAMP_MASK) | 1
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The earliest time at or after `time` whose low bits are `stamp`.
fn stamped(time: SystemTime, stamp: u128) -> SystemTime {
    let at = nanos(time);
    let mut with = (at & !STAMP_MASK) | stamp;
    if with < at {
        with += 1 << STAMP_BITS;
    }
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(with).unwrap_or(u64::MAX))
}

/// Stamps the file at `path`, whose mark is now `mark`: its time is set to the first time
/// at or after both its current time and `floor_unix_ms` (the newest commit it holds) that
/// carries the stamp. A file system that cannot keep it only makes the next open unable to
/// tell; the caller warns on an error (the write itself succeeded).
pub(crate) fn stamp(
    io: &dyn Io,
    path: &Path,
    mark: &[u8; DB_HEADER_MARK_SIZE],
    floor_unix_ms: u64,
) -> std::io::Result<()> {
    let current = io.modified(path)?;
    let floor = (UNIX_EPOCH + Duration::from_millis(floor_unix_ms)).max(current);
    io.set_modified(path, stamped(floor, stamp_of(mark)))
}

/// What an open finds about the file at `path` whose mark is `mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finding {
    /// The stamp of this mark is there: nothing wrote the file since.
    Unchanged,
    /// The stamp is gone and the file system keeps it: something wrote the file (or set
    /// its time) since the mark was written.
    ChangedOutside,
    /// The stamp is gone but the file system does not keep nanoseconds, or the file's time
    /// is not ours to set (another user's file): no telling.
    CannotTell,
}

/// Looks for the stamp of `mark` on the file at `path`, the caller owning the file. When it
/// is missing, the probe sets the time to one carrying *another* stamp (so a crash before
/// the change is dealt with still finds it missing) and reads it back.
pub(crate) fn check(io: &dyn Io, path: &Path, mark: &[u8; DB_HEADER_MARK_SIZE]) -> std::io::Result<Finding> {
    let current = io.modified(path)?;
    let stamp = stamp_of(mark);
    if nanos(current) & STAMP_MASK == stamp {
        return Ok(Finding::Unchanged);
    }
    let probe = stamped(current, stamp ^ 2);
    match io.set_modified(path, probe) {
        Ok(()) => {}
        // A file of another user's, writable but not ours to set times on.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied) => return Ok(Finding::CannotTell),
        Err(e) => return Err(e),
    }
    Ok(if io.modified(path)? == probe { Finding::ChangedOutside } else { Finding::CannotTell })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdIo;

    #[test]
    fn a_stamp_moves_the_time_forward_by_at_most_a_millisecond_and_a_bit() {
        let mark = [7u8; DB_HEADER_MARK_SIZE];
        for at in [0u64, 1, 999_999_999, 1_796_673_527_772_123_456, 1_796_673_527_773_048_575] {
            let time = UNIX_EPOCH + Duration::from_nanos(at);
            let with = stamped(time, stamp_of(&mark));
            assert!(with >= time);
            assert!(with.duration_since(time).unwrap() < Duration::from_nanos(1 << STAMP_BITS));
            assert_eq!(nanos(with) & STAMP_MASK, stamp_of(&mark));
        }
    }

    #[test]
    fn a_write_after_the_stamp_is_found_and_the_stamp_is_kept_until_then() {
        let io = StdIo::shared();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"pages").unwrap();
        let mark = [3u8; DB_HEADER_MARK_SIZE];
        stamp(io.as_ref(), &path, &mark, 0).unwrap();
        assert_eq!(check(io.as_ref(), &path, &mark).unwrap(), Finding::Unchanged);
        assert_eq!(check(io.as_ref(), &path, &[4u8; DB_HEADER_MARK_SIZE]).unwrap(), Finding::ChangedOutside);
        // The probe left another stamp: still changed, however often it is looked at.
        assert_eq!(check(io.as_ref(), &path, &mark).unwrap(), Finding::ChangedOutside);
        stamp(io.as_ref(), &path, &mark, 0).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        std::fs::write(&path, b"other pages").unwrap();
        assert_eq!(check(io.as_ref(), &path, &mark).unwrap(), Finding::ChangedOutside);
    }

    #[test]
    fn the_floor_is_kept() {
        let io = StdIo::shared();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"pages").unwrap();
        let future_ms = crate::io::unix_ms(SystemTime::now()) + 3_600_000;
        stamp(io.as_ref(), &path, &[1u8; DB_HEADER_MARK_SIZE], future_ms).unwrap();
        assert!(crate::io::unix_ms(io.modified(&path).unwrap()) >= future_ms);
    }
}
