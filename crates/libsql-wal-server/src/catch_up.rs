//! A replica's bootstrap from object storage (`serve --replica-of URL --storage S`): the
//! primary's namespace restored from the objects `restore` uses (its latest durable state),
//! installed as the replica's database at the position it lands on. The replica then
//! streams the rest from the primary, which serves only the tail after that position. A
//! replica's storage is read from only: a replica never uploads (its log's chain values are
//! its own; the namespace is the primary's to ship).

use std::path::Path;

use libsql_wal::storage::Storage;
use libsql_wal::{LibsqlWalManager, Position};

/// Restores `namespace` from `storage` and installs it at `db` (which must not exist).
/// `None` when storage holds nothing of the namespace yet (a primary that never shipped
/// it): the replica then bootstraps from the primary.
pub fn bootstrap_from_storage(
    storage: &Storage,
    namespace: &str,
    db: &Path,
    manager: &LibsqlWalManager,
) -> Result<Option<(Position, u64)>, String> {
    let objects = storage.list(namespace).map_err(|e| format!("listing {namespace} in storage: {e}"))?;
    let chain = libsql_wal::storage::layout::chain(&objects);
    if chain.snapshot.is_none() && chain.segments.is_empty() {
        return Ok(None);
    }
    let scratch = db.with_extension(format!("restoring-{}", std::process::id()));
    let _ = std::fs::remove_file(&scratch);
    let restored = libsql_wal::storage::restore::restore(storage, namespace, &scratch, &mut |_, _| {});
    let report = restored.map_err(|e| {
        let _ = std::fs::remove_file(&scratch);
        format!("restoring {namespace} from storage: {e}")
    })?;
    let installed = libsql_wal::install_image(&scratch, db, manager);
    if installed.is_err() {
        let _ = std::fs::remove_file(&scratch);
    }
    let position = installed.map_err(|e| format!("installing {namespace} restored from storage: {e}"))?;
    Ok(Some((position, report.bytes)))
}
