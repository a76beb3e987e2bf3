//! Where a snapshot's parts go back to, and what a restore must never
//! touch.
//!
//! A snapshot records its sources (`object::snapshot::Sources`): each root
//! path relative to the working-tree root, the excludes in force, and each
//! database with the tables it gave. `restore SNAP` without a target — or
//! with a target that holds the store, such as the working-tree root —
//! puts each part back at its path relative to that base, so a snapshot of
//! `services` never scatters its contents over the project root.
//!
//! `restore --delete` removes only what the snapshot lacks *inside the
//! places it restores*, and never: the store (wherever it is), a database
//! file that the snapshot or `sp-sync.toml` names (with its `-wal`, `-shm`
//! and `-journal`), `sp-sync.toml`, or what the excludes match.

use std::path::{Path, PathBuf};

use crate::error::{Result, SyncError};
use crate::object::snapshot::Snapshot;
use crate::workspace::{PROJECT_FILE, Workspace};

/// A part of a snapshot and the exact path it is restored to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The path inside the snapshot's root tree (`""`: the root).
    pub tree_path: String,
    /// Where that entry goes: a directory's contents go into it; a file
    /// is written at it.
    pub dest: PathBuf,
    /// A file goes exactly at `dest`, as a restore writes any entry (a
    /// directory there stays unless it is empty, or `--delete`), never
    /// into a directory found there: the snapshot's one source was that
    /// file.
    pub exact: bool,
}

/// Refuses a snapshot whose recorded places (source paths, database files)
/// hold a `.` or `..` part: sp-sync records them canonical, so only a
/// crafted snapshot has one, and a path through a place the restore itself
/// writes (`svc/../../x`, once `svc` is a symlink it wrote) would resolve
/// anywhere, past every check that compares paths.
pub fn check_locations(snap: &Snapshot) -> Result<()> {
    let Some(src) = &snap.sources else {
        return Ok(());
    };
    let places = src.paths.iter().chain(
        src.dbs
            .iter()
            .map(|d| &d.location)
            .filter(|l| !crate::db::pg::is_url(l)),
    );
    for p in places {
        if p.split('/').any(|c| c == "." || c == "..") {
            return Err(SyncError::Invalid(format!(
                "the snapshot records the place {p:?}, with a `.` or `..` part, which sp-sync never \
                 records (a crafted snapshot): refused; restore SNAP:PATH into a TARGET"
            )));
        }
    }
    Ok(())
}

/// A recorded location resolved against `base` (absolute locations stay).
fn resolve(base: &Path, location: &str) -> PathBuf {
    if location.is_empty() {
        base.to_path_buf()
    } else {
        base.join(location)
    }
}

/// `dest` and below it the parts of `rest` (a snapshot path: empty parts
/// dropped, so that `a//b` never makes an absolute path that `join` would
/// put in `dest`'s place).
fn join_sub(dest: PathBuf, rest: &str) -> PathBuf {
    rest.split('/')
        .filter(|c| !c.is_empty())
        .fold(dest, |d, c| d.join(c))
}

/// Where `SNAP[:sub]` goes when its sources are placed relative to `base`.
/// Fails for a snapshot that does not record its sources.
pub fn placements(snap: &Snapshot, sub: Option<&str>, base: &Path) -> Result<Vec<Placement>> {
    check_locations(snap)?;
    let sources = snap.sources.as_ref().ok_or_else(|| {
        SyncError::Invalid(
            "the snapshot does not record where it was taken from (an older sp-sync made it); \
             name a TARGET to restore into"
                .into(),
        )
    })?;
    // `a//b` and `a/b/` name `a/b`, as the snapshot's lookup reads them.
    let sub = sub
        .unwrap_or("")
        .split('/')
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    let sub = sub.as_str();
    match sources.paths.as_slice() {
        [] => Ok(Vec::new()),
        [one] => Ok(vec![Placement {
            tree_path: sub.to_string(),
            dest: join_sub(resolve(base, one), sub),
            exact: false,
        }]),
        several => {
            let mut out = Vec::new();
            for p in several {
                let name = Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if sub.is_empty() {
                    out.push(Placement {
                        tree_path: name,
                        dest: resolve(base, p),
                        exact: false,
                    });
                } else {
                    let (first, rest) = sub.split_once('/').unwrap_or((sub, ""));
                    if first == name {
                        out.push(Placement {
                            tree_path: sub.to_string(),
                            dest: join_sub(resolve(base, p), rest),
                            exact: false,
                        });
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Where a path of the snapshot's tree sits below the root of the source
/// it came from (the root the snapshot's excludes are relative to): the
/// path itself when the snapshot has one source, else the path without
/// its first part (the source's name).
pub fn source_rel(snap: &Snapshot, tree_path: &str) -> String {
    let tree_path = tree_path.trim_matches('/');
    match snap.sources.as_ref().map(|s| s.paths.len()) {
        Some(n) if n > 1 => tree_path
            .split_once('/')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default(),
        _ => tree_path.to_string(),
    }
}

/// The snapshot's databases that are files, resolved against `base`, with
/// the tables each gave. (URLs are left to the engines that take them.)
pub fn database_files(snap: &Snapshot, base: &Path) -> Vec<(PathBuf, Vec<String>)> {
    snap.sources
        .iter()
        .flat_map(|s| s.dbs.iter())
        .filter(|d| !d.location.contains("://"))
        .map(|d| (resolve(base, &d.location), d.tables.clone()))
        .collect()
}

/// The database files that any snapshot this store took, in the history of
/// any of its refs, names (and those a pulled or imported one names where a
/// SQLite database is now), resolved against `base`: the user's live databases,
/// whichever snapshot a restore or a cache restore writes (one named by
/// `--db` once, then left out of later snapshots, is still there). A
/// snapshot that cannot be read is passed over; at most `MAX_SNAPSHOTS`
/// are read.
pub fn named_database_files(store: &crate::store::Store, base: &Path) -> Vec<PathBuf> {
    const MAX_SNAPSHOTS: usize = 100_000;
    let mut seen = std::collections::HashSet::new();
    let mut todo: Vec<crate::id::ObjectId> = store
        .list_refs()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let mut out = std::collections::BTreeSet::new();
    let made = store.made_list();
    while let Some(id) = todo.pop() {
        if seen.len() >= MAX_SNAPSHOTS || !seen.insert(id) {
            continue;
        }
        let Ok(s) = crate::names::load_snapshot(store, &id) else {
            continue;
        };
        // A pulled or imported snapshot names places of another machine,
        // or any place a remote chose: its names count only where a SQLite
        // database is now (one a restore of it made, the user's live one;
        // audit 25), never a folder of this tree (audit 24: `services`).
        let mine = made.is_made(&id, &s.host);
        out.extend(
            database_files(&s, base)
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| mine || is_sqlite_file(p)),
        );
        todo.extend(s.parents.iter().copied());
    }
    out.into_iter().collect()
}

/// The paths a restore keeps for the databases any snapshot of `store`
/// names ([`named_database_files`]): each with its `-wal`, `-shm` and
/// `-journal`, as they resolve and as written.
pub fn named_database_protection(store: &crate::store::Store, base: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for db in named_database_files(store, base) {
        for side in with_sidecars(&db) {
            out.push(canonical(&side));
            if let Ok(a) = std::path::absolute(&side) {
                out.push(a);
            }
        }
    }
    out
}

/// What a restore into `target` keeps of the working tree `target` lies
/// in (the nearest folder at or above it holding a store `.sp-sync` or an
/// `sp-sync.toml`), whichever store the restore reads: that tree's store,
/// the databases its `sp-sync.toml` names and those any snapshot of its
/// store names, each with its `-wal`, `-shm` and `-journal` (audit 26:
/// `cache restore --target ../app` and `restore SNAP ../app`, run from
/// another tree, wrote over `../app`'s database). Nothing when that tree
/// is `known` (the restore's own, already kept).
pub fn target_protection(target: &Path, known: &Path) -> Vec<PathBuf> {
    let abs = canonical(&std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf()));
    let mut cur = Some(abs.as_path());
    while let Some(d) = cur {
        let store_dir = d.join(crate::store::STORE_DIR);
        let has_store = std::fs::symlink_metadata(&store_dir).is_ok_and(|m| m.is_dir());
        if has_store || d.join(PROJECT_FILE).is_file() {
            if canonical(known) == d {
                return Vec::new();
            }
            let ws = Workspace {
                store_dir: store_dir.clone(),
                root: d.to_path_buf(),
                explicit: false,
            };
            let mut out = protected_paths(&ws, None);
            if has_store
                && let Ok(store) =
                    crate::store::Store::open(&store_dir, crate::store::LockMode::Shared)
            {
                out.extend(named_database_protection(&store, d));
            }
            return out;
        }
        cur = d.parent();
    }
    Vec::new()
}

/// Whether `path` is a SQLite database file (its header), not following a
/// symlink at it.
fn is_sqlite_file(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    else {
        return false;
    };
    let mut head = [0u8; 16];
    f.metadata().is_ok_and(|m| m.is_file())
        && f.read_exact(&mut head).is_ok()
        && &head == b"SQLite format 3\0"
}

/// Every database the snapshot took tables from, with the tables each
/// gave: files resolved against `base`, PostgreSQL URLs as recorded
/// (without their passwords, which come from `PGPASSWORD` or `~/.pgpass`).
pub fn databases(snap: &Snapshot, base: &Path) -> Vec<(PathBuf, Vec<String>)> {
    snap.sources
        .iter()
        .flat_map(|s| s.dbs.iter())
        .map(|d| {
            let path = if crate::db::pg::is_url(&d.location) {
                PathBuf::from(&d.location)
            } else {
                resolve(base, &d.location)
            };
            (path, d.tables.clone())
        })
        .collect()
}

/// Paths `restore --delete` never removes though a snapshot may write
/// them: `sp-sync.toml`.
pub fn kept_paths(ws: &Workspace) -> Vec<PathBuf> {
    vec![canonical(&ws.root.join(PROJECT_FILE))]
}

/// Paths no restore removes or writes over: the store and every database
/// file the snapshot or `sp-sync.toml` names (and their `-wal`, `-shm`,
/// `-journal`). Canonical where they exist.
pub fn protected_paths(ws: &Workspace, snap: Option<&Snapshot>) -> Vec<PathBuf> {
    let mut out = vec![ws.store_dir.clone()];
    let mut dbs: Vec<PathBuf> = snap
        .map(|s| {
            database_files(s, &ws.root)
                .into_iter()
                .map(|(p, _)| p)
                .collect()
        })
        .unwrap_or_default();
    if let Ok(project) = ws.project() {
        dbs.extend(
            project
                .db
                .iter()
                .filter(|d| d.url.is_none() && !d.path.is_empty())
                .map(|d| ws.root.join(&d.path)),
        );
        dbs.extend(project.collection.iter().map(|c| ws.root.join(&c.db)));
    }
    for d in dbs {
        out.extend(with_sidecars(&d));
    }
    // As they resolve, and as written: a symlink where a database is
    // named (to the real file elsewhere) is the user's, and stays.
    out.iter()
        .map(|p| canonical(p))
        .chain(out.iter().filter_map(|p| std::path::absolute(p).ok()))
        .collect()
}

/// A database file and the files SQLite keeps beside it (`-wal`, `-shm`,
/// `-journal`): what a restore must neither remove nor write over.
pub fn with_sidecars(db: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["", "-wal", "-shm", "-journal"]
        .into_iter()
        .map(move |suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        })
}

/// `p` with symlinks resolved as far as it exists (a missing tail is kept).
pub fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        _ => p.to_path_buf(),
    }
}

/// Whether the directory `target` holds the store `store_dir`.
pub fn holds_store(target: &Path, store_dir: &Path) -> bool {
    canonical(store_dir).starts_with(canonical(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::snapshot::{DbRecord, Sources};

    fn snap(paths: &[&str]) -> Snapshot {
        Snapshot {
            sources: Some(Sources {
                paths: paths.iter().map(|p| p.to_string()).collect(),
                excludes: vec![],
                dbs: vec![DbRecord {
                    location: "data/app.db".into(),
                    tables: vec!["users".into()],
                }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn one_source_goes_back_under_its_path() {
        let s = snap(&["services"]);
        let p = placements(&s, None, Path::new("/w")).unwrap();
        assert_eq!(
            p,
            vec![Placement {
                tree_path: "".into(),
                dest: "/w/services".into(),
                exact: false,
            }]
        );
        let p = placements(&s, Some("config/app.toml"), Path::new("/w")).unwrap();
        assert_eq!(p[0].dest, PathBuf::from("/w/services/config/app.toml"));
        let p = placements(&snap(&[""]), None, Path::new("/w")).unwrap();
        assert_eq!(p[0].dest, PathBuf::from("/w"));
    }

    #[test]
    fn several_sources_each_go_back() {
        let s = snap(&["services", "etc/conf"]);
        let p = placements(&s, None, Path::new("/w")).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].tree_path, "conf");
        assert_eq!(p[1].dest, PathBuf::from("/w/etc/conf"));
        let p = placements(&s, Some("conf/a/b"), Path::new("/w")).unwrap();
        assert_eq!(
            p,
            vec![Placement {
                tree_path: "conf/a/b".into(),
                dest: "/w/etc/conf/a/b".into(),
                exact: false,
            }]
        );
        assert!(
            placements(&s, Some("nope"), Path::new("/w"))
                .unwrap()
                .is_empty()
        );
        // An empty part never makes the rest absolute.
        let p = placements(&s, Some("conf//a/b/"), Path::new("/w")).unwrap();
        assert_eq!(p[0].dest, PathBuf::from("/w/etc/conf/a/b"));
        assert_eq!(p[0].tree_path, "conf/a/b");
        let one = snap(&["services"]);
        let p = placements(&one, Some("//x//y"), Path::new("/w")).unwrap();
        assert_eq!(p[0].dest, PathBuf::from("/w/services/x/y"));
    }

    #[test]
    fn old_snapshots_need_a_target() {
        assert!(placements(&Snapshot::default(), None, Path::new("/w")).is_err());
    }

    #[test]
    fn databases_resolve_against_the_base() {
        let mut s = snap(&[""]);
        let d = database_files(&s, Path::new("/w"));
        assert_eq!(
            d,
            vec![(PathBuf::from("/w/data/app.db"), vec!["users".into()])]
        );
        let url = "postgres://app@db:5432/app?schema=svc";
        s.sources.as_mut().unwrap().dbs.push(DbRecord {
            location: url.into(),
            tables: vec!["items".into()],
        });
        // Files only, for the paths a restore protects.
        assert_eq!(database_files(&s, Path::new("/w")), d);
        assert_eq!(
            databases(&s, Path::new("/w")),
            vec![
                (PathBuf::from("/w/data/app.db"), vec!["users".into()]),
                (PathBuf::from(url), vec!["items".into()])
            ]
        );
    }
}
