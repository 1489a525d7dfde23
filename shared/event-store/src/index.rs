//! The index state ([`IndexState`]): one key, `state`, in the bucket `HEIMDEX_INDEX`. It is
//! changed only by compare-and-set ([`IndexRegistry::update`]), so two operators (or an operator
//! and a rebuild recording its progress) never overwrite each other, and every process that
//! reads or writes vectors follows it ([`IndexRegistry::watch`]), so a switch reaches them all.
//!
//! No key yet means the service has only ever had its configured collection.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use futures::{Stream, StreamExt};

use heimdex_domain::index::IndexState;

const KEY: &str = "state";

/// How many compare-and-set conflicts in a row an update takes before it gives up.
const MAX_CONFLICTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index state read failed")]
    Read(#[source] kv::EntryError),
    #[error("index state write failed")]
    Create(#[source] kv::CreateError),
    #[error("index state write failed")]
    Update(#[source] kv::UpdateError),
    #[error("index state watch failed")]
    Watch(#[source] kv::WatchError),
    #[error("the index state cannot be decoded")]
    Decode(#[source] serde_json::Error),
    #[error("the index state kept changing while it was updated")]
    Contended,
}

/// Why an [`IndexRegistry::update`] did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E: std::error::Error + 'static> {
    /// The change itself refused (the transition is not allowed from this state).
    #[error(transparent)]
    Refused(E),
    #[error(transparent)]
    Store(#[from] IndexError),
}

/// The index state, with the bucket revision it was read at (0: never written).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredIndex {
    pub state: IndexState,
    pub revision: u64,
}

#[derive(Clone)]
pub struct IndexRegistry {
    kv: kv::Store,
}

impl IndexRegistry {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// The state; `configured` is the live collection of a service that never changed it.
    pub async fn get(&self, configured: &str) -> Result<StoredIndex, IndexError> {
        match self.kv.entry(KEY).await.map_err(IndexError::Read)? {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(StoredIndex {
                state: decode(&entry.value)?,
                revision: entry.revision,
            }),
            Some(_) | None => Ok(StoredIndex {
                state: IndexState::new(configured),
                revision: 0,
            }),
        }
    }

    /// Applies `change` to the current state and stores the result with compare-and-set,
    /// reading again and re-applying when another writer came first. Returns the stored state
    /// and what `change` returned.
    pub async fn update<T, E>(
        &self,
        configured: &str,
        mut change: impl FnMut(&mut IndexState) -> Result<T, E>,
    ) -> Result<(StoredIndex, T), UpdateError<E>>
    where
        E: std::error::Error + 'static,
    {
        for _ in 0..MAX_CONFLICTS {
            let current = self.get(configured).await?;
            let mut state = current.state.clone();
            let out = change(&mut state).map_err(UpdateError::Refused)?;
            if state == current.state {
                return Ok((current, out));
            }
            let value = serde_json::to_vec(&state)
                .expect("the index state serializes to JSON")
                .into();
            let written = if current.revision == 0 {
                match self.kv.create(KEY, value).await {
                    Ok(revision) => Ok(revision),
                    Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                    Err(err) => Err(IndexError::Create(err)),
                }
            } else {
                match self.kv.update(KEY, value, current.revision).await {
                    Ok(revision) => Ok(revision),
                    Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => Err(IndexError::Update(err)),
                }
            }?;
            return Ok((
                StoredIndex {
                    state,
                    revision: written,
                },
                out,
            ));
        }
        Err(IndexError::Contended.into())
    }

    /// The state now, then every change of it. Values that cannot be decoded are logged and
    /// skipped (a newer release's state, say); the stream ends only if the watch does.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = StoredIndex> + Send + 'static, IndexError> {
        let watch = self
            .kv
            .watch_with_history(KEY)
            .await
            .map_err(IndexError::Watch)?;
        Ok(watch.filter_map(|entry| async move {
            let entry = match entry {
                Ok(entry) if entry.operation == kv::Operation::Put => entry,
                Ok(_) => return None,
                Err(err) => {
                    tracing::warn!(%err, "index state watch error");
                    return None;
                }
            };
            match decode(&entry.value) {
                Ok(state) => Some(StoredIndex {
                    state,
                    revision: entry.revision,
                }),
                Err(err) => {
                    tracing::error!(error = %err, revision = entry.revision, "undecodable index state; ignored");
                    None
                }
            }
        }))
    }
}

fn decode(value: &[u8]) -> Result<IndexState, IndexError> {
    serde_json::from_slice(value).map_err(IndexError::Decode)
}
