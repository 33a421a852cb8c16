//! Streams kept between HTTP requests, each behind a baton: an unguessable token (128 random
//! bits from the OS) that is good for one request only. Every response on a stream carries a
//! new baton, so two requests can never run on one stream at once by accident, and a baton
//! seen in a log cannot be replayed once used.
//!
//! A stream unused for `baton_timeout` is closed and its transaction rolled back (the
//! sweeper, [`Batons::expire`]); so is every stream at shutdown ([`Batons::close_all`]).
//!
//! Open streams are bounded in all (`--max-batons`) and, if asked, per [`Client`]
//! (`--max-batons-per-client`): without the second, one client that never closes its
//! streams takes every place until its streams expire, and everyone else is refused.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
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

/// Who opened a stream, as `--max-batons-per-client` counts: the holder of a JWT when
/// tokens are per client, else the peer's address. A stream stays its opener's until it
/// ends, whoever uses its batons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address, or an IPv6 one by its /64: one host is commonly given a whole /64,
    /// so counting its addresses one by one would give it billions of quotas.
    Address(IpAddr),
    /// A JWT, by a keyed hash of its text (the token is not kept).
    Token(u64),
}

impl Client {
    pub fn address(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                Client::Address(IpAddr::V6(Ipv6Addr::from(segments)))
            }
            v4 => Client::Address(v4),
        }
    }
}

/// Why no place was given for one more open stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `--max-batons` streams are open.
    Server,
    /// This client has `--max-batons-per-client` open.
    Client,
}

pub struct Batons {
    table: Mutex<Table>,
    max: usize,
    /// At most this many open streams per client; 0 for no such bound.
    per_client_max: usize,
    timeout: Duration,
}

/// The streams kept behind a baton, and how many more are spoken for: requests running on a
/// stream that will be kept when they end (each holds a [`Room`]). Both are counted against
/// `--max-batons`, and per client, under one lock, so the check and the count can never be
/// raced past.
#[derive(Default)]
struct Table {
    kept: HashMap<String, (Slot, Client)>,
    reserved: usize,
    /// Open streams (kept or reserved) by who opened them; a client with none has no entry,
    /// so the map is bounded by the open streams.
    per_client: HashMap<Client, usize>,
}

impl Table {
    fn release(&mut self, client: Client) {
        if let Some(count) = self.per_client.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// One stream's place under `--max-batons` (and its opener's quota), held by the request
/// running on it. Given back when dropped (the stream ended), or turned into a kept stream
/// by [`Batons::keep`].
pub struct Room<'a> {
    batons: &'a Batons,
    client: Client,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        let mut table = self.batons.table();
        table.reserved -= 1;
        table.release(self.client);
    }
}

impl Batons {
    pub fn new(max: usize, per_client_max: usize, timeout: Duration) -> Self {
        Batons { table: Mutex::new(Table::default()), max, per_client_max, timeout }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open streams: kept behind a baton, or running a request that will keep them.
    pub fn open(&self) -> usize {
        let table = self.table();
        table.kept.len() + table.reserved
    }

    /// A place for one more stream opened by `client`, if fewer than the limit are open,
    /// and fewer than its quota are its own. The checks and the count happen under one
    /// lock: concurrent requests never open more than either bound.
    pub fn reserve(&self, client: Client) -> Result<Room<'_>, Full> {
        let mut table = self.table();
        if table.kept.len() + table.reserved >= self.max {
            return Err(Full::Server);
        }
        let own = table.per_client.get(&client).copied().unwrap_or(0);
        if self.per_client_max > 0 && own >= self.per_client_max {
            return Err(Full::Client);
        }
        table.reserved += 1;
        table.per_client.insert(client, own + 1);
        Ok(Room { batons: self, client })
    }

    /// The stream behind `baton`, which is used up by this, with its place under the limit
    /// (so no other request can take that place while this one runs), still counted to
    /// the client that opened it.
    pub fn take(&self, baton: &str) -> Option<(Slot, Room<'_>)> {
        let mut table = self.table();
        let (slot, client) = table.kept.remove(baton)?;
        table.reserved += 1;
        Some((slot, Room { batons: self, client }))
    }

    /// Keeps `slot` for the next request in the place `room` held; returns its baton, or the
    /// slot back if the OS's random generator failed (a guessable baton would let anyone take
    /// the stream over), the place then given back.
    pub fn keep(&self, slot: Slot, room: Room<'_>) -> Result<String, Slot> {
        let Some(baton) = new_baton() else { return Err(slot) };
        let mut table = self.table();
        table.kept.insert(baton.clone(), (slot, room.client));
        table.reserved -= 1;
        drop(table);
        // Its count moved to `kept` above; its client's count stays.
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
                .filter(|(_, (slot, _))| slot.try_lock().is_ok_and(|held| held.idle_since.elapsed() > self.timeout))
                .map(|(baton, _)| baton.clone())
                .collect();
            let mut expired = Vec::with_capacity(old.len());
            for baton in old {
                if let Some((slot, client)) = table.kept.remove(&baton) {
                    table.release(client);
                    expired.push(slot);
                }
            }
            expired
        };
        for slot in expired {
            end(slot, dbs).await;
        }
    }

    /// Ends the streams of `namespace` that hold a connection and are between requests
    /// (their transactions rolled back; their batons then get `STREAM_EXPIRED`), so that
    /// its files can be replaced. A stream busy with a request is left to finish it: the
    /// caller asks again.
    pub async fn end_streams_of(&self, namespace: &str, dbs: &Arc<Databases>) {
        let ended: Vec<Slot> = {
            let mut table = self.table();
            let holding: Vec<String> = table
                .kept
                .iter()
                .filter(|(_, (slot, _))| {
                    slot.try_lock().is_ok_and(|held| {
                        held.stream.as_ref().is_some_and(|s| s.namespace() == namespace && s.has_connection())
                    })
                })
                .map(|(baton, _)| baton.clone())
                .collect();
            let mut ended = Vec::with_capacity(holding.len());
            for baton in holding {
                if let Some((slot, client)) = table.kept.remove(&baton) {
                    table.release(client);
                    ended.push(slot);
                }
            }
            ended
        };
        for slot in ended {
            end(slot, dbs).await;
        }
    }

    /// Ends every stream (at shutdown), waiting for those busy with a request.
    pub async fn close_all(&self, dbs: &Arc<Databases>) {
        let all: Vec<Slot> = {
            let mut table = self.table();
            let kept: Vec<(Slot, Client)> = table.kept.drain().map(|(_, kept)| kept).collect();
            kept.into_iter()
                .map(|(slot, client)| {
                    table.release(client);
                    slot
                })
                .collect()
        };
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
