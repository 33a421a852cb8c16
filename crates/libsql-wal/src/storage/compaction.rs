//! Compaction and garbage collection of a namespace's stored history.
//!
//! Levels (FORMAT.md, *Compaction*): level 0 is the segment objects the uploader writes;
//! level 1 is packs, runs of consecutive level-0 segments copied byte for byte into one
//! object (fewer, larger objects; every commit kept); snapshots are whole databases at a
//! commit, so that restoring the latest state reads about the database's size, not its
//! history. One step ([`compact`]):
//!
//! 1. **Snapshot** the latest state when the history after the newest snapshot outweighs
//!    `snapshot_ratio` × the database (and `snapshot_bytes_min`): the state is rebuilt from
//!    storage alone (a restore into a scratch directory) and uploaded.
//! 2. **Collect garbage**: every object that no restorable point of the retention window,
//!    no branch and not the latest state needs is deleted (see [`needed`]). Only objects the
//!    listing shows are counted as replacements, so what replaces a deleted object is always
//!    durable first.
//! 3. **Pack** the level-0 segments that are kept, in groups of `pack_bytes_min` to
//!    `pack_bytes_max`; the segments a pack holds are deleted by the next collection (this
//!    step's own, which runs again after packing).
//!
//! Every write comes before the deletes it allows, and each object appears whole or not at
//! all, so a step killed anywhere leaves a namespace that restores exactly; the next step
//! finishes the work. Compaction runs in the process that ships a namespace, in the upload
//! task's wake (`Durability`, never on the commit path, one step at a time per process), and
//! offline as `libsql-wal storage compact URL NS`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, IoAction, Result};
use crate::format::{CheckpointMark, DB_HEADER_MARK_OFFSET, DB_HEADER_MARK_SIZE};
use crate::io::StdIo;
use crate::segment::Segment;
use crate::storage::history::{self, RestorePoint};
use crate::storage::layout::{self, CommitTimes, ObjectKind, StoredObject};
use crate::storage::{Storage, pack, snapshot};

/// The retention window when none is configured: a week of commits restore exactly.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How compaction and garbage collection shape a namespace.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Every commit of the last `retention` restores exactly (a promise: what it needs is
    /// never deleted; older history goes at the next compaction step, not at a deadline).
    pub retention: Duration,
    /// Level-0 segments are packed once this many bytes of consecutive ones are kept...
    pub pack_bytes_min: u64,
    /// ...into packs of at most this many bytes.
    pub pack_bytes_max: u64,
    /// A snapshot of the latest state is written when the history after the newest one
    /// exceeds this fraction of the database's size...
    pub snapshot_ratio: f64,
    /// ...and at least this many bytes.
    pub snapshot_bytes_min: u64,
    /// Online: a step runs after this many bytes were uploaded since the last one (so an
    /// idle namespace costs no request at all).
    pub online_after_bytes: u64,
    /// Whether the process that ships a namespace compacts it.
    pub online: bool,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            retention: DEFAULT_RETENTION,
            pack_bytes_min: 32 << 20,
            pack_bytes_max: 256 << 20,
            snapshot_ratio: 0.25,
            snapshot_bytes_min: 4 << 20,
            online_after_bytes: 16 << 20,
            online: true,
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, Default)]
pub struct CompactionReport {
    pub snapshots: Vec<String>,
    pub packs: Vec<String>,
    pub deleted: Vec<String>,
    pub deleted_bytes: u64,
    /// Deletes that failed, with the reason: reported, never ignored (the objects stay,
    /// which costs space only; the next step tries again).
    pub delete_failures: Vec<String>,
    /// Branches of this namespace whose points were kept restorable.
    pub branches: usize,
}

/// One compaction step of `namespace`, blocking (the CLI's `storage compact`).
pub fn compact(storage: &Storage, namespace: &str, config: &CompactionConfig) -> Result<CompactionReport> {
    layout::validate_namespace(namespace)?;
    let (storage, namespace, config) = (storage.clone(), namespace.to_string(), config.clone());
    let inner = storage.clone();
    storage.block_on(async move { compact_async(&inner, &namespace, &config).await })?
}

/// One compaction step (see the module documentation).
pub(crate) async fn compact_async(
    storage: &Storage,
    namespace: &str,
    config: &CompactionConfig,
) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    let objects = storage.list_async(namespace).await?;
    if objects.is_empty() {
        return Ok(report);
    }
    refuse_mixed_histories(&objects, namespace)?;
    if let Some(key) = snapshot_if_due(storage, namespace, &objects, config).await? {
        report.snapshots.push(key);
    }
    collect(storage, namespace, config, &mut report).await?;
    let objects = storage.list_async(namespace).await?;
    let branches = branch_points(storage, namespace).await?;
    let keep = needed(&objects, &branches, window_start(config));
    for group in pack_groups(&objects, &keep, config) {
        report.packs.push(write_pack(storage, namespace, &group).await?);
    }
    if !report.packs.is_empty() {
        collect(storage, namespace, config, &mut report).await?;
    }
    Ok(report)
}

/// Runs one step for `namespace` in the background, after uploads (see
/// [`CompactionConfig::online_after_bytes`]): one step at a time in the whole process, so
/// compaction takes at most one core's worth of the storage runtime and a bounded number of
/// requests, and never delays a commit or an upload.
pub(crate) fn spawn_online(storage: Storage, namespace: String, config: CompactionConfig) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let inner = storage.clone();
    // Never stopped: a step runs to its end even if the log that started it closes.
    let _ = storage.spawn(async move {
        let _turn = ONE_AT_A_TIME.lock().await;
        match compact_async(&inner, &namespace, &config).await {
            Ok(report) => {
                for failure in &report.delete_failures {
                    tracing::warn!(namespace = %namespace, "compaction: a delete failed: {failure}");
                }
                if !(report.snapshots.is_empty() && report.packs.is_empty() && report.deleted.is_empty()) {
                    tracing::info!(
                        namespace = %namespace,
                        snapshots = report.snapshots.len(),
                        packs = report.packs.len(),
                        deleted = report.deleted.len(),
                        "compaction step done"
                    );
                }
            }
            Err(e) => tracing::warn!(namespace = %namespace, "compaction step failed (the next one retries): {e}"),
        }
    });
}

/// The start of the retention window, in ms since the epoch.
fn window_start(config: &CompactionConfig) -> u64 {
    let now = crate::io::unix_ms(std::time::SystemTime::now());
    now.saturating_sub(config.retention.as_millis() as u64)
}

/// Compaction never touches a namespace whose objects mix two histories: which objects
/// are garbage depends on which history is the namespace's, and only a person can say.
fn refuse_mixed_histories(objects: &[StoredObject], namespace: &str) -> Result<()> {
    let chain = layout::chain(objects);
    match chain.conflicts.first() {
        None => Ok(()),
        Some(other) => Err(Error::Restore(format!(
            "namespace {namespace} mixes histories ({} competes with the chain): not compacted; remove the objects \
             of the history you do not want",
            other.key
        ))),
    }
}

/// Lists, works out what is garbage, deletes it.
async fn collect(
    storage: &Storage,
    namespace: &str,
    config: &CompactionConfig,
    report: &mut CompactionReport,
) -> Result<()> {
    let objects = storage.list_async(namespace).await?;
    let branches = branch_points(storage, namespace).await?;
    report.branches = branches.len();
    let keep = needed(&objects, &branches, window_start(config));
    for object in objects.iter().filter(|o| !keep.contains(&o.key)) {
        match storage.delete(&object.key).await {
            Ok(()) => {
                tracing::info!(key = %object.key, "garbage collection deleted an object no restorable point needs");
                report.deleted.push(object.key.clone());
                report.deleted_bytes += object.size;
            }
            Err(e) => {
                tracing::warn!(key = %object.key, "garbage collection could not delete an object: {e}");
                report.delete_failures.push(format!("{}: {e}", object.key));
            }
        }
    }
    Ok(())
}

/// The frame_nos at which branches of `namespace` start (they need those points kept).
pub(crate) async fn branch_points(storage: &Storage, namespace: &str) -> Result<Vec<u64>> {
    let keys = storage.list_keys(&format!("{namespace}/branches")).await?;
    Ok(keys.iter().filter_map(|k| layout::parse_branch_marker(namespace, k)).map(|(frame_no, _)| frame_no).collect())
}

/// The keys of the objects some restorable point needs: the latest state's plan; the plan
/// of the last commit at or before `window_start` (the oldest point the window promises)
/// and every object of the run from its base to the end; the plan of each branch point.
/// Of the snapshots inside the window, points restore from the older base and the segments
/// (kept anyway), so only some are kept, as the bases later windows will start from: one
/// whenever at least its own size of history lies since the last one kept (so the stored
/// snapshots weigh at most about the history they stand for, and a window's base is at most
/// about a database's worth of history before its start). Everything else (segments older
/// than the window's base, segments a pack holds, the snapshots in between) is garbage.
pub(crate) fn needed(objects: &[StoredObject], branch_points: &[u64], window_start: u64) -> BTreeSet<String> {
    let window = history::window(objects);
    let mut keep = BTreeSet::new();
    if window.first().is_none() {
        // Nothing restorable (objects after a gap only): not ours to judge, all kept.
        return objects.iter().map(|o| o.key.clone()).collect();
    }
    let plan_keys = |point: RestorePoint, keep: &mut BTreeSet<String>| -> Option<u64> {
        let plan = history::plan(objects, point, u64::MAX, "").ok()?;
        keep.extend(plan.objects().map(|o| o.key.clone()));
        Some(plan.snapshot.as_ref().map_or(0, StoredObject::end_frame_no))
    };
    plan_keys(RestorePoint::Latest, &mut keep);
    // The oldest promised point: the last commit at or before the window's start, or the
    // window's first point when it starts later.
    // When that commit lies inside an object (its commits straddle the time), the base must
    // come before the object: the point is somewhere in it.
    let oldest = match history::plan(objects, RestorePoint::Time(window_start), u64::MAX, "") {
        Ok(plan) => match plan.objects().last() {
            Some(last) if last.frames().is_some() && last.commit_times().is_some_and(|t| t.last > window_start) => {
                last.first_frame_no() - 1
            }
            _ => plan.frame_no,
        },
        Err(_) => window.first().map_or(0, |s| s.first_frame_no),
    };
    let base = plan_keys(RestorePoint::FrameNo(oldest.max(1)), &mut keep).unwrap_or(0);
    // Every segment and pack from that base on, as the runs take them.
    for object in objects {
        if let Some((start, end)) = object.frames()
            && end > base
            && !covered_by_pack(objects, object)
            && reachable_from(objects, base, start)
        {
            keep.insert(object.key.clone());
        }
    }
    keep_future_bases(objects, base, &mut keep);
    for &point in branch_points {
        plan_keys(RestorePoint::FrameNo(point), &mut keep);
    }
    // A branch's origin stays as long as the branch does: `storage rm` removes it, and with
    // it the parent's marker (which only the origin names).
    keep.extend(objects.iter().filter(|o| matches!(o.kind, ObjectKind::Origin { .. })).map(|o| o.key.clone()));
    keep
}

/// Keeps the snapshots after `base` that later windows will start from: each one with at
/// least its own size of kept history (segments and packs) since the last base kept.
fn keep_future_bases(objects: &[StoredObject], base: u64, keep: &mut BTreeSet<String>) {
    let mut snapshots: Vec<&StoredObject> =
        objects.iter().filter(|o| matches!(o.kind, ObjectKind::Snapshot { .. }) && o.end_frame_no() > base).collect();
    snapshots.sort_by_key(|o| o.end_frame_no());
    let mut last_kept = base;
    for snapshot in snapshots {
        let frame_no = snapshot.end_frame_no();
        let history: u64 = objects
            .iter()
            .filter(|o| keep.contains(&o.key))
            .filter(|o| o.frames().is_some_and(|(start, end)| start > last_kept && end <= frame_no))
            .map(|o| o.size)
            .sum();
        if history >= snapshot.size {
            keep.insert(snapshot.key.clone());
            last_kept = frame_no;
        }
    }
}

/// Is this level-0 segment held by a pack (which replaces it)?
fn covered_by_pack(objects: &[StoredObject], object: &StoredObject) -> bool {
    let (ObjectKind::Segment { .. }, Some((start, end))) = (&object.kind, object.frames()) else { return false };
    objects
        .iter()
        .any(|o| matches!(o.kind, ObjectKind::Pack { .. }) && o.frames().is_some_and(|(s, e)| s <= start && end <= e))
}

/// Can a restore from the base at `base` reach frame `start` through contiguous objects?
/// (Objects past a gap are not restorable from it; a later base may still reach them.)
fn reachable_from(objects: &[StoredObject], base: u64, start: u64) -> bool {
    let mut ranges: Vec<(u64, u64)> = objects.iter().filter_map(StoredObject::frames).collect();
    ranges.sort();
    let mut end = base;
    for (s, e) in ranges {
        if start <= end + 1 {
            return true;
        }
        if s <= end + 1 {
            end = end.max(e);
        }
    }
    start <= end + 1
}

/// Level-0 segments to pack: consecutive kept ones with recorded commit times, cut into
/// groups of at most `pack_bytes_max` bytes; a group under `pack_bytes_min` waits.
fn pack_groups(objects: &[StoredObject], keep: &BTreeSet<String>, config: &CompactionConfig) -> Vec<Vec<StoredObject>> {
    let mut segments: Vec<&StoredObject> = objects
        .iter()
        .filter(|o| matches!(o.kind, ObjectKind::Segment { commit_times: Some(_), .. }))
        .filter(|o| keep.contains(&o.key) && !covered_by_pack(objects, o))
        .collect();
    segments.sort_by_key(|o| o.frames());
    let mut groups: Vec<Vec<StoredObject>> = Vec::new();
    let mut group: Vec<StoredObject> = Vec::new();
    let mut bytes = 0u64;
    let flush = |group: &mut Vec<StoredObject>, bytes: &mut u64, groups: &mut Vec<Vec<StoredObject>>| {
        if *bytes >= config.pack_bytes_min && group.len() > 1 {
            groups.push(std::mem::take(group));
        }
        group.clear();
        *bytes = 0;
    };
    for segment in segments {
        let follows = group.last().is_some_and(|last| last.end_frame_no() + 1 == segment.first_frame_no());
        if !follows || bytes + segment.size > config.pack_bytes_max {
            flush(&mut group, &mut bytes, &mut groups);
        }
        bytes += segment.size;
        group.push(segment.clone());
    }
    flush(&mut group, &mut bytes, &mut groups);
    groups
}

/// Downloads, checks and packs `group`: the segments must be sealed, whole and one
/// history (each continuing the chain value where the one before ends).
async fn write_pack(storage: &Storage, namespace: &str, group: &[StoredObject]) -> Result<String> {
    let scratch = crate::storage::TempScratch::new("compact")?;
    let io = StdIo::shared();
    let mut paths = Vec::with_capacity(group.len());
    let mut previous: Option<(u32, u64, u32)> = None; // lineage, end frame_no, end chain
    let mut lineage = 0;
    for (i, object) in group.iter().enumerate() {
        let path = scratch.dir.join(format!("part-{i}"));
        crate::storage::restore::download_to(storage, &object.key, &path).await?;
        let check = {
            let (io, path, key) = (io.clone(), path.clone(), object.key.clone());
            tokio::task::spawn_blocking(move || -> Result<(u32, u32, u64, Option<u32>)> {
                let segment =
                    Segment::recover(io.as_ref(), &path, true).map_err(|e| Error::corrupt(&key, e.to_string()))?;
                let at_previous = |frame_no: u64| segment.chain_at(frame_no).ok();
                Ok((
                    segment.lineage,
                    segment.end_chain(),
                    segment.start_frame_no,
                    at_previous(segment.start_frame_no - 1),
                ))
            })
        };
        let (seg_lineage, end_chain, start, prev_chain) = check.await.map_err(|e| storage.error(&object.key, e))??;
        if let Some((l, end, chain)) = previous
            && (l != seg_lineage || start != end + 1 || prev_chain != Some(chain))
        {
            return Err(Error::Restore(format!("{} does not continue the segment before it: not packed", object.key)));
        }
        lineage = seg_lineage;
        previous = Some((seg_lineage, object.end_frame_no(), end_chain));
        paths.push(path);
    }
    let parts: Vec<pack::PackPart<'_>> = group
        .iter()
        .zip(&paths)
        .map(|(object, path)| {
            let (start_frame_no, end_frame_no) = object.frames().expect("segments only");
            pack::PackPart { path, len: object.size, start_frame_no, end_frame_no }
        })
        .collect();
    let first = group.first().and_then(StoredObject::commit_times).map_or(0, |t| t.first);
    let last = group.last().and_then(StoredObject::commit_times).map_or(0, |t| t.last);
    let (start, end) = (group[0].first_frame_no(), group[group.len() - 1].end_frame_no());
    let key = layout::pack_key(namespace, start, end, CommitTimes { first, last });
    pack::upload(storage, &key, lineage, &parts).await?;
    tracing::info!(key = %key, segments = group.len(), "compaction packed segments");
    Ok(key)
}

/// Writes a snapshot of the latest state when the history after the newest snapshot is
/// heavy enough (see [`CompactionConfig::snapshot_ratio`]); returns its key.
async fn snapshot_if_due(
    storage: &Storage,
    namespace: &str,
    objects: &[StoredObject],
    config: &CompactionConfig,
) -> Result<Option<String>> {
    let Ok(latest) = history::plan(objects, RestorePoint::Latest, u64::MAX, namespace) else { return Ok(None) };
    let base_bytes = latest.snapshot.as_ref().map_or(0, |s| s.size);
    let tail_bytes: u64 = latest.segments.iter().map(|s| s.size).sum();
    let due = tail_bytes >= config.snapshot_bytes_min && tail_bytes as f64 > config.snapshot_ratio * base_bytes as f64;
    if !due || latest.segments.is_empty() {
        return Ok(None);
    }
    let scratch = crate::storage::TempScratch::new("compact")?;
    let out = scratch.dir.join("latest.db");
    let built = {
        let (storage, namespace, out) = (storage.clone(), namespace.to_string(), out.clone());
        tokio::task::spawn_blocking(move || {
            crate::storage::restore::restore(&storage, &namespace, &out, &mut |_, _| {})
        })
    };
    let report = built.await.map_err(|e| storage.error("building a snapshot", e))??;
    let io = StdIo::shared();
    let file = io.open_read_only(&out).map_err(Error::io(IoAction::Open, &out))?;
    let mark = read_mark(file.as_ref(), &out)?;
    if mark.frame_no != report.frame_no {
        return Err(Error::Restore(format!(
            "the rebuilt state is at frame {}, not {}",
            mark.frame_no, report.frame_no
        )));
    }
    let taken_unix_ms = crate::io::unix_ms(std::time::SystemTime::now());
    let commit_unix_ms = report.commit_unix_ms.unwrap_or(0);
    let key = layout::snapshot_key(namespace, report.frame_no, commit_unix_ms, taken_unix_ms);
    let of = snapshot::SnapshotOf {
        frame_no: report.frame_no,
        chain: mark.chain,
        lineage: mark.lineage,
        commit_unix_ms,
        taken_unix_ms,
    };
    let _ = snapshot::upload(storage, &key, &snapshot::FilePages { file: file.as_ref(), path: &out }, of).await?;
    tracing::info!(key = %key, bytes = report.bytes, "compaction wrote a snapshot of the latest state");
    Ok(Some(key))
}

/// The checkpoint mark a restore wrote into its output.
fn read_mark(file: &dyn crate::io::IoFile, path: &Path) -> Result<CheckpointMark> {
    let mut bytes = [0u8; DB_HEADER_MARK_SIZE];
    file.read_exact_at(&mut bytes, DB_HEADER_MARK_OFFSET).map_err(Error::io(IoAction::Read, path))?;
    CheckpointMark::decode(&bytes)
        .ok_or_else(|| Error::corrupt(path, "the restored file's checkpoint mark is unreadable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start: u64, end: u64) -> StoredObject {
        let times = CommitTimes { first: start * 10, last: end * 10 };
        StoredObject {
            key: layout::segment_key("ns", start, end, times),
            size: 100,
            kind: ObjectKind::Segment { start_frame_no: start, end_frame_no: end, commit_times: Some(times) },
        }
    }

    fn snapshot(frame_no: u64) -> StoredObject {
        StoredObject {
            key: layout::snapshot_key("ns", frame_no, frame_no * 10, 1),
            size: 1000,
            kind: ObjectKind::Snapshot { frame_no, commit_unix_ms: Some(frame_no * 10), taken_unix_ms: 1 },
        }
    }

    fn pack(start: u64, end: u64) -> StoredObject {
        let times = CommitTimes { first: start * 10, last: end * 10 };
        StoredObject {
            key: layout::pack_key("ns", start, end, times),
            size: 100 * (end - start + 1) / 10,
            kind: ObjectKind::Pack { start_frame_no: start, end_frame_no: end, commit_times: times },
        }
    }

    fn keys(keep: &BTreeSet<String>, objects: &[StoredObject]) -> Vec<bool> {
        objects.iter().map(|o| keep.contains(&o.key)).collect()
    }

    #[test]
    fn history_inside_the_window_is_kept_and_older_history_goes_once_a_base_replaces_it() {
        let objects = [segment(1, 10), segment(11, 20), snapshot(20), segment(21, 30), segment(31, 40)];
        // Everything in the window (it starts before the first commit): all kept but the
        // snapshot, which no point needs (the segments rebuild it; the latest uses it).
        let all = needed(&objects, &[], 0);
        assert_eq!(keys(&all, &objects), vec![true, true, true, true, true]);
        // The window starts at time 250 (frame 25): the base at or before it is the
        // snapshot at 20; segments before it are garbage.
        let late = needed(&objects, &[], 250);
        assert_eq!(keys(&late, &objects), vec![false, false, true, true, true]);
        // A branch at frame 15 keeps what restores frame 15.
        let branched = needed(&objects, &[15], 250);
        assert_eq!(keys(&branched, &objects), vec![true, true, true, true, true]);
    }

    #[test]
    fn a_window_starting_inside_a_segment_keeps_that_segment() {
        let objects = [segment(1, 10), segment(11, 20), snapshot(20), segment(21, 30), snapshot(30)];
        let keep = needed(&objects, &[], 150);
        assert_eq!(keys(&keep, &objects), vec![true, true, false, true, true]);
        let keep = needed(&objects[..4], &[], 150);
        assert_eq!(keys(&keep, &objects[..4]), vec![true, true, true, true]);
    }

    #[test]
    fn a_branch_keeps_its_origin() {
        let origin = StoredObject {
            key: layout::origin_key("ns", "parent", 10, 100, 7, 9),
            size: 0,
            kind: ObjectKind::Origin {
                frame_no: 10,
                commit_unix_ms: Some(100),
                lineage: 7,
                chain: 9,
                parent: "parent".into(),
            },
        };
        let objects = [origin, segment(11, 20), snapshot(20), segment(21, 30), snapshot(30)];
        let keep = needed(&objects, &[], 1000);
        assert_eq!(keys(&keep, &objects), vec![true, false, false, false, true]);
    }

    /// A namespace compacted after every few segments, as online compaction does: each step
    /// writes a snapshot of the latest state. As the window moves on, the oldest point's base
    /// moves on too, and the history before it goes.
    #[test]
    fn the_oldest_base_moves_on_as_the_window_does() {
        let mut objects: Vec<StoredObject> = Vec::new();
        let mut collected_to = 0;
        for step in 0..40u64 {
            let (start, end) = (step * 10 + 1, step * 10 + 10);
            objects.push(segment(start, end));
            objects.push(snapshot(end));
            // The window starts 50 frames (500 ms) before the end.
            let keep = needed(&objects, &[], (end * 10).saturating_sub(500));
            objects.retain(|o| keep.contains(&o.key));
            let first = history::window(&objects).first().unwrap().first_frame_no;
            assert!(first <= end.saturating_sub(50).max(1), "step {step}: the window's promise is kept (from {first})");
            collected_to = first;
        }
        assert!(collected_to >= 400 - 2 * 100 - 10, "history older than the window went (from {collected_to})");
        assert!(objects.len() < 30, "{} objects kept", objects.len());
    }

    #[test]
    fn segments_a_pack_holds_are_garbage_and_middle_snapshots_too() {
        let objects = [
            segment(1, 10),
            segment(11, 20),
            pack(1, 20),
            snapshot(20),
            segment(21, 30),
            snapshot(30),
            segment(31, 40),
        ];
        let keep = needed(&objects, &[], 0);
        assert_eq!(keys(&keep, &objects), vec![false, false, true, false, true, true, true]);
    }

    #[test]
    fn snapshots_with_their_size_of_history_behind_them_stay_as_future_bases() {
        // 2,000 bytes of history between 0 and 20 (more than the snapshot's 1,000): kept;
        // 100 between 20 and 25: not; then 2,000 more before 45: kept.
        let mut objects = vec![pack(1, 20), snapshot(20), segment(21, 25), snapshot(25)];
        objects[0].size = 2000;
        let mut long = segment(26, 45);
        long.size = 2000;
        objects.extend([long, snapshot(45), segment(46, 50)]);
        let keep = needed(&objects, &[], 0);
        assert_eq!(keys(&keep, &objects), vec![true, true, true, false, true, true, true]);
    }

    #[test]
    fn packs_take_consecutive_kept_segments_between_the_bounds() {
        let config = CompactionConfig { pack_bytes_min: 250, pack_bytes_max: 300, ..CompactionConfig::default() };
        let objects: Vec<StoredObject> = (0..7).map(|i| segment(i * 10 + 1, i * 10 + 10)).collect();
        let keep: BTreeSet<String> = objects.iter().map(|o| o.key.clone()).collect();
        let groups = pack_groups(&objects, &keep, &config);
        let ends: Vec<Vec<u64>> = groups.iter().map(|g| g.iter().map(StoredObject::end_frame_no).collect()).collect();
        assert_eq!(ends, vec![vec![10, 20, 30], vec![40, 50, 60]], "the last, too small, waits");
    }
}
