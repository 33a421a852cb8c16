//! Rebuilding a database file from storage alone.
//!
//! The namespace's chain (newest snapshot, then contiguous segments) is downloaded object by
//! object into a scratch directory beside the output, each object checked in full (a segment
//! exactly as recovery checks a sealed segment: header, every frame's checksum chain, index,
//! trailer; a snapshot by size, header and pages checksum) and applied in order: newest
//! version of each page written at its place. The file is then cut to the last commit's
//! size, given the checkpoint mark of the chain's last frame_no, synced, and only then
//! linked in at the output path (never replacing a file): a failed restore never leaves a
//! half-built database there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;

use crate::error::{Error, Result};
use crate::format::{CheckpointMark, DB_HEADER_MARK_OFFSET, PAGE_SIZE};
use crate::io::{Io, IoFile, StdIo};
use crate::segment::Segment;
use crate::storage::layout::{self, ObjectKind, StoredObject};
use crate::storage::{Storage, snapshot};

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The frame_no the restored database is at (the namespace's durable frame_no).
    pub frame_no: u64,
    pub db_pages: u32,
    pub objects: usize,
    pub bytes: u64,
    /// Objects past a gap in the stored chain: not applied.
    pub stranded: usize,
}

/// Rebuilds `namespace` into a new database file at `out` (which must not exist).
/// `progress(done_bytes, total_bytes)` is called as the download goes.
pub fn restore(
    storage: &Storage,
    namespace: &str,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    layout::validate_namespace(namespace)?;
    let io = StdIo::shared();
    for path in [out.to_path_buf(), crate::ownership::log_dir_of(out)] {
        if io.kind(&path).map_err(Error::io("reading", &path))?.is_some() {
            return Err(Error::Restore(format!("{} exists: restore writes a new database only", path.display())));
        }
    }
    let chain = storage.chain(namespace)?;
    if chain.snapshot.is_none() && chain.segments.is_empty() {
        return Err(Error::Restore(format!("namespace {namespace} holds nothing in {}", storage.url())));
    }
    if !chain.stranded.is_empty() {
        tracing::warn!(namespace, stranded = chain.stranded.len(), "segments past a gap in storage are not restored");
    }
    let scratch = scratch_dir(out);
    io.create_dir_all(&scratch).map_err(Error::io("creating", &scratch))?;
    let result = rebuild(storage, &chain, io.as_ref(), &scratch, out, progress);
    let _ = std::fs::remove_dir_all(&scratch);
    let (db_pages, bytes) = result?;
    Ok(RestoreReport {
        frame_no: chain.end_frame_no,
        db_pages,
        objects: chain.objects().count(),
        bytes,
        stranded: chain.stranded.len(),
    })
}

fn scratch_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".restoring");
    out.with_file_name(name)
}

fn rebuild(
    storage: &Storage,
    chain: &layout::Chain,
    io: &dyn Io,
    scratch: &Path,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u32, u64)> {
    let db_path = scratch.join("database");
    let db = io.open(&db_path, true).map_err(Error::io("creating", &db_path))?;
    let total = chain.bytes();
    let mut done = 0u64;
    let mut db_pages = 0u32;
    for object in chain.objects() {
        let object_path = scratch.join("object");
        download(storage, object, &object_path, &mut |n| progress(done + n, total))?;
        done += object.size;
        progress(done, total);
        db_pages = apply_object(io, object, &object_path, db.as_ref(), &db_path)?;
        io.remove_file(&object_path).map_err(Error::io("removing", &object_path))?;
    }
    db.set_len(db_pages as u64 * PAGE_SIZE as u64).map_err(Error::io("truncating", &db_path))?;
    if db_pages > 0 {
        let mark = CheckpointMark { frame_no: chain.end_frame_no, db_pages };
        db.write_all_at(&mark.encode(), DB_HEADER_MARK_OFFSET).map_err(Error::io("writing", &db_path))?;
    }
    db.sync_data().map_err(Error::io("syncing", &db_path))?;
    drop(db);
    // A hard link, not a rename: it fails rather than replace a file that appeared at `out`
    // since the check at the start. The scratch directory (and its name) goes afterwards.
    std::fs::hard_link(&db_path, out).map_err(Error::io("linking", out))?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    io.sync_dir(dir).map_err(Error::io("syncing", dir))?;
    Ok((db_pages, total))
}

/// Checks one downloaded object and writes its pages; returns the database size after it.
fn apply_object(io: &dyn Io, object: &StoredObject, path: &Path, db: &dyn IoFile, db_path: &Path) -> Result<u32> {
    match object.kind {
        ObjectKind::Snapshot { frame_no, .. } => {
            let file = io.open(path, false).map_err(Error::io("opening", path))?;
            let (stored_frame_no, pages) = snapshot::apply(file.as_ref(), Path::new(&object.key), db, db_path)?;
            if stored_frame_no != frame_no {
                let reason = format!("holds frame_no {stored_frame_no}, its name says {frame_no}");
                return Err(Error::corrupt(&object.key, reason));
            }
            Ok(pages)
        }
        ObjectKind::Segment { start_frame_no, end_frame_no, .. } => {
            let segment = Segment::recover(io, path, true).map_err(|e| Error::corrupt(&object.key, e.to_string()))?;
            if !segment.is_sealed()
                || segment.start_frame_no != start_frame_no
                || segment.last_committed_frame_no() != end_frame_no
            {
                let reason = format!(
                    "holds frames {}..={} (sealed: {}), its name says {start_frame_no}..={end_frame_no}",
                    segment.start_frame_no,
                    segment.last_committed_frame_no(),
                    segment.is_sealed()
                );
                return Err(Error::corrupt(&object.key, reason));
            }
            let mut page = vec![0u8; PAGE_SIZE];
            for (page_no, position) in segment.latest_pages() {
                segment.read_page(position, &mut page)?;
                let offset = (page_no as u64 - 1) * PAGE_SIZE as u64;
                db.write_all_at(&page, offset).map_err(Error::io("writing", db_path))?;
            }
            Ok(segment.committed_size_after())
        }
    }
}

/// Streams one object into `path`, reporting bytes received.
fn download(storage: &Storage, object: &StoredObject, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let task = {
        let (storage, key, path, received) =
            (storage.clone(), object.key.clone(), path.to_path_buf(), received.clone());
        async move { download_async(&storage, &key, &path, &received).await }
    };
    storage.block_on_with_progress(task, &mut || progress(received.load(Ordering::Relaxed)))?
}

async fn download_async(storage: &Storage, key: &str, path: &Path, received: &AtomicU64) -> Result<()> {
    use std::io::Write;
    let location = ObjectPath::parse(key).map_err(|e| storage.error(key, e))?;
    let result = storage.store().get(&location).await.map_err(|e| storage.error(&format!("downloading {key}"), e))?;
    let mut file = std::fs::File::create(path).map_err(Error::io("creating", path))?;
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| storage.error(&format!("downloading {key}"), e))?;
        file.write_all(&chunk).map_err(Error::io("writing", path))?;
        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}
