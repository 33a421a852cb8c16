//! Rebuilding a database file from storage alone.
//!
//! The namespace's chain (newest snapshot, then contiguous segments) is downloaded object by
//! object into a scratch directory of this restore's own beside the output, each object
//! checked in full (a segment exactly as recovery checks a sealed segment: header, every
//! frame's checksum chain, index, trailer; a snapshot by size, header and pages checksum)
//! and against the one before it (the same lineage, and its first frame continuing the
//! previous object's chain value: one history, whatever the frame numbers say), then applied
//! in order: newest version of each page written at its place. The file is then cut to the
//! last commit's size, given the checkpoint mark of the chain's end (frame_no, lineage,
//! chain value: a copy restored from the latest state continues the namespace), synced, and
//! only then linked in at the output path (never replacing a file): a failed restore never
//! leaves a half-built database there. A gap in the chain is an error unless the caller
//! asks for the prefix before it ([`RestoreOptions::allow_prefix`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;

use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, DB_HEADER_MARK_OFFSET, PAGE_SIZE, SnapshotHeader};
use crate::io::{Io, IoFile, StdIo};
use crate::segment::{CommitInfo, Segment};
use crate::storage::history::{self, RestorePlan, RestorePoint};
use crate::storage::layout::{self, ObjectKind, StoredObject};
use crate::storage::pack::PackFile;
use crate::storage::{Storage, remote, snapshot};

/// What a restore did (or, with [`RestoreOptions::dry_run`], would do).
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The frame_no of the commit the restored database is at: the namespace's durable
    /// frame_no for the latest state, else the last commit at or before the point asked for.
    pub frame_no: u64,
    /// When that commit was made (ms since the epoch), if recorded.
    pub commit_unix_ms: Option<u64>,
    pub db_pages: u32,
    pub objects: usize,
    pub bytes: u64,
    /// Objects past a gap in the stored chain: not applied (only with
    /// [`RestoreOptions::allow_prefix`]; without it a gap is an error).
    pub stranded: usize,
    /// The history restored (see `format::SegmentHeader::lineage`).
    pub lineage: u32,
    /// The chain value at `frame_no` (see `format::chain_seed`).
    pub chain: u32,
    /// The keys of the objects applied, in order.
    pub keys: Vec<String>,
    /// Whether this was a dry run: nothing was written at the output.
    pub dry_run: bool,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore the chain up to a gap (a missing segment) instead of refusing: the report's
    /// `frame_no` says where it stopped.
    pub allow_prefix: bool,
    /// The point of history to restore (default: the latest state).
    pub point: RestorePoint,
    /// Work out the plan (objects, bytes, landing commit) and write nothing at the output.
    /// A point inside a segment needs that segment: it is downloaded to a scratch directory.
    pub dry_run: bool,
}

/// Rebuilds `namespace` into a new database file at `out` (which must not exist).
/// `progress(done_bytes, total_bytes)` is called as the download goes. A gap in the stored
/// chain is an error: see [`restore_with`] to restore the prefix before it.
pub fn restore(
    storage: &Storage,
    namespace: &str,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    restore_with(storage, namespace, out, &RestoreOptions::default(), progress)
}

/// [`restore`] with options.
pub fn restore_with(
    storage: &Storage,
    namespace: &str,
    out: &Path,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    layout::validate_namespace(namespace)?;
    let io = StdIo::shared();
    if !options.dry_run {
        for path in [out.to_path_buf(), crate::ownership::log_dir_of(out)] {
            if io.kind(&path).map_err(Error::io(IoAction::Read, &path))?.is_some() {
                return Err(Error::Restore(format!("{} exists: restore writes a new database only", path.display())));
            }
        }
    }
    // An object that vanished between the listing and its download was replaced by
    // compaction (what replaces it is durable before it goes): list again and retry.
    let mut attempts = 0;
    loop {
        match restore_once(storage, namespace, out, options, progress) {
            Err(Error::ObjectGone { key, .. }) if attempts < RESTORE_ATTEMPTS_MAX => {
                attempts += 1;
                tracing::info!(namespace, key, "an object was replaced while restoring: listing again");
            }
            result => return result,
        }
    }
}

/// Restores retry at most this many times after an object vanished under them.
const RESTORE_ATTEMPTS_MAX: u32 = 5;

fn restore_once(
    storage: &Storage,
    namespace: &str,
    out: &Path,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    let io = StdIo::shared();
    let objects = storage.list(namespace)?;
    let chain = layout::chain(&objects);
    if chain.snapshot.is_none() && chain.segments.is_empty() {
        return Err(Error::Restore(format!("namespace {namespace} holds nothing in {}", storage.url())));
    }
    if let Some(other) = chain.conflicts.first() {
        let taken = chain.segments.iter().find(|s| overlaps(s, other)).map_or("the chain", |s| s.key.as_str());
        return Err(Error::Restore(format!(
            "the namespace mixes histories: {} and {taken} hold the same frames (two copies uploaded at the same \
             time); remove the objects of the history you do not want",
            other.key
        )));
    }
    let now_ms = crate::io::unix_ms(io.now());
    let stages = plan_stages(storage, namespace, &objects, options.point, now_ms)?;
    let plan = stages.last().expect("at least the namespace's own stage");
    let stranded = stranded_after(&objects, plan.frame_no);
    if options.point == RestorePoint::Latest
        && let Some(first) = stranded.first()
    {
        let missing = format!(
            "namespace {namespace} has a gap: frames {}..={} are in no stored object, so {} object(s) from {} on \
             cannot be applied",
            plan.frame_no + 1,
            first.first_frame_no() - 1,
            stranded.len(),
            first.key
        );
        if plan.frame_no == 0 {
            return Err(Error::Restore(format!("{missing}; nothing before the gap can be restored")));
        }
        if !options.allow_prefix {
            return Err(Error::Restore(format!(
                "{missing}; restore the prefix up to frame {} explicitly if you want it",
                plan.frame_no
            )));
        }
        tracing::warn!(namespace, "{missing}: restoring up to frame {}", plan.frame_no);
    }
    prove_continuous(storage, &stages)?;
    remove_stale_scratch_dirs(io.as_ref(), out);
    let (scratch, scratch_lock) = create_scratch_dir(io.as_ref(), out)?;
    let result = if options.dry_run {
        land(storage, &stages, io.as_ref(), &scratch)
    } else {
        rebuild(storage, &stages, io.as_ref(), &scratch, out, progress)
    };
    remove_scratch_dir(&scratch, out);
    drop(scratch_lock);
    let rebuilt = result?;
    let keys: Vec<String> = stages.iter().flat_map(|p| p.objects()).map(|o| o.key.clone()).collect();
    Ok(RestoreReport {
        frame_no: rebuilt.end,
        commit_unix_ms: rebuilt.commit_unix_ms,
        db_pages: rebuilt.db_pages,
        objects: keys.len(),
        bytes: stages.iter().map(RestorePlan::bytes).sum(),
        stranded: if options.point == RestorePoint::Latest { stranded.len() } else { 0 },
        lineage: rebuilt.lineage,
        chain: rebuilt.chain,
        keys,
        dry_run: options.dry_run,
    })
}

/// Proves, before anything is downloaded or written, that the plan's objects make one
/// history: each one's lineage is the one before's, and its chain value where it takes over
/// (its `prev_chain`, or its frame at the previous end when it overlaps) is the one the
/// previous object ends with. Read with small range requests (`remote`): headers and single
/// frame headers. Every frame's own checksum is then checked as the objects are applied.
fn prove_continuous(storage: &Storage, stages: &[RestorePlan]) -> Result<()> {
    // (object, the frame_no it is applied up to when a later stage continues from inside it)
    let mut steps: Vec<(StoredObject, u64)> = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let continued = i + 1 < stages.len();
        let objects: Vec<&StoredObject> = stage.objects().collect();
        for (j, object) in objects.iter().enumerate() {
            let last_of_continued = continued && j + 1 == objects.len();
            let up_to = if last_of_continued { stage.frame_no } else { object.end_frame_no() };
            steps.push(((*object).clone(), up_to));
        }
    }
    if steps.len() < 2 {
        return Ok(());
    }
    let inner = storage.clone();
    storage.block_on(async move {
        let mut previous: Option<(String, u32, u64, u32)> = None; // key, lineage, end, chain
        for (k, (object, up_to)) in steps.iter().enumerate() {
            if let Some((key, lineage, end, chain)) = &previous {
                let (their_lineage, their_chain) = remote::chain_at(&inner, object, *end).await?;
                if (their_lineage, their_chain) != (*lineage, *chain) {
                    return Err(Error::Restore(format!(
                        "the namespace mixes histories: {} (lineage {their_lineage:08x}) does not continue {key} \
                         (lineage {lineage:08x}) at frame {end}; restore refuses to build a database from two \
                         histories (nothing was written)",
                        object.key
                    )));
                }
            }
            if k + 1 < steps.len() {
                let (lineage, chain) = remote::chain_at(&inner, object, *up_to).await?;
                previous = Some((object.key.clone(), lineage, *up_to, chain));
            }
        }
        Ok(())
    })?
}

/// How deep branches of branches may go (a loop of origins would never end).
const BRANCH_DEPTH_MAX: usize = 64;

/// The plans a restore applies in turn: for a branch whose point lies at or before its
/// own first objects, its parent's plan up to the branch point first (and so on up the
/// ancestry), then its own; otherwise its own alone.
fn plan_stages(
    storage: &Storage,
    namespace: &str,
    objects: &[StoredObject],
    point: RestorePoint,
    now_ms: u64,
) -> Result<Vec<RestorePlan>> {
    let mut plan = history::plan(objects, point, now_ms, namespace)?;
    let mut stages = Vec::new();
    let mut origin = plan.snapshot.clone();
    let mut seen = vec![namespace.to_string()];
    while let Some(StoredObject { kind: ObjectKind::Origin { frame_no, ref parent, .. }, .. }) = origin {
        if seen.len() > BRANCH_DEPTH_MAX || seen.contains(parent) {
            return Err(Error::Restore(format!(
                "the branches of {namespace} loop or go too deep ({})",
                seen.join(" <- ")
            )));
        }
        seen.push(parent.clone());
        let parent_objects = storage.list(parent)?;
        let parent_plan =
            history::plan(&parent_objects, RestorePoint::FrameNo(frame_no), now_ms, parent).map_err(|e| {
                Error::Restore(format!(
                    "{namespace} is a branch of {parent} at frame {frame_no}, which no longer restores: {e}"
                ))
            })?;
        origin = parent_plan.snapshot.clone();
        stages.push(parent_plan);
    }
    stages.reverse();
    // The origins themselves are no objects to apply.
    for stage in stages.iter_mut().chain(std::iter::once(&mut plan)) {
        if stage.snapshot.as_ref().is_some_and(|s| matches!(s.kind, ObjectKind::Origin { .. })) {
            stage.snapshot = None;
        }
    }
    stages.push(plan);
    Ok(stages)
}

/// Segments past `frame_no` that no base reaches (after a gap): what a restore of the
/// latest state leaves out.
fn stranded_after(objects: &[StoredObject], frame_no: u64) -> Vec<StoredObject> {
    let mut stranded: Vec<StoredObject> =
        objects.iter().filter(|o| o.frames().is_some() && o.end_frame_no() > frame_no).cloned().collect();
    stranded.sort_by_key(StoredObject::first_frame_no);
    stranded
}

fn overlaps(a: &StoredObject, b: &StoredObject) -> bool {
    a.first_frame_no() <= b.end_frame_no() && b.first_frame_no() <= a.end_frame_no()
}

/// The file in a scratch directory that its restore holds locked (`flock`) while it runs.
const SCRATCH_LOCK: &str = "lock";

/// The files a restore makes in its scratch directory: nothing else there is ever removed.
const SCRATCH_FILES: [&str; 4] = [SCRATCH_LOCK, "database", "object", "part"];

fn scratch_prefix(out: &Path) -> String {
    scratch_name(out, "restoring")
}

/// What a finished restore renames its scratch directory to before removing it.
fn removing_prefix(out: &Path) -> String {
    scratch_name(out, "removing")
}

/// Removes this restore's scratch directory, renamed first to its `removing-` name: a
/// restore killed while removing it (its lock file may be gone already, and a lock-less
/// `restoring-` directory is only taken for stale after a minute) leaves a directory the
/// next restore removes at once.
fn remove_scratch_dir(scratch: &Path, out: &Path) {
    let name = scratch.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let removing = scratch.with_file_name(name.replacen(&scratch_prefix(out), &removing_prefix(out), 1));
    let target = if std::fs::rename(scratch, &removing).is_ok() { removing } else { scratch.to_path_buf() };
    let _ = std::fs::remove_dir_all(&target);
}

/// Where a scratch directory is made before its lock is held; see [`create_scratch_dir`].
fn preparing_prefix(out: &Path) -> String {
    scratch_name(out, "preparing")
}

fn scratch_name(out: &Path, state: &str) -> String {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{name}.{state}-")
}

/// A new, empty scratch directory beside `out`, this restore's alone: two restores to one
/// output never share one (the second fails on the output, not on the other's files). Its
/// `lock` is held for as long as the returned handle lives, so a later restore can tell a
/// live one from what a killed one left behind.
///
/// The directory is made under a `preparing-` name, its lock created and taken there, and
/// only then renamed to its `restoring-` name: a directory under that name always has its
/// lock held from the moment it appears. Made in place, another restore's cleanup could take
/// the lock between its creation and its locking, and remove the directory under it.
fn create_scratch_dir(io: &dyn Io, out: &Path) -> Result<(PathBuf, Box<dyn IoFile>)> {
    loop {
        let unique = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        let preparing = out.with_file_name(format!("{}{unique}", preparing_prefix(out)));
        let scratch = out.with_file_name(format!("{}{unique}", scratch_prefix(out)));
        if io.kind(&scratch).map_err(Error::io(IoAction::Read, &scratch))?.is_some() {
            continue;
        }
        match std::fs::create_dir(&preparing) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(IoAction::Create, &preparing)(e)),
        }
        let made = lock_and_rename(io, &preparing, &scratch);
        if !matches!(made, Ok(Some(_))) {
            let _ = std::fs::remove_file(preparing.join(SCRATCH_LOCK));
            let _ = std::fs::remove_dir(&preparing);
        }
        match made {
            Ok(Some(lock)) => return Ok((scratch, lock)),
            Ok(None) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The lock of the new directory `preparing`, taken, and the directory renamed to
/// `scratch`; `None` if someone else had the lock (then try another name).
fn lock_and_rename(io: &dyn Io, preparing: &Path, scratch: &Path) -> Result<Option<Box<dyn IoFile>>> {
    let lock_path = preparing.join(SCRATCH_LOCK);
    let lock = io.open(&lock_path, true).map_err(Error::io(IoAction::Create, &lock_path))?;
    if !lock.try_lock_exclusive().map_err(Error::io(IoAction::Lock, &lock_path))? {
        return Ok(None);
    }
    std::fs::rename(preparing, scratch).map_err(Error::io(IoAction::Rename, preparing))?;
    Ok(Some(lock))
}

/// Removes scratch directories of earlier restores to `out` that were killed (`kill -9`, a
/// power cut): each can be as large as the database. One is stale when nobody holds its
/// lock; one without a lock file yet is left alone unless it is older than a minute (its
/// restore may be between `mkdir` and creating the lock); a `removing-` one always is (its
/// restore was done with it). Only the files a restore makes are removed; a directory
/// holding anything else is kept, with a warning. Best effort: what cannot be removed stays,
/// and the restore goes on.
fn remove_stale_scratch_dirs(io: &dyn Io, out: &Path) {
    let (restoring, preparing, removing) = (scratch_prefix(out), preparing_prefix(out), removing_prefix(out));
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_preparing = name.starts_with(&preparing);
        let is_removing = name.starts_with(&removing);
        if !(is_preparing || is_removing || name.starts_with(&restoring))
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let dir = entry.path();
        let lock_path = dir.join(SCRATCH_LOCK);
        let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        let old = age.is_some_and(|age| age >= std::time::Duration::from_secs(60));
        if is_preparing && !old {
            continue; // its restore may not have taken its lock yet: not even a look at it
        }
        // Held (when there is a lock file) until the directory is gone, so no restore takes it meanwhile.
        let _held: Option<Box<dyn IoFile>> = match io.open_read_only(&lock_path) {
            _ if is_removing => None,
            Ok(lock) => match lock.try_lock_exclusive() {
                Ok(true) => Some(lock),
                _ => continue, // a live restore
            },
            // No lock file: a preparing directory between `mkdir` and creating it, or one left
            // by an older version that made its lock in place.
            Err(_) if old => None,
            Err(_) => continue,
        };
        let strangers = std::fs::read_dir(&dir)
            .map(|files| files.flatten().filter(|f| !SCRATCH_FILES.iter().any(|n| f.file_name() == *n)).count())
            .unwrap_or(1);
        if strangers > 0 {
            tracing::warn!(dir = %dir.display(), "kept a stale restore directory: it holds files restore did not make");
            continue;
        }
        // Renamed to its `removing-` name first, its lock still held: a restore killed while
        // removing it (its lock file may go first) leaves what the next one removes at once,
        // not a lock-less `restoring-` directory that waits a minute.
        let dir = match name.strip_prefix(if is_preparing { &preparing } else { &restoring }) {
            Some(unique) if !is_removing => {
                let renamed = dir.with_file_name(format!("{removing}{unique}"));
                if std::fs::rename(&dir, &renamed).is_ok() { renamed } else { dir }
            }
            _ => dir,
        };
        for name in SCRATCH_FILES {
            let _ = std::fs::remove_file(dir.join(name));
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the scratch directory of a restore that was killed")
            }
            Err(e) => tracing::warn!(dir = %dir.display(), "could not remove a stale restore directory: {e}"),
        }
    }
}

/// What the objects applied so far make: the history, and where its chain is.
struct Rebuilt {
    db_pages: u32,
    /// The highest page number any object applied so far wrote (a snapshot writes all of
    /// its pages). Every page of a database was written at some point of its history, so
    /// a size past it was forged, never committed.
    pages_present: u32,
    lineage: u32,
    /// frame_no and chain value of the last frame applied.
    end: u64,
    chain: u32,
    /// When the commit at `end` was made, if recorded.
    commit_unix_ms: Option<u64>,
    /// The key of the object that brought the database there, for messages.
    last_key: Option<String>,
}

fn rebuild(
    storage: &Storage,
    stages: &[RestorePlan],
    io: &dyn Io,
    scratch: &Path,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Rebuilt> {
    let db_path = scratch.join("database");
    let db: Arc<dyn IoFile> = Arc::from(io.open(&db_path, true).map_err(Error::io(IoAction::Create, &db_path))?);
    let total = stages.iter().map(RestorePlan::bytes).sum();
    let mut done = 0u64;
    let mut rebuilt = Rebuilt::empty();
    let steps = stages.iter().flat_map(|plan| plan.objects().map(move |object| (plan, object)));
    for (plan, object) in steps {
        if let ObjectKind::Snapshot { .. } = object.kind {
            // Streamed straight into the database file, checked as it comes.
            let header = download_snapshot(storage, object, &db, &db_path, &mut |n| progress(done + n, total))?;
            done += object.size;
            progress(done, total);
            apply_snapshot(object, &header, &mut rebuilt)?;
            continue;
        }
        let object_path = scratch.join("object");
        download(storage, object, &object_path, &mut |n| progress(done + n, total))?;
        done += object.size;
        progress(done, total);
        match object.kind {
            ObjectKind::Pack { .. } => {
                let reached = rebuilt.last_key.is_some().then_some(rebuilt.end);
                for inner in unpack(io, object, &object_path, plan, &scratch.join("part"), reached)? {
                    let (part, path) = inner?;
                    if landed_before(&rebuilt, &part) {
                        break; // the point was inside an earlier segment of the pack
                    }
                    apply_object(io, &part, &path, db.as_ref(), &db_path, plan, &mut rebuilt)?;
                }
            }
            _ => apply_object(io, object, &object_path, db.as_ref(), &db_path, plan, &mut rebuilt)?,
        }
        io.remove_file(&object_path).map_err(Error::io(IoAction::Remove, &object_path))?;
    }
    refuse_before_first_commit(&rebuilt, stages.last().expect("a stage"))?;
    let db_pages = rebuilt.db_pages;
    check_size(&rebuilt)?;
    db.set_len(db_pages as u64 * PAGE_SIZE as u64).map_err(Error::io(IoAction::Truncate, &db_path))?;
    if db_pages > 0 {
        let mark = CheckpointMark { frame_no: rebuilt.end, db_pages, lineage: rebuilt.lineage, chain: rebuilt.chain };
        let bytes = mark
            .encode()
            .ok_or_else(|| Error::Restore(format!("frame_no {} is past what a checkpoint mark holds", rebuilt.end)))?;
        db.write_all_at(&bytes, DB_HEADER_MARK_OFFSET).map_err(Error::io(IoAction::Write, &db_path))?;
    }
    db.sync_data().map_err(Error::io(IoAction::Sync, &db_path))?;
    if db_pages > 0 {
        // Stamped for its mark (`file_stamp`), or its first open would take it for a file
        // changed outside and log it whole again.
        let mark = &mut [0u8; crate::format::DB_HEADER_MARK_SIZE];
        db.read_exact_at(mark, DB_HEADER_MARK_OFFSET).map_err(Error::io(IoAction::Read, &db_path))?;
        let floor_ms = rebuilt.commit_unix_ms.unwrap_or(0);
        crate::file_stamp::stamp(io, &db_path, mark, floor_ms).map_err(Error::io(IoAction::SetTime, &db_path))?;
    }
    drop(db);
    // A hard link, not a rename: it fails rather than replace a file that appeared at `out`
    // since the check at the start. The scratch directory (and its name) goes afterwards.
    std::fs::hard_link(&db_path, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Restore(format!(
            "{} appeared while this restore ran (another restore to the same path?); it was left as it is",
            out.display()
        )),
        _ => Error::io(IoAction::Link, out)(e),
    })?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    io.sync_dir(dir).map_err(Error::io(IoAction::Sync, dir))?;
    Ok(rebuilt)
}

/// The segments of a downloaded pack that a plan needs (up to the first one reaching past
/// its frame_no; none that ends at or before `reached`, the frame_no the restore is at
/// already: a pack taken after a base inside it holds segments from before the base), each
/// extracted in turn to `part` as the iterator goes: (a description of the segment as an
/// object, for the checks and messages of [`apply_object`], and `part`).
fn unpack<'a>(
    io: &dyn Io,
    object: &'a StoredObject,
    path: &Path,
    plan: &'a RestorePlan,
    part: &'a Path,
    reached: Option<u64>,
) -> Result<impl Iterator<Item = Result<(StoredObject, PathBuf)>> + 'a> {
    let pack = PackFile::open(io, path, &object.key)?;
    let (start, end) = object.frames().expect("a pack holds frames");
    if (pack.header.start_frame_no.get(), pack.header.end_frame_no.get()) != (start, end) {
        let reason = format!(
            "holds frames {}..={}, its name says {start}..={end}",
            pack.header.start_frame_no.get(),
            pack.header.end_frame_no.get()
        );
        return Err(Error::corrupt(&object.key, reason));
    }
    let needed = pack.entries.iter().take_while(|e| e.start_frame_no.get() <= plan.frame_no).count();
    let first =
        pack.entries[..needed].iter().take_while(|e| reached.is_some_and(|r| e.end_frame_no.get() <= r)).count();
    Ok((first..needed).map(move |i| {
        pack.extract(i, part)?;
        let entry = &pack.entries[i];
        let inner = StoredObject {
            key: format!("{} (segment {} of the pack)", object.key, i + 1),
            size: entry.len.get(),
            kind: ObjectKind::Segment {
                start_frame_no: entry.start_frame_no.get(),
                end_frame_no: entry.end_frame_no.get(),
                commit_times: None,
            },
        };
        Ok((inner, part.to_path_buf()))
    }))
}

/// Did the restore land before `part` starts (inside an earlier segment of the same pack,
/// for a point in time)? Then nothing of it or after it belongs to the state asked for.
fn landed_before(rebuilt: &Rebuilt, part: &StoredObject) -> bool {
    rebuilt.last_key.is_some() && part.first_frame_no() > rebuilt.end + 1
}

/// A dry run: where the plan lands, building nothing. Only the last segment is downloaded
/// (into the scratch directory, and checked), and only when the point may lie inside it;
/// the other objects are taken at their keys' word, which the real restore then checks.
fn land(storage: &Storage, stages: &[RestorePlan], io: &dyn Io, scratch: &Path) -> Result<Rebuilt> {
    let mut rebuilt = Rebuilt::empty();
    for plan in stages {
        land_stage(storage, plan, io, scratch, &mut rebuilt)?;
    }
    refuse_before_first_commit(&rebuilt, stages.last().expect("a stage"))?;
    Ok(rebuilt)
}

/// [`land`] for one stage.
fn land_stage(storage: &Storage, plan: &RestorePlan, io: &dyn Io, scratch: &Path, rebuilt: &mut Rebuilt) -> Result<()> {
    let objects: Vec<&StoredObject> = plan.objects().collect();
    let ends_inside = |object: &StoredObject| object.end_frame_no() > plan.frame_no || plan.time.is_some();
    let mut ended_whole: Option<StoredObject> = None;
    for (i, object) in objects.iter().enumerate() {
        let holds_frames = object.frames().is_some();
        let inside = i + 1 == objects.len() && holds_frames && ends_inside(object);
        if !inside {
            rebuilt.end = object.end_frame_no();
            rebuilt.commit_unix_ms = object.commit_times().map(|t| t.last);
            rebuilt.last_key = Some(object.key.clone());
            ended_whole = Some((*object).clone());
            continue;
        }
        let object_path = scratch.join("object");
        download(storage, object, &object_path, &mut |_| {})?;
        let parts: Vec<Result<(StoredObject, PathBuf)>> = match object.kind {
            ObjectKind::Pack { .. } => {
                let reached = rebuilt.last_key.is_some().then_some(rebuilt.end);
                unpack(io, object, &object_path, plan, &scratch.join("part"), reached)?.collect()
            }
            _ => vec![Ok(((*object).clone(), object_path.clone()))],
        };
        for part in parts {
            let (part, path) = part?;
            if landed_before(rebuilt, &part) {
                break;
            }
            let segment = Segment::recover(io, &path, true).map_err(|e| Error::corrupt(&part.key, e.to_string()))?;
            if let Some(landing) = landing_in(&segment, plan, rebuilt)? {
                rebuilt.end = landing.frame_no;
                rebuilt.lineage = segment.lineage;
                rebuilt.chain = segment.chain_at(landing.frame_no)?;
                rebuilt.db_pages = landing.size_after;
                rebuilt.commit_unix_ms = Some(landing.unix_ms).filter(|&t| t != 0);
                rebuilt.last_key = Some(part.key.clone());
                ended_whole = None;
            }
        }
    }
    if let Some(object) = ended_whole {
        // The stage ends where a whole object ends: its lineage and chain value, read from
        // its headers (small range requests).
        let inner = storage.clone();
        let (lineage, chain) =
            storage.block_on(async move { crate::storage::remote::end(&inner, &object).await })??;
        (rebuilt.lineage, rebuilt.chain) = (lineage, chain);
    }
    Ok(())
}

/// A point before the first commit of a history that starts from the empty database (among
/// its first transaction's frames, before their commit frame) has nothing to restore: refused,
/// naming the window as every refused point does.
fn refuse_before_first_commit(rebuilt: &Rebuilt, plan: &RestorePlan) -> Result<()> {
    if rebuilt.end > 0 {
        return Ok(());
    }
    let point = match plan.time {
        Some(t) => layout::format_unix_ms(t),
        None => format!("frame_no {}", plan.frame_no),
    };
    Err(Error::Restore(format!(
        "{point} is before the first commit of the namespace: nothing to restore; {}",
        plan.window.describe()
    )))
}

impl Rebuilt {
    fn empty() -> Rebuilt {
        Rebuilt { db_pages: 0, pages_present: 0, lineage: 0, end: 0, chain: 0, commit_unix_ms: None, last_key: None }
    }
}

/// Checks one downloaded object, alone and as the continuation of what `rebuilt` holds,
/// writes its pages, and moves `rebuilt` to its end, or, for the plan's last segment, to
/// the commit the plan lands on inside it.
fn apply_object(
    io: &dyn Io,
    object: &StoredObject,
    path: &Path,
    db: &dyn IoFile,
    db_path: &Path,
    plan: &RestorePlan,
    rebuilt: &mut Rebuilt,
) -> Result<()> {
    match object.kind {
        ObjectKind::Snapshot { .. } | ObjectKind::Pack { .. } | ObjectKind::Origin { .. } => Err(Error::corrupt(
            &object.key,
            "applied as it streams (a snapshot), through its parts (a pack) or its parent (an origin)",
        )),
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
            check_continues(rebuilt, object, &segment)?;
            let Some(landing) = landing_in(&segment, plan, rebuilt)? else {
                return Ok(()); // the point lies before this segment's first new commit
            };
            let mut page = vec![0u8; PAGE_SIZE];
            let mut pages_present = rebuilt.pages_present;
            for (page_no, position) in segment.pages_at(landing.frame_no) {
                segment.read_page(position, &mut page)?;
                let offset = (page_no as u64 - 1) * PAGE_SIZE as u64;
                db.write_all_at(&page, offset).map_err(Error::io(IoAction::Write, db_path))?;
                pages_present = pages_present.max(page_no);
            }
            *rebuilt = Rebuilt {
                db_pages: landing.size_after,
                pages_present,
                lineage: segment.lineage,
                end: landing.frame_no,
                chain: segment.chain_at(landing.frame_no)?,
                commit_unix_ms: Some(landing.unix_ms).filter(|&t| t != 0),
                last_key: Some(object.key.clone()),
            };
            Ok(())
        }
    }
}

/// The commit of `segment` the restore goes to: its last, or, when the plan's point lies
/// inside it, the last one at or before the plan's frame_no (and time). `None` when no
/// commit past what `rebuilt` holds is: the point lies before the segment's first commit.
fn landing_in(segment: &Segment, plan: &RestorePlan, rebuilt: &Rebuilt) -> Result<Option<CommitInfo>> {
    let (last, last_time) = (segment.last_committed_frame_no(), segment.committed_unix_ms());
    let in_time = |unix_ms: u64| plan.time.is_none_or(|t| unix_ms <= t);
    if last <= plan.frame_no && in_time(last_time) {
        return Ok(Some(CommitInfo { frame_no: last, size_after: segment.committed_size_after(), unix_ms: last_time }));
    }
    let found = segment.commits()?.into_iter().take_while(|c| c.frame_no <= plan.frame_no && in_time(c.unix_ms)).last();
    Ok(found.filter(|c| rebuilt.last_key.is_none() || c.frame_no > rebuilt.end))
}

/// Moves `rebuilt` to the state a checked snapshot gives, once its frame_no is the one its
/// key names: the chain's first object, it sets the history the rest must continue.
fn apply_snapshot(object: &StoredObject, header: &SnapshotHeader, rebuilt: &mut Rebuilt) -> Result<()> {
    let frame_no = object.end_frame_no();
    if header.frame_no.get() != frame_no {
        let reason = format!("holds frame_no {}, its name says {frame_no}", header.frame_no.get());
        return Err(Error::corrupt(&object.key, reason));
    }
    *rebuilt = Rebuilt {
        db_pages: header.db_pages.get(),
        pages_present: header.db_pages.get(),
        lineage: header.lineage.get(),
        end: frame_no,
        chain: header.chain.get(),
        commit_unix_ms: Some(header.commit_unix_ms.get()).filter(|&t| t != 0),
        last_key: Some(object.key.clone()),
    };
    Ok(())
}

/// Streams a snapshot object into `db` from page 1, checking it as it comes
/// ([`snapshot::SnapshotSink`]), reporting bytes received.
fn download_snapshot(
    storage: &Storage,
    object: &StoredObject,
    db: &Arc<dyn IoFile>,
    db_path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<SnapshotHeader> {
    let received = Arc::new(AtomicU64::new(0));
    let task = {
        let (storage, key, db, db_path, received) =
            (storage.clone(), object.key.clone(), db.clone(), db_path.to_path_buf(), received.clone());
        async move {
            let location = ObjectPath::parse(&key).map_err(|e| storage.error(&key, e))?;
            let result = storage.store().get(&location).await.map_err(|e| gone_or(&storage, &key, e))?;
            let mut sink = snapshot::SnapshotSink::new(db.as_ref(), &db_path, &key);
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| storage.error(&format!("downloading {key}"), e))?;
                sink.feed(&chunk)?;
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            sink.finish()
        }
    };
    storage.block_on_with_progress(task, &mut || progress(received.load(Ordering::Relaxed)))?
}

/// A vanished object is `ObjectGone` (restore lists again); anything else a storage error.
fn gone_or(storage: &Storage, key: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => {
            Error::ObjectGone { url: storage.url().to_string(), key: key.to_string() }
        }
        e => storage.error(&format!("downloading {key}"), e),
    }
}

/// Refuses a database size that the pages applied cannot account for: a size field (a
/// segment's last commit frame, checksummed like the rest, so only a forger or a bug can set
/// it) claiming pages that no object holds would otherwise make a huge sparse file.
fn check_size(rebuilt: &Rebuilt) -> Result<()> {
    if rebuilt.db_pages <= rebuilt.pages_present {
        return Ok(());
    }
    Err(Error::Restore(format!(
        "{} says the database has {} pages, but the objects of the chain hold pages up to {} only: its size is \
         forged or damaged; nothing was restored",
        rebuilt.last_key.as_deref().unwrap_or("the chain"),
        rebuilt.db_pages,
        rebuilt.pages_present
    )))
}

/// Refuses a segment that does not continue the history restored so far: another lineage,
/// or a chain value at the frame where it takes over that differs from the one reached. The
/// first object of a chain without a snapshot starts the history.
fn check_continues(rebuilt: &Rebuilt, object: &StoredObject, segment: &Segment) -> Result<()> {
    let Some(previous) = &rebuilt.last_key else { return Ok(()) };
    let chain_there = segment.chain_at(rebuilt.end)?;
    if segment.lineage == rebuilt.lineage && chain_there == rebuilt.chain {
        return Ok(());
    }
    Err(Error::Restore(format!(
        "the namespace mixes histories: {} (lineage {:08x}) does not continue {previous} (lineage {:08x}) at frame {}; \
         restore refuses to build a database from two histories",
        object.key, segment.lineage, rebuilt.lineage, rebuilt.end
    )))
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

/// Streams the object at `key` into a new file at `path`.
pub(crate) async fn download_to(storage: &Storage, key: &str, path: &Path) -> Result<()> {
    download_async(storage, key, path, &AtomicU64::new(0)).await
}

async fn download_async(storage: &Storage, key: &str, path: &Path, received: &AtomicU64) -> Result<()> {
    use std::io::Write;
    let location = ObjectPath::parse(key).map_err(|e| storage.error(key, e))?;
    let result = storage.store().get(&location).await.map_err(|e| gone_or(storage, key, e))?;
    let mut file = std::fs::File::create(path).map_err(Error::io(IoAction::Create, path))?;
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| storage.error(&format!("downloading {key}"), e))?;
        file.write_all(&chunk).map_err(Error::io(IoAction::Write, path))?;
        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cleanup of a killed restore's directory is itself killed: what it leaves is a
    /// `removing-` directory (renamed before its files went), removed by the next restore at
    /// once. Before, it was removed in place: killed after its lock file went, it was a
    /// lock-less `restoring-` directory every restore skipped for a minute.
    #[test]
    fn a_stale_directory_is_renamed_before_its_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.db");
        let io = StdIo::shared();
        let (scratch, lock) = create_scratch_dir(io.as_ref(), &out).unwrap();
        drop(lock); // its restore was killed
        // A file that cannot be removed as one (a directory under a restore's file name)
        // stops the cleanup after its lock file went, as a kill there would.
        std::fs::create_dir(scratch.join("part")).unwrap();
        std::fs::write(scratch.join("part").join("x"), b"").unwrap();
        remove_stale_scratch_dirs(io.as_ref(), &out);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 1);
        assert!(left[0].starts_with(".out.db.removing-"), "{left:?}");
    }

    /// A restore killed while removing its scratch directory: the directory, renamed to its
    /// `removing-` name first, is removed by the next restore at once (removed in place, its
    /// lock file could go first, and a lock-less `restoring-` directory waits a minute).
    #[test]
    fn a_scratch_directory_killed_while_being_removed_goes_at_the_next_restore() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.db");
        let io = StdIo::shared();
        let (scratch, lock) = create_scratch_dir(io.as_ref(), &out).unwrap();
        std::fs::write(scratch.join("database"), b"pages").unwrap();
        let removing = dir.path().join(".out.db.removing-1-00000000");
        std::fs::rename(&scratch, &removing).unwrap();
        std::fs::remove_file(removing.join(SCRATCH_LOCK)).unwrap(); // as far as it got
        drop(lock);
        remove_stale_scratch_dirs(io.as_ref(), &out);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is left behind");
        // And a whole restore's own removal leaves nothing either.
        let (scratch, lock) = create_scratch_dir(io.as_ref(), &out).unwrap();
        std::fs::write(scratch.join("database"), b"pages").unwrap();
        remove_scratch_dir(&scratch, &out);
        drop(lock);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The race behind a flaky `concurrent_restores_to_one_path_never_share_scratch_space`:
    /// a cleanup that found a new scratch directory's lock file before its restore had locked
    /// it took it for stale and removed the directory under the restore.
    #[test]
    fn a_cleanup_never_removes_a_scratch_directory_being_made() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.db");
        let io = StdIo::shared();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    remove_stale_scratch_dirs(io.as_ref(), &out);
                }
            });
            let makers: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..400 {
                            let (scratch, lock) = create_scratch_dir(io.as_ref(), &out).unwrap();
                            let database = scratch.join("database");
                            io.open(&database, true).unwrap_or_else(|e| panic!("{}: {e}", database.display()));
                            std::fs::remove_dir_all(&scratch).unwrap();
                            drop(lock);
                        }
                    })
                })
                .collect();
            let results: Vec<_> = makers.into_iter().map(|maker| maker.join()).collect();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            for result in results {
                result.unwrap();
            }
        });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is left behind");
    }
}
