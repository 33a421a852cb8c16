//! Branches: a namespace whose history is another's up to a commit, then its own — made
//! without copying any segment data (two empty marker objects), in the time a listing and
//! two small PUTs take.
//!
//! - `<child>/branch/<frame_no>-<commit_ms>-<lineage>-<chain>-<parent>` (an *origin*, read
//!   as [`ObjectKind::Origin`]) makes `child` start from `parent`'s state at `frame_no`:
//!   restore applies the parent's objects up to that commit, then the child's own; the
//!   uploader of a database opened with the child namespace continues from there.
//! - `<parent>/branches/<frame_no>-<child>` tells the parent's garbage collection to keep
//!   that point restorable, until [`remove`] drops the branch.
//!
//! Writes to either never appear in the other: their objects live under their own prefixes,
//! and their histories diverge after the branch point (their chain values differ from the
//! first frame on).

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::storage::history::RestorePoint;
use crate::storage::layout::{self, ObjectKind};
use crate::storage::restore::{RestoreOptions, restore_with};

/// Where a branch starts.
#[derive(Debug, Clone)]
pub struct BranchReport {
    /// The commit of the parent the branch starts from.
    pub frame_no: u64,
    pub commit_unix_ms: Option<u64>,
}

/// Makes `child` a branch of `parent` at the last commit at or before `point` (never
/// `RestorePoint::Latest` by default: the latest state is a point like any other). `child`
/// must hold nothing yet.
pub fn create(storage: &Storage, parent: &str, point: RestorePoint, child: &str) -> Result<BranchReport> {
    layout::validate_namespace(parent)?;
    layout::validate_namespace(child)?;
    if parent == child {
        return Err(Error::Restore(format!("a namespace cannot be a branch of itself ({child})")));
    }
    let held = keys_of(storage, child)?;
    if let Some(key) = held.first() {
        return Err(Error::Restore(format!(
            "namespace {child} is not empty ({} objects, e.g. {key}): a branch starts a new namespace",
            held.len()
        )));
    }
    // Where the point lands, its lineage and chain value: a dry run reads no more than the
    // object the point lies in (or the headers of the one it ends), whatever the size of
    // the database.
    let scratch = crate::storage::TempScratch::new("branch")?;
    let out = scratch.dir.join("branch-point.db");
    let options = RestoreOptions { point, dry_run: true, ..RestoreOptions::default() };
    let report = restore_with(storage, parent, &out, &options, &mut |_, _| {})?;
    let commit_unix_ms = report.commit_unix_ms;
    let marker = layout::branch_marker_key(parent, report.frame_no, child);
    let origin =
        layout::origin_key(child, parent, report.frame_no, commit_unix_ms.unwrap_or(0), report.lineage, report.chain);
    // The parent's marker first: from then on its garbage collection keeps the point.
    put_empty(storage, &marker)?;
    put_empty(storage, &origin)?;
    Ok(BranchReport { frame_no: report.frame_no, commit_unix_ms })
}

/// Removes `namespace` from the store: its objects, then its origin (if it is a branch),
/// then the marker in its parent. Refused while branches of it exist (they need its
/// history): remove them first. A marker whose branch holds no origin (a `create` that was
/// killed between its two writes) is removed with the rest. Returns the number of objects
/// deleted.
pub fn remove(storage: &Storage, namespace: &str) -> Result<usize> {
    layout::validate_namespace(namespace)?;
    let keys = keys_of(storage, namespace)?;
    let mut children = Vec::new();
    for key in &keys {
        let Some((frame_no, child)) = layout::parse_branch_marker(namespace, key) else { continue };
        // A marker no branch answers (`create` killed between its two writes: the marker goes
        // first) is deleted with the rest: left alone, it would refuse this removal forever.
        if has_origin(storage, &child, namespace, frame_no)? {
            children.push(format!("{child} (at frame {frame_no})"));
        }
    }
    if !children.is_empty() {
        return Err(Error::Restore(format!(
            "namespace {namespace} has branches that need its history: {}; remove them first",
            children.join(", ")
        )));
    }
    let origin = keys.iter().find_map(|k| match layout::parse_key(namespace, k) {
        Some(ObjectKind::Origin { frame_no, parent, .. }) => Some((k.clone(), frame_no, parent)),
        _ => None,
    });
    let mut deleted = 0;
    for key in keys.iter().filter(|k| origin.as_ref().is_none_or(|(o, _, _)| o != *k)) {
        delete(storage, key)?;
        deleted += 1;
    }
    if let Some((key, frame_no, parent)) = origin {
        delete(storage, &key)?;
        delete(storage, &layout::branch_marker_key(&parent, frame_no, namespace))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Does `child` hold the origin of a branch of `parent` at `frame_no`?
fn has_origin(storage: &Storage, child: &str, parent: &str, frame_no: u64) -> Result<bool> {
    let keys = keys_of(storage, &format!("{child}/branch"))?;
    Ok(keys.iter().any(|k| {
        matches!(layout::parse_key(child, k),
            Some(ObjectKind::Origin { frame_no: f, parent: ref p, .. }) if f == frame_no && p == parent)
    }))
}

/// Every key under `<namespace>/`, ours or not.
fn keys_of(storage: &Storage, namespace: &str) -> Result<Vec<String>> {
    let (inner, namespace) = (storage.clone(), namespace.to_string());
    storage.block_on(async move { inner.list_keys(&namespace).await })?
}

fn put_empty(storage: &Storage, key: &str) -> Result<()> {
    let (inner, key) = (storage.clone(), key.to_string());
    storage.block_on(async move { inner.put(&key, Vec::new()).await })?
}

fn delete(storage: &Storage, key: &str) -> Result<()> {
    let (inner, key) = (storage.clone(), key.to_string());
    storage.block_on(async move { inner.delete(&key).await })?
}
