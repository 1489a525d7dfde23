//! The collections on disk: one Qdrant Edge shard per collection, in
//! `<data>/collections/<name>/`.
//!
//! Qdrant Edge's `EdgeShard` is synchronous and is not written for several concurrent writers:
//! `flush` `try_lock`s the WAL and panics if an update holds it. So, like Heimdex's embedded
//! adapter, every collection serialises its writes with a mutex and flushes after each one
//! (`EdgeShard::load` does not replay the WAL: an unflushed write would be lost on `kill -9`).
//! Reads run concurrently with each other and with writes.
//!
//! A collection is created in a hidden scratch directory and renamed into place, and deleted
//! by renaming it away first, so a stand-in killed half-way never finds a half-made collection
//! on its next start; scratch directories are swept at start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use qdrant_edge::{
    DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParamsBuilder,
    EdgeVectorParamsBuilder, Modifier,
};
use tonic::Status;

use crate::convert::map_edge_err;

/// Sub-directory of the data dir that holds the collections.
const COLLECTIONS_DIR: &str = "collections";
/// Prefix of scratch directories (creation in progress, deletion in progress).
const SCRATCH_PREFIX: &str = ".";

/// Every collection of one stand-in.
pub(crate) struct Registry {
    root: PathBuf,
    /// Held while a collection is created or deleted, so those are atomic for other clients.
    collections: Mutex<HashMap<String, Arc<Collection>>>,
}

impl Registry {
    /// Opens (or initialises) `<data_dir>/collections`, loading every collection in it.
    /// Blocking.
    pub(crate) fn open(data_dir: &Path) -> Result<Self, String> {
        let root = data_dir.join(COLLECTIONS_DIR);
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let entries =
            std::fs::read_dir(&root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
        let mut collections = HashMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", root.display()))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(SCRATCH_PREFIX) {
                // Left by a creation or deletion that was interrupted.
                std::fs::remove_dir_all(&path)
                    .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                continue;
            }
            if !path.is_dir() {
                continue;
            }
            let shard = EdgeShard::load(&path, None)
                .map_err(|e| format!("cannot load collection {}: {e}", path.display()))?;
            tracing::info!(collection = %name, "collection loaded");
            collections.insert(name.clone(), Arc::new(Collection::new(name, path, shard)));
        }
        Ok(Self {
            root,
            collections: Mutex::new(collections),
        })
    }

    /// The collection called `name`, or Qdrant's `NotFound`.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Collection>, Status> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| collection_not_found(name))
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Creates a collection with one unnamed dense vector and the named sparse vectors
    /// `sparse` (name, modifier). Fails like Qdrant if it exists. Blocking.
    pub(crate) fn create(
        &self,
        name: &str,
        size: usize,
        distance: Distance,
        sparse: Vec<(String, Option<Modifier>)>,
    ) -> Result<(), Status> {
        check_collection_name(name)?;
        if size == 0 {
            return Err(Status::invalid_argument(
                "Validation error in body: [vectors_config.size: value 0 invalid, must be 1 or larger]",
            ));
        }
        let mut collections = self.lock();
        if collections.contains_key(name) {
            return Err(Status::already_exists(format!(
                "Wrong input: Collection `{name}` already exists!"
            )));
        }
        let mut config = EdgeConfig::builder().vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParamsBuilder::new(size, distance).build(),
        );
        for (vector, modifier) in sparse {
            let mut params = EdgeSparseVectorParamsBuilder::new();
            if let Some(modifier) = modifier {
                params = params.modifier(modifier);
            }
            config = config.sparse_vector(vector, params.build());
        }
        let config = config.build();
        let scratch = self.scratch_dir("creating");
        let dir = self.root.join(name);
        std::fs::create_dir_all(&scratch).map_err(io_err)?;
        // Dropping the new shard flushes it and releases its WAL lock before the rename.
        drop(EdgeShard::new(&scratch, config).map_err(map_edge_err)?);
        std::fs::rename(&scratch, &dir).map_err(io_err)?;
        let shard = EdgeShard::load(&dir, None).map_err(map_edge_err)?;
        collections.insert(
            name.to_owned(),
            Arc::new(Collection::new(name.to_owned(), dir, shard)),
        );
        tracing::info!(collection = %name, size, ?distance, "collection created");
        Ok(())
    }

    /// Deletes a collection and its files; `false` if there was none. Blocking.
    pub(crate) fn delete(&self, name: &str) -> Result<bool, Status> {
        let mut collections = self.lock();
        let Some(collection) = collections.remove(name) else {
            return Ok(false);
        };
        // Waits for in-flight requests on it; later ones see NotFound.
        collection.close();
        let scratch = self.scratch_dir("deleting");
        std::fs::rename(&collection.dir, &scratch).map_err(io_err)?;
        drop(collections);
        std::fs::remove_dir_all(&scratch).map_err(io_err)?;
        tracing::info!(collection = %name, "collection deleted");
        Ok(true)
    }

    /// Flushes and closes every shard (releasing their directory locks). Blocking.
    pub(crate) fn close_all(&self) {
        for collection in self.lock().values() {
            collection.close();
        }
    }

    fn scratch_dir(&self, what: &str) -> PathBuf {
        self.root
            .join(format!("{SCRATCH_PREFIX}{what}-{}", uuid::Uuid::new_v4()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Collection>>> {
        self.collections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One collection: an Edge shard, `None` once closed.
pub(crate) struct Collection {
    name: String,
    dir: PathBuf,
    shard: RwLock<Option<EdgeShard>>,
    write_lock: Mutex<()>,
}

impl Collection {
    fn new(name: String, dir: PathBuf, shard: EdgeShard) -> Self {
        Self {
            name,
            dir,
            shard: RwLock::new(Some(shard)),
            write_lock: Mutex::new(()),
        }
    }

    /// Runs `f` on the shard. Blocking.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&EdgeShard) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let guard = self.shard.read().unwrap_or_else(PoisonError::into_inner);
        let shard = guard
            .as_ref()
            .ok_or_else(|| collection_not_found(&self.name))?;
        f(shard)
    }

    /// Runs `f` on the shard as the only writer, then flushes if `f` says it wrote: an `Ok`
    /// answer means the change is on disk. Blocking.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&EdgeShard) -> Result<(T, bool), Status>,
    ) -> Result<T, Status> {
        // A poisoned lock only means an earlier write panicked (qdrant-edge panics if a flush
        // fails); the shard itself stays usable.
        let _writer = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.read(|shard| {
            let (out, wrote) = f(shard)?;
            if wrote {
                shard.flush();
            }
            Ok(out)
        })
    }

    /// Flushes and drops the shard. Blocking.
    fn close(&self) {
        let _writer = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let shard = self
            .shard
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(shard) = shard {
            if self.dir.exists() {
                drop(shard);
            } else {
                // `EdgeShard`'s Drop flushes and panics when its directory was removed under
                // it (a test's temp dir going away first). Every write is flushed already.
                std::mem::forget(shard);
            }
        }
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        self.close();
    }
}

/// Qdrant's own answer for a missing collection.
pub(crate) fn collection_not_found(name: &str) -> Status {
    Status::not_found(format!("Not found: Collection `{name}` doesn't exist!"))
}

/// Qdrant's rule (no path separators or other characters that are unsafe in a file name, at
/// most 255 bytes), plus no leading `.`, which the stand-in reserves for scratch directories.
fn check_collection_name(name: &str) -> Result<(), Status> {
    const FORBIDDEN: [char; 10] = ['<', '>', ':', '"', '/', '\\', '|', '?', '*', '\0'];
    if name.is_empty() || name.len() > 255 {
        return Err(Status::invalid_argument(
            "Validation error in body: [collection_name: length must be between 1 and 255]",
        ));
    }
    if name.starts_with(SCRATCH_PREFIX) || name.contains(FORBIDDEN) {
        return Err(Status::invalid_argument(format!(
            "Validation error in body: [collection_name: {name:?} contains forbidden characters]"
        )));
    }
    Ok(())
}

fn io_err(e: std::io::Error) -> Status {
    Status::internal(format!("Service internal error: {e}"))
}
