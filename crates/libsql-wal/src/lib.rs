//! A segmented, shared write-ahead log for libSQL.
//!
//! libSQL lets a program plug in its own WAL through `libsql-sys` (`WalManager` / `Wal`);
//! this crate is such a WAL. Frames go to segment files under `<db>-wal/`, one log per
//! database per process is shared by every connection, checkpoints run in the background,
//! and sealed segments can be shipped to an object store ([`Storage`]).
//!
//! # Example
//!
//! A manager with a background checkpointer and storage on a local directory; a commit,
//! waited on until it is durable in storage; then a restore of the database from storage
//! alone:
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//!
//! use libsql_wal::io::StdIo;
//! use libsql_wal::{
//!     Checkpointer, LibsqlWalManager, Storage, WalConfig, flush_to_storage, open_connection, restore,
//! };
//!
//! # fn main() -> libsql_wal::Result<()> {
//! let storage = Storage::open("file:///var/backups/wal")?;
//! let manager = LibsqlWalManager::new(StdIo::shared(), WalConfig::default())
//!     .with_checkpointer(Checkpointer::global())
//!     .with_storage(storage.clone())
//!     .with_namespace("app")?;
//!
//! let conn = open_connection("app.db", &manager)?; // a libsql_sys::Connection<LibsqlWal>
//! conn.execute_batch("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (1);")?;
//! let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
//! assert!(n >= 1);
//!
//! // Seal the current segment and wait until storage has every commit so far.
//! let durable = flush_to_storage("app.db", Some(Duration::from_secs(30)), &manager)?;
//! println!("durable up to frame_no {durable:?}");
//! drop(conn); // the last close checkpoints: app.db is a plain SQLite file again
//!
//! // Rebuild the database from storage alone, into a new file.
//! let report = restore(&storage, "app", Path::new("restored.db"), &mut |_done, _total| {})?;
//! println!("restored up to frame_no {}", report.frame_no);
//! # Ok(())
//! # }
//! ```
//!
//! # The public API
//!
//! - Connections: [`open_connection`] (the front door), [`LibsqlWalManager`] (the
//!   `WalManager`, configured by [`WalConfig`]), [`LibsqlWal`] (one connection's WAL),
//!   [`open_sqlite_connection`] (SQLite's own WAL, for comparisons).
//! - Checkpoints: [`checkpoint`] with a [`CheckpointMode`] → [`CheckpointResult`]; the
//!   background [`Checkpointer`] ([`CheckpointerConfig`], [`CheckpointerStats`]).
//! - Inspection: [`inspect`] / [`inspect_read_only`] → [`LogInfo`] ([`SegmentInfo`]),
//!   [`verify`] → [`VerifyReport`].
//! - Storage: [`Storage`] ([`StorageConfig`]), [`durable_frame_no`], [`wait_durable`],
//!   [`flush_to_storage`], [`restore`] / [`restore_with`] ([`RestoreOptions`],
//!   [`RestoreReport`]), [`DurabilityInfo`], [`StorageBinding`]; the modules [`storage`]
//!   (`layout`: object keys and chains, for tools listing a store) and [`checkpointer`].
//! - Open logs in the process: [`registry_stats`], [`close_idle_logs`],
//!   [`set_idle_open_files_max`], [`namespace_of`].
//! - [`metrics`]: the names of the counters, gauges and histograms the crate emits through the
//!   `metrics` facade, and [`metrics::update_gauges`] to call before a scrape.
//! - [`io`]: the [`io::Io`] and [`io::IoFile`] traits every disk access goes through, and
//!   [`io::StdIo`]. Public so a program can wrap the real file system (count syncs, inject
//!   faults: the testkit's fault injector is such an `Io`).
//! - [`format`]: the on-disk structures (`docs/FORMAT.md`), for tools that read segment
//!   files; plain data, no I/O.
//! - [`Error`] and [`Result`].
//!
//! # Cargo features
//!
//! - `s3`, `gcs`, `azure`: the cloud backends of [`Storage::open`] (`s3://`, `gs://`,
//!   `az://` / `abfs(s)://`), object_store's `aws`, `gcp` and `azure`. Off by default: each
//!   brings an HTTP client, TLS and crypto (the three together about 80 more crates).
//!   `file://` and `memory://` are always there. A URL whose backend's feature is off is
//!   refused with an error naming the feature.
//! - `bench-internals`: `bench_internals::SegmentBench`, one segment file driven directly,
//!   for the testkit's micro-benchmarks. Not a stable API.
//!
//! See `ARCHITECTURE.md` for the map of the code and `docs/FORMAT.md` for the files.

mod api;
mod backoff;
#[cfg(feature = "bench-internals")]
pub mod bench_internals;
pub mod checkpointer;
mod error;
mod file_stamp;
pub mod format;
#[cfg(feature = "fuzz-internals")]
pub mod fuzz_internals;
mod instruments;
pub mod io;
mod log;
pub mod metrics;
mod ownership;
mod registry;
mod segment;
pub mod storage;
#[cfg(test)]
mod test_io;
mod upstream;
mod wal;

pub use crate::log::replicate::FramesAfter;
pub use crate::log::{CheckpointMode, CheckpointResult, WalConfig};
pub use crate::upstream::Position;
pub use api::Follower;
pub use api::{
    LogInfo, SegmentInfo, UpstreamInfo, VerifyReport, apply_frames, checkpoint, durable_frame_no, export_image,
    flush_to_storage, follow, inspect, inspect_read_only, install_image, last_commit_frame_no, log_position,
    open_connection, open_sqlite_connection, position_at, replace_with_image, replica_position, verify, wait_durable,
};
pub use checkpointer::{Checkpointer, CheckpointerConfig, CheckpointerStats};
pub use error::{Error, IoAction, Result};
pub use object_store;
pub use registry::{
    DEFAULT_IDLE_OPEN_FILES_MAX, RegistryStats, close_idle_logs, registry_stats, set_idle_open_files_max,
};
pub use storage::durability::{DurabilityInfo, StorageBinding};
pub use storage::restore::{RestoreOptions, RestoreReport, restore, restore_with};
pub use storage::{Storage, StorageConfig};
pub use wal::{LibsqlWal, LibsqlWalManager, namespace_of};
