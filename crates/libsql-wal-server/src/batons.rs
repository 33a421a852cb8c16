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
    table: Mutex<Table>,
    max: usize,
    timeout: Duration,
}

/// The streams kept behind a baton, and how many more are spoken for: requests running on a
/// stream that will be kept when they end (each holds a [`Room`]). Both are counted against
/// `--max-batons` under one lock, so the check and the count can never be raced past.
#[derive(Default)]
struct Table {
    kept: HashMap<String, Slot>,
    reserved: usize,
}

/// One stream's place under `--max-batons`, held by the request running on it. Given back
/// when dropped (the stream ended), or turned into a kept stream by [`Batons::keep`].
pub struct Room<'a> {
    batons: &'a Batons,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.batons.table().reserved -= 1;
    }
}

impl Batons {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Batons { table: Mutex::new(Table::default()), max, timeout }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open streams: kept behind a baton, or running a request that will keep them.
    pub fn open(&self) -> usize {
        let table = self.table();
        table.kept.len() + table.reserved
    }

    /// A place for one more open stream, if fewer than the limit are open. The check and
    /// the count happen under one lock: concurrent requests never open more than the limit.
    pub fn reserve(&self) -> Option<Room<'_>> {
        let mut table = self.table();
        if table.kept.len() + table.reserved >= self.max {
            return None;
        }
        table.reserved += 1;
        Some(Room { batons: self })
    }

    /// The stream behind `baton`, which is used up by this, with its place under the limit
    /// (so no other request can take that place while this one runs).
    pub fn take(&self, baton: &str) -> Option<(Slot, Room<'_>)> {
        let mut table = self.table();
        let slot = table.kept.remove(baton)?;
        table.reserved += 1;
        Some((slot, Room { batons: self }))
    }

    /// Keeps `slot` for the next request in the place `room` held; returns its baton, or the
    /// slot back if the OS's random generator failed (a guessable baton would let anyone take
    /// the stream over), the place then given back.
    pub fn keep(&self, slot: Slot, room: Room<'_>) -> Result<String, Slot> {
        let Some(baton) = new_baton() else { return Err(slot) };
        let mut table = self.table();
        table.kept.insert(baton.clone(), slot);
        table.reserved -= 1;
        drop(table);
        // Its count moved to `kept` above.
        std::mem::forget(room);
        Ok(baton)
    }

    /// Ends the streams idle for longer than the timeout (rolling back their transactions).
    /// A stream busy with a request is not idle.
    pub async fn expire(&self, dbs: &Arc<Databases>) {
        let expired: Vec<Slot> = {
            let mut table = self.table();
            let old: Vec<String> = table
                .kept
                .iter()
                .filter(|(_, slot)| slot.try_lock().is_ok_and(|held| held.idle_since.elapsed() > self.timeout))
                .map(|(baton, _)| baton.clone())
                .collect();
            old.iter().filter_map(|baton| table.kept.remove(baton)).collect()
        };
        for slot in expired {
            end(slot, dbs).await;
        }
    }

    /// Ends every stream (at shutdown), waiting for those busy with a request.
    pub async fn close_all(&self, dbs: &Arc<Databases>) {
        let all: Vec<Slot> = self.table().kept.drain().map(|(_, slot)| slot).collect();
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
