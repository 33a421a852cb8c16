//! A replica's bootstrap from object storage (`serve --replica-of URL --storage S`): the
//! primary's namespace restored from the objects `restore` uses (its latest durable state),
//! installed as the replica's database at the position it lands on. The replica then
//! streams the rest from the primary, which serves only the tail after that position. A
//! replica's storage is read from only: a replica never uploads (its log's chain values are
//! its own; the namespace is the primary's to ship).

use std::path::Path;

use libsql_wal::storage::Storage;

/// Restores `namespace` from `storage` into a new file `image` (the image a replica
/// installs: its checkpoint mark names the commit it landed on); returns the bytes
/// downloaded. `None` when storage holds nothing of the namespace yet (a primary that never
/// shipped it): the replica then asks the primary.
pub fn restore_image(storage: &Storage, namespace: &str, image: &Path) -> Result<Option<u64>, String> {
    let objects = storage.list(namespace).map_err(|e| format!("listing {namespace} in storage: {e}"))?;
    let chain = libsql_wal::storage::layout::chain(&objects);
    if chain.snapshot.is_none() && chain.segments.is_empty() {
        return Ok(None);
    }
    let _ = std::fs::remove_file(image);
    let restored = libsql_wal::storage::restore::restore(storage, namespace, image, &mut |_, _| {});
    match restored {
        Ok(report) => Ok(Some(report.bytes)),
        Err(e) => {
            let _ = std::fs::remove_file(image);
            Err(format!("restoring {namespace} from storage: {e}"))
        }
    }
}
