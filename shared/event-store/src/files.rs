//! Uploaded files: the JetStream object store `HEIMDEX_FILES`. The API stores a file here
//! before it requests the file's document job, and the job names the object
//! ([`heimdex_domain::jobs::FileSource`]): events stay small, whatever the file's size. The
//! worker reads the object back to extract its text. Objects are named
//! `<org_id>.a-<asset token>.<version>`, so the same version uploaded twice is one object.
//!
//! The projector's sweep (`heimdex_projector::files`) deletes what no live version needs.

use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectStore};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("storing the file failed")]
    Put(#[source] object_store::PutError),
    #[error("reading the file failed")]
    Get(#[source] object_store::GetError),
    #[error("reading the file failed")]
    Read(#[source] std::io::Error),
    #[error("deleting the file failed")]
    Delete(#[source] object_store::DeleteError),
    #[error("listing the files failed")]
    List(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One stored file, as a sweep sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub name: String,
    pub size: usize,
    /// Seconds since the Unix epoch of its last write; `None` if the server did not say.
    pub modified: Option<i64>,
}

#[derive(Clone)]
pub struct FileStore {
    objects: ObjectStore,
}

impl FileStore {
    pub fn new(objects: ObjectStore) -> Self {
        Self { objects }
    }

    /// Stores `bytes` under `name` (replacing an object of that name).
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        let mut reader = bytes;
        self.objects
            .put(name, &mut reader)
            .await
            .map_err(FileError::Put)?;
        Ok(())
    }

    /// The object's bytes; `None` if there is no such object (or it was deleted).
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, FileError> {
        let mut object = match self.objects.get(name).await {
            Ok(object) => object,
            Err(err) if err.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(FileError::Get(err)),
        };
        let mut bytes = Vec::with_capacity(object.info().size);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(FileError::Read)?;
        Ok(Some(bytes))
    }

    /// Deletes the object (nothing if it is gone already).
    pub async fn delete(&self, name: &str) -> Result<(), FileError> {
        match self.objects.delete(name).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(err) => Err(FileError::Delete(err)),
        }
    }

    /// Every stored object.
    pub async fn list(&self) -> Result<Vec<StoredFile>, FileError> {
        let list = self
            .objects
            .list()
            .await
            .map_err(|err| FileError::List(err.into()))?;
        list.map_ok(|info| StoredFile {
            name: info.name,
            size: info.size,
            modified: info.modified.map(|at| at.unix_timestamp()),
        })
        .try_collect()
        .await
        .map_err(|err| FileError::List(err.into()))
    }
}
