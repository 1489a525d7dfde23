//! [`Collections`]: the collections of one store backend that a process uses, opened once each,
//! and which of them is live. The index state (kept in the event store, see
//! `heimdex_domain::index`) says which one is live; the process follows it with
//! [`Collections::set_live`], and every reader goes through [`Collections::reader`], so a switch
//! moves every search at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use heimdex_domain::index::Models;
use uuid::Uuid;

use crate::{
    NewPoint, PointFilter, ScoredPoint, SearchRequest, StoreConfig, StoreError, StoreKind,
    StoredPoint, VectorStore,
};

/// A collection, by name, with the models it holds (see `heimdex_domain::index::Models`): a
/// search embeds its query with the model the same snapshot names, so it never embeds with one
/// model and searches the other's collection.
#[derive(Clone)]
pub struct Named {
    pub name: String,
    pub store: Arc<dyn VectorStore>,
    pub models: Arc<Models>,
}

/// Every collection this process has opened on its backend, and the live one.
pub struct Collections {
    config: StoreConfig,
    opened: tokio::sync::Mutex<HashMap<String, Arc<dyn VectorStore>>>,
    live: RwLock<Named>,
}

impl Collections {
    /// Opens the configured collection, live until [`Collections::set_live`] says otherwise.
    pub async fn open(config: StoreConfig) -> Result<Arc<Self>, StoreError> {
        let store = crate::open(config.clone()).await?;
        let live = Named {
            name: config.collection.clone(),
            store: store.clone(),
            models: Arc::default(),
        };
        Ok(Arc::new(Self {
            opened: tokio::sync::Mutex::new(HashMap::from([(config.collection.clone(), store)])),
            config,
            live: RwLock::new(live),
        }))
    }

    /// The configured collection's name: the base of every build's name.
    pub fn configured(&self) -> &str {
        &self.config.collection
    }

    /// The collection `name` on the same backend, opened on first use (and created, for the
    /// embedded store; call [`VectorStore::ensure_collection`] before writing to a remote one).
    pub async fn get(&self, name: &str) -> Result<Arc<dyn VectorStore>, StoreError> {
        let mut opened = self.opened.lock().await;
        if let Some(store) = opened.get(name) {
            return Ok(store.clone());
        }
        let store = crate::open(StoreConfig {
            collection: name.to_owned(),
            ..self.config.clone()
        })
        .await?;
        opened.insert(name.to_owned(), store.clone());
        Ok(store)
    }

    /// The live collection now.
    pub fn live(&self) -> Named {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes `name`, holding `models`, the live collection; returns whether it changed.
    pub async fn set_live(&self, name: &str, models: Models) -> Result<bool, StoreError> {
        let now = self.live();
        if now.name == name && *now.models == models {
            return Ok(false);
        }
        let store = self.get(name).await?;
        let mut live = self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live = Named {
            name: name.to_owned(),
            store,
            models: Arc::new(models),
        };
        Ok(true)
    }

    /// A store whose every operation goes to the live collection of the moment.
    pub fn reader(self: &Arc<Self>) -> Arc<dyn VectorStore> {
        Arc::new(Live(self.clone()))
    }
}

/// [`Collections::reader`].
struct Live(Arc<Collections>);

impl Live {
    fn store(&self) -> Arc<dyn VectorStore> {
        self.0.live().store
    }
}

#[async_trait::async_trait]
impl VectorStore for Live {
    fn kind(&self) -> StoreKind {
        self.store().kind()
    }

    fn vector_size(&self) -> usize {
        self.store().vector_size()
    }

    async fn ensure_collection(&self) -> Result<(), StoreError> {
        self.store().ensure_collection().await
    }

    async fn upsert(&self, points: Vec<NewPoint>) -> Result<(), StoreError> {
        self.store().upsert(points).await
    }

    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        with_vector: bool,
    ) -> Result<Option<StoredPoint>, StoreError> {
        self.store().get(org_id, id, with_vector).await
    }

    async fn search(&self, req: SearchRequest) -> Result<Vec<ScoredPoint>, StoreError> {
        self.store().search(req).await
    }

    async fn count(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.store().count(org_id, filter).await
    }

    async fn scroll_ids(&self, org_id: Uuid, filter: PointFilter) -> Result<Vec<Uuid>, StoreError> {
        self.store().scroll_ids(org_id, filter).await
    }

    async fn scroll_points(
        &self,
        org_id: Uuid,
        filter: PointFilter,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        self.store().scroll_points(org_id, filter).await
    }

    async fn delete_points(&self, org_id: Uuid, ids: &[Uuid]) -> Result<u64, StoreError> {
        self.store().delete_points(org_id, ids).await
    }

    async fn delete_by_filter(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.store().delete_by_filter(org_id, filter).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.store().probe().await
    }

    async fn sample_gauges(&self) -> Result<(), StoreError> {
        self.store().sample_gauges().await
    }
}
