//! Adapter for a Qdrant server over gRPC (`qdrant-client`).
//!
//! Writes use `wait=true`, so an `Ok` means the server has applied (and WAL-logged) the change.
//! Payloads are converted between `serde_json` and protobuf values by hand, which keeps
//! `qdrant-client`'s `serde` feature (and its derive cost) off.

use std::collections::HashMap;
use std::time::Duration;

use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::vector_output::Vector as OutVector;
use qdrant_client::qdrant::vectors_output::VectorsOptions as OutVectors;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    CreateVectorNameRequest, DeletePointsBuilder, Distance, FieldType, Filter,
    KeywordIndexParamsBuilder, ListValue, Modifier, NamedVectors, PointId, PointStruct,
    PointVectors, PrefetchQuery, Query, QueryBatchPoints, QueryPoints, Range, ScrollPointsBuilder,
    SparseVectorConfig, SparseVectorCreationConfig, SparseVectorParams, Struct, UpdatePointVectors,
    UpsertPointsBuilder, Value, Vector, VectorInput, VectorParamsBuilder, Vectors, VectorsOutput,
    WithPayloadSelector, WithVectorsSelector, create_vector_name_request, point_id::PointIdOptions,
    query as grpc_query, vectors_config,
};
use qdrant_client::{Qdrant, QdrantError};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::keyword::{KEYWORD_VECTOR, SparseVector};
use crate::meta::{self, MetaCond};
use crate::query::{self, Fusion, Leg, Node, Scoring};
use crate::upgrade::{self, Backfill};
use crate::{
    ASSET_ID_KEY, MODEL_KEY, MODEL_VER_KEY, MOVED_FROM_KEY, NewPoint, ORG_ID_KEY, PointFilter,
    SEGMENT_ID_KEY, SEQ_KEY, ScoredPoint, SearchRequest, StoreError, StoreKind, StoredPoint,
    VectorStore, finish_hits, payload_from_json, prepare_points,
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

    /// Checks that an existing collection has our dense vector (size, cosine), and says
    /// whether it has the keyword vector (with IDF) yet.
    async fn check_collection_params(&self) -> Result<bool, StoreError> {
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(map_err)?;
        let params = info.result.and_then(|i| i.config).and_then(|c| c.params);
        let dense = params
            .as_ref()
            .and_then(|p| p.vectors_config.clone())
            .and_then(|v| v.config);
        match dense {
            Some(vectors_config::Config::Params(p))
                if p.size == self.vector_size as u64 && p.distance == Distance::Cosine as i32 => {}
            Some(vectors_config::Config::Params(p)) => {
                return Err(StoreError::InvalidInput(format!(
                    "collection {} has vectors of size {} / distance {}, configured {} / Cosine",
                    self.collection, p.size, p.distance, self.vector_size
                )));
            }
            Some(vectors_config::Config::ParamsMap(_)) | None => {
                return Err(StoreError::InvalidInput(format!(
                    "collection {} has no single unnamed dense vector",
                    self.collection
                )));
            }
        }
        let keyword = params
            .and_then(|p| p.sparse_vectors_config)
            .and_then(|mut s| s.map.remove(KEYWORD_VECTOR));
        match keyword {
            None => Ok(false),
            Some(p) if p.modifier == Some(Modifier::Idf as i32) => Ok(true),
            Some(p) => Err(StoreError::InvalidInput(format!(
                "collection {} has a sparse vector `{KEYWORD_VECTOR}` with modifier {:?}, \
                 expected Idf",
                self.collection, p.modifier
            ))),
        }
    }

    /// Adds the keyword vector to a collection made before hybrid search. Needs a Qdrant
    /// server of 1.18 or later (the first with `CreateVectorName`).
    async fn add_keyword_vector(&self) -> Result<(), StoreError> {
        tracing::info!(collection = %self.collection, "adding the keyword vector to a collection made before hybrid search");
        let added = self
            .client
            .create_vector_name(CreateVectorNameRequest {
                collection_name: self.collection.clone(),
                wait: Some(true),
                vector_name: KEYWORD_VECTOR.to_owned(),
                timeout: None,
                ordering: None,
                vector_config: Some(create_vector_name_request::VectorConfig::SparseConfig(
                    SparseVectorCreationConfig {
                        modifier: Some(Modifier::Idf as i32),
                        datatype: None,
                    },
                )),
            })
            .await;
        match added {
            Ok(_) => Ok(()),
            // Another process added it meanwhile: fine if it is ours.
            Err(e) if self.check_collection_params().await? => {
                tracing::debug!(error = %e, "keyword vector added concurrently");
                Ok(())
            }
            Err(e) => Err(map_err(e)),
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
                    CreateCollectionBuilder::new(&self.collection)
                        .vectors_config(VectorParamsBuilder::new(
                            self.vector_size as u64,
                            Distance::Cosine,
                        ))
                        .sparse_vectors_config(SparseVectorConfig {
                            map: HashMap::from([(
                                KEYWORD_VECTOR.to_owned(),
                                SparseVectorParams {
                                    index: None,
                                    modifier: Some(Modifier::Idf as i32),
                                },
                            )]),
                        }),
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
        if !self.check_collection_params().await? {
            self.add_keyword_vector().await?;
        }
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
        // Points written before the keyword vector existed get theirs (a no-op scan once done).
        upgrade::backfill(self).await?;
        Ok(())
    }

    async fn upsert(&self, points: Vec<NewPoint>) -> Result<(), StoreError> {
        let prepared = prepare_points(&points, self.vector_size)?;
        if points.is_empty() {
            return Ok(());
        }
        let points: Vec<PointStruct> = points
            .into_iter()
            .zip(prepared)
            .map(|(p, prepared)| {
                let payload: HashMap<String, Value> = prepared
                    .payload
                    .into_iter()
                    .map(|(k, v)| (k, json_to_value(v)))
                    .collect();
                let vectors = NamedVectors {
                    vectors: HashMap::from([
                        (String::new(), Vector::new_dense(p.vector)),
                        (KEYWORD_VECTOR.to_owned(), sparse_vector(prepared.keyword)),
                    ]),
                };
                PointStruct::new(p.id.to_string(), Vectors::from(vectors), payload)
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
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let plan = query::plan(&req, self.vector_size)?;
        let filter = build_filter(req.org_id, &req.filter, None);
        let request = |node: &Node, with_payload: bool, with_vectors: bool, threshold| {
            let (prefetch, query, using) = node_out(node);
            QueryPoints {
                collection_name: self.collection.clone(),
                prefetch,
                query: Some(query),
                using,
                filter: Some(filter.clone()),
                score_threshold: threshold,
                // The first `offset` are dropped by `finish_hits`, as for the embedded store.
                limit: Some(node.limit as u64),
                offset: None,
                with_payload: Some(WithPayloadSelector::from(with_payload)),
                with_vectors: Some(WithVectorsSelector::from(with_vectors)),
                ..QueryPoints::default()
            }
        };
        let main = request(&plan.root, true, req.with_vector, req.score_threshold);
        let (hits, legs) = if plan.explain.is_empty() {
            let res = self.client.query(main).await.map_err(map_err)?;
            (res.result, Vec::new())
        } else {
            // One round trip: the search itself and each list on its own.
            let mut batch = vec![main];
            batch.extend(
                plan.explain
                    .iter()
                    .map(|(_, node)| request(node, false, false, None)),
            );
            let res = self
                .client
                .query_batch(QueryBatchPoints {
                    collection_name: self.collection.clone(),
                    query_points: batch,
                    read_consistency: None,
                    timeout: None,
                })
                .await
                .map_err(map_err)?;
            let mut results = res.result.into_iter().map(|r| r.result);
            let hits = results.next().unwrap_or_default();
            let legs = plan
                .explain
                .iter()
                .zip(results)
                .map(|((kind, _), list)| {
                    let list = list
                        .into_iter()
                        .map(|p| Ok((uuid_of(p.id)?, p.score)))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    Ok((*kind, list))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            (hits, legs)
        };
        let hits = hits
            .into_iter()
            .map(|p| {
                let id = uuid_of(p.id)?;
                Ok(ScoredPoint {
                    id,
                    score: p.score,
                    payload: payload_from_json(id, payload_to_json(p.payload))?,
                    vector: vector_of(p.vectors, req.with_vector)?,
                    explain: None,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(finish_hits(hits, &plan, legs))
    }

    async fn count(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError> {
        self.count_filter(build_filter(org_id, &filter, None)).await
    }

    async fn scroll_ids(&self, org_id: Uuid, filter: PointFilter) -> Result<Vec<Uuid>, StoreError> {
        let points = self.scroll(org_id, filter, false).await?;
        Ok(points.into_iter().map(|(id, _)| id).collect())
    }

    async fn scroll_points(
        &self,
        org_id: Uuid,
        filter: PointFilter,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        self.scroll(org_id, filter, true)
            .await?
            .into_iter()
            .map(|(id, payload)| {
                Ok(StoredPoint {
                    id,
                    payload: payload_from_json(id, payload_to_json(payload))?,
                    vector: None,
                })
            })
            .collect()
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

#[async_trait::async_trait]
impl Backfill for RemoteStore {
    async fn without_keyword(
        &self,
        from: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<(Uuid, Option<String>)>, Option<Uuid>), StoreError> {
        let mut req = ScrollPointsBuilder::new(&self.collection)
            .filter(Filter::must_not([Condition::has_vector(KEYWORD_VECTOR)]))
            .limit(u32::try_from(limit).unwrap_or(u32::MAX))
            .with_payload(true)
            .with_vectors(false);
        if let Some(from) = from {
            req = req.offset(PointId::from(from.to_string()));
        }
        let res = self.client.scroll(req).await.map_err(map_err)?;
        let page = res
            .result
            .into_iter()
            .map(|p| {
                let text = p.payload.get("text").and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                });
                Ok((uuid_of(p.id)?, text))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = res
            .next_page_offset
            .map(|id| uuid_of(Some(id)))
            .transpose()?;
        Ok((page, next))
    }

    async fn set_keyword(&self, vectors: Vec<(Uuid, SparseVector)>) -> Result<(), StoreError> {
        let points = vectors
            .into_iter()
            .map(|(id, v)| PointVectors {
                id: Some(PointId::from(id.to_string())),
                vectors: Some(Vectors::from(NamedVectors {
                    vectors: HashMap::from([(KEYWORD_VECTOR.to_owned(), sparse_vector(v))]),
                })),
            })
            .collect();
        self.client
            .update_vectors(UpdatePointVectors {
                collection_name: self.collection.clone(),
                wait: Some(true),
                points,
                // Only points that still have none: a point rewritten meanwhile keeps the
                // vector that came with its new text.
                update_filter: Some(Filter::must_not([Condition::has_vector(KEYWORD_VECTOR)])),
                ..UpdatePointVectors::default()
            })
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn name(&self) -> String {
        format!("collection {}", self.collection)
    }
}

/// A node of the query tree as gRPC: its prefetches, its query and the vector it uses.
fn node_out(node: &Node) -> (Vec<PrefetchQuery>, Query, Option<String>) {
    let prefetch = node
        .prefetch
        .iter()
        .map(|child| {
            let (prefetch, query, using) = node_out(child);
            PrefetchQuery {
                prefetch,
                query: Some(query),
                using,
                limit: Some(child.limit as u64),
                ..PrefetchQuery::default()
            }
        })
        .collect();
    let dense = |v: &[f32]| VectorInput::from(v.to_vec());
    let (variant, using) = match &node.scoring {
        Scoring::Nearest(Leg::Dense(v)) => (grpc_query::Variant::Nearest(dense(v)), None),
        Scoring::Nearest(Leg::Keyword(v)) => (
            grpc_query::Variant::Nearest(VectorInput {
                variant: Some(qdrant_client::qdrant::vector_input::Variant::Sparse(
                    qdrant_client::qdrant::SparseVector {
                        values: v.values.clone(),
                        indices: v.indices.clone(),
                    },
                )),
            }),
            Some(KEYWORD_VECTOR.to_owned()),
        ),
        Scoring::Fusion(Fusion::Rrf {
            k,
            dense_weight,
            keyword_weight,
        }) => (
            grpc_query::Variant::Rrf(qdrant_client::qdrant::Rrf {
                k: Some(Fusion::engine_k(*k)),
                weights: vec![*dense_weight, *keyword_weight],
            }),
            None,
        ),
        Scoring::Fusion(Fusion::Dbsf) => (
            grpc_query::Variant::Fusion(qdrant_client::qdrant::Fusion::Dbsf as i32),
            None,
        ),
        Scoring::Mmr {
            vector,
            diversity,
            candidates,
        } => (
            grpc_query::Variant::NearestWithMmr(qdrant_client::qdrant::NearestInputWithMmr {
                nearest: Some(dense(vector)),
                mmr: Some(qdrant_client::qdrant::Mmr {
                    diversity: Some(*diversity),
                    candidates_limit: Some(u32::try_from(*candidates).unwrap_or(u32::MAX)),
                }),
            }),
            None,
        ),
    };
    (
        prefetch,
        Query {
            variant: Some(variant),
        },
        using,
    )
}

fn sparse_vector(v: SparseVector) -> Vector {
    Vector::new_sparse(v.indices, v.values)
}

impl RemoteStore {
    /// Every point matching `filter`, page by page, with its payload when asked for.
    async fn scroll(
        &self,
        org_id: Uuid,
        filter: PointFilter,
        with_payload: bool,
    ) -> Result<Vec<(Uuid, HashMap<String, Value>)>, StoreError> {
        let filter = build_filter(org_id, &filter, None);
        let mut points = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut req = ScrollPointsBuilder::new(&self.collection)
                .filter(filter.clone())
                .limit(SCROLL_PAGE)
                .with_payload(with_payload)
                .with_vectors(false);
            if let Some(offset) = offset.take() {
                req = req.offset(offset);
            }
            let res = self.client.scroll(req).await.map_err(map_err)?;
            for p in res.result {
                points.push((uuid_of(p.id)?, p.payload));
            }
            match res.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(points),
            }
        }
    }
}

/// `org_id == org AND [asset_id == ..] AND [segment_id == ..] AND [id in ids] AND [every
/// metadata must] AND NOT [seq >= before_seq] AND NOT [any metadata must_not]`.
fn build_filter(org_id: Uuid, filter: &PointFilter, ids: Option<&[Uuid]>) -> Filter {
    let filter_seq = filter.before_seq;
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
    if let Some(moved_from) = &filter.moved_from {
        must.push(Condition::matches(MOVED_FROM_KEY, moved_from.to_string()));
    }
    if let Some(ids) = ids {
        must.push(Condition::has_id(ids.iter().map(|id| id.to_string())));
    }
    let (meta_must, meta_must_not) = meta::plan(&filter.meta);
    must.extend(meta_must.iter().map(meta_condition));
    let mut filter = Filter::must(must);
    if let Some(seq) = filter_seq {
        // `NOT seq >= s` rather than `seq < s`: a point without `seq` matches.
        filter.must_not.push(Condition::range(
            SEQ_KEY,
            Range {
                gte: Some(seq as f64),
                ..Range::default()
            },
        ));
    }
    filter
        .must_not
        .extend(meta_must_not.iter().map(meta_condition));
    filter
}

/// A metadata condition ([`meta`]) in the gRPC API's types.
fn meta_condition(cond: &MetaCond) -> Condition {
    match cond {
        MetaCond::Keyword { path, value } => Condition::matches(path.as_str(), value.clone()),
        MetaCond::Keywords { path, values } => Condition::matches(path.as_str(), values.clone()),
        MetaCond::Bool { path, value } => Condition::matches(path.as_str(), *value),
        MetaCond::Range { path, range } => Condition::range(
            path.as_str(),
            Range {
                gt: range.gt,
                gte: range.gte,
                lt: range.lt,
                lte: range.lte,
            },
        ),
        MetaCond::AnyOf(conds) => Condition::from(Filter::should(conds.iter().map(meta_condition))),
    }
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
    // The dense vector is the unnamed one: alone, or under "" beside the keyword vector.
    let dense = vectors.and_then(|v| match v.vectors_options {
        Some(OutVectors::Vector(v)) => Some(v.into_vector()),
        Some(OutVectors::Vectors(mut named)) => named.vectors.remove("").map(|v| v.into_vector()),
        None => None,
    });
    match dense {
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

/// Whether an `Internal`/`Unknown` status is a broken or refused connection.
///
/// The one place Heimdex reads an error's text, and why: qdrant-client turns a failed connect
/// into `Status::internal(format!("Failed to connect to {url}: {err:?}"))`, and tonic reports a
/// dropped HTTP/2 connection as `Unknown`/`Internal` "transport error", in both cases without a
/// `source()` to inspect. Misreading one only changes the HTTP status (503 with `Retry-After`
/// instead of 500) and whether the worker retries; the contract suite's outage cases (store
/// server stopped, connection black-holed) pin the texts this matches.
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
