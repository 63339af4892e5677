//! A read connection for async code. SQLite calls block (a read on a large
//! store, a quick check at start can take seconds), so from a task they run
//! on tokio's blocking pool, never on the runtime's worker threads: the
//! connection moves to the pool for each read and comes back with the
//! answer.

use std::path::PathBuf;

use super::{Store, StoreError};

/// A [`Store`] opened for reading, read from async code.
pub struct AsyncReader {
    /// `None` only while a read runs (or after a read's thread panicked).
    store: Option<Store>,
}

impl AsyncReader {
    /// Opens a read connection to the store in `data_dir`.
    pub async fn open(data_dir: PathBuf) -> Result<AsyncReader, StoreError> {
        let store = run_blocking(move || Store::open_reader(&data_dir)).await?;
        Ok(AsyncReader { store: Some(store) })
    }

    /// Runs `query` on the blocking pool with this connection.
    pub async fn read<T: Send + 'static>(
        &mut self,
        query: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.take().ok_or(StoreError::WriterGone)?;
        let (store, result) = run_blocking(move || {
            let result = query(&store);
            Ok((store, result))
        })
        .await?;
        self.store = Some(store);
        result
    }
}

/// Runs `work` on the blocking pool. A panic there is reported as a store
/// that is gone: the caller stops as it would for one.
pub async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StoreError::WriterGone)?
}
