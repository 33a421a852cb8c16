//! A database file written by something else since our log last handed it back (stock
//! `sqlite3` after a clean close, a tool, a copy): its checkpoint mark still names frame K of
//! its lineage, but its pages are another state. Continuing K with new frames would give
//! storage, replicas and point-in-time restore frames on top of a state they never saw
//! (restore would rebuild a database that never existed, or refuse it).
//!
//! Found at open with `file_stamp::check`, the change is made a commit of the log: every
//! page of the file, as one transaction, frames K+1..=K+n. From there on the history is
//! true again: K is the state everyone knew, K+n the file as it was found, and storage and
//! replicas receive the change as they receive any commit. It costs writing the whole file
//! into the log once (and uploading it, with storage): a warning says so.

use crate::error::{Error, IoAction, Result};
use crate::file_stamp::{self, Finding};
use crate::format::{CheckpointMark, DB_HEADER_MARK_OFFSET, PAGE_SIZE};
use crate::log::SharedWal;
use crate::segment::CommitFrame;

/// Pages read from the file and written to the log per call.
const CHUNK_PAGES: u32 = 256;

impl SharedWal {
    /// At open, before any connection: logs the file whole if it changed outside since its
    /// mark was written. Only for a log that holds no frames (the log directory was gone,
    /// so stock SQLite could open the file) and a file whose mark names a history.
    pub(super) fn log_outside_change(&self) -> Result<()> {
        let mark = self.parts.db.read_mark_bytes()?;
        let path = self.db_path();
        let finding = file_stamp::check(self.io.as_ref(), path, &mark).map_err(Error::io(IoAction::SetTime, path))?;
        let why = match finding {
            Finding::Unchanged => return Ok(()),
            Finding::ChangedOutside => "the database file was written outside libsql-wal since its last checkpoint",
            // A change nobody can rule out is taken as one: costly, never wrong.
            Finding::CannotTell => {
                "whether the database file was written outside libsql-wal since its last checkpoint cannot be told                  (its file system keeps no sub-second times, or its time is another user's to set)"
            }
        };
        let db_pages = u32::try_from(self.parts.db.len()? / PAGE_SIZE as u64)
            .map_err(|_| Error::corrupt(path, "the database file holds more than 2^32 pages"))?;
        if db_pages == 0 {
            return Ok(());
        }
        let frame_no = self.last_commit().frame_no;
        tracing::warn!(
            db = %path.display(),
            "{why} (frame {frame_no}): logging its {db_pages} pages as one commit, so that storage and replicas \
             receive any change"
        );
        let id = self.new_connection_id();
        self.begin_write(id, self.last_commit())?;
        let result = self.log_whole_file(db_pages);
        self.end_write(id);
        result
    }

    /// Writes pages 1..=`db_pages` of the file as one synced commit. Write lock held.
    fn log_whole_file(&self, db_pages: u32) -> Result<()> {
        let segment = self.current_segment_for_write()?;
        let start = segment.frames();
        let mut buf = vec![0u8; CHUNK_PAGES as usize * PAGE_SIZE];
        let mut first = 1u32;
        while first <= db_pages {
            let count = CHUNK_PAGES.min(db_pages - first + 1);
            let bytes = &mut buf[..count as usize * PAGE_SIZE];
            self.parts.db.read(bytes, (first as u64 - 1) * PAGE_SIZE as u64)?;
            let pages: Vec<(u32, &[u8])> =
                bytes.chunks(PAGE_SIZE).enumerate().map(|(i, page)| (first + i as u32, page)).collect();
            first += count;
            let commit = if first > db_pages {
                // As a synchronous=FULL commit: earlier segments durable before the commit frame.
                self.make_durable_through(&segment)?;
                Some(CommitFrame { size_after: db_pages, unix_ms: self.commit_time(), synced: true })
            } else {
                None
            };
            segment.write_transaction(&pages, start, commit)?;
        }
        self.publish_synced_commit(&segment, db_pages)
    }
}

impl SharedWal {
    /// Writes this log's new lineage into the file's mark at once (frame `frame_no`, the
    /// file's pages, the chain value it starts from), synced and stamped: a file that starts
    /// a history says which, even if no checkpoint ever runs. Otherwise an open with storage
    /// and no commit uploads a base of a lineage the file never holds, and every later open
    /// draws another one and is refused by its own namespace. At open, no connection yet.
    pub(super) fn mark_new_history(&self, frame_no: u64) -> Result<()> {
        let path = self.db_path();
        let db_pages = u32::try_from(self.parts.db.len()? / PAGE_SIZE as u64)
            .map_err(|_| Error::corrupt(path, "the database file holds more than 2^32 pages"))?;
        let mark = CheckpointMark { frame_no, db_pages, lineage: self.parts.lineage, chain: self.checkpointed().1 };
        let bytes = mark.encode().ok_or_else(|| Error::corrupt(path, "frame_no past what a mark holds"))?;
        self.parts.db.write(&bytes, DB_HEADER_MARK_OFFSET)?;
        self.parts.db.sync()?;
        if let Err(e) = file_stamp::stamp(self.io.as_ref(), path, &bytes, 0) {
            tracing::warn!(db = %path.display(), "could not stamp the file's time for its new mark: {e}");
        }
        Ok(())
    }
}
