//! Refs: `refs/<name>` holds `<64 lowercase hex>\n`. A ref moves by
//! compare-and-swap in the backend: in a directory, under an exclusive lock
//! on `refs.lock` (read, compare, write a temporary file, fsync, rename,
//! fsync the directory); on object storage, by a conditional write.

use super::Store;
use crate::error::{Result, SyncError};
use crate::id::{ObjectId, ObjectType};

pub const MAX_REF_NAME: usize = 255;

/// Checks a ref name: components joined by `/`, each made of ASCII letters,
/// digits and `._-+@=,`, not starting with `.`, and not ending in `.lock`.
pub fn validate_ref_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(SyncError::Invalid(format!(
            "invalid ref name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > MAX_REF_NAME {
        return bad("must be 1 to 255 bytes");
    }
    for comp in name.split('/') {
        if comp.is_empty() {
            return bad("empty path component");
        }
        if comp.starts_with('.') {
            return bad("a component starts with `.`");
        }
        if comp.ends_with(".lock") {
            return bad("a component ends with `.lock`");
        }
        if !comp
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-+@=,".contains(&c))
        {
            return bad("only ASCII letters, digits, `/` and `._-+@=,` are allowed");
        }
    }
    Ok(())
}

impl Store {
    fn ref_key(name: &str) -> String {
        format!("refs/{name}")
    }

    /// The snapshot a ref points to.
    pub fn read_ref(&self, name: &str) -> Result<Option<ObjectId>> {
        validate_ref_name(name)?;
        let key = Self::ref_key(name);
        parse_ref(self.backend().get(&key)?, &key)
    }

    /// Every ref, sorted by name.
    pub fn list_refs(&self) -> Result<Vec<(String, ObjectId)>> {
        let mut out = Vec::new();
        for key in self.backend().list("refs/")? {
            let Some(name) = key.strip_prefix("refs/") else {
                continue;
            };
            if validate_ref_name(name).is_err() {
                continue;
            }
            if let Some(id) = parse_ref(self.backend().get(&key)?, &key)? {
                out.push((name.to_string(), id));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Moves ref `name` from `expected` to `new` atomically. `expected`:
    /// `None` skips the comparison; `Some(None)` requires that the ref does
    /// not exist. `new = None` deletes the ref. The new target must be a
    /// snapshot present in the store.
    pub fn update_ref(
        &self,
        name: &str,
        expected: Option<Option<ObjectId>>,
        new: Option<ObjectId>,
    ) -> Result<()> {
        validate_ref_name(name)?;
        if let Some(id) = new {
            if self.location(&id).is_none() {
                // Written by another process since this one loaded its index?
                self.refresh()?;
            }
            match self.location(&id) {
                Some(loc) if loc.tag == ObjectType::Snapshot => self.check_snapshot_refs(&id)?,
                Some(_) => return Err(SyncError::Invalid(format!("{id} is not a snapshot"))),
                None => {
                    return Err(SyncError::MissingObject {
                        kind: "snapshot",
                        id,
                    });
                }
            }
        }
        let key = Self::ref_key(name);
        if new.is_some() {
            self.check_ref_clash(name)?;
        }
        let new_bytes = new.map(|id| format!("{id}\n").into_bytes());
        loop {
            let current = self.read_ref(name)?;
            let exp = match expected {
                Some(exp) if exp != current => {
                    return Err(SyncError::RefConflict {
                        name: name.to_string(),
                        expected: exp,
                        actual: current,
                    });
                }
                Some(exp) => exp,
                None => current,
            };
            let exp_bytes = exp.map(|id| format!("{id}\n").into_bytes());
            match self
                .backend()
                .cas(&key, exp_bytes.as_deref(), new_bytes.as_deref())?
            {
                Ok(()) => return Ok(()),
                Err(actual) => {
                    let actual = parse_ref(actual, &key)?;
                    if expected.is_some() {
                        return Err(SyncError::RefConflict {
                            name: name.to_string(),
                            expected: exp,
                            actual,
                        });
                    }
                    // Unconditional update that raced: read again and retry.
                }
            }
        }
    }
}

impl Store {
    /// A ref is never also a folder of refs (as in git): `a/b` cannot be
    /// created while `a` exists, nor `a` while `a/…` does.
    pub(crate) fn check_ref_clash(&self, name: &str) -> Result<()> {
        for (i, _) in name.match_indices('/') {
            let above = &name[..i];
            if self.backend().get(&Self::ref_key(above))?.is_some() {
                return Err(SyncError::Invalid(format!(
                    "cannot create ref {name}: ref {above} exists, and a ref cannot also be a folder of refs"
                )));
            }
        }
        let under = self.backend().list(&format!("refs/{name}/"))?;
        if let Some(first) = under.iter().find_map(|k| k.strip_prefix("refs/")) {
            return Err(SyncError::Invalid(format!(
                "cannot create ref {name}: refs under {name}/ exist ({first})"
            )));
        }
        Ok(())
    }

    /// What a snapshot names directly (root tree, tables, parents) must be
    /// stored with the type the snapshot gives it: a ref never moves to a
    /// snapshot whose "tree" is a chunk.
    fn check_snapshot_refs(&self, id: &ObjectId) -> Result<()> {
        let bytes = crate::object::ObjectSource::get(self, ObjectType::Snapshot, id)?;
        let refs = crate::object::references(ObjectType::Snapshot, id, &bytes)?;
        if refs.iter().any(|(_, r)| self.location(r).is_none()) {
            // A parent written by another process since this one loaded
            // its index (a snapshot re-parented onto a concurrent one).
            self.refresh()?;
        }
        for (want, r) in refs {
            match self.location(&r) {
                Some(l) if l.tag == want => {}
                Some(l) => {
                    return Err(SyncError::Invalid(format!(
                        "snapshot {id} references {r} as a {want}, but that object is a {}",
                        l.tag
                    )));
                }
                None => {
                    return Err(SyncError::MissingObject {
                        kind: want.name(),
                        id: r,
                    });
                }
            }
        }
        Ok(())
    }
}

fn parse_ref(bytes: Option<Vec<u8>>, key: &str) -> Result<Option<ObjectId>> {
    let Some(b) = bytes else { return Ok(None) };
    let s = std::str::from_utf8(&b).unwrap_or("");
    match ObjectId::from_hex(s.trim_end_matches('\n')) {
        Some(id) if s.len() == 65 && s.ends_with('\n') => Ok(Some(id)),
        _ => Err(SyncError::corrupt_file(
            "ref",
            key,
            "expected 64 hex digits and a newline",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for good in [
            "main",
            "cache/linux-cargo-abc123",
            "deploy/api",
            "remotes/origin/main",
            "v1.2+x@y=z,w",
        ] {
            assert!(validate_ref_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/main", "main/", "a//b", "../x", ".hidden", "a/.b", "x.lock", "sp ace", "a\\b",
            "ü",
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad}");
        }
    }
}
