//! Naming snapshots: a full id, a unique prefix of 8 or more hex digits, a
//! ref name, any of these followed by `~N` (the N-th first parent), and
//! `SNAP:PATH` for a path inside a snapshot.

use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};
use crate::object::ObjectSource;
use crate::object::snapshot::Snapshot;
use crate::store::Store;
use crate::store::refs::validate_ref_name;

/// Reads and decodes a snapshot object.
pub fn load_snapshot(src: &dyn ObjectSource, id: &ObjectId) -> Result<Snapshot> {
    let b = src.get(ObjectType::Snapshot, id)?;
    Snapshot::decode(&b).map_err(|e| crate::object::corrupt(ObjectType::Snapshot, id, e))
}

/// Splits `SNAP:PATH` (the path may be empty or absent).
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((s, p)) => (s, Some(p.trim_matches('/'))),
        None => (spec, None),
    }
}

/// Resolves a snapshot name to an id.
pub fn resolve(store: &Store, spec: &str) -> Result<ObjectId> {
    let mut parts = spec.split('~');
    let base = parts.next().unwrap_or_default();
    let mut id = resolve_base(store, base)?;
    for n in parts {
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse()
                .map_err(|_| SyncError::Invalid(format!("bad ancestor count in {spec:?}")))?
        };
        for _ in 0..n {
            let s = load_snapshot(store, &id)?;
            id = *s.parents.first().ok_or_else(|| {
                SyncError::NotFound(format!("{spec}: snapshot {} has no parent", id.short()))
            })?;
        }
    }
    Ok(id)
}

fn resolve_base(store: &Store, base: &str) -> Result<ObjectId> {
    if base.is_empty() {
        return Err(SyncError::Invalid("empty snapshot name".into()));
    }
    if let Some(id) = ObjectId::from_hex(base) {
        return match store.location(&id) {
            Some(l) if l.tag == ObjectType::Snapshot => Ok(id),
            Some(_) => Err(SyncError::Invalid(format!("{base} is not a snapshot"))),
            None => Err(SyncError::NotFound(format!("unknown snapshot {base}"))),
        };
    }
    let is_hex = base.bytes().all(|c| c.is_ascii_hexdigit());
    if validate_ref_name(base).is_ok()
        && let Some(id) = store.read_ref(base)?
    {
        // A ref named like an id prefix must not hide another snapshot.
        if is_hex && base.len() >= 8 {
            let others: Vec<ObjectId> = store
                .snapshots_with_prefix(&base.to_ascii_lowercase())
                .into_iter()
                .filter(|o| *o != id)
                .collect();
            if let Some(o) = others.first() {
                return Err(SyncError::Invalid(format!(
                    "{base} is ambiguous: ref {base} names snapshot {}, and snapshot {} starts with {base}; use a full id",
                    id.short(),
                    o.short()
                )));
            }
        }
        return Ok(id);
    }
    if is_hex && base.len() >= 8 {
        let lower = base.to_ascii_lowercase();
        let found = store.snapshots_with_prefix(&lower);
        return match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(SyncError::NotFound(format!(
                "unknown snapshot or ref {base:?}"
            ))),
            many => Err(SyncError::Invalid(format!(
                "snapshot prefix {base} is ambiguous ({} snapshots match)",
                many.len()
            ))),
        };
    }
    Err(SyncError::NotFound(format!(
        "unknown snapshot or ref {base:?}"
    )))
}
