//! `--ack durable`: a response goes out only once every commit it could include is durable
//! in storage — group durability, so concurrent commits share one seal-and-upload.
//!
//! Per namespace, at most one flush (seal the current segment, wait for its upload) runs at
//! a time. A request that needs frame N durable returns at once if it is; else it leads a
//! flush if none runs, or waits for the running one and, if that did not cover N (N was
//! committed after it sealed), the next flush — led by one waiter for all the others. So
//! each commit waits about one or two upload round trips however many commit at once, and
//! the number of uploads follows the rounds, not the commits.
//!
//! Everything here blocks: call it from a blocking thread.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::databases::Databases;

#[derive(Default)]
struct Group {
    flushing: bool,
    /// Highest frame_no known durable.
    durable: u64,
    /// The last flush's failure, for the waiters it let down.
    failed: Option<String>,
}

#[derive(Default)]
struct Namespace {
    group: Mutex<Group>,
    done: Condvar,
}

#[derive(Default)]
pub struct DurableAcks {
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
}

impl DurableAcks {
    fn namespace(&self, name: &str) -> Arc<Namespace> {
        let mut map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Waits until `namespace`'s last commit is durable, or `timeout` passes (an error
    /// saying so: the caller answers 503, never a false acknowledgement).
    pub fn wait_last_commit(&self, dbs: &Databases, namespace: &str, timeout: Duration) -> Result<(), String> {
        let path = dbs.path_of(namespace);
        let target = libsql_wal::last_commit_frame_no(&path, dbs.manager()).map_err(|e| e.to_string())?;
        if libsql_wal::durable_frame_no(&path, dbs.manager()).map_err(|e| e.to_string())?.is_some_and(|d| d >= target) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let ns = self.namespace(namespace);
        let mut group = ns.group.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if group.durable >= target {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("frame {target} of {namespace} did not become durable within {timeout:?}"));
            }
            if group.flushing {
                let seen_failure = group.failed.clone();
                group = ns.done.wait_timeout(group, left).unwrap_or_else(|e| e.into_inner()).0;
                if let (None, Some(failure)) = (seen_failure, &group.failed) {
                    return Err(failure.clone());
                }
                continue;
            }
            group.flushing = true;
            group.failed = None;
            drop(group);
            let flushed = libsql_wal::flush_to_storage(&path, Some(left), dbs.manager());
            group = ns.group.lock().unwrap_or_else(|e| e.into_inner());
            group.flushing = false;
            match flushed {
                Ok(Some(frame_no)) => group.durable = group.durable.max(frame_no),
                Ok(None) => {}
                Err(e) => group.failed = Some(format!("storage did not take the commit: {e}")),
            }
            ns.done.notify_all();
            if let Some(failure) = &group.failed {
                return Err(failure.clone());
            }
        }
    }
}
