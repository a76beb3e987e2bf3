//! Where a command works: the store (`--store`, `SP_SYNC_STORE`, or a
//! `.sp-sync` directory found upward from the current directory), the working
//! tree it belongs to, and the versioned project settings in `sp-sync.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, SyncError};
use crate::store::{STORE_DIR, locate};

/// The project's file at the working-tree root, versioned with the content.
pub const PROJECT_FILE: &str = "sp-sync.toml";

/// `sp-sync.toml` (the parts this version reads).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ProjectConfig {
    /// `[snapshot]`: what a snapshot without paths takes.
    #[serde(default)]
    pub snapshot: SnapshotSection,
    /// Databases whose tables every snapshot takes (`[[db]]`).
    #[serde(default)]
    pub db: Vec<DbSection>,
    /// Folders of markdown files kept in step with a table (`[[collection]]`).
    #[serde(default)]
    pub collection: Vec<crate::collection::CollectionConfig>,
    /// Deploy targets (`[deploy.NAME]`), by name.
    #[serde(default)]
    pub deploy: BTreeMap<String, crate::deploy::DeployConfig>,
}

/// `[[db]]`: a SQLite file (`path`, relative to the working-tree root) or a
/// PostgreSQL database (`url = "postgres://…"`), and which of its tables to
/// take (default: all).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DbSection {
    /// A SQLite file, relative to the working-tree root.
    #[serde(default)]
    pub path: String,
    /// A PostgreSQL URL (instead of `path`).
    #[serde(default)]
    pub url: Option<String>,
    /// Only these tables (empty: all).
    #[serde(default)]
    pub tables: Vec<String>,
}

/// `[snapshot]` of `sp-sync.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SnapshotSection {
    /// Paths to snapshot, relative to the working-tree root.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Gitignore-style patterns to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl ProjectConfig {
    /// Parses `sp-sync.toml`'s text (`path` for messages).
    pub fn parse(text: &str, path: &Path) -> Result<ProjectConfig> {
        toml::from_str(text)
            .map_err(|e| SyncError::Invalid(format!("{}: {}", path.display(), e.message())))
    }

    /// Reads `root/sp-sync.toml`; absent means defaults.
    pub fn load(root: &Path) -> Result<ProjectConfig> {
        let p = root.join(PROJECT_FILE);
        match std::fs::read_to_string(&p) {
            Ok(t) => Self::parse(&t, &p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProjectConfig::default()),
            Err(e) => Err(SyncError::io("reading", &p, e)),
        }
    }
}

/// A located store and its working tree.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The store directory.
    pub store_dir: PathBuf,
    /// The working tree: the folder holding `.sp-sync/`, or the current
    /// directory when the store was named explicitly.
    pub root: PathBuf,
    /// Whether the store was named explicitly.
    pub explicit: bool,
}

impl Workspace {
    /// Finds the store: `explicit` (`--store`), else a `.sp-sync` at or above `cwd`.
    pub fn locate(explicit: Option<&Path>, cwd: &Path) -> Result<Workspace> {
        let store_dir = locate(explicit, cwd)?;
        let store_dir = if store_dir.is_absolute() || store_dir.starts_with("s3:") {
            store_dir
        } else {
            cwd.join(store_dir)
        };
        let root = match explicit {
            Some(_) => cwd.to_path_buf(),
            None => store_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| cwd.to_path_buf()),
        };
        Ok(Workspace {
            store_dir,
            root,
            explicit: explicit.is_some(),
        })
    }

    /// The store directory `init` creates: `DIR/.sp-sync`, or exactly
    /// `explicit`.
    pub fn init_dir(explicit: Option<&Path>, dir: Option<&Path>, cwd: &Path) -> PathBuf {
        match explicit {
            Some(p) => p.to_path_buf(),
            None => dir.unwrap_or(cwd).join(STORE_DIR),
        }
    }

    /// The project's `sp-sync.toml` (defaults when there is none).
    pub fn project(&self) -> Result<ProjectConfig> {
        ProjectConfig::load(&self.root)
    }

    /// The databases `sp-sync.toml` names, as sources.
    pub fn default_dbs(&self) -> Result<Vec<crate::db::DbSource>> {
        self.project()?
            .db
            .into_iter()
            .map(|d| {
                let path = match (d.url, d.path.is_empty()) {
                    (Some(u), true) => {
                        crate::db::pg::PgLocation::parse(&u)?;
                        PathBuf::from(u)
                    }
                    (None, false) => self.root.join(d.path),
                    _ => {
                        return Err(SyncError::Invalid(format!(
                            "{PROJECT_FILE}: each [[db]] needs exactly one of path and url"
                        )));
                    }
                };
                Ok(crate::db::DbSource {
                    path,
                    tables: d.tables,
                    missing_ok: false,
                })
            })
            .collect()
    }

    /// What `snapshot` (and a working-tree `diff`) covers when no path is
    /// given: `sp-sync.toml`'s paths, else the working tree. Returns the
    /// sources and the exclude patterns.
    pub fn default_sources(&self) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let project = self.project()?;
        let sources = if project.snapshot.paths.is_empty() {
            vec![self.root.clone()]
        } else {
            project
                .snapshot
                .paths
                .iter()
                .map(|p| self.root.join(p))
                .collect()
        };
        Ok((sources, project.snapshot.exclude))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_file_parses_and_ignores_later_sections() {
        let c = ProjectConfig::parse(
            "[snapshot]\npaths = [\"services\"]\nexclude = [\"*.tmp\"]\n[deploy.api]\nwatch = [\"src/**\"]\n",
            Path::new("sp-sync.toml"),
        )
        .unwrap();
        assert_eq!(c.snapshot.paths, vec!["services"]);
        assert_eq!(c.snapshot.exclude, vec!["*.tmp"]);
        assert!(ProjectConfig::parse("[snapshot]\npaths = 3\n", Path::new("x")).is_err());
    }

    #[test]
    fn databases_and_collections_parse() {
        let c = ProjectConfig::parse(
            "[[db]]\npath = \"data/app.db\"\ntables = [\"users\"]\n\n[[collection]]\nname = \"content\"\ndir = \"services/content\"\ndb = \"data/app.db\"\ntable = \"content\"\nkey = \"slug\"\nbody = \"body\"\n",
            Path::new("sp-sync.toml"),
        )
        .unwrap();
        assert_eq!(c.db[0].path, "data/app.db");
        assert_eq!(c.db[0].tables, vec!["users"]);
        assert_eq!(c.collection[0].name, "content");
        assert_eq!(c.collection[0].glob(), "**/*.md");
        assert!(ProjectConfig::parse("[[db]]\npath = \"a\"\ntable = 1\n", Path::new("x")).is_err());
    }
}
