//! `SyncError`: the one error type of the library.

use std::path::{Path, PathBuf};

use crate::id::ObjectId;

/// Everything that can go wrong, with enough context to say what failed and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`reading`, `writing`, …).
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// An object's bytes do not hash to its id, or do not decode.
    #[error("corrupt {kind} object {id}: {reason}")]
    CorruptObject {
        /// The object's type.
        kind: &'static str,
        /// Its id.
        id: ObjectId,
        /// What is wrong.
        reason: String,
    },

    /// A file of the store (pack, index, ref, config, cache) is damaged.
    #[error("corrupt {what} {}: {reason}", path.display())]
    CorruptFile {
        /// Which kind of file.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An object a reference points to is not in the store.
    #[error("missing {kind} object {id}")]
    MissingObject {
        /// The object's type.
        kind: &'static str,
        /// Its id.
        id: ObjectId,
    },

    /// A compare-and-swap of a ref lost a race.
    #[error(
        "ref {name} changed concurrently: expected {}, found {}",
        show(expected),
        show(actual)
    )]
    RefConflict {
        /// The ref.
        name: String,
        /// What the writer expected it to name.
        expected: Option<ObjectId>,
        /// What it named.
        actual: Option<ObjectId>,
    },

    /// Moving a ref would drop history and was not forced.
    #[error("ref {name}: {new} is not a descendant of {old} (not a fast-forward; use --force)")]
    NonFastForward {
        /// The ref.
        name: String,
        /// What it names.
        old: ObjectId,
        /// What it was asked to name.
        new: ObjectId,
    },

    /// A ref, snapshot, path, remote or target that does not exist.
    #[error("{0}")]
    NotFound(String),

    /// Input that is not acceptable: a bad name, argument or entry.
    #[error("{0}")]
    Invalid(String),

    /// A name read from a store, remote or bundle that would write outside
    /// the target or is otherwise unsafe.
    #[error("unsafe entry name {name:?} in {context}")]
    UnsafeName {
        /// The name, lossily.
        name: String,
        /// Where it was found.
        context: String,
    },

    /// No store was found or given.
    #[error("{0}")]
    NoStore(String),

    /// A required configuration value is missing.
    #[error("missing configuration: {0}")]
    MissingConfig(String),

    /// A remote answered with an error status.
    #[error("remote error {status}: {message}")]
    ApiError {
        /// The HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },

    /// A remote refused the credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// A remote has no room for what was sent (a tenant's quota): sending
    /// it again cannot help.
    #[error("{0}")]
    NoRoom(String),

    /// The store's lock was not had in time: other processes use the
    /// store (for gc), or gc runs on it.
    #[error("{0}")]
    Locked(String),

    /// A database operation failed.
    #[error("database: {0}")]
    Database(String),

    /// An external command (a deploy step) failed.
    #[error("command {command:?} failed with {status}: {output}")]
    CommandFailed {
        /// The command (or step).
        command: String,
        /// How it ended (exit status or signal).
        status: String,
        /// The tail of its output.
        output: String,
    },

    /// The operation was interrupted.
    #[error("interrupted")]
    Interrupted,

    /// An error with what was being done when it happened, on one line:
    /// `restore into DIR: …`, `push to URL: …`.
    #[error("{}", context_line(context, source))]
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        #[source]
        source: Box<SyncError>,
    },
}

/// `context: source`, the place said once: `push to URL` and `URL: refused`
/// read `push to URL: refused`; a source that already says the context is
/// not repeated.
fn context_line(context: &str, source: &SyncError) -> String {
    let text = source.to_string().replace('\n', " ");
    let text = text.trim();
    if text.contains(context) {
        return text.to_string();
    }
    // The context's last word (the place) said again as a part of the
    // source (`URL: refused`, `unauthorized: URL: refused`) goes.
    if let Some(last) = context.rsplit(' ').next().filter(|l| l.len() > 3) {
        let part = format!("{last}: ");
        let mut at = 0;
        while let Some(i) = text[at..].find(&part).map(|i| i + at) {
            if i == 0 || text[..i].ends_with(": ") {
                return format!("{context}: {}{}", &text[..i], &text[i + part.len()..]);
            }
            at = i + 1;
        }
    }
    format!("{context}: {text}")
}

fn show(id: &Option<ObjectId>) -> String {
    match id {
        Some(id) => id.short(),
        None => "(none)".into(),
    }
}

/// The library's result type.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;

impl SyncError {
    /// An [`SyncError::Io`]: `op` on `path` failed.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        SyncError::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A [`SyncError::CorruptFile`].
    pub fn corrupt_file(
        what: &'static str,
        path: impl AsRef<Path>,
        reason: impl Into<String>,
    ) -> Self {
        SyncError::CorruptFile {
            what,
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// This error with `context` (what was being done) before it.
    pub fn context(self, context: impl Into<String>) -> Self {
        SyncError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The error under any [`SyncError::Context`].
    pub fn root(&self) -> &SyncError {
        match self {
            SyncError::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// Whether this error says that data in the store is damaged or missing.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self.root(),
            SyncError::CorruptObject { .. }
                | SyncError::CorruptFile { .. }
                | SyncError::MissingObject { .. }
        )
    }
}

/// Adds what was being done to a failure.
pub trait Context<T> {
    /// Wraps the error in [`SyncError::Context`], `what` made on failure only.
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.context(what()))
    }
}

/// Adds `op path` context to `std::io::Result`s.
pub trait IoContext<T> {
    /// Maps the error to [`SyncError::Io`] with `op` and `path`.
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| SyncError::io(op, path, e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| SyncError::io(op, path, e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_one_line_with_the_place_said_once() {
        let e = SyncError::NotFound("http://h/t: refused".into()).context("push to http://h/t");
        assert_eq!(e.to_string(), "push to http://h/t: refused");
        let e = SyncError::Unauthorized("http://h/t: the server refused the token".into())
            .context("push to http://h/t");
        assert_eq!(
            e.to_string(),
            "push to http://h/t: unauthorized: the server refused the token"
        );
        // Only the place as a whole part goes.
        let e = SyncError::NotFound("see xhttp://h/t: here".into()).context("push to http://h/t");
        assert_eq!(e.to_string(), "push to http://h/t: see xhttp://h/t: here");
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = SyncError::io("creating", "/x/y", io).context("restore into /x");
        assert!(
            e.to_string()
                .starts_with("restore into /x: creating /x/y: "),
            "{e}"
        );
        assert!(matches!(e.root(), SyncError::Io { .. }));
        // A cause that already says the context is not repeated.
        let e = SyncError::Invalid("restore into /x failed".into()).context("restore into /x");
        assert_eq!(e.to_string(), "restore into /x failed");
        let e = SyncError::Interrupted.context("a").context("b");
        assert!(matches!(e.root(), SyncError::Interrupted));
    }
}
