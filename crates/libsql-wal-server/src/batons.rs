//! Streams kept between HTTP requests, each behind a baton: an unguessable token (128 random
//! bits from the OS) that is good for one request only. Every response on a stream carries a
//! new baton, so two requests can never run on one stream at once by accident, and a baton
//! seen in a log cannot be replayed once used.
//!
//! A stream unused for `baton_timeout` is closed and its transaction rolled back (the
//! sweeper, [`Batons::expire`]); so is every stream at shutdown ([`Batons::close_all`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::databases::Databases;
use crate::hrana::stream::Stream;

/// A stream and when it was last used. `stream` is `None` once it ended.
pub struct Held {
    pub stream: Option<Stream>,
    pub idle_since: Instant,
}

/// Shared by the baton table and the request running on the stream: the request holds the
/// lock while it runs, so a request that follows (a cursor's next) waits for it.
pub type Slot = Arc<tokio::sync::Mutex<Held>>;

pub fn new_slot(stream: Stream) -> Slot {
    Arc::new(tokio::sync::Mutex::new(Held { stream: Some(stream), idle_since: Instant::now() }))
}

pub struct Batons {
    table: Mutex<HashMap<String, Slot>>,
    max: usize,
    timeout: Duration,
}

impl Batons {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Batons { table: Mutex::new(HashMap::new()), max, timeout }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(&self) -> usize {
        self.table().len()
    }

    /// Whether one more stream may be kept open.
    pub fn has_room(&self) -> bool {
        self.open() < self.max
    }

    /// The stream behind `baton`, which is used up by this.
    pub fn take(&self, baton: &str) -> Option<Slot> {
        self.table().remove(baton)
    }

    /// Keeps `slot` for the next request; returns its baton, or the slot back if the OS's
    /// random generator failed (a guessable baton would let anyone take the stream over).
    pub fn keep(&self, slot: Slot) -> Result<String, Slot> {
        let Some(baton) = new_baton() else { return Err(slot) };
        self.table().insert(baton.clone(), slot);
        Ok(baton)
    }

    /// Ends the streams idle for longer than the timeout (rolling back their transactions).
    /// A stream busy with a request is not idle.
    pub async fn expire(&self, dbs: &Arc<Databases>) {
        let expired: Vec<Slot> = {
            let mut table = self.table();
            let old: Vec<String> = table
                .iter()
                .filter(|(_, slot)| slot.try_lock().is_ok_and(|held| held.idle_since.elapsed() > self.timeout))
                .map(|(baton, _)| baton.clone())
                .collect();
            old.iter().filter_map(|baton| table.remove(baton)).collect()
        };
        for slot in expired {
            end(slot, dbs).await;
        }
    }

    /// Ends every stream (at shutdown), waiting for those busy with a request.
    pub async fn close_all(&self, dbs: &Arc<Databases>) {
        let all: Vec<Slot> = self.table().drain().map(|(_, slot)| slot).collect();
        for slot in all {
            end(slot, dbs).await;
        }
    }
}

async fn end(slot: Slot, dbs: &Arc<Databases>) {
    let stream = slot.lock().await.stream.take();
    if let Some(stream) = stream {
        tracing::debug!(namespace = stream.namespace(), rolled_back = stream.in_transaction(), "stream closed");
        let dbs = dbs.clone();
        // Ending may roll back and close a connection: SQLite work, off the async threads.
        let _ = tokio::task::spawn_blocking(move || stream.end(&dbs)).await;
    }
}

fn new_baton() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let mut baton = String::with_capacity(32);
    for b in bytes {
        let _ = write!(baton, "{b:02x}");
    }
    Some(baton)
}
