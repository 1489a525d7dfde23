//! Adapter for a Qdrant server over gRPC (`qdrant-client`).
//!
//! Writes use `wait=true`, so an `Ok` means the server has applied (and WAL-logged) the change.
//! Payloads are converted between `serde_json` and protobuf values by hand, which keeps
//! `qdrant-client`'s `serde` feature (and its derive cost) off.

use std::collections::HashMap;
use std::time::Duration;

use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::vector_output::Vector as OutVector;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, KeywordIndexParamsBuilder, ListValue,
    PointId, PointStruct, QueryPointsBuilder, ScrollPointsBuilder, Struct, UpsertPointsBuilder,
    Value, VectorParamsBuilder, VectorsOutput, point_id::PointIdOptions, vectors_config,
};
use qdrant_client::{Qdrant, QdrantError};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::{
    ASSET_ID_KEY, MODEL_KEY, MODEL_VER_KEY, NewPoint, ORG_ID_KEY, PointFilter, SEGMENT_ID_KEY,
    ScoredPoint, SearchRequest, StoreError, StoreKind, StoredPoint, VectorStore, check_vector,
    payload_from_json, prepare_points,
};

/// Per-request timeout (large upsert batches with `wait=true` need more than the default 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size for `scroll_ids`.
const SCROLL_PAGE: u32 = 1024;

/// Qdrant server collection. Built by [`crate::open`].
pub struct RemoteStore {
    client: Qdrant,
    collection: String,
    vector_size: usize,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("collection", &self.collection)
            .field("vector_size", &self.vector_size)
            .finish_non_exhaustive()
    }
}

impl RemoteStore {
    /// Build a client. gRPC connects lazily: nothing is sent until the first call.
    pub fn connect(
        url: &str,
        api_key: Option<SecretString>,
        collection: String,
        vector_size: usize,
    ) -> Result<Self, StoreError> {
        let client = Qdrant::from_url(url)
            .api_key(api_key.map(|k| k.expose_secret().to_owned()))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // The check would do a blocking health request (and print to stdout) here.
            .skip_compatibility_check()
            .build()
            .map_err(|e| {
                // `if let`, not `match`: the variant set depends on qdrant-client's features.
                if let QdrantError::InvalidUri(_) = &e {
                    StoreError::InvalidInput(format!("qdrant url {url:?}: {e}"))
                } else {
                    map_err(e)
                }
            })?;
        Ok(Self {
            client,
            collection,
            vector_size,
        })
    }

    /// Check that an existing collection has our vector size and cosine distance.
    async fn check_collection_params(&self) -> Result<(), StoreError> {
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(map_err)?;
        let config = info
            .result
            .and_then(|i| i.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        match config {
            Some(vectors_config::Config::Params(p))
                if p.size == self.vector_size as u64 && p.distance == Distance::Cosine as i32 =>
            {
                Ok(())
            }
            Some(vectors_config::Config::Params(p)) => Err(StoreError::InvalidInput(format!(
                "collection {} has vectors of size {} / distance {}, configured {} / Cosine",
                self.collection, p.size, p.distance, self.vector_size
            ))),
            Some(vectors_config::Config::ParamsMap(_)) | None => {
                Err(StoreError::InvalidInput(format!(
                    "collection {} has no single unnamed dense vector",
                    self.collection
                )))
            }
        }
    }

    async fn count_filter(&self, filter: Filter) -> Result<u64, StoreError> {
        let res = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(filter)
                    .exact(true),
            )
            .await
            .map_err(map_err)?;
        Ok(res.result.map(|r| r.count).unwrap_or(0))
    }

    /// Count, then delete by filter (`wait=true`). The count is exact unless another writer
    /// touches the same points concurrently.
    async fn delete_filter(&self, filter: Filter) -> Result<u64, StoreError> {
        let n = self.count_filter(filter.clone()).await?;
        if n == 0 {
            return Ok(0);
        }
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(map_err)?;
        Ok(n)
    }
}

#[async_trait::async_trait]
impl VectorStore for RemoteStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Remote
    }

    fn vector_size(&self) -> usize {
        self.vector_size
    }

    async fn ensure_collection(&self) -> Result<(), StoreError> {
        let exists = self
            .client
            .collection_exists(&self.collection)
            .await
            .map_err(map_err)?;
        if !exists {
            let created = self
                .client
                .create_collection(
                    CreateCollectionBuilder::new(&self.collection).vectors_config(
                        VectorParamsBuilder::new(self.vector_size as u64, Distance::Cosine),
                    ),
                )
                .await;
            if let Err(e) = created {
                // Lost a race with a concurrent creator? Then the collection exists now.
                let exists_now = self
                    .client
                    .collection_exists(&self.collection)
                    .await
                    .map_err(map_err)?;
                if !exists_now {
                    return Err(map_err(e));
                }
                tracing::debug!(collection = %self.collection, "collection created concurrently");
            }
        }
        self.check_collection_params().await?;
        // Creating an existing index with the same schema is a no-op on the server.
        for (key, tenant) in [
            (ORG_ID_KEY, true),
            (ASSET_ID_KEY, false),
            (MODEL_KEY, false),
            (MODEL_VER_KEY, false),
        ] {
            let mut params = KeywordIndexParamsBuilder::default();
            if tenant {
                params = params.is_tenant(true);
            }
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(
                        &self.collection,
                        key,
                        FieldType::Keyword,
                    )
                    .field_index_params(params)
                    .wait(true),
                )
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn upsert(&self, points: Vec<NewPoint>) -> Result<(), StoreError> {
        let payloads = prepare_points(&points, self.vector_size)?;
        if points.is_empty() {
            return Ok(());
        }
        let points: Vec<PointStruct> = points
            .into_iter()
            .zip(payloads)
            .map(|(p, payload)| {
                let payload: HashMap<String, Value> = payload
                    .into_iter()
                    .map(|(k, v)| (k, json_to_value(v)))
                    .collect();
                PointStruct::new(p.id.to_string(), p.vector, payload)
            })
            .collect();
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        with_vector: bool,
    ) -> Result<Option<StoredPoint>, StoreError> {
        // Scroll with an org + id filter, so isolation is enforced by the server query.
        let res = self
            .client
            .scroll(
                ScrollPointsBuilder::new(&self.collection)
                    .filter(build_filter(org_id, &PointFilter::default(), Some(&[id])))
                    .limit(1)
                    .with_payload(true)
                    .with_vectors(with_vector),
            )
            .await
            .map_err(map_err)?;
        let Some(point) = res.result.into_iter().next() else {
            return Ok(None);
        };
        let id = uuid_of(point.id)?;
        Ok(Some(StoredPoint {
            id,
            payload: payload_from_json(id, payload_to_json(point.payload))?,
            vector: vector_of(point.vectors, with_vector)?,
        }))
    }

    async fn search(&self, req: SearchRequest) -> Result<Vec<ScoredPoint>, StoreError> {
        check_vector(&req.vector, self.vector_size, "search")?;
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut query = QueryPointsBuilder::new(&self.collection)
            .query(req.vector)
            .filter(build_filter(req.org_id, &req.filter, None))
            .limit(req.limit as u64)
            .offset(req.offset as u64)
            .with_payload(true)
            .with_vectors(req.with_vector);
        if let Some(threshold) = req.score_threshold {
            query = query.score_threshold(threshold);
        }
        let res = self.client.query(query).await.map_err(map_err)?;
        res.result
            .into_iter()
            .map(|p| {
                let id = uuid_of(p.id)?;
                Ok(ScoredPoint {
                    id,
                    score: p.score,
                    payload: payload_from_json(id, payload_to_json(p.payload))?,
                    vector: vector_of(p.vectors, req.with_vector)?,
                })
            })
            .collect()
    }

    async fn count(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.count_filter(build_filter(org_id, &filter, None)).await
    }

    async fn scroll_ids(&self, org_id: Uuid, filter: PointFilter) -> Result<Vec<Uuid>, StoreError> {
        let filter = build_filter(org_id, &filter, None);
        let mut ids = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut req = ScrollPointsBuilder::new(&self.collection)
                .filter(filter.clone())
                .limit(SCROLL_PAGE)
                .with_payload(false)
                .with_vectors(false);
            if let Some(offset) = offset.take() {
                req = req.offset(offset);
            }
            let res = self.client.scroll(req).await.map_err(map_err)?;
            for p in res.result {
                ids.push(uuid_of(p.id)?);
            }
            match res.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(ids),
            }
        }
    }

    async fn delete_points(&self, org_id: Uuid, ids: &[Uuid]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.delete_filter(build_filter(org_id, &PointFilter::default(), Some(ids)))
            .await
    }

    async fn delete_by_filter(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.delete_filter(build_filter(org_id, &filter, None))
            .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.client.health_check().await.map_err(map_err)?;
        Ok(())
    }
}

/// `org_id == org AND [asset_id == ..] AND [segment_id == ..] AND [id in ids]`.
fn build_filter(org_id: Uuid, filter: &PointFilter, ids: Option<&[Uuid]>) -> Filter {
    let mut must = vec![Condition::matches(ORG_ID_KEY, org_id.to_string())];
    if let Some(asset_id) = &filter.asset_id {
        must.push(Condition::matches(ASSET_ID_KEY, asset_id.clone()));
    }
    if let Some(segment_id) = &filter.segment_id {
        must.push(Condition::matches(SEGMENT_ID_KEY, segment_id.clone()));
    }
    if let Some(model) = &filter.model {
        must.push(Condition::matches(MODEL_KEY, model.clone()));
    }
    if let Some(model_ver) = &filter.model_ver {
        must.push(Condition::matches(MODEL_VER_KEY, model_ver.clone()));
    }
    if let Some(ids) = ids {
        must.push(Condition::has_id(ids.iter().map(|id| id.to_string())));
    }
    Filter::must(must)
}

fn uuid_of(id: Option<PointId>) -> Result<Uuid, StoreError> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(s)) => Uuid::parse_str(&s)
            .map_err(|e| StoreError::Internal(format!("server returned bad uuid {s:?}: {e}"))),
        Some(PointIdOptions::Num(n)) => Err(StoreError::Internal(format!(
            "point with numeric id {n} in a UUID-only collection"
        ))),
        None => Err(StoreError::Internal(
            "server returned a point without id".into(),
        )),
    }
}

fn vector_of(
    vectors: Option<VectorsOutput>,
    requested: bool,
) -> Result<Option<Vec<f32>>, StoreError> {
    if !requested {
        return Ok(None);
    }
    match vectors.and_then(|v| v.get_vector()) {
        Some(OutVector::Dense(d)) => Ok(Some(d.data)),
        Some(OutVector::Sparse(_) | OutVector::MultiDense(_)) | None => Err(StoreError::Internal(
            "server returned no single dense vector".into(),
        )),
    }
}

fn json_to_value(v: serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            // u64 above i64::MAX and floats (lossy for the former, like Qdrant's REST API).
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn value_to_json(v: Value) -> serde_json::Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::IntegerValue(i)) => serde_json::Value::from(i),
        Some(Kind::DoubleValue(d)) => serde_json::Number::from_f64(d)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(payload_to_json(s.fields)),
    }
}

fn payload_to_json(fields: HashMap<String, Value>) -> serde_json::Map<String, serde_json::Value> {
    fields
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect()
}

/// gRPC status → error class: transport/availability problems are retryable, bad requests are
/// not, anything else is internal.
fn map_err(e: QdrantError) -> StoreError {
    let msg = e.to_string();
    // `if let` rather than `match`: the set of variants depends on qdrant-client's features.
    if let QdrantError::ResponseError { status } = &e {
        return match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted => StoreError::Unavailable(msg),
            // qdrant-client reports "cannot connect" as `Internal("Failed to connect to ..")`,
            // and a broken connection may surface as `Unknown`/`Internal` "transport error".
            tonic::Code::Internal | tonic::Code::Unknown
                if is_transport_failure(status.message()) =>
            {
                StoreError::Unavailable(msg)
            }
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StoreError::InvalidInput(msg),
            tonic::Code::Ok
            | tonic::Code::Unknown
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::DataLoss
            | tonic::Code::Unauthenticated => StoreError::Internal(msg),
        };
    }
    if let QdrantError::ResourceExhaustedError { .. } = &e {
        return StoreError::Unavailable(msg);
    }
    if let QdrantError::Io(_) = &e {
        return StoreError::Unavailable(msg);
    }
    StoreError::Internal(msg)
}

fn is_transport_failure(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "failed to connect",
        "transport error",
        "tcp connect",
        "connection refused",
        "connection reset",
        "broken pipe",
        "h2 protocol error",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_value_roundtrip() {
        let original = serde_json::json!({
            "null": null, "b": true, "i": -42, "u": 7, "f": 2.5, "whole_f": 2.0,
            "s": "x", "arr": [1, "two", {"three": 3.5}], "obj": {"nested": [null]}
        });
        let serde_json::Value::Object(map) = original.clone() else {
            panic!("not an object");
        };
        let fields: HashMap<String, Value> = map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect();
        let back = serde_json::Value::Object(payload_to_json(fields));
        assert_eq!(back, original);
    }

    #[test]
    fn grpc_codes_map_to_error_classes() {
        let err = |code| {
            map_err(QdrantError::ResponseError {
                status: tonic::Status::new(code, "x"),
            })
        };
        assert!(matches!(
            err(tonic::Code::Unavailable),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            err(tonic::Code::DeadlineExceeded),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            err(tonic::Code::InvalidArgument),
            StoreError::InvalidInput(_)
        ));
        assert!(matches!(
            err(tonic::Code::NotFound),
            StoreError::Internal(_)
        ));
        assert!(matches!(err(tonic::Code::Unknown), StoreError::Internal(_)));
        assert!(matches!(
            err(tonic::Code::Internal),
            StoreError::Internal(_)
        ));
        let internal = |m: &str| {
            map_err(QdrantError::ResponseError {
                status: tonic::Status::internal(m),
            })
        };
        assert!(matches!(
            internal("Failed to connect to http://q:6334/: tonic::transport::Error(..)"),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            internal("Service internal error: segment corrupted"),
            StoreError::Internal(_)
        ));
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // Port 1 on localhost: connection refused.
        let store = RemoteStore::connect("http://127.0.0.1:1", None, "c".into(), 3)
            .expect("client builds lazily");
        let err = store.probe().await.expect_err("nothing listens on port 1");
        assert!(err.is_retryable(), "{err:?}");
        let err = store
            .count(Uuid::new_v4(), PointFilter::default())
            .await
            .expect_err("nothing listens on port 1");
        assert!(err.is_retryable(), "{err:?}");
    }

    #[test]
    fn bad_url_is_invalid_input() {
        let err = RemoteStore::connect("not a url", None, "c".into(), 3).expect_err("bad url");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
}
