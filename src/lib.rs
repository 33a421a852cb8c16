//! A segmented, shared write-ahead log for libSQL.
//!
//! Plug it into libSQL through `libsql-sys`:
//!
//! ```no_run
//! use libsql_wal::{open_connection, LibsqlWalManager};
//!
//! let manager = LibsqlWalManager::default();
//! let conn = open_connection("data.db", &manager).unwrap();
//! conn.execute_batch("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (1);").unwrap();
//! let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
//! assert!(n >= 1);
//! ```
//!
//! See `ARCHITECTURE.md` for the map of the crate and `docs/FORMAT.md` for the files.

mod api;
pub mod bench;
pub mod checkpointer;
mod error;
pub mod faulty;
pub mod format;
pub mod io;
mod ownership;
mod registry;
mod segment;
mod shared;
pub mod storage;
pub mod stress;
mod wal;

pub use api::{
    LogInfo, SegmentInfo, VerifyReport, checkpoint, durable_frame_no, flush_to_storage, inspect, inspect_read_only,
    open_connection, open_sqlite_connection, verify, wait_durable,
};
pub use checkpointer::{Checkpointer, CheckpointerConfig, CheckpointerStats};
pub use error::{Error, Result};
pub use registry::{
    DEFAULT_IDLE_OPEN_FILES_MAX, RegistryStats, close_idle_logs, registry_stats, set_idle_open_files_max,
};
pub use shared::{CheckpointMode, CheckpointResult, WalConfig};
pub use storage::durability::{DurabilityInfo, StorageBinding};
pub use storage::restore::{RestoreOptions, RestoreReport, restore, restore_with};
pub use storage::{Storage, StorageConfig};
pub use wal::{LibsqlWal, LibsqlWalManager, namespace_of};
