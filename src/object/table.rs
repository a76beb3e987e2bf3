//! The table object (tag 5): a table's or a view's schema, and for a table
//! the root of its row map (tag 6). Specified in `store-format.md` §3.6.
//!
//! ```text
//! version u8 = 1 | kind u8 (1 table, 2 view) | name (string) | sql (string) |
//! ordinal (varint)
//! table only: flags u8 | column count | (name (string) | type (string))… |
//!             key count | column index (varint)… | sequence flag u8 [| zigzag] |
//!             rows (varint) | rows root [32]
//! both:       extra count | (type u8 (1 index, 2 trigger) | name | ordinal | sql)…
//! ```
//!
//! Version 2 (tables of other engines than SQLite) is version 1 with an
//! `engine u8` (2 PostgreSQL) after the version byte, and two more extra
//! types: 3 constraint, 4 sequence value.

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::{ObjectId, ObjectType};

pub const TABLE_VERSION: u8 = 1;
/// The version of table objects that name their engine (§3.6).
pub const TABLE_VERSION_ENGINE: u8 = 2;

/// The database engine a table was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// SQLite (table objects of version 1).
    #[default]
    Sqlite = 1,
    /// PostgreSQL (version 2, engine byte 2).
    Postgres = 2,
}
const MAX_STR: usize = 1 << 20;

pub const KIND_TABLE: u8 = 1;
pub const KIND_VIEW: u8 = 2;

/// `WITHOUT ROWID`.
pub const FLAG_WITHOUT_ROWID: u8 = 1;
/// A rowid table with a declared primary key that is not its rowid: each row
/// starts with the rowid (so rowids are restored exactly).
pub const FLAG_ROWID_IN_ROW: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_WITHOUT_ROWID | FLAG_ROWID_IN_ROW;

/// A column as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The declared type, as written (may be empty).
    pub decl_type: String,
}

/// An index or trigger that belongs to a table or view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    pub kind: ExtraKind,
    pub name: String,
    /// Position in the database's schema (`sqlite_schema` order).
    pub ordinal: u64,
    pub sql: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraKind {
    Index = 1,
    Trigger = 2,
    /// A constraint added after the rows (PostgreSQL: `ALTER TABLE … ADD
    /// CONSTRAINT …`, unique and foreign keys, checks).
    Constraint = 3,
    /// A sequence's current value (PostgreSQL: `SELECT setval(…)`).
    Sequence = 4,
}

impl ExtraKind {
    pub fn name(self) -> &'static str {
        match self {
            ExtraKind::Index => "index",
            ExtraKind::Trigger => "trigger",
            ExtraKind::Constraint => "constraint",
            ExtraKind::Sequence => "sequence",
        }
    }
}

/// The table-only part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableData {
    pub flags: u8,
    /// Stored columns, in declaration order (generated columns left out).
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order. Empty: the
    /// table has no declared key and rows are keyed by rowid.
    pub key: Vec<u32>,
    /// The table's `sqlite_sequence` value (AUTOINCREMENT), if it has one.
    pub sequence: Option<i64>,
    pub rows: u64,
    pub root: ObjectId,
}

impl TableData {
    pub fn without_rowid(&self) -> bool {
        self.flags & FLAG_WITHOUT_ROWID != 0
    }
    pub fn rowid_in_row(&self) -> bool {
        self.flags & FLAG_ROWID_IN_ROW != 0
    }
    /// Cells in each row: the columns, plus the leading rowid when kept.
    pub fn row_width(&self) -> usize {
        self.columns.len() + usize::from(self.rowid_in_row())
    }
    /// Whether the key is the rowid (no declared key, or an INTEGER PRIMARY KEY).
    pub fn keyed_by_rowid(&self) -> bool {
        !self.without_rowid() && !self.rowid_in_row()
    }
    /// Names of the key columns (`rowid` for a table without a declared key).
    pub fn key_names(&self) -> Vec<String> {
        if self.key.is_empty() {
            return vec!["rowid".into()];
        }
        self.key
            .iter()
            .map(|&i| self.columns[i as usize].name.clone())
            .collect()
    }
}

/// A table or a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableObject {
    /// The engine the table was read from (SQLite: version 1 objects).
    pub engine: Engine,
    pub name: String,
    /// The `CREATE TABLE` / `CREATE VIEW` statement as SQLite keeps it.
    pub sql: String,
    pub ordinal: u64,
    /// None for a view.
    pub table: Option<TableData>,
    /// Indexes and triggers, by ordinal.
    pub extras: Vec<Extra>,
}

impl TableObject {
    /// [`encode`](Self::encode), decoded again and compared: what a
    /// snapshot stores must read back as itself (a table named `""` would
    /// encode, and then never decode: a snapshot no restore could read).
    /// The error says why not.
    pub fn encode_checked(&self) -> Result<Vec<u8>, String> {
        let b = self.encode();
        match TableObject::decode(&b) {
            Ok(back) if back == *self => Ok(b),
            Ok(_) => Err("it does not read back as itself".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256 + self.sql.len());
        match self.engine {
            Engine::Sqlite => w.u8(TABLE_VERSION),
            Engine::Postgres => w.u8(TABLE_VERSION_ENGINE).u8(Engine::Postgres as u8),
        };
        w.u8(if self.table.is_some() {
            KIND_TABLE
        } else {
            KIND_VIEW
        });
        w.bytes(self.name.as_bytes())
            .bytes(self.sql.as_bytes())
            .varint(self.ordinal);
        if let Some(t) = &self.table {
            w.u8(t.flags).varint(t.columns.len() as u64);
            for c in &t.columns {
                w.bytes(c.name.as_bytes()).bytes(c.decl_type.as_bytes());
            }
            w.varint(t.key.len() as u64);
            for k in &t.key {
                w.varint(u64::from(*k));
            }
            match t.sequence {
                Some(s) => {
                    w.u8(1).zigzag(s);
                }
                None => {
                    w.u8(0);
                }
            }
            w.varint(t.rows).id(&t.root);
        }
        w.varint(self.extras.len() as u64);
        for e in &self.extras {
            w.u8(e.kind as u8)
                .bytes(e.name.as_bytes())
                .varint(e.ordinal)
                .bytes(e.sql.as_bytes());
        }
        w.into_vec()
    }

    pub fn decode(b: &[u8]) -> Result<TableObject, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8()?;
        let engine = match v {
            TABLE_VERSION => Engine::Sqlite,
            TABLE_VERSION_ENGINE => match r.u8()? {
                2 => Engine::Postgres,
                e => return r.err(format!("unknown table engine {e}")),
            },
            _ => return r.err(format!("unknown table version {v}")),
        };
        let kind = r.u8()?;
        if kind != KIND_TABLE && kind != KIND_VIEW {
            return r.err(format!("unknown table kind {kind}"));
        }
        let name = r.str(MAX_STR)?.to_string();
        if name.is_empty() {
            return r.err("empty table name");
        }
        let sql = r.str(MAX_STR)?.to_string();
        let ordinal = r.varint()?;
        let table = if kind == KIND_TABLE {
            let flags = r.u8()?;
            if flags & !KNOWN_FLAGS != 0 || flags == KNOWN_FLAGS {
                return r.err(format!("bad table flags {flags}"));
            }
            let nc = r.varint_max(super::row::MAX_COLUMNS as u64, "column count")? as usize;
            if nc == 0 {
                return r.err("a table without columns");
            }
            // A column takes at least two bytes (two empty strings).
            let mut columns: Vec<Column> = Vec::with_capacity(nc.min(r.remaining() / 2));
            for _ in 0..nc {
                let name = r.str(MAX_STR)?.to_string();
                if columns.iter().any(|c| c.name.eq_ignore_ascii_case(&name)) {
                    return r.err(format!("duplicate column {name:?}"));
                }
                let decl_type = r.str(MAX_STR)?.to_string();
                columns.push(Column { name, decl_type });
            }
            let nk = r.varint_max(nc as u64, "key column count")? as usize;
            let mut key: Vec<u32> = Vec::with_capacity(nk.min(r.remaining()));
            for _ in 0..nk {
                let k = r.varint_max(nc as u64 - 1, "key column")? as u32;
                if key.contains(&k) {
                    return r.err("a key column twice");
                }
                key.push(k);
            }
            if key.is_empty() && flags != 0 {
                return r.err("a table keyed by rowid with key flags");
            }
            if !key.is_empty() && flags == 0 && key.len() != 1 {
                return r.err("a rowid key of several columns");
            }
            let sequence = match r.u8()? {
                0 => None,
                1 => Some(r.zigzag()?),
                f => return r.err(format!("bad sequence flag {f}")),
            };
            let rows = r.varint()?;
            let root = r.id()?;
            Some(TableData {
                flags,
                columns,
                key,
                sequence,
                rows,
                root,
            })
        } else {
            None
        };
        let ne = r.varint_max(b.len() as u64, "extra count")? as usize;
        // An extra takes at least four bytes (type, name, ordinal, sql).
        let mut extras: Vec<Extra> = Vec::with_capacity(ne.min(r.remaining() / 4));
        for _ in 0..ne {
            let kind = match r.u8()? {
                1 => ExtraKind::Index,
                2 => ExtraKind::Trigger,
                3 if engine != Engine::Sqlite => ExtraKind::Constraint,
                4 if engine != Engine::Sqlite => ExtraKind::Sequence,
                k => return r.err(format!("unknown schema item type {k}")),
            };
            let name = r.str(MAX_STR)?.to_string();
            let ordinal = r.varint()?;
            if extras.last().is_some_and(|p: &Extra| p.ordinal >= ordinal) {
                return r.err("schema items not in increasing order");
            }
            let sql = r.str(MAX_STR)?.to_string();
            extras.push(Extra {
                kind,
                name,
                ordinal,
                sql,
            });
        }
        r.finish()?;
        Ok(TableObject {
            engine,
            name,
            sql,
            ordinal,
            table,
            extras,
        })
    }

    pub fn id(&self) -> ObjectId {
        ObjectId::compute(ObjectType::Table, &self.encode())
    }

    /// Objects the table references: its row map's root.
    pub fn refs(&self) -> Vec<(ObjectType, ObjectId)> {
        match &self.table {
            Some(t) => vec![(ObjectType::Rows, t.root)],
            None => Vec::new(),
        }
    }

    pub fn is_view(&self) -> bool {
        self.table.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> TableObject {
        TableObject {
            engine: Default::default(),
            name: "users".into(),
            sql: "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)".into(),
            ordinal: 0,
            table: Some(TableData {
                flags: 0,
                columns: vec![
                    Column {
                        name: "id".into(),
                        decl_type: "INTEGER".into(),
                    },
                    Column {
                        name: "name".into(),
                        decl_type: "TEXT".into(),
                    },
                ],
                key: vec![0],
                sequence: None,
                rows: 2,
                root: ObjectId([7; 32]),
            }),
            extras: vec![Extra {
                kind: ExtraKind::Index,
                name: "users_name".into(),
                ordinal: 1,
                sql: "CREATE INDEX users_name ON users(name)".into(),
            }],
        }
    }

    #[test]
    fn round_trips_and_rejects_disorder() {
        let t = sample();
        let b = t.encode();
        assert_eq!(TableObject::decode(&b).unwrap(), t);
        let mut t2 = t.clone();
        t2.extras.push(t2.extras[0].clone());
        assert!(TableObject::decode(&t2.encode()).is_err());
        let v = TableObject {
            engine: Default::default(),
            name: "v".into(),
            sql: "CREATE VIEW v AS SELECT 1".into(),
            ordinal: 3,
            table: None,
            extras: vec![],
        };
        assert_eq!(TableObject::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn hostile_counts_are_refused_without_large_reserves() {
        // A table claiming 32,767 columns, and a view claiming as many
        // extras as it has bytes, in a few bytes.
        let mut w = Writer::new();
        w.u8(TABLE_VERSION)
            .u8(KIND_TABLE)
            .bytes(b"t")
            .bytes(b"")
            .varint(0)
            .u8(0)
            .varint(super::super::row::MAX_COLUMNS as u64);
        assert!(TableObject::decode(&w.buf).is_err());
        let mut w = Writer::new();
        w.u8(TABLE_VERSION)
            .u8(KIND_VIEW)
            .bytes(b"v")
            .bytes(b"")
            .varint(0)
            .varint(1 << 40);
        assert!(TableObject::decode(&w.buf).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_is_canonical(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(t) = TableObject::decode(&b) {
                prop_assert_eq!(t.encode(), b);
            }
        }

        #[test]
        fn mutated_sample_is_canonical(i in 0usize..200, x: u8) {
            let mut b = sample().encode();
            if i < b.len() { b[i] = x; }
            if let Ok(t) = TableObject::decode(&b) {
                prop_assert_eq!(t.encode(), b);
            }
        }
    }
}
