//! `--ack replicas=K`: a write's response waits until K replicas hold its commit durably
//! (semi-synchronous replication). A replica streaming a namespace names itself
//! (`?replica=ID` on `/replication/v1/frames`: it holds its position durably, so that much
//! counts at once) and, after each group of transactions it has applied and synced, says how
//! far it is (`POST /replication/v1/ack?replica=ID&frame_no=N`). A replica counts while its
//! stream is connected, only with credentials that may write (anyone who may read could
//! otherwise pose as one), and only up to what its streams were sent. A write waits on a blocking thread until K replicas acknowledged a
//! frame at or past the namespace's last commit, at most `timeout`; else it fails (503
//! `REPLICAS_NOT_ACKED`): never an acknowledgement no replica backs.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Per namespace: each connected replica's acknowledged frame_no.
#[derive(Default)]
pub struct ReplicaAcks {
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
}

struct Replica {
    /// Streams connected under its name.
    streams: usize,
    /// The newest frame_no it acknowledged (or held when its stream began).
    acked: u64,
    /// The newest frame_no one of its streams was sent (or started from): an
    /// acknowledgement past it is of frames it never got, and counts only up to it.
    sent: u64,
}

#[derive(Default)]
struct Namespace {
    /// Replica id → its streams and frames.
    replicas: Mutex<HashMap<String, Replica>>,
    changed: Condvar,
}

impl ReplicaAcks {
    fn namespace(&self, name: &str) -> Arc<Namespace> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        namespaces.entry(name.to_string()).or_default().clone()
    }

    /// A replica's stream of `namespace` began, the replica holding `frame_no` durably.
    /// It counts until the returned guard drops (the stream ends).
    pub fn connected(self: &Arc<Self>, namespace: &str, replica: &str, frame_no: u64) -> Connected {
        let ns = self.namespace(namespace);
        {
            let mut replicas = ns.replicas.lock().unwrap_or_else(|e| e.into_inner());
            let entry =
                replicas.entry(replica.to_string()).or_insert(Replica { streams: 0, acked: frame_no, sent: frame_no });
            entry.streams += 1;
            entry.acked = entry.acked.max(frame_no);
            entry.sent = entry.sent.max(frame_no);
        }
        ns.changed.notify_all();
        Connected { ns, replica: replica.to_string() }
    }

    /// The replica holds `namespace` durably up to `frame_no`. Unknown replicas (no stream
    /// connected) are ignored: a replica counts only while it follows.
    pub fn acknowledged(&self, namespace: &str, replica: &str, frame_no: u64) {
        let ns = self.namespace(namespace);
        let known = {
            let mut replicas = ns.replicas.lock().unwrap_or_else(|e| e.into_inner());
            replicas.get_mut(replica).map(|entry| entry.acked = entry.acked.max(frame_no.min(entry.sent))).is_some()
        };
        if known {
            ns.changed.notify_all();
        }
    }

    /// Replicas of `namespace` holding `frame_no`, and replicas connected.
    pub fn holding(&self, namespace: &str, frame_no: u64) -> (usize, usize) {
        let ns = self.namespace(namespace);
        let replicas = ns.replicas.lock().unwrap_or_else(|e| e.into_inner());
        (replicas.values().filter(|r| r.acked >= frame_no).count(), replicas.len())
    }

    /// Blocks until `k` replicas hold `frame_no` of `namespace`, at most `timeout`.
    pub fn wait(&self, namespace: &str, frame_no: u64, k: usize, timeout: Duration) -> Result<(), String> {
        let ns = self.namespace(namespace);
        let deadline = Instant::now() + timeout;
        let mut replicas = ns.replicas.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let holding = replicas.values().filter(|r| r.acked >= frame_no).count();
            if holding >= k {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "frame {frame_no} is committed on the primary but held by {holding} of the {k} replicas \
                     --ack replicas={k} waits for ({} connected) after {timeout:?}",
                    replicas.len()
                ));
            }
            replicas = ns.changed.wait_timeout(replicas, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// A replica's stream, counted while it lives.
pub struct Connected {
    ns: Arc<Namespace>,
    replica: String,
}

impl Connected {
    /// The stream was sent frames up to `frame_no`: acknowledgements count up to it.
    pub fn sent(&self, frame_no: u64) {
        let mut replicas = self.ns.replicas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = replicas.get_mut(&self.replica) {
            entry.sent = entry.sent.max(frame_no);
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut replicas = self.ns.replicas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = replicas.get_mut(&self.replica) {
            entry.streams -= 1;
            if entry.streams == 0 {
                replicas.remove(&self.replica);
            }
        }
        drop(replicas);
        self.ns.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_waits_for_k_connected_replicas_and_no_more() {
        let acks = Arc::new(ReplicaAcks::default());
        assert!(acks.wait("ns", 10, 1, Duration::from_millis(20)).unwrap_err().contains("held by 0 of the 1"));
        let a = acks.connected("ns", "a", 5);
        let b = acks.connected("ns", "b", 12);
        assert!(acks.wait("ns", 10, 1, Duration::ZERO).is_ok(), "b holds 12 already");
        assert!(acks.wait("ns", 10, 2, Duration::from_millis(20)).is_err());
        let waiter = {
            let acks = acks.clone();
            std::thread::spawn(move || acks.wait("ns", 10, 2, Duration::from_secs(10)))
        };
        acks.acknowledged("ns", "a", 10);
        assert!(acks.wait("ns", 10, 2, Duration::from_millis(20)).is_err(), "a was sent up to 5 only");
        a.sent(10);
        acks.acknowledged("ns", "a", 10);
        assert!(waiter.join().unwrap().is_ok());
        drop(b);
        assert_eq!(acks.holding("ns", 10), (1, 1), "a replica whose stream ended counts no more");
        acks.acknowledged("ns", "ghost", 100);
        assert_eq!(acks.holding("ns", 100), (0, 1), "an acknowledgement without a stream counts for nothing");
        acks.acknowledged("ns", "a", u64::MAX);
        assert_eq!(acks.holding("ns", 11), (0, 1), "nor one past what the stream was sent");
        drop(a);
        assert_eq!(acks.holding("ns", 0), (0, 0));
    }
}
