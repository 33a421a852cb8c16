//! The durable frame_no of one database, and the task that moves it forward by uploading
//! sealed segments in order.
//!
//! - *Durable frame_no*: every frame up to it is in storage (acknowledged). It only grows. It
//!   is recorded in `<db>-wal/durable` after each acknowledgement; without a valid record it
//!   is unknown until storage has been listed (then it is where the stored chain ends).
//! - The gate (invariant 7): checkpoints copy (and delete) only segments whose last frame is
//!   at or below [`Durability::gate_frame_no`]; unknown counts as "nothing durable". A log
//!   whose directory holds a record keeps the gate even when opened without storage, so
//!   segments never uploaded are never deleted by a process that cannot upload them.
//! - One upload task per database at a time, started when a segment is sealed and at open;
//!   it uploads the oldest sealed segment not yet durable, then the next, and so on. Failed
//!   requests are retried after an exponential backoff with jitter, forever: commits do not
//!   wait for any of this, the local log just grows (`info` shows the lag). Closing the log
//!   aborts its task: the next owner of the files, in this process too, is never raced by it.
//! - Before every upload the task checks that the namespace holds this database's history
//!   (`sync_with_store`): an empty namespace first gets a snapshot of the database file when
//!   the log does not start at frame 1; otherwise the stored chain must end at a frame this
//!   log still has, with the same lineage and the same chain value (the checksum of that
//!   frame, which vouches for every frame before it). A namespace another copy has
//!   continued, or that holds another database, makes the log *diverged*: it keeps all its
//!   commits locally (the gate stays where it was), never ships them, and `info` says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::error::{Error, IoAction, Result};
use crate::format::{DURABLE_RECORD_SIZE, DurableRecord, storage_identity};
use crate::instruments::{self, Synced, Uploaded};
use crate::io::{FileKind, Io};
use crate::segment::SegmentRef;
use crate::storage::layout::StoredObject;
use crate::storage::{Storage, compaction, layout, remote, snapshot};

/// What the uploader reads of its log, given when its [`Durability`] is opened: storage
/// never sees the log itself (this module does not depend on `log`; the log depends on it).
pub(crate) trait LogView: Send + Sync {
    /// All segments, newest first.
    fn segments(&self) -> Vec<SegmentRef>;
    /// The log was shut down: its files may belong to another log by now.
    fn is_closed(&self) -> bool;
    /// The checkpointed frame_no and the chain value there.
    fn checkpointed(&self) -> (u64, u32);
    fn last_commit_frame_no(&self) -> u64;
    fn lineage(&self) -> u32;
    /// The chain value at `frame_no`, if the log can still tell.
    fn chain_at(&self, frame_no: u64) -> Result<Option<u32>>;
    fn db_file_len(&self) -> u64;
    /// Reads the database file (a snapshot of it: the caller keeps it from changing).
    fn read_db_file(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Frames became durable: a checkpoint may copy the segments holding them now.
    fn became_durable(&self);
}

/// Storage for one database: where, and under which namespace.
#[derive(Clone)]
pub struct StorageBinding {
    pub storage: Storage,
    pub namespace: String,
    /// Open even when the log's durable record counts in another store or namespace (see
    /// [`crate::LibsqlWalManager::with_move_to_store`]); otherwise that is refused.
    pub move_to_store: bool,
}

/// What `info` shows of a database's durability.
#[derive(Debug, Clone, Default)]
pub struct DurabilityInfo {
    pub storage_url: Option<String>,
    pub namespace: Option<String>,
    /// `None`: not known yet (storage not listed since the last start).
    pub durable_frame_no: Option<u64>,
    pub uploads: u64,
    pub uploaded_bytes: u64,
    /// Failed storage requests since the start (each is retried).
    pub failures: u64,
    pub last_error: Option<String>,
    /// Why this database's history no longer continues the namespace's, if it does not:
    /// nothing more is uploaded (its commits stay in the local log).
    pub diverged: Option<String>,
    /// Findings of a read-only look (`inspect_read_only`): why the durable frame_no is
    /// unknown although storage answered, or why an open with this storage is refused.
    pub notes: Vec<String>,
}

pub(crate) struct Durability {
    binding: Option<StorageBinding>,
    /// The log this is the durability of.
    log: Arc<dyn LogView>,
    /// Which store and namespace the record counts in (`format::storage_identity`; 0 when
    /// the log has no storage here: then the record is only read, never written).
    identity: u32,
    io: Arc<dyn Io>,
    record_path: PathBuf,
    /// Held while the record file is written and synced (`advance`) or removed (`close`),
    /// so those happen in order, without holding `state` across an fdatasync: a seal's
    /// `schedule` (on the commit path) takes only `state`. Taken before `state`, never after.
    record: Mutex<()>,
    state: Mutex<State>,
    changed: Condvar,
    /// Bytes uploaded since the last online compaction step was started.
    uploaded_since_compaction: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    frame_no: Option<u64>,
    record_exists: bool,
    /// Set at shutdown: no more records written (another process may own the directory).
    closed: bool,
    task_running: bool,
    /// Stops the running upload task: `close` aborts it, so that a closed log never
    /// uploads again (its next owner, in this process, may be uploading the same base).
    task: Option<tokio::task::AbortHandle>,
    /// Work arrived while the task ran: look again before stopping.
    rerun: bool,
    uploads: u64,
    uploaded_bytes: u64,
    failures: u64,
    last_error: Option<String>,
    /// Set once, when the namespace is found to hold another history: uploads stop for good.
    diverged: Option<String>,
}

/// The record's value for "storage is configured, durable frame_no not known yet".
const UNKNOWN: u64 = u64::MAX;

enum Step {
    /// List storage and check that it holds this history (before every upload).
    Sync,
    Upload(SegmentRef),
    Idle,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Durability {
    /// The durability of the log in `log_dir` (owned by the caller): `None` when neither
    /// storage is configured nor a record says it once was.
    pub fn open(
        io: &Arc<dyn Io>,
        log_dir: &Path,
        binding: Option<StorageBinding>,
        log: Arc<dyn LogView>,
    ) -> Result<Option<Arc<Durability>>> {
        let record_path = log_dir.join("durable");
        let recorded = read_record(io.as_ref(), &record_path, false)?;
        if binding.is_none() && recorded.is_none() {
            return Ok(None);
        }
        let identity = binding.as_ref().map(|b| storage_identity(b.storage.url(), &b.namespace));
        let record = match recorded {
            Some(None) => {
                tracing::warn!(path = %record_path.display(), "the durable frame_no record is damaged: rebuilding it from storage");
                None
            }
            Some(Some(record)) if identity.is_some_and(|id| id != record.identity) => {
                if let Some(binding) = &binding
                    && !binding.move_to_store
                    && let Some(reason) = shipped_elsewhere(&record, binding)
                {
                    return Err(Error::CannotOpen { path: db_path_of(log_dir), reason });
                }
                tracing::info!(path = %record_path.display(), "the durable record counts in another store or namespace: listing this one");
                None
            }
            other => other.flatten(),
        };
        let frame_no = record.map(|r| r.frame_no).filter(|&f| f != UNKNOWN);
        let state = State { frame_no, record_exists: recorded.is_some(), ..State::default() };
        let durability = Durability {
            binding,
            log,
            identity: identity.unwrap_or(0),
            io: io.clone(),
            record_path,
            record: Mutex::new(()),
            state: Mutex::new(state),
            changed: Condvar::new(),
            uploaded_since_compaction: Default::default(),
        };
        if durability.binding.is_some() && record.is_none() {
            // From now on this log keeps its segments until this store has them, whoever
            // opens it: say so on disk before the first commit can depend on it.
            durability.write_record(UNKNOWN, recorded.is_none())?;
            lock(&durability.state).record_exists = true;
        }
        Ok(Some(Arc::new(durability)))
    }

    pub fn binding(&self) -> Option<&StorageBinding> {
        self.binding.as_ref()
    }

    /// The highest frame_no a checkpoint may copy: the durable frame_no (0 while unknown).
    pub fn gate_frame_no(&self) -> u64 {
        lock(&self.state).frame_no.unwrap_or(0)
    }

    pub fn frame_no(&self) -> Option<u64> {
        lock(&self.state).frame_no
    }

    pub fn info(&self) -> DurabilityInfo {
        let state = lock(&self.state);
        DurabilityInfo {
            storage_url: self.binding.as_ref().map(|b| b.storage.url().to_string()),
            namespace: self.binding.as_ref().map(|b| b.namespace.clone()),
            durable_frame_no: state.frame_no,
            uploads: state.uploads,
            uploaded_bytes: state.uploaded_bytes,
            failures: state.failures,
            last_error: state.last_error.clone(),
            diverged: state.diverged.clone(),
            notes: Vec::new(),
        }
    }

    /// Why the namespace no longer takes this database's frames, if it does not.
    pub fn diverged(&self) -> Option<String> {
        lock(&self.state).diverged.clone()
    }

    /// Waits until `frame_no` is durable, or `timeout` passes (`None`: no limit), or the
    /// log is closed. Returns whether it is durable.
    pub fn wait(&self, frame_no: u64, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = lock(&self.state);
        loop {
            if state.frame_no.is_some_and(|d| d >= frame_no) {
                return true;
            }
            if state.closed || state.diverged.is_some() {
                return false;
            }
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) => left,
                    None => return false,
                },
                None => Duration::from_secs(3600),
            };
            state = self.changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Starts the upload task unless it runs already (then it looks again before stopping).
    pub fn schedule(self: &Arc<Self>) {
        let Some(binding) = &self.binding else { return };
        let mut state = lock(&self.state);
        if state.closed || state.diverged.is_some() {
            return;
        }
        if state.task_running {
            state.rerun = true;
            return;
        }
        state.task_running = true;
        // Spawned under `state`, so `close` either sees this handle or the task sees
        // `closed` at its first step.
        state.task = Some(binding.storage.spawn(upload_task(self.clone())));
    }

    /// Stops recording (the log is being handed back); removes the record too when the
    /// log is empty, since the directory goes with it. Called under the checkpoint lock.
    pub fn close(&self, log_empty: bool) {
        let _record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = lock(&self.state);
        state.closed = true;
        // Between two awaits the task may be in the middle of an upload: stop it there. A
        // request it already sent whole may still land (see `same_base`).
        if let Some(task) = state.task.take() {
            task.abort();
            state.task_running = false;
        }
        if log_empty && state.record_exists {
            if let Err(e) = self.io.remove_file(&self.record_path) {
                tracing::warn!(path = %self.record_path.display(), "could not remove the durable record: {e}");
            }
            state.record_exists = false;
        }
        self.changed.notify_all();
    }

    /// Storage acknowledged everything up to `frame_no`.
    /// The durable frame_no moves only once the record says so on disk (written and synced,
    /// unless the log is closed), and only forward.
    /// Starts an online compaction step of the namespace once enough was uploaded since the
    /// last one: writes are what make history to compact, so an idle namespace never costs a
    /// request, and no timer runs.
    fn compact_after(&self, binding: &StorageBinding, uploaded: u64) {
        use std::sync::atomic::Ordering;
        let config = &binding.storage.config().compaction;
        if !config.online {
            return;
        }
        let since = self.uploaded_since_compaction.fetch_add(uploaded, Ordering::Relaxed) + uploaded;
        if since >= config.online_after_bytes {
            self.uploaded_since_compaction.store(0, Ordering::Relaxed);
            compaction::spawn_online(binding.storage.clone(), binding.namespace.clone(), config.clone());
        }
    }

    fn advance(&self, frame_no: u64) -> Result<()> {
        let _record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let (closed, create) = {
            let state = lock(&self.state);
            if state.frame_no.is_some_and(|d| d >= frame_no) {
                return Ok(());
            }
            (state.closed, !state.record_exists)
        };
        // `state` is free meanwhile; `record` keeps `close` (and any other advance) out.
        if !closed {
            self.write_record(frame_no, create)?;
        }
        let mut state = lock(&self.state);
        state.record_exists |= !closed;
        if state.frame_no.is_none_or(|d| d < frame_no) {
            state.frame_no = Some(frame_no);
        }
        self.changed.notify_all();
        Ok(())
    }

    fn write_record(&self, frame_no: u64, create: bool) -> Result<()> {
        let path = &self.record_path;
        let file = self.io.open(path, true).map_err(Error::io(IoAction::Open, path))?;
        let record = DurableRecord { frame_no, identity: self.identity };
        file.write_all_at(&record.encode(), 0).map_err(Error::io(IoAction::Write, path))?;
        instruments::synced(Synced::Record);
        file.sync_data().map_err(Error::io(IoAction::Sync, path))?;
        if create && let Some(dir) = path.parent() {
            instruments::synced(Synced::Directory);
            self.io.sync_dir(dir).map_err(Error::io(IoAction::Sync, dir))?;
        }
        Ok(())
    }

    /// `synced`: storage was listed and found to hold this history since the last upload.
    fn next_step(&self, synced: bool) -> Step {
        let state = lock(&self.state);
        if state.closed || state.diverged.is_some() || self.log.is_closed() {
            return Step::Idle;
        }
        let Some(durable) = state.frame_no else { return Step::Sync };
        let segments = self.log.segments();
        // The oldest segment storage lacks, once sealed: uploads go in log order, so the
        // durable frame_no never passes a segment still waiting for its seal.
        let next = segments.iter().rev().find(|s| s.last_committed_frame_no() > durable).filter(|s| s.is_sealed());
        match next {
            Some(_) if !synced => Step::Sync,
            Some(segment) => Step::Upload(segment.clone()),
            None => Step::Idle,
        }
    }

    /// The namespace holds another history: stop uploading for good, keep the gate.
    fn diverge(&self, namespace: &str, reason: String) {
        tracing::error!(namespace, "storage: {reason}; this database's commits stay in its local log");
        let mut state = lock(&self.state);
        state.diverged = Some(reason);
        self.changed.notify_all();
    }

    /// The task ran out of work: stop, unless more arrived meanwhile.
    fn finish(&self) -> bool {
        let mut state = lock(&self.state);
        if state.rerun && !state.closed {
            state.rerun = false;
            return false;
        }
        state.task_running = false;
        state.task = None;
        true
    }

    fn record_failure(&self, error: &Error) {
        instruments::get().upload_errors.increment(1);
        let mut state = lock(&self.state);
        state.failures += 1;
        state.last_error = Some(error.to_string());
    }

    fn record_success(&self, kind: Uploaded, bytes: u64) {
        instruments::get().uploaded(kind, bytes);
        let mut state = lock(&self.state);
        state.uploads += 1;
        state.uploaded_bytes += bytes;
        state.last_error = None;
    }
}

/// Why a log whose durable record is `record` may not open with `binding` (unless moved
/// deliberately): the record counts in another store or namespace and says frames are
/// durable there. `None` when it counts in `binding`'s, or knows of no durable frame.
pub(crate) fn shipped_elsewhere(record: &DurableRecord, binding: &StorageBinding) -> Option<String> {
    if record.frame_no == UNKNOWN || record.identity == storage_identity(binding.storage.url(), &binding.namespace) {
        return None;
    }
    Some(format!(
        "its log was shipped to another store or namespace (durable there up to frame {}), not to namespace {} in \
         {}: check the store URL and the namespace (a typo?). To move the log to this store and namespace \
         deliberately (its history is uploaded here from scratch), open it with --move-to-store \
         (LibsqlWalManager::with_move_to_store)",
        record.frame_no,
        binding.namespace,
        binding.storage.url()
    ))
}

/// Before the first open of a database file that has no log yet (say one just restored)
/// with a store and namespace: refuses it when its checkpoint mark places it in the
/// namespace's history (same lineage) at a commit the namespace has gone past, say one
/// restored at an earlier point. Writing there would fork the history (its commits could
/// never be uploaded); a branch is the way to write from an earlier point. One listing and
/// a few range reads, bounded by the request timeout; when storage cannot be reached the
/// open goes on, and the upload task's own check catches the fork (keeping the commits
/// local). Nothing is created either way.
pub(crate) fn refuse_a_fork(io: &dyn Io, db_path: &Path, binding: &StorageBinding) -> Result<()> {
    let Ok(file) = io.open_read_only(db_path) else { return Ok(()) };
    let Ok(Some(mark)) = crate::ownership::read_db_header(file.as_ref(), db_path) else { return Ok(()) };
    if mark.lineage == 0 || mark.frame_no == 0 {
        return Ok(());
    }
    let (lineage, last) = (mark.lineage, mark.frame_no);
    let (storage, namespace) = (binding.storage.clone(), binding.namespace.clone());
    let timeout = binding.storage.config().request_timeout;
    // The chain's end and the lineage of its last object: another database's history is
    // not a fork of this one (the upload task says so, and keeps the commits local).
    let looked = binding.storage.block_on(async move {
        tokio::time::timeout(timeout, async {
            let chain = layout::chain(&storage.list_async(&namespace).await?);
            match chain.objects().last() {
                Some(last) => remote::end(&storage, last).await.map(|(l, _)| Some((chain.end_frame_no, l))),
                None => Ok(None),
            }
        })
        .await
    })?;
    let Ok(Ok(Some((end, stored_lineage)))) = looked else { return Ok(()) };
    if end <= last || stored_lineage != lineage {
        return Ok(());
    }
    let chain = layout::Chain { end_frame_no: end, ..layout::Chain::default() };
    let url = binding.storage.url();
    let ns = &binding.namespace;
    Err(Error::CannotOpen {
        path: db_path.to_path_buf(),
        reason: format!(
            "this database is at frame_no {last} of namespace {ns}, which goes on to frame_no {}: writing here \
             would fork its history. To write from this point, make a branch and open the database with it: \
             `libsql-wal storage branch {url} {ns} --frame-no {last} NEW_NS`, then --namespace NEW_NS",
            chain.end_frame_no
        ),
    })
}

/// The database file of the log in `log_dir` (`<db>-wal`), for messages.
fn db_path_of(log_dir: &Path) -> PathBuf {
    let name = log_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.strip_suffix("-wal") {
        Some(db) if !db.is_empty() => log_dir.with_file_name(db),
        _ => log_dir.to_path_buf(),
    }
}

/// Before the log in `log_dir` is opened (so recovered) with `binding`: refuses it, having
/// changed nothing, when its durable record says it was shipped to another store or
/// namespace (see [`shipped_elsewhere`]). [`Durability::open`] checks again once the log is
/// owned; an unreadable record is left to it.
pub(crate) fn refuse_if_shipped_elsewhere(io: &dyn Io, log_dir: &Path, binding: &StorageBinding) -> Result<()> {
    if binding.move_to_store {
        return Ok(());
    }
    let Ok(Some(Some(record))) = read_record(io, &log_dir.join("durable"), true) else { return Ok(()) };
    match shipped_elsewhere(&record, binding) {
        Some(reason) => Err(Error::CannotOpen { path: db_path_of(log_dir), reason }),
        None => Ok(()),
    }
}

/// The durable record of the log in `log_dir`, read through a read-only handle (for
/// inspecting a log without owning it): `None` when there is none, `Some(None)` when damaged.
pub(crate) fn read_record_read_only(io: &dyn Io, log_dir: &Path) -> Result<Option<Option<DurableRecord>>> {
    read_record(io, &log_dir.join("durable"), true)
}

/// The record's value for a known durable frame_no (`u64::MAX` means unknown).
pub(crate) fn recorded_frame_no(record: &DurableRecord) -> Option<u64> {
    (record.frame_no != UNKNOWN).then_some(record.frame_no)
}

/// Reads the record: `None` when there is none, `Some(None)` when it is damaged.
fn read_record(io: &dyn Io, path: &Path, read_only: bool) -> Result<Option<Option<DurableRecord>>> {
    match io.kind(path).map_err(Error::io(IoAction::Read, path))? {
        Some(FileKind::File { .. }) => {}
        _ => return Ok(None),
    }
    let file = if read_only { io.open_read_only(path) } else { io.open(path, false) };
    let file = file.map_err(Error::io(IoAction::Open, path))?;
    let mut bytes = [0u8; DURABLE_RECORD_SIZE];
    let frame_no = match file.read_exact_at(&mut bytes, 0) {
        Ok(()) => DurableRecord::decode(&bytes),
        Err(_) => None,
    };
    Ok(Some(frame_no))
}

async fn upload_task(durability: Arc<Durability>) {
    let Some(binding) = durability.binding.clone() else { return };
    let mut failures_in_row = 0u32;
    let mut synced = false;
    loop {
        let result = match durability.next_step(synced) {
            Step::Idle => {
                if durability.finish() {
                    return;
                }
                continue;
            }
            // A listing that works is no progress: the upload after it may fail again, and
            // the backoff must keep growing until one succeeds.
            Step::Sync => sync_with_store(&durability, &binding).await.map(|()| {
                synced = true;
                false
            }),
            Step::Upload(segment) => {
                synced = false;
                upload_segment(&durability, &binding, &segment).await.map(|()| true)
            }
        };
        match result {
            Ok(progress) => {
                if progress {
                    failures_in_row = 0;
                }
            }
            Err(e) => {
                failures_in_row = failures_in_row.saturating_add(1);
                tracing::warn!(namespace = %binding.namespace, "storage: {e} (retrying)");
                durability.record_failure(&e);
                tokio::time::sleep(backoff(binding.storage.config(), failures_in_row)).await;
            }
        }
    }
}

fn backoff(config: &crate::storage::StorageConfig, failures_in_row: u32) -> Duration {
    crate::backoff::retry_delay(config.retry_delay_min, config.retry_delay_max, failures_in_row)
}

async fn upload_segment(durability: &Durability, binding: &StorageBinding, segment: &SegmentRef) -> Result<()> {
    let durable = durability.frame_no().unwrap_or(0);
    if segment.start_frame_no > durable + 1 {
        // Only a broken gate could have deleted frames storage never had.
        return Err(Error::corrupt(
            &segment.path,
            format!("frames {}..{} are neither in storage nor in the log", durable + 1, segment.start_frame_no),
        ));
    }
    let last = segment.last_committed_frame_no();
    let (first, last_time) = segment.commit_times();
    let times = layout::CommitTimes { first, last: last_time };
    let key = layout::segment_key(&binding.namespace, segment.start_frame_no, last, times);
    let bytes = segment.read_all()?;
    let len = bytes.len() as u64;
    let _permit = binding.storage.upload_permits().acquire().await.map_err(|e| binding.storage.error(&key, e))?;
    if !binding.storage.put_new(&key, bytes).await? && !already_ours(binding, durability, segment, &key).await? {
        let reason = format!(
            "{key} is already in namespace {} and is not this database's segment: another copy uploaded the same \
             frames at the same moment",
            binding.namespace
        );
        durability.diverge(&binding.namespace, reason);
        return Ok(());
    }
    // A copy racing us between our listing and this upload shows up now: never count a
    // frame durable in a namespace that holds two histories.
    let chain = layout::chain(&binding.storage.list_async(&binding.namespace).await?);
    if let Some(reason) = conflict(&binding.namespace, &chain) {
        durability.diverge(&binding.namespace, reason);
        return Ok(());
    }
    tracing::debug!(namespace = %binding.namespace, key, "uploaded");
    durability.record_success(Uploaded::Segment, len);
    durability.compact_after(binding, len);
    durability.advance(last)?;
    durability.log.became_durable();
    Ok(())
}

/// Lists the namespace and checks that its chain is this database's history, so that what
/// is uploaded next continues it: advances the durable frame_no to where the chain ends when
/// it checks out, uploads a snapshot first when the namespace is empty and the log does not
/// start at frame 1, and otherwise marks the log diverged. Never uploads into a history that
/// is not this one's.
async fn sync_with_store(durability: &Durability, binding: &StorageBinding) -> Result<()> {
    let objects = binding.storage.list_async(&binding.namespace).await?;
    let chain = layout::chain(&objects);
    let (checkpointed, checkpointed_chain) = durability.log.checkpointed();
    if chain.snapshot.is_none() && chain.segments.is_empty() {
        if checkpointed == 0 && durability.log.db_file_len() == 0 {
            durability.advance(0)?;
            return Ok(());
        }
        return upload_base_snapshot(durability, binding, (checkpointed, checkpointed_chain)).await;
    }
    if let Some(reason) = conflict(&binding.namespace, &chain) {
        durability.diverge(&binding.namespace, reason);
        return Ok(());
    }
    let end = chain.end_frame_no;
    if durability.frame_no() == Some(end) {
        return Ok(()); // Where this log's own last upload left it.
    }
    match history_mismatch(binding, durability.log.as_ref(), &chain).await? {
        Some(reason) => durability.diverge(&binding.namespace, reason),
        None => {
            durability.advance(end)?;
            // Segments storage already had are checkpointable now.
            durability.log.became_durable();
        }
    }
    Ok(())
}

/// Two histories in the namespace: objects for overlapping frames that are not one chain
/// (writers that raced between a listing and their uploads).
fn conflict(namespace: &str, chain: &layout::Chain) -> Option<String> {
    let other = chain.conflicts.first()?;
    Some(format!(
        "namespace {namespace} holds two histories: {} overlaps the chain's objects (another copy uploaded at the \
         same time); nothing more is uploaded there, and restore refuses it until one history is removed",
        other.key
    ))
}

/// Why the stored chain is not this database's history, if it is not: another lineage (at
/// its base or at its end), an end this log cannot vouch for, or a different chain value
/// at that end.
async fn history_mismatch(
    binding: &StorageBinding,
    log: &dyn LogView,
    chain: &layout::Chain,
) -> Result<Option<String>> {
    let ends = stored_ends(&binding.storage, chain).await?;
    let local = LocalHistory {
        last: log.last_commit_frame_no(),
        checkpointed: log.checkpointed().0,
        lineage: log.lineage(),
        chain_at: &|frame_no| log.chain_at(frame_no),
    };
    mismatch(&binding.namespace, chain, &ends, &local)
}

/// What a log can show of its history, to compare with a stored chain.
pub(crate) struct LocalHistory<'a> {
    /// The last commit's frame_no.
    pub last: u64,
    pub checkpointed: u64,
    pub lineage: u32,
    /// The chain value at a frame_no, if the log can still tell (see `LogView::chain_at`).
    pub chain_at: &'a dyn Fn(u64) -> Result<Option<u32>>,
}

/// The lineages at both ends of a stored chain, and its chain value at its end.
struct StoredEnds {
    lineage: u32,
    chain: u32,
    base_lineage: u32,
    last_key: String,
    base_key: String,
}

/// Reads [`StoredEnds`] of a non-empty chain (small range requests).
async fn stored_ends(storage: &Storage, chain: &layout::Chain) -> Result<StoredEnds> {
    let last_object = chain.segments.last().or(chain.snapshot.as_ref()).expect("a non-empty chain");
    let (lineage, stored_chain) = remote::end(storage, last_object).await?;
    let base_object = chain.snapshot.as_ref().or(chain.segments.first()).expect("a non-empty chain");
    let (base_lineage, _) = remote::end(storage, base_object).await?;
    Ok(StoredEnds {
        lineage,
        chain: stored_chain,
        base_lineage,
        last_key: last_object.key.clone(),
        base_key: base_object.key.clone(),
    })
}

/// The decision of [`history_mismatch`], once the stored ends are read.
fn mismatch(namespace: &str, chain: &layout::Chain, ends: &StoredEnds, local: &LocalHistory) -> Result<Option<String>> {
    let end = chain.end_frame_no;
    let (last, checkpointed) = (local.last, local.checkpointed);
    let StoredEnds { lineage, chain: stored_chain, base_lineage, .. } = *ends;
    if base_lineage != lineage {
        return Ok(Some(format!(
            "namespace {namespace} holds two histories: its base {} (lineage {base_lineage:08x}) and its end {} \
             (lineage {lineage:08x}); nothing more is uploaded there",
            ends.base_key, ends.last_key
        )));
    }
    if lineage != local.lineage {
        return Ok(Some(format!(
            "namespace {namespace} holds another database's history (lineage {lineage:08x}; this database's is {:08x}): \
             use another namespace, or restore from this one",
            local.lineage
        )));
    }
    if end > last {
        return Ok(Some(format!(
            "namespace {namespace} holds frames up to {end} but this database only up to {last}: another copy \
             continued the namespace; restore it from storage (`libsql-wal restore`) or use another namespace"
        )));
    }
    match (local.chain_at)(end)? {
        Some(ours) if ours == stored_chain => Ok(None),
        Some(_) => Ok(Some(format!(
            "frame {end} in namespace {namespace} is not this database's frame {end}: their histories diverged \
             (another copy wrote to the namespace); restore it from storage or use another namespace"
        ))),
        None => Ok(Some(format!(
            "namespace {namespace} ends at frame {end}, before this database's checkpoint at {checkpointed}: \
             nothing here can show it holds this history; use another namespace"
        ))),
    }
}

/// What storage holds of a log, found without changing anything (`inspect_read_only`).
#[derive(Debug, Default)]
pub(crate) struct StoreLook {
    /// Every frame up to it is in storage, in this log's history.
    pub durable_frame_no: Option<u64>,
    pub diverged: Option<String>,
    /// The request that failed, if storage could not be read.
    pub error: Option<String>,
    /// Why the durable frame_no is unknown although storage answered.
    pub note: Option<String>,
}

/// Lists `binding`'s namespace and checks it holds the history `local` shows, as the upload
/// task's first step does (`sync_with_store`), but uploading nothing and writing no record:
/// where an open would start from, and whether it would diverge. `empty_base`: the log
/// starts from an empty database (then an empty namespace holds all of it).
pub(crate) fn look_up_read_only(binding: &StorageBinding, local: &LocalHistory, empty_base: bool) -> StoreLook {
    let failed = |e: Error| StoreLook { error: Some(e.to_string()), ..StoreLook::default() };
    let chain = match binding.storage.chain(&binding.namespace) {
        Ok(chain) => chain,
        Err(e) => return failed(e),
    };
    if chain.snapshot.is_none() && chain.segments.is_empty() {
        if empty_base {
            return StoreLook { durable_frame_no: Some(0), ..StoreLook::default() };
        }
        let note = format!(
            "namespace {} is empty: the next open with storage uploads a snapshot of the database file first",
            binding.namespace
        );
        return StoreLook { note: Some(note), ..StoreLook::default() };
    }
    if let Some(reason) = conflict(&binding.namespace, &chain) {
        return StoreLook { diverged: Some(reason), ..StoreLook::default() };
    }
    let ends = {
        let (storage, chain) = (binding.storage.clone(), chain.clone());
        match binding.storage.block_on(async move { stored_ends(&storage, &chain).await }) {
            Ok(Ok(ends)) => ends,
            Ok(Err(e)) | Err(e) => return failed(e),
        }
    };
    match mismatch(&binding.namespace, &chain, &ends, local) {
        Ok(None) => StoreLook { durable_frame_no: Some(chain.end_frame_no), ..StoreLook::default() },
        Ok(Some(reason)) => StoreLook { diverged: Some(reason), ..StoreLook::default() },
        Err(e) => failed(e),
    }
}

/// Is the object already at `key` this very segment (an upload repeated after a crash
/// before the durable record was written): the same lineage and end chain value?
async fn already_ours(
    binding: &StorageBinding,
    durability: &Durability,
    segment: &SegmentRef,
    key: &str,
) -> Result<bool> {
    let Some(kind) = layout::parse_key(&binding.namespace, key) else { return Ok(false) };
    let object = StoredObject { key: key.to_string(), size: 0, kind };
    let (lineage, chain) = remote::end(&binding.storage, &object).await?;
    Ok(lineage == durability.log.lineage() && chain == segment.end_chain())
}

/// Is `base`, found where our snapshot `ours` (at `key`) should have been the base, the
/// very same state: the same frame, lineage, chain value, size and pages? Then it is the
/// same claim twice, not another copy's: a PUT that landed after its log was closed or
/// its process died, after the next owner had listed the namespace empty. Ours is then
/// the redundant one; it is removed (best effort: a leftover twin is harmless).
async fn same_base(
    binding: &StorageBinding,
    base: &StoredObject,
    ours: &snapshot::Fingerprint,
    key: &str,
) -> Result<bool> {
    if !matches!(base.kind, layout::ObjectKind::Snapshot { .. }) {
        return Ok(false);
    }
    if remote::snapshot_fingerprint(&binding.storage, base).await? != *ours {
        return Ok(false);
    }
    tracing::info!(namespace = %binding.namespace, base = %base.key, "the same base was uploaded twice: keeping one");
    if let Err(e) = binding.storage.delete(key).await {
        tracing::warn!(namespace = %binding.namespace, key, "could not remove a redundant copy of the base: {e}");
    }
    Ok(true)
}

/// Uploads a snapshot of the database file as the base of an empty namespace: the log does
/// not start at frame 1 (storage configured on an existing database, or a wiped namespace).
async fn upload_base_snapshot(
    durability: &Durability,
    binding: &StorageBinding,
    (checkpointed, chain): (u64, u32),
) -> Result<()> {
    // While the durable frame_no is unknown the gate stops every checkpoint, so the
    // database file holds exactly the state at `checkpointed` while we read it.
    let taken_unix_ms = durability.io.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let key = layout::snapshot_key(&binding.namespace, checkpointed, 0, taken_unix_ms);
    let _permit = binding.storage.upload_permits().acquire().await.map_err(|e| binding.storage.error(&key, e))?;
    let ours = snapshot::upload(
        &binding.storage,
        &key,
        &snapshot::LogPages(durability.log.as_ref()),
        snapshot::SnapshotOf {
            frame_no: checkpointed,
            chain,
            lineage: durability.log.lineage(),
            commit_unix_ms: 0,
            taken_unix_ms,
        },
    )
    .await?;
    let bytes = ours.object_len();
    tracing::info!(namespace = %binding.namespace, key, bytes, "uploaded a snapshot of the database file");
    // Another copy claiming the empty namespace at the same moment: only one base may stand.
    let chain = layout::chain(&binding.storage.list_async(&binding.namespace).await?);
    let others = chain.segments.iter().chain(&chain.conflicts).count();
    let base_is_ours = match &chain.snapshot {
        _ if others > 0 => false,
        Some(base) if base.key == key => true,
        Some(base) => same_base(binding, base, &ours, &key).await?,
        None => false,
    };
    if !base_is_ours {
        let base = chain.snapshot.as_ref().map(|s| s.key.as_str());
        let reason = format!(
            "another copy claimed the empty namespace {} at the same moment (the base is {}): nothing more is \
             uploaded there",
            binding.namespace,
            base.unwrap_or("missing")
        );
        durability.diverge(&binding.namespace, reason);
        return Ok(());
    }
    durability.record_success(Uploaded::Snapshot, bytes);
    durability.advance(checkpointed)?;
    durability.log.became_durable();
    Ok(())
}
