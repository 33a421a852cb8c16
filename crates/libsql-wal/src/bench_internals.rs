//! One segment file driven directly, for the testkit's micro-benchmarks
//! (`crates/libsql-wal-testkit/benches/hot_paths.rs`). Behind the `bench-internals` feature
//! and not a stable API: the segment type itself stays private to the crate.

use std::path::Path;

use crate::error::{Error, IoAction, Result};
use crate::io::StdIo;
use crate::segment::Segment;

/// A current segment on the real file system, starting at frame_no 1.
pub struct SegmentBench {
    segment: Segment,
}

impl SegmentBench {
    /// A fresh current segment in `dir`, starting at frame_no 1.
    pub fn create(dir: &Path) -> Result<SegmentBench> {
        Ok(SegmentBench { segment: Segment::create(&StdIo, dir, 1, 1, 1)? })
    }

    /// Appends one frame of `page_no` as its own committed transaction (no sync).
    pub fn append_commit(&self, page_no: u32, page: &[u8]) -> Result<()> {
        let start = self.segment.frames();
        self.segment.write_pages(&[(page_no, page)], start, Some(page_no.max(1)))?;
        self.segment.mark_committed(page_no.max(1));
        Ok(())
    }

    /// Closes the segment and removes its file.
    pub fn remove(self) -> Result<()> {
        let path = self.segment.path.clone();
        drop(self.segment);
        std::fs::remove_file(&path).map_err(Error::io(IoAction::Remove, &path))
    }

    /// Seals the segment (index and trailer, one sync).
    pub fn seal(&self) -> Result<()> {
        self.segment.seal(&StdIo)
    }

    /// The position of the newest frame of `page_no`, as `find_frame` asks it.
    pub fn find(&self, page_no: u32) -> Option<u32> {
        self.segment.find(page_no, u64::MAX)
    }
}
