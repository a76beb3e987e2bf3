//! The SQL a PostgreSQL table object records is hostile input: a snapshot
//! may come from a peer, a bundle or a tampered store, and `restore --db
//! postgres://…` must not let it run anything but the statements that
//! recreate the objects it names.
//!
//! Every recorded script is split into statements with a lexer that follows
//! PostgreSQL's (quoted identifiers, standard and `E''` strings, dollar
//! quoting, nested comments; the restore sets `standard_conforming_strings`
//! so both agree), and each statement must have exactly the shape
//! sp-sync's own reader writes for its place ([`table_script`],
//! [`constraint`], [`index`], [`sequence_value`], [`view`]): a `CREATE
//! TABLE` of the object's own name and no `CHECK`/`REFERENCES`/inheritance,
//! its own sequences, composite types (of attributes and type names
//! only) and domains (made only when nothing they name is a volatile
//! function), comments on it and its columns, its storage
//! settings (statistics targets, storage, parameters, unlogged), an `ALTER TABLE`
//! of its own table adding one constraint, a `CREATE INDEX` on its own table, a `setval` of its own
//! column's sequence, a `CREATE VIEW` of its own name. The enum types a
//! table needs are recognised in the recorded `DO` block and created by
//! sp-sync itself; no recorded `DO` block runs. Each accepted statement is
//! then sent alone over the extended protocol, where PostgreSQL itself
//! refuses more than one command.
//!
//! What a restore evaluates must not call a volatile function either
//! (`pg_terminate_backend`, `setval`, `lo_unlink`, …): the identifiers in a
//! constraint are checked against `pg_proc` before it is added
//! ([`Guarded::names`]); column defaults are not evaluated by a restore
//! (every stored column gets a value) and generated columns and indexes may
//! only use immutable functions (PostgreSQL enforces it).

use crate::error::{Result, SyncError};

/// A token of PostgreSQL's SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An unquoted identifier or keyword, folded to lower case as
    /// PostgreSQL folds it.
    Word(String),
    /// A `"quoted"` identifier, unescaped.
    Quoted(String),
    /// A string constant (`'…'`, `E'…'`, `B'…'`, `X'…'`, `N'…'`), unescaped
    /// for the plain and `E` forms.
    Str(String),
    /// A dollar-quoted string: its tag and body.
    Dollar(String, String),
    /// A numeric constant, as written.
    Num(String),
    /// An operator (`::`, `=`, `-`, `<>`, …).
    Op(String),
    /// One of `( ) [ ] , ; .`
    Punct(char),
}

/// One statement: its text and its tokens.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// The statement's text, without the `;` that ends it.
    pub text: String,
    /// Its tokens.
    pub toks: Vec<Tok>,
}

fn refuse(what: impl std::fmt::Display) -> SyncError {
    SyncError::Invalid(format!("the snapshot's SQL is refused: {what}"))
}

const OP_CHARS: &str = "+-*/<>=~!@#%^&|`?:";

/// Splits `sql` into statements at `;`.
pub fn statements(sql: &str) -> Result<Vec<Stmt>> {
    if sql.contains('\0') {
        return Err(refuse("a NUL byte"));
    }
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut toks = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let n = b.len();
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    let ident_cont = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < n {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < n && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            loop {
                if i + 1 >= n {
                    return Err(refuse("an unterminated comment"));
                }
                if b[i] == b'/' && b[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b';' {
            push_stmt(&mut out, sql, start, i, &mut toks);
            i += 1;
            start = i;
        } else if c == b'\'' {
            let (s, e) = string(sql, i + 1, false)?;
            toks.push(Tok::Str(s));
            i = e;
        } else if (c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'') {
            let (s, e) = string(sql, i + 2, true)?;
            toks.push(Tok::Str(s));
            i = e;
        } else if matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
            && b.get(i + 1) == Some(&b'\'')
        {
            let (s, e) = string(sql, i + 2, false)?;
            toks.push(Tok::Str(s));
            i = e;
        } else if (c == b'u' || c == b'U') && b.get(i + 1) == Some(&b'&') {
            return Err(refuse("a Unicode-escaped name or string (U&)"));
        } else if c == b'"' {
            let mut s = Vec::new();
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    None => return Err(refuse("an unterminated quoted name")),
                    Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                        s.push(b'"');
                        j += 2;
                    }
                    Some(b'"') => break,
                    Some(&x) => {
                        s.push(x);
                        j += 1;
                    }
                }
            }
            toks.push(Tok::Quoted(String::from_utf8_lossy(&s).into_owned()));
            i = j + 1;
        } else if c == b'$' {
            // $tag$…$tag$ (a tag does not start with a digit); $1 is a
            // parameter, which recorded SQL never has.
            let mut j = i + 1;
            while j < n && b[j] != b'$' && ident_cont(b[j]) {
                j += 1;
            }
            let tag = &sql[i + 1..j];
            if b.get(j) != Some(&b'$') || tag.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(refuse("a parameter or a stray `$`"));
            }
            let delim = &sql[i..=j];
            let body_start = j + 1;
            let Some(end) = sql[body_start..].find(delim) else {
                return Err(refuse("an unterminated dollar-quoted string"));
            };
            toks.push(Tok::Dollar(
                tag.to_string(),
                sql[body_start..body_start + end].to_string(),
            ));
            i = body_start + end + delim.len();
        } else if ident_start(c) {
            let mut j = i;
            while j < n && ident_cont(b[j]) {
                j += 1;
            }
            toks.push(Tok::Word(sql[i..j].to_ascii_lowercase()));
            i = j;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let mut j = i;
            while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                // An exponent's sign belongs to the number.
                if (b[j] == b'e' || b[j] == b'E') && matches!(b.get(j + 1), Some(b'+' | b'-')) {
                    j += 1;
                }
                j += 1;
            }
            toks.push(Tok::Num(sql[i..j].to_string()));
            i = j;
        } else if matches!(c, b'(' | b')' | b'[' | b']' | b',' | b'.') {
            toks.push(Tok::Punct(c as char));
            i += 1;
        } else if OP_CHARS.as_bytes().contains(&c) {
            let mut j = i;
            while j < n && OP_CHARS.as_bytes().contains(&b[j]) {
                // A comment starts inside an operator's characters.
                if (b[j] == b'-' && b.get(j + 1) == Some(&b'-'))
                    || (b[j] == b'/' && b.get(j + 1) == Some(&b'*'))
                {
                    break;
                }
                j += 1;
            }
            if j == i {
                // `--` or `/*` right here: handled as a comment next turn.
                if c == b'-' || c == b'/' {
                    continue;
                }
            }
            toks.push(Tok::Op(sql[i..j].to_string()));
            i = j;
        } else {
            return Err(refuse(format!(
                "an unexpected character {:?}",
                sql[i..].chars().next().unwrap_or('?')
            )));
        }
    }
    push_stmt(&mut out, sql, start, n, &mut toks);
    Ok(out)
}

fn push_stmt(out: &mut Vec<Stmt>, sql: &str, start: usize, end: usize, toks: &mut Vec<Tok>) {
    if !toks.is_empty() {
        out.push(Stmt {
            text: sql[start..end].trim().to_string(),
            toks: std::mem::take(toks),
        });
    }
}

/// A string constant's value from `from` (just after the opening quote) to
/// its closing quote; `escapes` for `E'…'`. Returns the value and the
/// index after the closing quote.
fn string(sql: &str, from: usize, escapes: bool) -> Result<(String, usize)> {
    let b = sql.as_bytes();
    let mut s = Vec::new();
    let mut j = from;
    loop {
        match b.get(j) {
            None => return Err(refuse("an unterminated string")),
            Some(b'\'') if b.get(j + 1) == Some(&b'\'') => {
                s.push(b'\'');
                j += 2;
            }
            Some(b'\'') => break,
            Some(b'\\') if escapes => {
                let e = *b
                    .get(j + 1)
                    .ok_or_else(|| refuse("an unterminated string"))?;
                s.push(match e {
                    b'\\' | b'\'' => e,
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 8,
                    b'f' => 12,
                    _ => return Err(refuse("an escape sequence sp-sync does not read")),
                });
                j += 2;
            }
            Some(&x) => {
                s.push(x);
                j += 1;
            }
        }
    }
    Ok((String::from_utf8_lossy(&s).into_owned(), j + 1))
}

fn word(t: Option<&Tok>, w: &str) -> bool {
    matches!(t, Some(Tok::Word(x)) if x == w)
}

/// The name an identifier token stands for.
fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Word(w)) => Some(w),
        Some(Tok::Quoted(q)) => Some(q),
        _ => None,
    }
}

fn expect_words(toks: &[Tok], words: &[&str], what: &str) -> Result<()> {
    for (i, w) in words.iter().enumerate() {
        if !word(toks.get(i), w) {
            return Err(refuse(format!("{what}: expected {}", words.join(" "))));
        }
    }
    Ok(())
}

fn own_name(t: Option<&Tok>, table: &str, what: &str) -> Result<()> {
    match ident(t) {
        Some(n) if n == table => Ok(()),
        Some(n) => Err(refuse(format!(
            "{what} names {n:?}, not its own table {table:?}"
        ))),
        None => Err(refuse(format!("{what} does not name its table {table:?}"))),
    }
}

/// [`own_name`], or the name of one of the table's partitions (which its
/// script makes).
fn own_or_partition(t: Option<&Tok>, table: &str, partitions: &[String], what: &str) -> Result<()> {
    match ident(t) {
        Some(n) if partitions.iter().any(|p| p == n) => Ok(()),
        _ => own_name(t, table, what),
    }
}

/// Whether any `,` stands outside parentheses from `from` on (`ALTER
/// TABLE` takes a list of actions).
fn top_level_comma(toks: &[Tok]) -> bool {
    let mut depth = 0i32;
    for t in toks {
        match t {
            Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') => depth -= 1,
            Tok::Punct(',') if depth <= 0 => return true,
            _ => {}
        }
    }
    false
}

/// What restoring a table's `CREATE` script does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run this statement (already checked).
    Exec(String),
    /// Create this enum type unless a type of that name exists: the name
    /// as SQL (quoted parts) and the labels as string constants.
    Enum {
        /// The type's name as written (quoted identifiers, maybe qualified).
        name: String,
        /// The labels, each as a SQL string constant.
        labels: Vec<String>,
    },
    /// Create this composite type unless a type of that name exists.
    Composite {
        /// The type's name as SQL (quoted parts, maybe qualified).
        name: String,
        /// The `CREATE TYPE name AS (…)` statement.
        sql: String,
    },
    /// Create this domain unless a type of that name exists, once none
    /// of `names` is a volatile function (its checks run on every row).
    Domain {
        /// The domain's name as SQL (quoted parts, maybe qualified).
        name: String,
        /// The `CREATE DOMAIN name AS …` statement.
        sql: String,
        /// Every identifier after `AS`.
        names: Vec<String>,
    },
    /// Create this extension unless the database has it, and only when
    /// the server deems it trusted (one a database owner may create:
    /// citext, hstore, pgvector's vector…); `CREATE EXTENSION IF NOT EXISTS
    /// name [WITH SCHEMA s]`, the types of the table's columns being its.
    Extension {
        /// The extension's name (unquoted).
        name: String,
        /// The `CREATE EXTENSION` statement.
        sql: String,
    },
    /// Create this sequence (it must not exist yet: a snapshot does not
    /// take over a sequence the database already has).
    Sequence {
        /// The sequence's name.
        name: String,
        /// The `CREATE SEQUENCE` statement.
        sql: String,
    },
    /// `ALTER TABLE name ENABLE|FORCE ROW LEVEL SECURITY`: run once the
    /// rows are in (a table that forces it takes no `COPY` from its owner
    /// while it has no policy).
    RowSecurity(String),
    /// A policy, trigger or parent table (INHERITS) the table had:
    /// recorded so that a restore that
    /// creates the table can name it, and never run (its expressions and
    /// functions are the snapshot's, and its roles and functions may not
    /// exist where it is restored).
    Recorded {
        /// `policy`, `trigger` or `parent table`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

/// Whether `t` is exactly `PARTITION BY RANGE|LIST|HASH (key)`, the key
/// columns by name (each maybe with a `COLLATE` and an operator class, as
/// `pg_get_partkeydef` prints them): no expression, so no function is
/// named (rows are routed with the operator classes' own support
/// functions, which the database restored into holds).
fn partition_key(t: &[Tok]) -> bool {
    match t {
        [p, by, how, Tok::Punct('('), key @ .., Tok::Punct(')')] => {
            word(Some(p), "partition")
                && word(Some(by), "by")
                && ["range", "list", "hash"].iter().any(|w| word(Some(how), w))
                && !key.is_empty()
                && key.iter().all(|x| {
                    matches!(
                        x,
                        Tok::Word(_) | Tok::Quoted(_) | Tok::Punct(',') | Tok::Punct('.')
                    )
                })
        }
        _ => false,
    }
}

/// Whether `t` is exactly a partition's bound as `pg_get_expr` prints it:
/// `DEFAULT`, `FOR VALUES IN (…)`, `FOR VALUES FROM (…) TO (…)` or `FOR
/// VALUES WITH (modulus n, remainder n)`, the values constants
/// (strings, numbers, `MINVALUE`, `MAXVALUE`, `NULL`, `true`, `false`).
fn partition_bound(t: &[Tok]) -> bool {
    // A parenthesised list of constants.
    fn values(t: &[Tok]) -> bool {
        let [Tok::Punct('('), inner @ .., Tok::Punct(')')] = t else {
            return false;
        };
        !inner.is_empty()
            && inner.split(|x| *x == Tok::Punct(',')).all(|v| match v {
                [Tok::Str(_)] | [Tok::Num(_)] => true,
                [Tok::Op(m), Tok::Num(_)] => m == "-",
                [Tok::Word(w)] => {
                    matches!(
                        w.as_str(),
                        "minvalue" | "maxvalue" | "null" | "true" | "false"
                    )
                }
                _ => false,
            })
    }
    match t {
        [d] => word(Some(d), "default"),
        [f, v, rest @ ..] if word(Some(f), "for") && word(Some(v), "values") => match rest {
            [inn, list @ ..] if word(Some(inn), "in") => values(list),
            [from, range @ ..] if word(Some(from), "from") => {
                match range.iter().position(|x| word(Some(x), "to")) {
                    Some(at) => values(&range[..at]) && values(&range[at + 1..]),
                    None => false,
                }
            }
            [
                with,
                Tok::Punct('('),
                m,
                Tok::Num(a),
                Tok::Punct(','),
                r,
                Tok::Num(b),
                Tok::Punct(')'),
            ] => {
                word(Some(with), "with")
                    && word(Some(m), "modulus")
                    && word(Some(r), "remainder")
                    && a.parse::<u32>().is_ok()
                    && b.parse::<u32>().is_ok()
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether what follows `ALTER TABLE name` is one storage setting of the
/// table (see `pg::storage_settings`): `ALTER COLUMN col SET STATISTICS n`
/// (0 to 10,000), `ALTER COLUMN col SET STORAGE PLAIN|EXTERNAL|EXTENDED|MAIN`,
/// `SET UNLOGGED`, `REPLICA IDENTITY FULL|NOTHING`, or `SET (name =
/// 'value', toast.name = 'value', …)`: each
/// parameter a bare name (PostgreSQL refuses one it does not know) and one
/// string constant.
fn storage_setting(t: &[Tok]) -> bool {
    match t {
        [set, unlogged] => word(Some(set), "set") && word(Some(unlogged), "unlogged"),
        [replica, identity, how] => {
            word(Some(replica), "replica")
                && word(Some(identity), "identity")
                && (word(Some(how), "full") || word(Some(how), "nothing"))
        }
        [alter, column, col, set, what, value] => {
            word(Some(alter), "alter")
                && word(Some(column), "column")
                && ident(Some(col)).is_some()
                && word(Some(set), "set")
                && match value {
                    Tok::Num(n) => {
                        word(Some(what), "statistics")
                            && n.parse::<u16>().is_ok_and(|n| n <= 10_000)
                    }
                    Tok::Word(w) => {
                        word(Some(what), "storage")
                            && matches!(w.as_str(), "plain" | "external" | "extended" | "main")
                    }
                    _ => false,
                }
        }
        [set, Tok::Punct('('), params @ .., Tok::Punct(')')] if word(Some(set), "set") => {
            !params.is_empty()
                && params.split(|x| *x == Tok::Punct(',')).all(|p| match p {
                    [Tok::Word(_), Tok::Op(eq), Tok::Str(_)] => eq == "=",
                    [
                        toast,
                        Tok::Punct('.'),
                        Tok::Word(_),
                        Tok::Op(eq),
                        Tok::Str(_),
                    ] => word(Some(toast), "toast") && eq == "=",
                    _ => false,
                })
        }
        _ => false,
    }
}

/// Checks a table's recorded `CREATE` script: enum types (the `DO` blocks
/// sp-sync writes), its own sequences, one `CREATE TABLE` of `table`,
/// `ALTER SEQUENCE … OWNED BY` of those sequences to its columns, `ALTER
/// TABLE` of `table` turning row-level security on (`ENABLE` or `FORCE`
/// and nothing else), and `CREATE POLICY` / `CREATE [CONSTRAINT] TRIGGER`
/// on `table`, which are only named ([`Action::Recorded`]), never run;
/// `COMMENT ON TABLE table IS '…'` and `COMMENT ON COLUMN table.col IS
/// '…'` (one string, nothing more), and `ALTER TABLE` of `table` making one
/// storage setting ([`storage_setting`]), which run.
pub fn table_script(sql: &str, table: &str) -> Result<Vec<Action>> {
    Ok(table_script_and_partitions(sql, table)?.0)
}

/// [`table_script`], and the names of the partitions the script makes
/// (a partition's own constraints and indexes name it).
pub fn table_script_and_partitions(sql: &str, table: &str) -> Result<(Vec<Action>, Vec<String>)> {
    let mut acts = Vec::new();
    let mut sequences: Vec<String> = Vec::new();
    let mut tables = 0;
    let mut partitions: Vec<String> = Vec::new();
    for s in statements(sql)? {
        let t = &s.toks;
        if word(t.first(), "do") {
            acts.push(enum_block(t)?);
        } else if word(t.first(), "create") && (word(t.get(1), "type") || word(t.get(1), "domain"))
        {
            if tables != 0 {
                return Err(refuse(format!(
                    "table {table}: a type made after the table"
                )));
            }
            acts.push(if word(t.get(1), "type") {
                composite_type(t, &s.text)?
            } else {
                domain(t, &s.text)?
            });
        } else if word(t.first(), "create") && word(t.get(1), "extension") {
            // `CREATE EXTENSION IF NOT EXISTS name [WITH SCHEMA s]`, before
            // the table, nothing more.
            let bad = || {
                refuse(format!(
                    "table {table}: a CREATE EXTENSION other than IF NOT EXISTS name [WITH SCHEMA s], \
                     or after the table: {}",
                    excerpt(&s.text)
                ))
            };
            expect_words(
                t,
                &["create", "extension", "if", "not", "exists"],
                "an extension",
            )
            .map_err(|_| bad())?;
            let name = ident(t.get(5)).ok_or_else(bad)?.to_string();
            let schema_ok = match &t[6..] {
                [] => true,
                [w, sc, s] => {
                    word(Some(w), "with") && word(Some(sc), "schema") && ident(Some(s)).is_some()
                }
                _ => false,
            };
            if !schema_ok || tables != 0 {
                return Err(bad());
            }
            acts.push(Action::Extension { name, sql: s.text });
        } else if word(t.first(), "create") && word(t.get(1), "sequence") {
            expect_words(
                t,
                &["create", "sequence", "if", "not", "exists"],
                "a sequence",
            )?;
            let name = ident(t.get(5))
                .ok_or_else(|| refuse("CREATE SEQUENCE without a name"))?
                .to_string();
            for x in &t[6..] {
                let ok = match x {
                    Tok::Word(w) => matches!(
                        w.as_str(),
                        "as" | "increment"
                            | "by"
                            | "minvalue"
                            | "maxvalue"
                            | "start"
                            | "with"
                            | "cache"
                            | "cycle"
                            | "no"
                            | "smallint"
                            | "integer"
                            | "bigint"
                    ),
                    Tok::Num(_) => true,
                    Tok::Op(o) => o == "-",
                    _ => false,
                };
                if !ok {
                    return Err(refuse(format!("sequence {name}: {x:?}")));
                }
            }
            sequences.push(name.clone());
            acts.push(Action::Sequence { name, sql: s.text });
        } else if word(t.first(), "create")
            && word(t.get(1), "table")
            && word(t.get(3), "partition")
            && word(t.get(4), "of")
        {
            // `CREATE TABLE p PARTITION OF parent <bound> [PARTITION BY
            // …]`: a partition of the table or of one made before it.
            let name = ident(t.get(2))
                .filter(|n| *n != table && !partitions.iter().any(|p| p == n))
                .ok_or_else(|| refuse(format!("table {table}: a partition without a new name")))?
                .to_string();
            let parent = ident(t.get(5)).unwrap_or_default();
            if tables != 1 || (parent != table && !partitions.iter().any(|p| p == parent)) {
                return Err(refuse(format!(
                    "table {table}: partition {name:?} of no table made before it"
                )));
            }
            let rest = t.get(6..).unwrap_or_default();
            let rest = match rest.iter().position(|x| word(Some(x), "partition")) {
                Some(at) if partition_key(&rest[at..]) => &rest[..at],
                Some(_) => {
                    return Err(refuse(format!(
                        "table {table}: partition {name:?}: its PARTITION BY"
                    )));
                }
                None => rest,
            };
            if !partition_bound(rest) {
                return Err(refuse(format!(
                    "table {table}: partition {name:?}: its bound: {}",
                    excerpt(&s.text)
                )));
            }
            partitions.push(name);
            acts.push(Action::Exec(s.text));
        } else if word(t.first(), "create") && word(t.get(1), "table") {
            own_name(t.get(2), table, "CREATE TABLE")?;
            // (A partitioned table's `PARTITION BY …` follows its columns.)
            let t = match t.iter().rposition(|x| word(Some(x), "partition")) {
                Some(at) if partition_key(&t[at..]) => &t[..at],
                _ => &t[..],
            };
            if t.get(3) != Some(&Tok::Punct('(')) || t.last() != Some(&Tok::Punct(')')) {
                return Err(refuse(format!(
                    "CREATE TABLE {table}: not a plain column list"
                )));
            }
            let mut depth = 0i32;
            for (i, x) in t.iter().enumerate().skip(3) {
                match x {
                    Tok::Punct('(') => depth += 1,
                    Tok::Punct(')') => {
                        depth -= 1;
                        if depth == 0 && i + 1 != t.len() {
                            return Err(refuse(format!(
                                "CREATE TABLE {table}: something after the column list"
                            )));
                        }
                    }
                    Tok::Word(w) if matches!(w.as_str(), "check" | "references" | "like") => {
                        return Err(refuse(format!(
                            "CREATE TABLE {table}: {} (sp-sync records it separately)",
                            w.to_uppercase()
                        )));
                    }
                    _ => {}
                }
            }
            tables += 1;
            acts.push(Action::Exec(s.text));
        } else if word(t.first(), "alter") && word(t.get(1), "sequence") {
            let seq = ident(t.get(2)).unwrap_or_default();
            if !sequences.iter().any(|s| s == seq)
                || !word(t.get(3), "owned")
                || !word(t.get(4), "by")
                || t.get(6) != Some(&Tok::Punct('.'))
                || ident(t.get(7)).is_none()
                || t.len() != 8
            {
                return Err(refuse(format!(
                    "table {table}: an ALTER SEQUENCE that is not its own OWNED BY"
                )));
            }
            own_name(t.get(5), table, "ALTER SEQUENCE … OWNED BY")?;
            acts.push(Action::Exec(s.text));
        } else if word(t.first(), "alter") && word(t.get(1), "table") && word(t.get(3), "inherit") {
            // `ALTER TABLE name INHERIT parent` (or `schema.parent`): only
            // named, never run (the parent would take this table's rows
            // into every query of its own).
            own_name(t.get(2), table, "ALTER TABLE … INHERIT")?;
            let parent = match &t[4..] {
                [p] => ident(Some(p)).map(str::to_string),
                [sch, Tok::Punct('.'), p] => ident(Some(sch))
                    .zip(ident(Some(p)))
                    .map(|(a, b)| format!("{a}.{b}")),
                _ => None,
            }
            .ok_or_else(|| refuse(format!("table {table}: an INHERIT of no one table")))?;
            acts.push(Action::Recorded {
                kind: "parent table",
                name: parent,
            });
        } else if word(t.first(), "alter") && word(t.get(1), "table") {
            own_name(t.get(2), table, "ALTER TABLE")?;
            let on = t.len() == 7
                && (word(t.get(3), "enable") || word(t.get(3), "force"))
                && word(t.get(4), "row")
                && word(t.get(5), "level")
                && word(t.get(6), "security");
            if on {
                acts.push(Action::RowSecurity(s.text));
            } else if storage_setting(&t[3..]) {
                acts.push(Action::Exec(s.text));
            } else {
                return Err(refuse(format!(
                    "table {table}: an ALTER TABLE other than turning row-level security on \
                     or a storage setting: {}",
                    excerpt(&s.text)
                )));
            }
        } else if word(t.first(), "create") && word(t.get(1), "policy") {
            let name = ident(t.get(2))
                .ok_or_else(|| refuse(format!("table {table}: CREATE POLICY without a name")))?;
            if !word(t.get(3), "on") {
                return Err(refuse(format!(
                    "table {table}: CREATE POLICY {name:?} without ON"
                )));
            }
            own_name(t.get(4), table, "CREATE POLICY")?;
            acts.push(Action::Recorded {
                kind: "policy",
                name: name.to_string(),
            });
        } else if word(t.first(), "comment") && word(t.get(1), "on") {
            // `COMMENT ON TABLE name IS '…'` or `COMMENT ON COLUMN
            // name.col IS '…'`, and nothing else.
            let text_at = if word(t.get(2), "table") {
                own_name(t.get(3), table, "COMMENT ON TABLE")?;
                4
            } else if word(t.get(2), "column") {
                own_name(t.get(3), table, "COMMENT ON COLUMN")?;
                if t.get(4) != Some(&Tok::Punct('.')) || ident(t.get(5)).is_none() {
                    return Err(refuse(format!(
                        "table {table}: a COMMENT ON COLUMN of no column of its own"
                    )));
                }
                6
            } else {
                return Err(refuse(format!(
                    "table {table}: a comment on something other than the table or its columns: {}",
                    excerpt(&s.text)
                )));
            };
            if !(word(t.get(text_at), "is")
                && matches!(t.get(text_at + 1), Some(Tok::Str(_)))
                && t.len() == text_at + 2)
            {
                return Err(refuse(format!(
                    "table {table}: a comment that is not one string: {}",
                    excerpt(&s.text)
                )));
            }
            acts.push(Action::Exec(s.text));
        } else if word(t.first(), "create")
            && (word(t.get(1), "trigger")
                || (word(t.get(1), "constraint") && word(t.get(2), "trigger")))
        {
            let at = if word(t.get(1), "trigger") { 2 } else { 3 };
            let name = ident(t.get(at))
                .ok_or_else(|| refuse(format!("table {table}: CREATE TRIGGER without a name")))?;
            // `… {BEFORE|AFTER|INSTEAD OF} event [OR …] ON table …`: the
            // first ON after the name (an `UPDATE OF` column list holds
            // no ON).
            let on = t[at + 1..]
                .iter()
                .position(|x| word(Some(x), "on"))
                .map(|i| at + 1 + i + 1);
            own_name(on.and_then(|i| t.get(i)), table, "CREATE TRIGGER")?;
            acts.push(Action::Recorded {
                kind: "trigger",
                name: name.to_string(),
            });
        } else {
            return Err(refuse(format!(
                "table {table}: a statement that is not part of creating it: {}",
                excerpt(&s.text)
            )));
        }
    }
    if tables != 1 {
        return Err(refuse(format!(
            "table {table}: the script has {tables} CREATE TABLE statements"
        )));
    }
    Ok((acts, partitions))
}

fn excerpt(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 60 {
        format!("{}…", one.chars().take(60).collect::<String>())
    } else {
        one
    }
}

/// `DO $sp_sync$ BEGIN CREATE TYPE name AS ENUM ('a', …); EXCEPTION WHEN
/// duplicate_object THEN NULL; END $sp_sync$`, and nothing else.
/// The name `CREATE TYPE` or `CREATE DOMAIN` makes (`name` or
/// `schema.name`), as SQL, and the tokens after it.
fn type_name(t: &[Tok]) -> Option<(String, &[Tok])> {
    match t.get(2..)? {
        [n, Tok::Punct('.'), m, rest @ ..] => Some((
            format!(
                "{}.{}",
                super::pg::quote(ident(Some(n))?),
                super::pg::quote(ident(Some(m))?)
            ),
            rest,
        )),
        [n, rest @ ..] => Some((super::pg::quote(ident(Some(n))?), rest)),
        _ => None,
    }
}

/// `CREATE DOMAIN name AS type …`: what follows `AS` (the base type, a
/// collation, a default, `NOT NULL`, checks) is PostgreSQL's to check; the
/// restore makes it only when none of its identifiers names a volatile
/// function (see [`Action::Domain`]).
fn domain(t: &[Tok], sql: &str) -> Result<Action> {
    let bad = || {
        refuse(format!(
            "a CREATE DOMAIN that is not one domain's: {}",
            excerpt(sql)
        ))
    };
    let (name, rest) = type_name(t).ok_or_else(bad)?;
    match rest {
        [as_, ty, ..] if word(Some(as_), "as") && ident(Some(ty)).is_some() => Ok(Action::Domain {
            name,
            sql: sql.to_string(),
            names: names(&rest[1..]),
        }),
        _ => Err(bad()),
    }
}

/// `CREATE TYPE name AS (attr type, …)`: a composite type, each
/// attribute's type as `format_type` prints it (names, maybe qualified,
/// a type modifier of numbers, `[]`), so that nothing but types is named.
fn composite_type(t: &[Tok], sql: &str) -> Result<Action> {
    let bad = || {
        refuse(format!(
            "a CREATE TYPE that is not a composite type's: {}",
            excerpt(sql)
        ))
    };
    let (name, rest) = type_name(t).ok_or_else(bad)?;
    let [as_, Tok::Punct('('), attrs @ .., Tok::Punct(')')] = rest else {
        return Err(bad());
    };
    if !word(Some(as_), "as") || attrs.is_empty() {
        return Err(bad());
    }
    // Split at the commas outside a type modifier's parentheses.
    let mut depth = 0i32;
    let mut parts: Vec<Vec<&Tok>> = vec![Vec::new()];
    for x in attrs {
        match x {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth -= 1,
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad());
        }
        match (x, parts.last_mut()) {
            (Tok::Punct(','), _) if depth == 0 => parts.push(Vec::new()),
            (_, Some(p)) => p.push(x),
            (_, None) => return Err(bad()),
        }
    }
    let attribute_ok = |p: &[&Tok]| {
        matches!(p.first(), Some(Tok::Word(_) | Tok::Quoted(_)))
            && p.len() >= 2
            && p[1..].iter().all(|x| {
                matches!(
                    x,
                    Tok::Word(_)
                        | Tok::Quoted(_)
                        | Tok::Num(_)
                        | Tok::Punct('.')
                        | Tok::Punct('[')
                        | Tok::Punct(']')
                        | Tok::Punct('(')
                        | Tok::Punct(')')
                        | Tok::Punct(',')
                )
            })
    };
    if depth != 0 || !parts.iter().all(|p| attribute_ok(p)) {
        return Err(bad());
    }
    Ok(Action::Composite {
        name,
        sql: sql.to_string(),
    })
}

fn enum_block(t: &[Tok]) -> Result<Action> {
    let bad = || refuse("a DO block that is not an enum type's creation");
    let [Tok::Word(_), Tok::Dollar(_, body)] = t else {
        return Err(bad());
    };
    let inner = statements(body)?;
    let [first, second, third] = inner.as_slice() else {
        return Err(bad());
    };
    let f = &first.toks;
    if !(word(f.first(), "begin") && word(f.get(1), "create") && word(f.get(2), "type")) {
        return Err(bad());
    }
    // The name: ident or ident.ident, then AS ENUM (.
    let mut i = 3;
    let mut name = Vec::new();
    loop {
        let part = ident(f.get(i)).ok_or_else(bad)?;
        name.push(super::pg::quote(part));
        i += 1;
        if f.get(i) == Some(&Tok::Punct('.')) && name.len() < 2 {
            i += 1;
            continue;
        }
        break;
    }
    if !(word(f.get(i), "as")
        && word(f.get(i + 1), "enum")
        && f.get(i + 2) == Some(&Tok::Punct('(')))
    {
        return Err(bad());
    }
    i += 3;
    let mut labels = Vec::new();
    loop {
        match f.get(i) {
            Some(Tok::Str(l)) => labels.push(format!("'{}'", l.replace('\'', "''"))),
            Some(Tok::Punct(')')) if labels.is_empty() && i + 1 == f.len() => break,
            _ => return Err(bad()),
        }
        match f.get(i + 1) {
            Some(Tok::Punct(',')) => i += 2,
            Some(Tok::Punct(')')) if i + 2 == f.len() => break,
            _ => return Err(bad()),
        }
    }
    let tail = |s: &Stmt, w: &[&str]| {
        s.toks.len() == w.len() && s.toks.iter().zip(w).all(|(t, w)| word(Some(t), w))
    };
    if !tail(
        second,
        &["exception", "when", "duplicate_object", "then", "null"],
    ) || !tail(third, &["end"])
    {
        return Err(bad());
    }
    Ok(Action::Enum {
        name: name.join("."),
        labels,
    })
}

/// A checked statement and the identifiers in it that could name a
/// function the statement evaluates.
#[derive(Debug, Clone)]
pub struct Guarded {
    /// The statement to run.
    pub sql: String,
    /// Names a restore checks against `pg_proc` before running it.
    pub names: Vec<String>,
}

/// `ALTER TABLE table ADD CONSTRAINT name (UNIQUE|PRIMARY KEY|CHECK|
/// EXCLUDE|FOREIGN KEY) …`, one action.
pub fn constraint(sql: &str, table: &str, partitions: &[String]) -> Result<Guarded> {
    let s = single(sql, "a constraint")?;
    let t = &s.toks;
    expect_words(t, &["alter", "table"], "a constraint")?;
    own_or_partition(t.get(2), table, partitions, "a constraint")?;
    if !(word(t.get(3), "add") && word(t.get(4), "constraint") && ident(t.get(5)).is_some()) {
        return Err(refuse(format!("table {table}: not an ADD CONSTRAINT")));
    }
    let kind_ok = ["unique", "primary", "check", "exclude", "foreign"]
        .iter()
        .any(|k| word(t.get(6), k))
        || not_null(&t[6..]);
    if !kind_ok || top_level_comma(&t[6..]) {
        return Err(refuse(format!(
            "table {table}: a constraint that is not one UNIQUE, PRIMARY KEY, CHECK, EXCLUDE, FOREIGN KEY or NOT NULL"
        )));
    }
    Ok(Guarded {
        names: names(&t[6..]),
        sql: s.text,
    })
}

/// PostgreSQL 18's `NOT NULL col [NO INHERIT] [NOT VALID]` (as
/// `pg_get_constraintdef` prints one), nothing more.
fn not_null(t: &[Tok]) -> bool {
    if !(word(t.first(), "not") && word(t.get(1), "null") && ident(t.get(2)).is_some()) {
        return false;
    }
    let words: Option<Vec<&str>> = t[3..]
        .iter()
        .map(|x| match x {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect();
    matches!(
        words.as_deref(),
        Some(
            [] | ["no", "inherit"]
                | ["not", "valid"]
                | ["no", "inherit", "not", "valid"]
                | ["not", "valid", "no", "inherit"]
        )
    )
}

/// `CREATE [UNIQUE] INDEX name ON [ONLY] table …`, or a mark on one of
/// the table's indexes: `ALTER TABLE table CLUSTER ON index` or `ALTER
/// TABLE table REPLICA IDENTITY USING INDEX index`, nothing more.
pub fn index(sql: &str, table: &str, partitions: &[String]) -> Result<String> {
    let s = single(sql, "an index")?;
    let t = &s.toks;
    if word(t.first(), "alter") {
        let bad = || {
            refuse(format!(
                "table {table}: an index's ALTER TABLE that is not CLUSTER ON or REPLICA IDENTITY USING INDEX"
            ))
        };
        if !word(t.get(1), "table") {
            return Err(bad());
        }
        own_name(t.get(2), table, "an index's ALTER TABLE")?;
        let rest = &t[3..];
        let mark: &[&str] = if word(rest.first(), "cluster") {
            &["cluster", "on"]
        } else {
            &["replica", "identity", "using", "index"]
        };
        expect_words(
            rest,
            mark,
            &format!("table {table}: an index's ALTER TABLE"),
        )?;
        return match &rest[mark.len()..] {
            [i] if ident(Some(i)).is_some() => Ok(s.text),
            _ => Err(bad()),
        };
    }
    let mut i = 1;
    if !word(t.first(), "create") {
        return Err(refuse(format!(
            "table {table}: an index that is not CREATE INDEX"
        )));
    }
    if word(t.get(i), "unique") {
        i += 1;
    }
    if !(word(t.get(i), "index") && ident(t.get(i + 1)).is_some() && word(t.get(i + 2), "on")) {
        return Err(refuse(format!(
            "table {table}: an index that is not CREATE INDEX"
        )));
    }
    i += 3;
    if word(t.get(i), "only") {
        i += 1;
    }
    own_or_partition(t.get(i), table, partitions, "an index")?;
    if t.get(i + 1) == Some(&Tok::Punct('.')) {
        return Err(refuse(format!(
            "an index on table {table} names another schema"
        )));
    }
    Ok(s.text)
}

/// `SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('"table"',
/// 'column'), value, called)`: the column, the value and `is_called`.
pub fn sequence_value(sql: &str, table: &str) -> Result<(String, i64, bool)> {
    let s = single(sql, "a sequence value")?;
    let t = &s.toks;
    let bad = || {
        refuse(format!(
            "table {table}: a sequence value that is not its own setval"
        ))
    };
    let p = |c| Tok::Punct(c);
    let w = |s: &str| Tok::Word(s.into());
    let head = [
        w("select"),
        w("pg_catalog"),
        p('.'),
        w("setval"),
        p('('),
        w("pg_catalog"),
        p('.'),
        w("pg_get_serial_sequence"),
        p('('),
    ];
    if t.len() < head.len() || t[..head.len()] != head {
        return Err(bad());
    }
    let rest = &t[head.len()..];
    let (tbl, col, rest) = match rest {
        [
            Tok::Str(a),
            Tok::Punct(','),
            Tok::Str(b),
            Tok::Punct(')'),
            Tok::Punct(','),
            rest @ ..,
        ] => (a, b, rest),
        _ => return Err(bad()),
    };
    if tbl != &super::pg::quote(table) {
        return Err(refuse(format!(
            "table {table}: a sequence value for another table ({tbl})"
        )));
    }
    let (neg, rest) = match rest {
        [Tok::Op(o), rest @ ..] if o == "-" => (true, rest),
        _ => (false, rest),
    };
    let [
        Tok::Num(v),
        Tok::Punct(','),
        Tok::Word(called),
        Tok::Punct(')'),
    ] = rest
    else {
        return Err(bad());
    };
    let v: i64 = format!("{}{v}", if neg { "-" } else { "" })
        .parse()
        .map_err(|_| bad())?;
    let called = match called.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(bad()),
    };
    Ok((col.clone(), v, called))
}

/// `CREATE VIEW name AS …`.
pub fn view(sql: &str, name: &str) -> Result<String> {
    let s = single(sql, "a view")?;
    let t = &s.toks;
    expect_words(t, &["create", "view"], "a view")?;
    own_name(t.get(2), name, "a view")?;
    // `WITH (option = 'value', …)`: the view options sp-sync records, and
    // nothing else.
    let mut at = 3;
    if word(t.get(3), "with") {
        if t.get(4) != Some(&Tok::Punct('(')) {
            return Err(refuse(format!("view {name}: WITH without its options")));
        }
        at = 5;
        loop {
            let key_ok = matches!(
                t.get(at),
                Some(Tok::Word(k)) if matches!(k.as_str(), "check_option" | "security_barrier" | "security_invoker")
            );
            let eq_ok = matches!(t.get(at + 1), Some(Tok::Op(o)) if o == "=");
            let val_ok = matches!(t.get(at + 2), Some(Tok::Str(_)) | Some(Tok::Word(_)));
            if !(key_ok && eq_ok && val_ok) {
                return Err(refuse(format!(
                    "view {name}: an option other than check_option, security_barrier or security_invoker"
                )));
            }
            at += 3;
            match t.get(at) {
                Some(Tok::Punct(',')) => at += 1,
                Some(Tok::Punct(')')) => {
                    at += 1;
                    break;
                }
                _ => return Err(refuse(format!("view {name}: its options do not end"))),
            }
        }
    }
    if !word(t.get(at), "as") {
        return Err(refuse(format!("view {name}: not CREATE VIEW {name} AS …")));
    }
    Ok(s.text)
}

fn single(sql: &str, what: &str) -> Result<Stmt> {
    let mut v = statements(sql)?;
    if v.len() != 1 {
        return Err(refuse(format!("{what} holds {} statements", v.len())));
    }
    Ok(v.remove(0))
}

/// The identifiers in `toks`, for the volatile-function check.
fn names(toks: &[Tok]) -> Vec<String> {
    let mut v: Vec<String> = toks
        .iter()
        .filter_map(|t| ident(Some(t)).map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_like_postgresql() {
        let s = statements(
            "SELECT 'a;b', E'c\\';d', $x$;$x$, \"e;\"\"f\" -- ;\n /* ; /* ; */ ; */ FROM t; SELECT 2",
        )
        .unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            s[0].toks[1..],
            [
                Tok::Str("a;b".into()),
                Tok::Punct(','),
                Tok::Str("c';d".into()),
                Tok::Punct(','),
                Tok::Dollar("x".into(), ";".into()),
                Tok::Punct(','),
                Tok::Quoted("e;\"f".into()),
                Tok::Word("from".into()),
                Tok::Word("t".into()),
            ]
        );
        assert!(statements("SELECT 'open").is_err());
        assert!(statements("SELECT $1").is_err());
        assert!(statements("SELECT U&\"\\0061\"").is_err());
        assert!(statements("/* open").is_err());
    }

    #[test]
    fn composite_types_pass_and_nothing_else() {
        let table = "CREATE TABLE \"t\" (\n    \"k\" integer NOT NULL\n);\n";
        let ok = format!(
            "CREATE TYPE public.\"Zip\" AS (code character varying(10), plus4 numeric(4,0));\n\
             CREATE TYPE addr AS (street text, zip public.\"Zip\", tags text[], \"when\" timestamp(3) with time zone);\n\
             {table}"
        );
        let a = table_script(&ok, "t").unwrap();
        assert_eq!(a.len(), 3);
        assert!(matches!(&a[0], Action::Composite { name, .. } if name == "\"public\".\"Zip\""));
        assert!(
            matches!(&a[1], Action::Composite { name, sql } if name == "\"addr\"" && sql.starts_with("CREATE TYPE addr"))
        );
        for bad in [
            "CREATE TYPE a AS (x text DEFAULT 'y')",
            "CREATE TYPE a AS (x text COLLATE \"C\" CHECK (f()))",
            "CREATE TYPE a AS (x numeric(f(1)))",
            "CREATE TYPE a AS (x text[1 + 1])",
            "CREATE TYPE a AS ()",
            "CREATE TYPE a AS (x)",
            "CREATE TYPE a AS ENUM ('x')",
            "CREATE TYPE a AS RANGE (subtype = int4)",
            "CREATE TYPE a (input = f, output = g)",
            "CREATE TYPE a AS (x text) ; DROP TABLE t",
            "CREATE TYPE a.b.c AS (x text)",
            "CREATE TYPE a AS (x text), b AS (y text)",
        ] {
            let script = format!("{bad};\n{table}");
            assert!(table_script(&script, "t").is_err(), "{bad}");
        }
        // Only before the table.
        assert!(table_script(&format!("{table}CREATE TYPE a AS (x text);\n"), "t").is_err());
    }

    #[test]
    fn domains_pass_with_their_names() {
        let table = "CREATE TABLE \"t\" (\n    \"k\" integer NOT NULL\n);\n";
        let ok = format!(
            "CREATE DOMAIN public.email AS text COLLATE \"C\" DEFAULT 'a@b' NOT NULL \
             CONSTRAINT has_at CHECK (VALUE ~~ '%@%'::text) CONSTRAINT f CHECK (my_fn(VALUE));\n{table}"
        );
        let a = table_script(&ok, "t").unwrap();
        assert_eq!(a.len(), 2);
        let Action::Domain { name, sql, names } = &a[0] else {
            panic!("{a:?}");
        };
        assert_eq!(name, "\"public\".\"email\"");
        assert!(sql.starts_with("CREATE DOMAIN public.email AS text"));
        // Every identifier after AS, for the restore's volatile check.
        assert!(names.contains(&"my_fn".to_string()), "{names:?}");
        for bad in [
            "CREATE DOMAIN a",
            "CREATE DOMAIN a text",
            "CREATE DOMAIN a AS",
            "CREATE DOMAIN a AS 'text'",
            "CREATE DOMAIN a.b.c AS text",
        ] {
            let script = format!("{bad};\n{table}");
            assert!(table_script(&script, "t").is_err(), "{bad}");
        }
        assert!(table_script(&format!("{table}CREATE DOMAIN a AS text;\n"), "t").is_err());
    }

    #[test]
    fn partitions_pass_and_nothing_else() {
        let head = "CREATE TABLE \"t\" (\n    \"k\" integer NOT NULL\n) PARTITION BY RANGE (k);\n";
        let ok = format!(
            "{head}CREATE TABLE \"p1\" PARTITION OF \"t\" FOR VALUES FROM (MINVALUE) TO (-5);\n\
             CREATE TABLE \"p2\" PARTITION OF \"t\" FOR VALUES FROM ('2024-01-01', 1) TO (MAXVALUE, MAXVALUE) PARTITION BY HASH (k);\n\
             CREATE TABLE \"p2a\" PARTITION OF \"p2\" FOR VALUES WITH (modulus 2, remainder 0);\n\
             CREATE TABLE \"p3\" PARTITION OF \"t\" FOR VALUES IN (NULL, 'a', true) PARTITION BY LIST (\"k\" COLLATE \"C\");\n\
             CREATE TABLE \"p4\" PARTITION OF \"t\" DEFAULT;\n"
        );
        let a = table_script(&ok, "t").unwrap();
        assert_eq!(a.len(), 6);
        assert!(
            a.iter()
                .all(|x| matches!(x, Action::Exec(s) if s.starts_with("CREATE TABLE")))
        );
        for bad in [
            "CREATE TABLE \"p\" PARTITION OF \"other\" DEFAULT",
            "CREATE TABLE \"t\" PARTITION OF \"t\" DEFAULT",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES IN (f())",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES IN ('a' || 'b')",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES IN ((SELECT 1))",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES IN ('1'::int)",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES IN ()",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES FROM (1)",
            "CREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES WITH (modulus 2)",
            "CREATE TABLE \"p\" PARTITION OF \"t\" DEFAULT PARTITION BY LIST (lower(k))",
            "CREATE TABLE \"p\" PARTITION OF \"t\" DEFAULT WITH (fillfactor=1)",
            "CREATE TABLE \"p\" PARTITION OF \"t\" (CHECK (k > 0)) DEFAULT",
            "CREATE TABLE \"p\" PARTITION OF \"t\" DEFAULT TABLESPACE x",
        ] {
            let script = format!("{head}{bad};\n");
            assert!(table_script(&script, "t").is_err(), "{bad}");
        }
        // A partition before its table, twice, or of one not made yet.
        for bad in [
            "CREATE TABLE \"p\" PARTITION OF \"t\" DEFAULT;\nCREATE TABLE \"t\" (k int) PARTITION BY LIST (k);\n".to_string(),
            format!("{head}CREATE TABLE \"p\" PARTITION OF \"t\" DEFAULT;\nCREATE TABLE \"p\" PARTITION OF \"t\" FOR VALUES IN (1);\n"),
            format!("{head}CREATE TABLE \"q\" PARTITION OF \"p\" DEFAULT;\nCREATE TABLE \"p\" PARTITION OF \"t\" DEFAULT;\n"),
            "CREATE TABLE \"t\" (k int) PARTITION BY LIST (lower(k));\n".to_string(),
            "CREATE TABLE \"t\" (k int) PARTITION BY LIST (k) WITH (fillfactor=1);\n".to_string(),
        ] {
            assert!(table_script(&bad, "t").is_err(), "{bad}");
        }
        // A statement cut short, under a table of an empty name.
        let cut = "CREATE TABLE \"\" (\n    \"k\" integer\n);\nCREATE TABLE p PARTITION OF;\n";
        assert!(table_script(cut, "").is_err());
    }

    #[test]
    fn storage_settings_pass_and_nothing_else() {
        let base = "CREATE TABLE \"t\" (\n    \"k\" integer NOT NULL\n);\n";
        let ok = format!(
            "{base}ALTER TABLE \"t\" ALTER COLUMN \"k\" SET STATISTICS 500;\n\
             ALTER TABLE \"t\" ALTER COLUMN \"k\" SET STORAGE MAIN;\n\
             ALTER TABLE \"t\" SET (fillfactor='70', toast.autovacuum_enabled='false');\n\
             ALTER TABLE \"t\" SET UNLOGGED;\n\
             ALTER TABLE \"t\" REPLICA IDENTITY FULL;\n"
        );
        let a = table_script(&ok, "t").unwrap();
        assert_eq!(a.len(), 6);
        assert!(
            a[1..]
                .iter()
                .all(|x| matches!(x, Action::Exec(s) if s.starts_with("ALTER TABLE")))
        );
        for bad in [
            "ALTER TABLE \"other\" SET UNLOGGED",
            "ALTER TABLE \"t\" SET LOGGED",
            "ALTER TABLE \"t\" SET UNLOGGED, DROP COLUMN k",
            "ALTER TABLE \"t\" ALTER COLUMN \"k\" SET STATISTICS 10001",
            "ALTER TABLE \"t\" ALTER COLUMN \"k\" SET STATISTICS -1",
            "ALTER TABLE \"t\" ALTER COLUMN \"k\" SET STORAGE 'main'",
            "ALTER TABLE \"t\" ALTER COLUMN \"k\" SET STORAGE MAIN, ALTER COLUMN k DROP NOT NULL",
            "ALTER TABLE \"t\" ALTER COLUMN \"k\" SET DEFAULT 1",
            "ALTER TABLE \"t\" ALTER COLUMN \"k\" TYPE text",
            "ALTER TABLE \"t\" SET ()",
            "ALTER TABLE \"t\" SET (fillfactor=70)",
            "ALTER TABLE \"t\" SET (fillfactor='70',)",
            "ALTER TABLE \"t\" SET (fillfactor='70' || '1')",
            "ALTER TABLE \"t\" SET (other.fillfactor='70')",
            "ALTER TABLE \"t\" SET (\"fillfactor\"='70')",
            "ALTER TABLE \"t\" SET (fillfactor='70') , OWNER TO x",
            "ALTER TABLE \"t\" SET SCHEMA other",
            "ALTER TABLE \"t\" SET TABLESPACE other",
            "ALTER TABLE \"t\" RESET (fillfactor)",
            "ALTER TABLE \"t\" REPLICA IDENTITY USING INDEX i",
            "ALTER TABLE \"t\" REPLICA IDENTITY DEFAULT, SET LOGGED",
        ] {
            let script = format!("{base}{bad};\n");
            assert!(table_script(&script, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn an_extension_is_made_only_by_its_name_before_the_table() {
        let table = "CREATE TABLE \"t\" (\n    \"k\" citext NOT NULL\n);\n";
        let ok = format!(
            "CREATE EXTENSION IF NOT EXISTS citext;\n\
             CREATE EXTENSION IF NOT EXISTS \"my ext\" WITH SCHEMA \"ext\";\n{table}"
        );
        let a = table_script(&ok, "t").unwrap();
        assert!(matches!(&a[0], Action::Extension { name, .. } if name == "citext"));
        assert!(
            matches!(&a[1], Action::Extension { name, sql } if name == "my ext" && sql.ends_with("\"ext\""))
        );
        for bad in [
            "CREATE EXTENSION citext",
            "CREATE EXTENSION IF NOT EXISTS citext CASCADE",
            "CREATE EXTENSION IF NOT EXISTS citext VERSION '1.0'",
            "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA a.b",
            "CREATE EXTENSION IF NOT EXISTS citext SCHEMA ext",
            "CREATE EXTENSION IF NOT EXISTS 'citext'",
            "CREATE EXTENSION IF NOT EXISTS citext; DROP TABLE victim",
        ] {
            let script = format!("{bad};\n{table}");
            assert!(table_script(&script, "t").is_err(), "{bad}");
        }
        let after = format!("{table}CREATE EXTENSION IF NOT EXISTS citext;\n");
        assert!(table_script(&after, "t").is_err());
    }

    #[test]
    fn comments_on_the_table_and_its_columns_pass_and_nothing_else() {
        let base = "CREATE TABLE \"t\" (\n    \"k\" integer NOT NULL\n);\n";
        let ok = format!(
            "{base}COMMENT ON TABLE \"t\" IS 'the table; it''s -- all';\n\
             COMMENT ON COLUMN \"t\".\"k\" IS E'a\\\\b';\n"
        );
        let a = table_script(&ok, "t").unwrap();
        assert_eq!(a.len(), 3);
        assert!(matches!(&a[1], Action::Exec(s) if s.starts_with("COMMENT ON TABLE")));
        for bad in [
            "COMMENT ON TABLE \"other\" IS 'x'",
            "COMMENT ON COLUMN \"other\".\"k\" IS 'x'",
            "COMMENT ON COLUMN \"t\" IS 'x'",
            "COMMENT ON FUNCTION f() IS 'x'",
            "COMMENT ON ROLE postgres IS 'x'",
            "COMMENT ON TABLE \"t\" IS 'x' || 'y'",
            "COMMENT ON TABLE \"t\" IS NULL",
            "COMMENT ON TABLE \"t\" IS (SELECT 'x')",
            "COMMENT ON TABLE \"t\" IS $$x$$",
            "COMMENT ON TABLE \"t\"",
        ] {
            let script = format!("{base}{bad};\n");
            assert!(table_script(&script, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_readers_own_scripts_pass() {
        let script = "DO $sp_sync$ BEGIN CREATE TYPE mood AS ENUM ('ok', 'it''s'); \
             EXCEPTION WHEN duplicate_object THEN NULL; END $sp_sync$;\n\
             CREATE SEQUENCE IF NOT EXISTS \"users_id_seq\" AS integer INCREMENT BY 1 MINVALUE 1 \
             MAXVALUE 2147483647 START WITH 1 CACHE 1;\n\
             CREATE TABLE \"users\" (\n    \"id\" integer DEFAULT nextval('users_id_seq'::regclass) NOT NULL,\n    \
             \"m\" mood,\n    \"g\" integer GENERATED ALWAYS AS ((id * 2)) STORED,\n    \
             CONSTRAINT \"users_pkey\" PRIMARY KEY (id)\n);\n\
             ALTER SEQUENCE \"users_id_seq\" OWNED BY \"users\".\"id\";\n";
        let a = table_script(script, "users").unwrap();
        assert_eq!(
            a[0],
            Action::Enum {
                name: "\"mood\"".into(),
                labels: vec!["'ok'".into(), "'it''s'".into()]
            }
        );
        assert!(matches!(&a[1], Action::Sequence { name, .. } if name == "users_id_seq"));
        assert_eq!(a.len(), 4);
        let g = constraint(
            "ALTER TABLE \"users\" ADD CONSTRAINT \"c\" CHECK (length(email) > 3)",
            "users",
            &[],
        )
        .unwrap();
        assert!(g.names.contains(&"length".to_string()));
        for ok in [
            "ALTER TABLE \"users\" ADD CONSTRAINT \"n\" NOT NULL email NOT VALID",
            "ALTER TABLE \"users\" ADD CONSTRAINT \"n\" NOT NULL \"e\" NO INHERIT NOT VALID",
            "ALTER TABLE \"users\" ADD CONSTRAINT \"n\" NOT NULL email",
        ] {
            constraint(ok, "users", &[]).unwrap();
        }
        index(
            "CREATE UNIQUE INDEX users_e ON ONLY users USING btree (lower(email))",
            "users",
            &[],
        )
        .unwrap();
        // A partition the table's script makes may be named too, by its
        // own constraints and indexes; another table may not.
        let parts = ["users_2024".to_string()];
        constraint(
            "ALTER TABLE \"users_2024\" ADD CONSTRAINT \"c\" CHECK (id > 0)",
            "users",
            &parts,
        )
        .unwrap();
        index(
            "CREATE INDEX i ON users_2024 USING btree (email)",
            "users",
            &parts,
        )
        .unwrap();
        for bad in [
            "ALTER TABLE \"users_2025\" ADD CONSTRAINT \"c\" CHECK (id > 0)",
            "CREATE INDEX i ON users_2025 USING btree (email)",
            "ALTER TABLE users_2024 CLUSTER ON i",
        ] {
            assert!(constraint(bad, "users", &parts).is_err(), "{bad}");
            assert!(index(bad, "users", &parts).is_err(), "{bad}");
        }
        for mark in [
            "ALTER TABLE \"users\" CLUSTER ON \"users_pkey\"",
            "ALTER TABLE \"users\" REPLICA IDENTITY USING INDEX users_e",
        ] {
            index(mark, "users", &[]).unwrap();
        }
        assert_eq!(
            sequence_value(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('\"users\"', 'id'), 42, true)",
                "users"
            )
            .unwrap(),
            ("id".into(), 42, true)
        );
        view("CREATE VIEW \"v\" AS\n SELECT 1;", "v").unwrap();
        view(
            "CREATE VIEW \"v\" WITH (check_option='cascaded', security_barrier='true') AS\n SELECT 1",
            "v",
        )
        .unwrap();
        for bad in [
            "CREATE VIEW v WITH (autovacuum_enabled='false') AS SELECT 1",
            "CREATE VIEW v WITH (check_option='local' AS SELECT 1",
            "CREATE VIEW v WITH check_option AS SELECT 1",
            "CREATE VIEW victim WITH (security_barrier='true') AS SELECT 1",
        ] {
            assert!(view(bad, "v").is_err(), "{bad}");
        }
        let secured = "CREATE TABLE \"t\" (a int);\n\
             ALTER TABLE \"t\" ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE \"t\" FORCE ROW LEVEL SECURITY;\n\
             CREATE POLICY \"own\" ON \"t\" AS PERMISSIVE FOR ALL TO PUBLIC USING ((a = 1));\n\
             CREATE TRIGGER \"audit\" AFTER UPDATE OF a ON t FOR EACH ROW EXECUTE FUNCTION audit();\n\
             CREATE CONSTRAINT TRIGGER \"late\" AFTER INSERT ON t DEFERRABLE FOR EACH ROW EXECUTE FUNCTION f();\n";
        let a = table_script(secured, "t").unwrap();
        assert!(matches!(&a[1], Action::RowSecurity(s) if s.contains("ENABLE")));
        assert!(matches!(&a[2], Action::RowSecurity(s) if s.contains("FORCE")));
        assert_eq!(
            a[3..],
            [
                Action::Recorded {
                    kind: "policy",
                    name: "own".into()
                },
                Action::Recorded {
                    kind: "trigger",
                    name: "audit".into()
                },
                Action::Recorded {
                    kind: "trigger",
                    name: "late".into()
                },
            ]
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let t = "CREATE TABLE \"t\" (a int)";
        for bad in [
            format!("{t}; DROP TABLE victim"),
            format!("DROP TABLE victim; {t}"),
            format!("{t}; DO $$ BEGIN DELETE FROM victim; END $$"),
            "CREATE TABLE victim (a int)".into(),
            "CREATE TABLE other.t (a int)".into(),
            "CREATE TABLE t (a int) INHERITS (victim)".into(),
            "CREATE TABLE t (a int CHECK (pg_terminate_backend(1)))".into(),
            "CREATE TABLE t (a int REFERENCES victim)".into(),
            format!("{t}; CREATE SEQUENCE IF NOT EXISTS s OWNED BY victim.a"),
            format!("CREATE SEQUENCE IF NOT EXISTS s; {t}; ALTER SEQUENCE other OWNED BY t.a"),
            format!("CREATE SEQUENCE IF NOT EXISTS s; {t}; ALTER SEQUENCE s OWNED BY victim.a"),
            format!(
                "DO $sp_sync$ BEGIN CREATE TYPE m AS ENUM ('a'); DROP TABLE victim; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $sp_sync$; {t}"
            ),
            format!(
                "DO $sp_sync$ BEGIN CREATE TYPE m AS ENUM ('a' || (SELECT 1)); \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $sp_sync$; {t}"
            ),
            format!("{t}; {t}"),
            "SELECT 1".into(),
            format!("{t}; ALTER TABLE victim ENABLE ROW LEVEL SECURITY"),
            format!("{t}; ALTER TABLE t DISABLE ROW LEVEL SECURITY"),
            format!("{t}; ALTER TABLE t ENABLE ROW LEVEL SECURITY, DROP COLUMN a"),
            format!("{t}; ALTER TABLE t OWNER TO mallory"),
            format!("{t}; CREATE POLICY p ON victim USING (true)"),
            format!("{t}; CREATE TRIGGER g AFTER INSERT ON victim EXECUTE FUNCTION f()"),
            format!("{t}; CREATE TRIGGER g AFTER INSERT EXECUTE FUNCTION f()"),
            format!("{t}; ALTER TABLE victim INHERIT t"),
            format!("{t}; ALTER TABLE t INHERIT a, b"),
            format!("{t}; ALTER TABLE t INHERIT"),
        ] {
            assert!(table_script(&bad, "t").is_err(), "{bad}");
        }
        for bad in [
            "ALTER TABLE t ADD CONSTRAINT c CHECK (true); DROP TABLE victim",
            "ALTER TABLE victim ADD CONSTRAINT c CHECK (true)",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (true), DROP COLUMN a",
            "ALTER TABLE t DROP COLUMN a",
            "ALTER TABLE t ADD CONSTRAINT c NOT NULL a, DROP COLUMN b",
            "ALTER TABLE t ADD CONSTRAINT c NOT NULL a NOT VALID NOT VALID",
            "ALTER TABLE t ADD CONSTRAINT c NOT NULL a DEFERRABLE",
            "ALTER TABLE t ADD CONSTRAINT c NOT NULL (a)",
            "ALTER TABLE t ADD CONSTRAINT c NOT NULL",
            "ALTER TABLE t ADD CONSTRAINT c NOT NULL a; DROP TABLE victim",
        ] {
            assert!(constraint(bad, "t", &[]).is_err(), "{bad}");
        }
        for bad in [
            "CREATE INDEX i ON victim (a)",
            "CREATE INDEX i ON t (a); DROP TABLE victim",
            "CREATE INDEX i ON t.victim (a)",
            "DROP INDEX i",
            "ALTER TABLE victim CLUSTER ON i",
            "ALTER TABLE t CLUSTER ON i, DROP COLUMN a",
            "ALTER TABLE t CLUSTER ON i; DROP TABLE victim",
            "ALTER TABLE t REPLICA IDENTITY USING INDEX i, DROP COLUMN a",
            "ALTER TABLE t REPLICA IDENTITY FULL",
            "ALTER TABLE t CLUSTER ON",
            "ALTER TABLE t CLUSTER ON s.i",
            "ALTER TABLE t DROP COLUMN a",
            "ALTER TABLE",
        ] {
            assert!(index(bad, "t", &[]).is_err(), "{bad}");
        }
        for bad in [
            "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('\"victim\"', 'id'), 1, true)",
            "SELECT pg_catalog.setval('victim_id_seq', 1, true)",
            "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('\"t\"', 'id'), 1, true), pg_terminate_backend(1)",
            "SELECT pg_terminate_backend(1)",
        ] {
            assert!(sequence_value(bad, "t").is_err(), "{bad}");
        }
        for bad in [
            "CREATE VIEW v AS SELECT 1; DROP TABLE victim",
            "CREATE OR REPLACE VIEW victim AS SELECT 1",
            "CREATE VIEW victim AS SELECT 1",
        ] {
            assert!(view(bad, "v").is_err(), "{bad}");
        }
    }
}
