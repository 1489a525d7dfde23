//! [`Metered`]: any [`VectorStore`] with the duration of each operation recorded in
//! `heimdex_vector_store_operation_duration_seconds` (by operation, backend and outcome).
//! [`crate::open`] wraps every store it opens in one.

use std::future::Future;
use std::time::Instant;

use uuid::Uuid;

use crate::{
    NewPoint, PointFilter, ScoredPoint, SearchRequest, StoreError, StoreKind, StoredPoint,
    VectorStore,
};

/// A store whose operations are timed.
pub struct Metered<S> {
    inner: S,
    backend: &'static str,
}

impl<S: VectorStore> Metered<S> {
    pub fn new(inner: S) -> Self {
        let backend = match inner.kind() {
            StoreKind::Embedded => "embedded",
            StoreKind::Remote => "remote",
        };
        Self { inner, backend }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::InvalidInput(_)) => "invalid_input",
            Err(StoreError::Unavailable(_)) => "unavailable",
            Err(StoreError::Internal(_)) => "error",
        };
        metrics::histogram!(
            "heimdex_vector_store_operation_duration_seconds",
            "operation" => operation,
            "backend" => self.backend,
            "outcome" => outcome,
        )
        .record(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait::async_trait]
impl<S: VectorStore> VectorStore for Metered<S> {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }

    fn vector_size(&self) -> usize {
        self.inner.vector_size()
    }

    async fn ensure_collection(&self) -> Result<(), StoreError> {
        self.timed("ensure_collection", self.inner.ensure_collection())
            .await
    }

    async fn upsert(&self, points: Vec<NewPoint>) -> Result<(), StoreError> {
        self.timed("upsert", self.inner.upsert(points)).await
    }

    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        with_vector: bool,
    ) -> Result<Option<StoredPoint>, StoreError> {
        self.timed("get", self.inner.get(org_id, id, with_vector))
            .await
    }

    async fn search(&self, req: SearchRequest) -> Result<Vec<ScoredPoint>, StoreError> {
        self.timed("search", self.inner.search(req)).await
    }

    async fn count(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.timed("count", self.inner.count(org_id, filter)).await
    }

    async fn scroll_ids(&self, org_id: Uuid, filter: PointFilter) -> Result<Vec<Uuid>, StoreError> {
        self.timed("scroll_ids", self.inner.scroll_ids(org_id, filter))
            .await
    }

    async fn scroll_points(
        &self,
        org_id: Uuid,
        filter: PointFilter,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        self.timed("scroll_points", self.inner.scroll_points(org_id, filter))
            .await
    }

    async fn delete_points(&self, org_id: Uuid, ids: &[Uuid]) -> Result<u64, StoreError> {
        self.timed("delete_points", self.inner.delete_points(org_id, ids))
            .await
    }

    async fn delete_by_filter(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.timed(
            "delete_by_filter",
            self.inner.delete_by_filter(org_id, filter),
        )
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.timed("probe", self.inner.probe()).await
    }

    /// Not timed: it is the sampler's own read, not an operation of the service.
    async fn sample_gauges(&self) -> Result<(), StoreError> {
        self.inner.sample_gauges().await
    }
}
