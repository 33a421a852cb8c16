//! Pull replication for libSQL's embedded replicas (`syncUrl` / `sync_url`): `GET /info`,
//! `GET /export/{generation}`, `GET /sync/{generation}/{start}/{end}`. Wire format and
//! reasons: docs/FORMAT.md, *Embedded replicas*; routes and behaviour: docs/SERVE.md.
//!
//! libSQL numbers a replica's frames 1, 2, … within a *generation* and moves a replica to
//! the next generation (one step at a time) only when told to. Ours map onto the log so:
//! generation g has a *base*, a commit B of the log (lineage, frame_no, chain), and an
//! *image* of the database at B (P pages). Its frames 1..=P are that image, one
//! transaction (applied over any state, it leaves exactly B); its frame P + k is the
//! log's frame B + k. A replica is served frames after its own commit while the log can
//! still tell that commit's chain value; otherwise (frames checkpointed away, a
//! generation forgotten) it is sent to the current generation, whose image brings it to
//! the present in one transaction. Generations are forgotten together when the database's
//! history no longer holds the newest commit any replica was sent (`Record::seen`,
//! checked when a table is loaded; while loaded, the table keeps the log open, so nothing
//! can restore or replace the database under it): a replica never continues from another
//! history.
//!
//! While a generation is current, a [`libsql_wal::Follower`] at its base keeps the log's
//! frames after B (so new replicas bootstrap from its image and continue from the log);
//! it is let go when the log after B grows past `--sync-log-keep-bytes` or nobody has pulled
//! for [`HOLD_IDLE`], and the next request that needs an image makes a new generation.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use libsql_wal::{FramesAfter, LibsqlWalManager, Position};
use serde::{Deserialize, Serialize};

use crate::http::HttpError;
use crate::server::Shared;

/// libSQL's frame: a 24-byte header (page number and database size after a commit, both
/// u32 big-endian, then 16 bytes the replica does not read) and a 4096-byte page.
pub const FRAME_BYTES: usize = 24 + PAGE_BYTES;
const PAGE_BYTES: usize = 4096;
/// Our log's frame (FORMAT.md *Frame*): a 32-byte header, then the page.
const LOG_FRAME_BYTES: usize = 32 + PAGE_BYTES;
/// About how many bytes of frames one pull answers (whole transactions; the replica
/// asks for 128 frames and takes more).
const PULL_BYTES: usize = 128 * FRAME_BYTES;
/// Pages per chunk of an image sent as frames.
const IMAGE_CHUNK_PAGES: usize = 256;
/// A current generation's tail is let go after this long without a pull.
pub const HOLD_IDLE: Duration = Duration::from_secs(600);
/// Generations remembered per database (older ones send their replicas to the current).
const REMEMBERED: usize = 64;

/// One generation of a database (see the module's doc).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Generation {
    generation: u32,
    lineage: u32,
    base_frame_no: u64,
    base_chain: u32,
    image_pages: u32,
}

impl Generation {
    fn base(&self) -> Position {
        Position { lineage: self.lineage, frame_no: self.base_frame_no, chain: self.base_chain }
    }
}

/// A position as the record keeps it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
struct Seen {
    lineage: u32,
    frame_no: u64,
    chain: u32,
}

impl From<Position> for Seen {
    fn from(p: Position) -> Seen {
        Seen { lineage: p.lineage, frame_no: p.frame_no, chain: p.chain }
    }
}

/// `<db>-generations`: the generations of one database, oldest first.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    version: u32,
    /// The newest generation number ever given (never given again, even once its
    /// generation is forgotten).
    newest: u32,
    generations: Vec<Generation>,
    /// A commit at or past everything any replica was sent: a database whose history no
    /// longer holds it (restored to an earlier point and written since, replaced) has
    /// none of these generations.
    seen: Option<Seen>,
}

const RECORD_VERSION: u32 = 1;

/// The generations of one database and the hold on its current generation's tail.
struct Table {
    db: PathBuf,
    record: Record,
    /// Keeps the log open while the table lives, so that its history cannot change under
    /// it (a restore needs the database closed); checked against `record.seen` at load.
    pin: libsql_wal::Follower,
    hold: Option<libsql_wal::Follower>,
    last_pull: Instant,
}

/// Every database's generations (one table each, loaded on first use).
pub struct Generations {
    tables: Mutex<HashMap<PathBuf, Arc<Mutex<Table>>>>,
    /// `--sync-log-keep-bytes`.
    keep_bytes: u64,
}

/// What a pull answers.
enum Pull {
    /// The generation's image as frames 1..=P (from the image file).
    Image { file: PathBuf, pages: u32 },
    /// Frames of the log (ours, converted on the way out).
    Frames(Vec<u8>),
    /// 400 `{"generation": g}`: nothing more in the replica's generation (g its own), or
    /// move on (g greater).
    EndOfGeneration(u32),
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpError {
    HttpError::new(status, code, message)
}

fn internal(what: impl std::fmt::Display) -> HttpError {
    error(StatusCode::INTERNAL_SERVER_ERROR, "SYNC_ERROR", what.to_string())
}

fn record_path(db: &Path) -> PathBuf {
    sidecar(db, "-generations")
}

fn image_path(db: &Path, generation: u32) -> PathBuf {
    sidecar(db, &format!("-generation-{generation}.image"))
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Generations {
    pub fn new(keep_bytes: u64) -> Generations {
        Generations { tables: Mutex::default(), keep_bytes }
    }

    /// `db`'s table, its tail let go first if no longer worth keeping.
    fn with_table<T>(
        &self,
        db: &Path,
        manager: &LibsqlWalManager,
        f: impl FnOnce(&mut Table) -> Result<T, HttpError>,
    ) -> Result<T, HttpError> {
        let table = self.table(db, manager)?;
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
        table.release_tail_if_done(manager, self.keep_bytes);
        table.last_pull = Instant::now();
        f(&mut table)
    }

    fn table(&self, db: &Path, manager: &LibsqlWalManager) -> Result<Arc<Mutex<Table>>, HttpError> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = tables.get(db) {
            return Ok(table.clone());
        }
        let table = Arc::new(Mutex::new(Table::load(db, manager)?));
        tables.insert(db.to_path_buf(), table.clone());
        Ok(table)
    }

    /// Lets go of the tails no longer worth keeping (see the module's doc). Called
    /// periodically.
    pub fn release_tails(&self, manager: &LibsqlWalManager) {
        let tables: Vec<_> = self.tables.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for table in tables {
            let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
            table.release_tail_if_done(manager, self.keep_bytes);
        }
        // Tables nobody pulled from for a while are put away: their logs may close.
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.retain(|_, table| {
            let table = table.lock().unwrap_or_else(|e| e.into_inner());
            let keep = table.last_pull.elapsed() < HOLD_IDLE;
            if !keep {
                table.put_away();
            }
            keep
        });
    }

    /// Puts `db`'s table away (its database is about to be replaced: the log must close).
    pub fn put_away(&self, db: &Path) {
        let table = self.tables.lock().unwrap_or_else(|e| e.into_inner()).remove(db);
        if let Some(table) = table {
            table.lock().unwrap_or_else(|e| e.into_inner()).put_away();
        }
    }

    /// Puts every table away (the server stops: the logs may close).
    pub fn release_all(&self) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        for table in tables.values() {
            table.lock().unwrap_or_else(|e| e.into_inner()).put_away();
        }
        tables.clear();
    }
}

impl Table {
    fn load(db: &Path, manager: &LibsqlWalManager) -> Result<Table, HttpError> {
        let path = record_path(db);
        let record = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
                .ok()
                .filter(|r| r.version == RECORD_VERSION)
                .ok_or_else(|| {
                    internal(format!(
                        "{} is damaged: the embedded replicas of this database cannot be told where they are \
                         (remove it, and the replicas' files, to start them again)",
                        path.display()
                    ))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Record { version: RECORD_VERSION, ..Record::default() }
            }
            Err(e) => return Err(internal(format!("cannot read {}: {e}", path.display()))),
        };
        let pin =
            libsql_wal::follow(db, manager, u64::MAX).map_err(|e| internal(format!("cannot open the log: {e}")))?;
        let mut table = Table { db: db.to_path_buf(), record, pin, hold: None, last_pull: Instant::now() };
        table.forget_other_histories()?;
        Ok(table)
    }

    /// Forgets every generation if the database's history no longer holds what replicas
    /// were sent (or cannot tell): they are all sent to a new one, never continued from
    /// another history. Numbers go on past the newest.
    fn forget_other_histories(&mut self) -> Result<(), HttpError> {
        let Some(seen) = self.record.seen else { return Ok(()) };
        let now = self.pin.position_at(seen.frame_no).map_err(|e| internal(format!("cannot read the log: {e}")))?;
        if now.map(Seen::from) != Some(seen) {
            tracing::warn!(
                db = %self.db.display(),
                "the database's history no longer holds frame {} its embedded replicas were sent (restored or \
                 replaced, or checkpointed before a crash): they will sync from a new image",
                seen.frame_no
            );
            self.record.generations.clear();
            self.record.seen = None;
            self.save()?;
        }
        Ok(())
    }

    /// Records the log's last commit as seen (it is at or past all that was sent), so that
    /// the next load finds it in the history, even once checkpointed (it is then the mark's).
    fn put_away(&self) {
        let Ok(position) = self.pin.position() else { return };
        let mut record = Record { seen: Some(position.into()), ..self.record.clone() };
        if record.generations.is_empty() {
            record.seen = None;
        }
        if let Err(e) = save_record(&self.db, &record) {
            tracing::warn!(db = %self.db.display(), "cannot record where embedded replicas are: {e}");
        }
    }

    /// Records `seen` (synced) before frames up to it are sent.
    fn see(&mut self, seen: Position) -> Result<(), HttpError> {
        if self.record.seen.is_some_and(|s| s.frame_no >= seen.frame_no) {
            return Ok(());
        }
        self.record.seen = Some(seen.into());
        self.save()
    }

    fn current(&self) -> Option<Generation> {
        self.record.generations.last().copied()
    }

    fn find(&self, generation: u32) -> Option<Generation> {
        self.record.generations.iter().find(|g| g.generation == generation).copied()
    }

    /// Whether the log still continues `generation` from its base: same history (the chain
    /// value at the base unchanged) and the frames after it still held.
    fn continues(&self, manager: &LibsqlWalManager, generation: &Generation) -> Result<bool, HttpError> {
        let at_base = libsql_wal::position_at(&self.db, manager, generation.base_frame_no)
            .map_err(|e| internal(format!("cannot read the log: {e}")))?;
        Ok(at_base == Some(generation.base()))
    }

    /// The current generation, if a replica can start it now: its image is there and the
    /// log continues it. Else a new one is made.
    fn startable(&mut self, manager: &LibsqlWalManager) -> Result<Generation, HttpError> {
        if let Some(current) = self.current()
            && image_whole(&image_path(&self.db, current.generation), current.image_pages)
            && self.continues(manager, &current)?
        {
            if self.hold.is_none() {
                self.hold = Some(self.hold_at(manager, current.base_frame_no)?);
            }
            return Ok(current);
        }
        self.start_generation(manager)
    }

    fn hold_at(&self, manager: &LibsqlWalManager, frame_no: u64) -> Result<libsql_wal::Follower, HttpError> {
        libsql_wal::follow(&self.db, manager, frame_no).map_err(|e| internal(format!("cannot open the log: {e}")))
    }

    /// Makes a new current generation (numbered past every one given before):
    /// an image of the database at its last commit, then the record naming it.
    fn start_generation(&mut self, manager: &LibsqlWalManager) -> Result<Generation, HttpError> {
        let number = self
            .record
            .newest
            .checked_add(1)
            .ok_or_else(|| internal("generation numbers are used up (u32): start the replicas again"))?;
        let image = image_path(&self.db, number);
        // Held before the image is taken: its base's frames stay in the log from then on.
        let hold = self.hold_at(manager, self.position(manager)?.frame_no)?;
        let base = write_image(&self.db, manager, &image)?;
        hold.advance(base.frame_no);
        let pages = std::fs::metadata(&image).map_err(|e| internal(format!("cannot read the image: {e}")))?.len()
            / PAGE_BYTES as u64;
        let generation = Generation {
            generation: number,
            lineage: base.lineage,
            base_frame_no: base.frame_no,
            base_chain: base.chain,
            image_pages: pages as u32,
        };
        let before = (self.record.newest, self.record.seen);
        self.record.generations.push(generation);
        self.record.newest = number;
        if self.record.seen.is_none_or(|s| s.frame_no < base.frame_no) {
            self.record.seen = Some(base.into());
        }
        let excess = self.record.generations.len().saturating_sub(REMEMBERED);
        self.record.generations.drain(..excess);
        if let Err(e) = self.save() {
            self.record.generations.pop();
            (self.record.newest, self.record.seen) = before;
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        self.hold = Some(hold);
        self.remove_old_images(number);
        tracing::info!(db = %self.db.display(), generation = number, base = base.frame_no, pages, "new embedded-replica generation");
        Ok(generation)
    }

    fn position(&self, manager: &LibsqlWalManager) -> Result<Position, HttpError> {
        libsql_wal::log_position(&self.db, manager).map_err(|e| internal(format!("cannot read the log: {e}")))
    }

    fn save(&self) -> Result<(), HttpError> {
        save_record(&self.db, &self.record).map_err(internal)
    }

    /// Images of generations before `current` are no longer sent (their replicas are sent
    /// to the current one).
    fn remove_old_images(&self, current: u32) {
        let Some(dir) = self.db.parent() else { return };
        let Some(name) = self.db.file_name().and_then(|n| n.to_str()) else { return };
        let prefix = format!("{name}-generation-");
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
            let number = rest.strip_suffix(".image").or_else(|| rest.strip_suffix(".image.tmp"));
            if number.and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n < current) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn release_tail_if_done(&mut self, manager: &LibsqlWalManager, keep_bytes: u64) {
        if self.hold.is_some() && !self.tail_worth_keeping(manager, keep_bytes) {
            self.hold = None;
        }
    }

    /// Whether the current generation's tail is still worth keeping in the log.
    fn tail_worth_keeping(&self, manager: &LibsqlWalManager, keep_bytes: u64) -> bool {
        let Some(current) = self.current() else { return false };
        if self.last_pull.elapsed() > HOLD_IDLE {
            return false;
        }
        let Ok(last) = libsql_wal::last_commit_frame_no(&self.db, manager) else { return false };
        let tail = last.saturating_sub(current.base_frame_no) * LOG_FRAME_BYTES as u64;
        tail <= keep_bytes
    }

    /// Sends a replica of `generation` that the log cannot continue to the current
    /// generation. If that is its own (whose base the log still continues, so it holds
    /// every commit a replica of it can have), the replica's position is not one this
    /// server gave: an error, never "up to date", and no new generation on its word.
    fn move_on(&mut self, manager: &LibsqlWalManager, generation: u32) -> Result<Pull, HttpError> {
        let next = self.startable(manager)?;
        if next.generation == generation {
            return Err(unknown_position(generation, None, self.record.newest));
        }
        Ok(Pull::EndOfGeneration(next.generation))
    }

    /// What `/sync/{generation}/{start}/…` answers.
    fn pull(&mut self, manager: &LibsqlWalManager, generation: u32, start: u32) -> Result<Pull, HttpError> {
        let newest = self.record.newest;
        if generation > newest {
            // A generation we never gave (a record lost, another server's, or made up):
            // never guess where such a replica is, and never let a request pick numbers.
            return Err(unknown_position(generation, None, newest));
        }
        let Some(known) = self.find(generation) else {
            return self.move_on(manager, generation);
        };
        if start == 1 {
            if known.generation == newest {
                let current = self.startable(manager)?;
                if current.generation == generation {
                    let file = image_path(&self.db, generation);
                    return Ok(Pull::Image { file, pages: current.image_pages });
                }
                return Ok(Pull::EndOfGeneration(current.generation));
            }
            return self.move_on(manager, generation);
        }
        let held = start - 1;
        if held < known.image_pages {
            // Inside the image: no replica stops there (it is one transaction).
            return Err(unknown_position(generation, Some(held), newest));
        }
        // A generation still recorded is of this history (`forget_other_histories`), and so
        // is what its replicas hold: served on from the log while it holds their commit.
        let frame_no = known.base_frame_no + (held - known.image_pages) as u64;
        let from = libsql_wal::position_at(&self.db, manager, frame_no)
            .map_err(|e| internal(format!("cannot read the log: {e}")))?;
        let Some(from) = from else {
            return self.move_on(manager, generation);
        };
        let follower = self.hold_at(manager, from.frame_no)?;
        match follower.frames_after(from, PULL_BYTES).map_err(|e| internal(format!("cannot read the log: {e}")))? {
            FramesAfter::Frames { frames, end } => {
                self.see(end)?;
                Ok(Pull::Frames(to_libsql_frames(&frames)))
            }
            FramesAfter::UpToDate => Ok(Pull::EndOfGeneration(generation)),
            FramesAfter::Unservable(_) => self.move_on(manager, generation),
        }
    }
}

/// Writes `db`'s record: a temporary file, synced, renamed over the old one, the directory
/// synced. A crash leaves the old record or the new one, never a mix.
fn save_record(db: &Path, record: &Record) -> Result<(), String> {
    let path = record_path(db);
    let tmp = sidecar(db, "-generations.tmp");
    let bytes = serde_json::to_vec(record).map_err(|e| format!("cannot encode the record: {e}"))?;
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_parent(&path)
    })();
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Whether the image file is there with all its pages (a damaged one is made anew).
fn image_whole(image: &Path, pages: u32) -> bool {
    std::fs::metadata(image).is_ok_and(|m| m.len() == pages as u64 * PAGE_BYTES as u64)
}

/// 409 `SYNC_POSITION_UNKNOWN`: a replica's generation (and frame) this server cannot place.
fn unknown_position(generation: u32, frame: Option<u32>, newest: u32) -> HttpError {
    let at = frame.map_or_else(String::new, |f| format!(", frame {f}"));
    error(
        StatusCode::CONFLICT,
        "SYNC_POSITION_UNKNOWN",
        format!(
            "generation {generation}{at} is not a position this server gave (its newest generation is {newest}): \
             delete the replica's file and its -info to start it again"
        ),
    )
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Writes an image of `db` at its last commit to `image` (synced, renamed into place) and
/// returns that commit's position. Page 1's bytes 72..92 (where our checkpoint mark sits
/// in the file) are zeroed: SQLite's own value, and what the log's page 1 carries.
fn write_image(db: &Path, manager: &LibsqlWalManager, image: &Path) -> Result<Position, HttpError> {
    let tmp = sidecar(image, ".tmp");
    let result = (|| -> Result<Position, HttpError> {
        let mut file = std::fs::File::create(&tmp).map_err(|e| internal(format!("cannot create the image: {e}")))?;
        let mut first = true;
        let position = libsql_wal::export_image(db, manager, &mut |chunk| {
            let mut chunk = std::borrow::Cow::Borrowed(chunk);
            if std::mem::take(&mut first) {
                chunk.to_mut()[72..92].fill(0);
            }
            file.write_all(&chunk).map_err(|e| libsql_wal::Error::Restore(format!("cannot write the image: {e}")))
        })
        .map_err(|e| internal(format!("cannot export the database: {e}")))?;
        let position = match position {
            Some(position) => position,
            // A database of no pages: the image is empty, the base its last commit.
            None => libsql_wal::log_position(db, manager).map_err(|e| internal(format!("cannot read the log: {e}")))?,
        };
        file.sync_all().map_err(|e| internal(format!("cannot sync the image: {e}")))?;
        std::fs::rename(&tmp, image).map_err(|e| internal(format!("cannot rename the image: {e}")))?;
        sync_parent(image).map_err(|e| internal(format!("cannot sync the directory: {e}")))?;
        Ok(position)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Our log's frames (32-byte headers, little-endian fields) as libSQL's.
fn to_libsql_frames(frames: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len() / LOG_FRAME_BYTES * FRAME_BYTES);
    for frame in frames.chunks_exact(LOG_FRAME_BYTES) {
        let page_no = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes"));
        let size_after = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        out.extend_from_slice(&libsql_header(page_no, size_after));
        out.extend_from_slice(&frame[32..]);
    }
    out
}

fn libsql_header(page_no: u32, size_after: u32) -> [u8; 24] {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&page_no.to_be_bytes());
    header[4..8].copy_from_slice(&size_after.to_be_bytes());
    header
}

/// An image file sent as frames 1..=pages, page i as frame i, the last one a commit.
fn image_as_frames(file: PathBuf, pages: u32) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let send = |chunk| tx.blocking_send(chunk).is_ok();
        let mut source = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) => {
                send(Err(e));
                return;
            }
        };
        let mut page_no = 0u32;
        let mut buf = vec![0u8; IMAGE_CHUNK_PAGES * PAGE_BYTES];
        while page_no < pages {
            let count = (IMAGE_CHUNK_PAGES as u32).min(pages - page_no) as usize;
            let chunk = &mut buf[..count * PAGE_BYTES];
            if let Err(e) = std::io::Read::read_exact(&mut source, chunk) {
                // The body ends short: the replica's transaction never commits.
                send(Err(e));
                return;
            }
            let mut out = Vec::with_capacity(count * FRAME_BYTES);
            for page in chunk.chunks_exact(PAGE_BYTES) {
                page_no += 1;
                out.extend_from_slice(&libsql_header(page_no, if page_no == pages { pages } else { 0 }));
                out.extend_from_slice(page);
            }
            if !send(Ok(Bytes::from(out))) {
                return;
            }
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// A file's bytes, read on a blocking thread a chunk ahead of the client.
fn file_body(mut file: std::fs::File) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; IMAGE_CHUNK_PAGES * PAGE_BYTES];
        loop {
            let chunk = match std::io::Read::read(&mut file, &mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// 400 `{"generation": g}`, what the replica reads as the end of its generation.
fn end_of_generation(generation: u32) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "generation": generation }).to_string(),
    )
        .into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(internal(format!("a sync task failed: {e}"))))
}

fn parse_number(what: &str, text: &str) -> Result<u32, HttpError> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(error(StatusCode::NOT_FOUND, "SYNC_INVALID", format!("invalid {what} {text:?}: a number from 1"))),
    }
}

/// The request's database: its namespace authorized, opened (created, as a Hrana request
/// would, on a primary), with at least page 1 so that its image is a database.
fn database(shared: &Shared, headers: &HeaderMap, from_path: Option<&str>) -> Result<PathBuf, HttpError> {
    let namespace = crate::http::namespace(shared, headers, from_path)?;
    let access = crate::http::authorize(shared, headers, &namespace)?;
    let read_only = access == crate::auth::Access::ReadOnly || shared.dbs.primary().is_some();
    let deadline = Arc::new(crate::databases::Deadline::default());
    let conn = shared.dbs.checkout(&namespace, read_only, deadline).map_err(|e| {
        error(StatusCode::NOT_FOUND, "NAMESPACE_NOT_FOUND", format!("cannot open namespace {namespace}: {e:?}"))
    })?;
    // Read-only credentials (or a replica) write nothing, not even page 1.
    let written = if read_only { Ok(()) } else { ensure_page_one(&conn) };
    shared.dbs.checkin(&namespace, conn);
    written.map_err(|e| internal(format!("cannot write the database header: {e}")))?;
    Ok(shared.dbs.path_of(&namespace))
}

/// A database never written has no page yet; libSQL's replica needs a file with a header
/// to start from (seen with @libsql/client 0.18: on an empty file it missed the schema its
/// first frames brought). Rewriting `user_version` as it is writes page 1 and nothing else.
fn ensure_page_one(conn: &crate::databases::Conn) -> rusqlite::Result<()> {
    if conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))? > 0
        || conn.is_readonly(rusqlite::DatabaseName::Main)?
    {
        return Ok(());
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    conn.execute_batch(&format!("PRAGMA user_version = {version}"))
}

async fn info(shared: Arc<Shared>, headers: HeaderMap, ns: Option<String>) -> Result<Response, HttpError> {
    let generation = blocking(move || {
        let db = database(&shared, &headers, ns.as_deref())?;
        let manager = shared.dbs.manager();
        shared.generations.with_table(&db, manager, |table| Ok(table.startable(manager)?.generation))
    })
    .await?;
    let body = serde_json::json!({ "current_generation": generation }).to_string();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn export(
    shared: Arc<Shared>,
    headers: HeaderMap,
    ns: Option<String>,
    generation: String,
) -> Result<Response, HttpError> {
    let generation = parse_number("generation", &generation)?;
    let file = blocking(move || {
        let db = database(&shared, &headers, ns.as_deref())?;
        let manager = shared.dbs.manager();
        let current = shared.generations.with_table(&db, manager, |table| table.startable(manager))?;
        if current.generation != generation {
            return Err(error(
                StatusCode::CONFLICT,
                "SYNC_GENERATION_MOVED",
                format!("generation {generation} is not the current one ({}): sync again", current.generation),
            ));
        }
        std::fs::File::open(image_path(&db, generation)).map_err(|e| internal(format!("cannot open the image: {e}")))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], file_body(file)).into_response())
}

async fn pull(
    shared: Arc<Shared>,
    headers: HeaderMap,
    ns: Option<String>,
    (generation, start, end): (String, String, String),
) -> Result<Response, HttpError> {
    let generation = parse_number("generation", &generation)?;
    let start = parse_number("start frame", &start)?;
    if parse_number("end frame", &end)? <= start {
        return Err(error(StatusCode::NOT_FOUND, "SYNC_INVALID", format!("end {end} is not past start {start}")));
    }
    let answer = blocking(move || {
        let db = database(&shared, &headers, ns.as_deref())?;
        let manager = shared.dbs.manager();
        shared.generations.with_table(&db, manager, |table| table.pull(manager, generation, start))
    })
    .await?;
    Ok(match answer {
        Pull::EndOfGeneration(g) => end_of_generation(g),
        Pull::Image { pages: 0, .. } => end_of_generation(generation),
        Pull::Image { file, pages } => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], image_as_frames(file, pages)).into_response()
        }
        Pull::Frames(frames) => ([(header::CONTENT_TYPE, "application/octet-stream")], frames).into_response(),
    })
}

pub async fn info_default(State(s): State<Arc<Shared>>, h: HeaderMap) -> Result<Response, HttpError> {
    info(s, h, None).await
}

pub async fn info_dev(
    State(s): State<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    h: HeaderMap,
) -> Result<Response, HttpError> {
    info(s, h, Some(ns)).await
}

pub async fn export_default(
    State(s): State<Arc<Shared>>,
    UrlPath(g): UrlPath<String>,
    h: HeaderMap,
) -> Result<Response, HttpError> {
    export(s, h, None, g).await
}

pub async fn export_dev(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, g)): UrlPath<(String, String)>,
    h: HeaderMap,
) -> Result<Response, HttpError> {
    export(s, h, Some(ns), g).await
}

pub async fn pull_default(
    State(s): State<Arc<Shared>>,
    UrlPath(range): UrlPath<(String, String, String)>,
    h: HeaderMap,
) -> Result<Response, HttpError> {
    pull(s, h, None, range).await
}

pub async fn pull_dev(
    State(s): State<Arc<Shared>>,
    UrlPath((ns, g, start, end)): UrlPath<(String, String, String, String)>,
    h: HeaderMap,
) -> Result<Response, HttpError> {
    pull(s, h, Some(ns), (g, start, end)).await
}

/// A push of offline writes (`POST /sync/…`): not taken; writes go through Hrana.
pub async fn push() -> HttpError {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "SYNC_PUSH_UNSUPPORTED",
        "this server does not take writes pushed by an embedded replica (POST /sync); write through Hrana \
         (the client's url) instead",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use libsql_wal::io::StdIo;
    use libsql_wal::{WalConfig, follow, open_connection};

    fn manager() -> LibsqlWalManager {
        let config = WalConfig { segment_frames_max: 16, segment_age_max: None, ..Default::default() };
        LibsqlWalManager::new(StdIo::shared(), config)
    }

    fn write(db: &Path, manager: &LibsqlWalManager, transactions: usize) {
        let conn = open_connection(db, manager).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t(x)").unwrap();
        for i in 0..transactions {
            conn.execute("INSERT INTO t VALUES (randomblob(3000) || ?1)", [i as i64]).unwrap();
        }
    }

    /// A position this server never gave is refused, and makes nothing: no generation on a
    /// request's word (before: each such request wrote a new image, and a made-up number
    /// near u32::MAX wrapped the numbering).
    #[test]
    fn positions_never_given_are_refused_and_make_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager();
        let db = dir.path().join("a.db");
        write(&db, &manager, 3);
        let mut table = Table::load(&db, &manager).unwrap();
        let first = table.startable(&manager).unwrap();
        assert!(first.image_pages > 1);
        for (generation, start) in [(u32::MAX - 1, 1), (first.generation + 1, 5), (first.generation, 2)] {
            assert!(table.pull(&manager, generation, start).is_err(), "{generation}/{start} refused");
            assert_eq!((table.record.newest, table.record.generations.len()), (first.generation, 1));
        }
        assert!(matches!(table.pull(&manager, first.generation, 1).unwrap(), Pull::Image { .. }));
    }

    /// A record beside a database of another history (the file replaced, the record kept):
    /// its replicas get a new generation's image, never frames of the other history that
    /// happen to carry the numbers they expect next.
    #[test]
    fn generations_of_another_history_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        write(&a, &manager, 3);
        let mut table = Table::load(&a, &manager).unwrap();
        let first = table.startable(&manager).unwrap();
        write(&a, &manager, 5);
        let start = first.image_pages + 1;
        assert!(matches!(table.pull(&manager, first.generation, start).unwrap(), Pull::Frames(_)));
        let sent_to = libsql_wal::log_position(&a, &manager).unwrap().frame_no;
        table.put_away();
        drop(table);

        // b's log holds every frame (a follower at 0), well past what the replica was sent.
        let _hold = {
            write(&b, &manager, 1);
            let hold = follow(&b, &manager, 0).unwrap();
            write(&b, &manager, 40);
            hold
        };
        assert!(libsql_wal::log_position(&b, &manager).unwrap().frame_no > sent_to + 10);
        std::fs::copy(record_path(&a), record_path(&b)).unwrap();
        let mut table = Table::load(&b, &manager).unwrap();
        let next = first.image_pages + (sent_to - first.base_frame_no) as u32 + 1;
        match table.pull(&manager, first.generation, next).unwrap() {
            Pull::EndOfGeneration(g) => assert!(g > first.generation, "sent on to {g}"),
            Pull::Frames(_) => panic!("frames of another history sent to a replica of the first"),
            Pull::Image { .. } => panic!("an image in the middle of a generation"),
        }
    }

    #[test]
    fn log_frames_become_libsql_frames() {
        let mut ours = vec![0u8; LOG_FRAME_BYTES * 2];
        ours[0..4].copy_from_slice(&7u32.to_le_bytes());
        ours[LOG_FRAME_BYTES..LOG_FRAME_BYTES + 4].copy_from_slice(&9u32.to_le_bytes());
        ours[LOG_FRAME_BYTES + 4..LOG_FRAME_BYTES + 8].copy_from_slice(&12u32.to_le_bytes());
        ours[LOG_FRAME_BYTES + 32] = 0xab;
        let theirs = to_libsql_frames(&ours);
        assert_eq!(theirs.len(), 2 * FRAME_BYTES);
        assert_eq!(&theirs[0..8], &[0, 0, 0, 7, 0, 0, 0, 0]);
        assert_eq!(&theirs[FRAME_BYTES..FRAME_BYTES + 8], &[0, 0, 0, 9, 0, 0, 0, 12]);
        assert_eq!(theirs[FRAME_BYTES + 24], 0xab);
    }
}
