//! Row-level differences between two sets of tables, on top of the prolly
//! map diff: equal subtrees are skipped unread, so a diff costs what changed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::load_table;
use super::table::{ExtraKind, TableData, TableObject};
use super::value::{Cell, Value, decode_key, decode_row};
use crate::diff::ChangeKind;
use crate::error::Result;
use crate::id::{ObjectId, ObjectType};
use crate::object::{ObjectSource, corrupt};
use crate::pmap::{self, Change};

/// One row added, removed or modified.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowChange {
    pub table: String,
    /// The primary-key values (the rowid for a table without a declared key).
    #[serde(serialize_with = "ser_key")]
    pub key: Vec<Value>,
    pub change: ChangeKind,
    /// For a modified row: the columns whose values differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

fn ser_key<S: serde::Serializer>(k: &[Value], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(k.len()))?;
    for v in k {
        seq.serialize_element(&v.to_json())?;
    }
    seq.end()
}

impl RowChange {
    /// `table (k1, k2)` with the key as SQL literals.
    pub fn describe_key(&self) -> String {
        let parts: Vec<String> = self.key.iter().map(Value::to_sql).collect();
        format!("{}({})", self.table, parts.join(", "))
    }
}

/// A table or view added, removed, or whose schema changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableChange {
    pub table: String,
    /// `added`, `removed`, `schema`, `key` (the rows are keyed by other
    /// columns, or by the rowid on one side only: they are not compared,
    /// since matching them by key would pair rows that are not the same),
    /// or `sequence` (only a sequence's value moved).
    pub change: &'static str,
    pub view: bool,
}

/// Totals of the row changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RowStat {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
}

impl RowStat {
    pub fn add(&mut self, c: &RowChange) {
        match c.change {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Removed => self.removed += 1,
            _ => self.modified += 1,
        }
    }
    pub fn total(&self) -> u64 {
        self.added + self.removed + self.modified
    }
}

/// Whether two tables have the same structure (columns, key, rowid layout).
pub fn same_structure(a: &TableData, b: &TableData) -> bool {
    a.flags == b.flags && a.key == b.key && a.columns == b.columns
}

/// What a table's rows are keyed by: the rowid (None), or these columns
/// in this order.
fn keying(t: &TableData) -> Option<Vec<String>> {
    (!t.keyed_by_rowid()).then(|| t.key_names())
}

fn schema_of(t: &TableObject) -> (String, Vec<(&str, &str)>) {
    (
        t.sql.clone(),
        t.extras
            .iter()
            .map(|e| (e.name.as_str(), e.sql.as_str()))
            .collect(),
    )
}

/// [`schema_of`] without the sequences' values.
fn sans_sequences(t: &TableObject) -> (String, Vec<(&str, &str)>) {
    (
        t.sql.clone(),
        t.extras
            .iter()
            .filter(|e| e.kind != ExtraKind::Sequence)
            .map(|e| (e.name.as_str(), e.sql.as_str()))
            .collect(),
    )
}

/// The key values of a row map key, for people and JSON.
pub fn key_values(table: &ObjectId, key: &[u8]) -> Result<Vec<Value>> {
    decode_key(key).map_err(|e| corrupt(ObjectType::Rows, table, format!("bad key: {e}")))
}

/// Columns whose cells differ, given both rows (the leading rowid, when a
/// row keeps one, is not a column).
fn changed_columns(
    old_t: &TableData,
    old: &[Cell],
    new_t: &TableData,
    new: &[Cell],
) -> Vec<String> {
    let oo = usize::from(old_t.rowid_in_row());
    let no = usize::from(new_t.rowid_in_row());
    let mut out = Vec::new();
    for (i, c) in new_t.columns.iter().enumerate() {
        let nv = new.get(no + i);
        let ov = old_t
            .columns
            .iter()
            .position(|oc| oc.name == c.name)
            .and_then(|j| old.get(oo + j));
        if ov != nv {
            out.push(c.name.clone());
        }
    }
    for c in &old_t.columns {
        if !new_t.columns.iter().any(|n| n.name == c.name) {
            out.push(c.name.clone());
        }
    }
    out
}

fn rows_of(table: &ObjectId, bytes: &[u8]) -> Result<Vec<Cell>> {
    decode_row(bytes).map_err(|e| corrupt(ObjectType::Rows, table, format!("bad row: {e}")))
}

/// Diffs the rows of one table: `a` and `b` are table objects (either may
/// be absent). Calls `out` for each changed row in key order.
pub fn diff_table(
    src: &dyn ObjectSource,
    name: &str,
    a: Option<&TableObject>,
    b: Option<&TableObject>,
    out: &mut dyn FnMut(RowChange) -> Result<()>,
) -> Result<()> {
    let ta = a.and_then(|t| t.table.as_ref());
    let tb = b.and_then(|t| t.table.as_ref());
    let (ra, rb) = (ta.map(|t| t.root), tb.map(|t| t.root));
    if ra == rb {
        return Ok(());
    }
    let ida = ra.unwrap_or_default();
    let idb = rb.unwrap_or_default();
    pmap::diff(src, ObjectType::Rows, ra.as_ref(), rb.as_ref(), |k, c| {
        let (kind, columns) = match &c {
            Change::Added(_) => (ChangeKind::Added, Vec::new()),
            Change::Removed(_) => (ChangeKind::Removed, Vec::new()),
            Change::Modified(ov, nv) => {
                let (Some(ta), Some(tb)) = (ta, tb) else {
                    return Ok(());
                };
                let cols = changed_columns(ta, &rows_of(&ida, ov)?, tb, &rows_of(&idb, nv)?);
                if cols.is_empty() {
                    // Only the rowid moved (VACUUM renumbers rowids of tables
                    // with a declared key): not a change of the row.
                    return Ok(());
                }
                (ChangeKind::Modified, cols)
            }
        };
        let from = if kind == ChangeKind::Removed {
            ida
        } else {
            idb
        };
        out(RowChange {
            table: name.to_string(),
            key: key_values(&from, k)?,
            change: kind,
            columns,
        })
    })
}

/// Diffs two sets of tables (name → table object id). Calls `out` for each
/// changed row, table by table in name order; returns the tables added,
/// removed or whose schema changed.
pub fn diff_tables(
    src: &dyn ObjectSource,
    a: &BTreeMap<String, ObjectId>,
    b: &BTreeMap<String, ObjectId>,
    out: &mut dyn FnMut(RowChange) -> Result<()>,
) -> Result<Vec<TableChange>> {
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let mut tables = Vec::new();
    for name in names {
        let (ia, ib) = (a.get(name), b.get(name));
        if ia == ib {
            continue;
        }
        let ta = ia.map(|id| load_table(src, id)).transpose()?;
        let tb = ib.map(|id| load_table(src, id)).transpose()?;
        let view = ta.as_ref().or(tb.as_ref()).is_some_and(|t| t.is_view());
        match (&ta, &tb) {
            (None, Some(_)) => tables.push(TableChange {
                table: name.clone(),
                change: "added",
                view,
            }),
            (Some(_), None) => tables.push(TableChange {
                table: name.clone(),
                change: "removed",
                view,
            }),
            (Some(x), Some(y)) => {
                if let (Some(p), Some(q)) = (&x.table, &y.table)
                    && keying(p) != keying(q)
                {
                    tables.push(TableChange {
                        table: name.clone(),
                        change: "key",
                        view,
                    });
                    continue;
                }
                let structure = match (&x.table, &y.table) {
                    (Some(p), Some(q)) => same_structure(p, q),
                    (None, None) => true,
                    _ => false,
                };
                // (A SQLite table's AUTOINCREMENT counter is its
                // `sequence`; PostgreSQL's sequences are extras.)
                let counter = match (&x.table, &y.table) {
                    (Some(p), Some(q)) => p.sequence != q.sequence,
                    _ => false,
                };
                if !structure || schema_of(x) != schema_of(y) || counter {
                    // Only a sequence's value moved (rows were inserted,
                    // even if deleted since): not a change of schema.
                    let change = if structure && sans_sequences(x) == sans_sequences(y) {
                        "sequence"
                    } else {
                        "schema"
                    };
                    tables.push(TableChange {
                        table: name.clone(),
                        change,
                        view,
                    });
                }
            }
            (None, None) => {}
        }
        diff_table(src, name, ta.as_ref(), tb.as_ref(), out)?;
    }
    Ok(tables)
}
