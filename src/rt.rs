//! A private tokio runtime behind synchronous calls: the S3 backend and the
//! HTTP client are async inside and blocking outside.

use crate::error::{IoContext, Result, SyncError};

/// A tokio runtime for blocking callers: `block_on` from synchronous code.
pub struct BlockingRuntime {
    rt: tokio::runtime::Runtime,
    name: &'static str,
}

impl BlockingRuntime {
    /// A runtime whose threads are named after `name`.
    pub fn new(name: &'static str) -> Result<BlockingRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .ctx("starting", name)?;
        Ok(BlockingRuntime { rt, name })
    }

    /// Runs `fut` on the runtime and waits for it. Callable from any thread
    /// that is not one of this runtime's workers (including another
    /// runtime's blocking pool, where `block_on` would panic).
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| SyncError::Invalid(format!("the {} runtime stopped", self.name)))
    }

    /// Starts `fut` without waiting.
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.rt.spawn(fut);
    }
}
