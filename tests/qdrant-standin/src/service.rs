//! The gRPC services: Qdrant's generated server traits, implemented for the RPCs that
//! Heimdex's remote adapter (`shared/store/src/remote.rs`) and its contract tests call.
//! Every other RPC answers `Unimplemented` with the RPC's name.
//!
//! Each handler moves its work to tokio's blocking pool: the engine is synchronous and a
//! write ends with an fsync.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::collections_server::Collections;
use qdrant_client::qdrant::points_server::Points;
use qdrant_client::qdrant::qdrant_server::Qdrant;
use qdrant_edge as edge;
use qdrant_edge::external::ordered_float::OrderedFloat;
use tonic::{Request, Response, Status};

use crate::convert::{
    filter_in, json_path, map_edge_err, optional_filter_in, payload_in, payload_out, point_id_in,
    point_id_out, point_ids_in, prefetches_in, query_in, unsupported, vectors_in, vectors_out,
    with_payload_in, with_vectors_in,
};
use crate::registry::{Collection, Registry};

/// Default `limit` of scroll and query, as on the server.
const DEFAULT_LIMIT: usize = 10;

/// The served API version, reported by the health check. It is the version of the
/// `qdrant-client` crate (and so of the proto files) the stand-in is built with; keep it in
/// step with Cargo.lock so clients that check compatibility see a matching server.
pub(crate) const API_VERSION: &str = "1.20.0";

/// One value implements all three services; they share the collections.
#[derive(Clone)]
pub(crate) struct Service {
    registry: Arc<Registry>,
}

impl Service {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Runs `f` with the named collection on the blocking pool.
    async fn with_collection<T, F>(&self, name: String, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Collection) -> Result<T, Status> + Send + 'static,
    {
        let collection = self.registry.get(&name)?;
        blocking(move || f(&collection)).await
    }
}

/// Runs blocking engine code off the async runtime. A panic inside (qdrant-edge panics when a
/// flush fails) becomes `Internal`.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("Service internal error: task failed: {e}")))?
}

/// Seconds since `started`, for the `time` field of every answer.
fn secs(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Writes are applied and flushed before the answer, whether or not the client asked to
/// `wait`, so every write reports `Completed`.
fn completed(started: Instant) -> grpc::PointsOperationResponse {
    grpc::PointsOperationResponse {
        result: Some(grpc::UpdateResult {
            operation_id: None,
            status: grpc::UpdateStatus::Completed as i32,
        }),
        time: secs(started),
        usage: None,
    }
}

fn limit_of(limit: Option<u64>) -> usize {
    limit.map_or(DEFAULT_LIMIT, usize_of)
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------
// qdrant.Qdrant

#[tonic::async_trait]
impl Qdrant for Service {
    async fn health_check(
        &self,
        _request: Request<grpc::HealthCheckRequest>,
    ) -> Result<Response<grpc::HealthCheckReply>, Status> {
        Ok(Response::new(grpc::HealthCheckReply {
            title: "qdrant - vector search engine (heimdex test stand-in on qdrant-edge)".into(),
            version: API_VERSION.into(),
            commit: None,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// qdrant.Collections

/// Generates the handlers of RPCs the stand-in does not serve. They are written in the shape
/// `#[async_trait]` gives trait methods (a boxed future), because that attribute does not look
/// inside macro calls.
macro_rules! unimplemented_rpcs {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: Request<grpc::$request>,
            ) -> Pin<Box<dyn Future<Output = Result<Response<grpc::$response>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(std::future::ready(Err(unimplemented_rpc(stringify!($method)))))
            }
        )*
    };
}

fn unimplemented_rpc(method: &str) -> Status {
    Status::unimplemented(format!(
        "qdrant-standin does not implement the {method} RPC (it serves only what Heimdex \
         uses); set QDRANT_URL to test against a real Qdrant server"
    ))
}

#[tonic::async_trait]
impl Collections for Service {
    async fn get(
        &self,
        request: Request<grpc::GetCollectionInfoRequest>,
    ) -> Result<Response<grpc::GetCollectionInfoResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().collection_name;
        let info = self
            .with_collection(name, |c| c.read(|shard| Ok(collection_info(shard))))
            .await?;
        Ok(Response::new(grpc::GetCollectionInfoResponse {
            result: Some(info),
            time: secs(started),
        }))
    }

    async fn list(
        &self,
        _request: Request<grpc::ListCollectionsRequest>,
    ) -> Result<Response<grpc::ListCollectionsResponse>, Status> {
        let started = Instant::now();
        let collections = self
            .registry
            .names()
            .into_iter()
            .map(|name| grpc::CollectionDescription { name })
            .collect();
        Ok(Response::new(grpc::ListCollectionsResponse {
            collections,
            time: secs(started),
        }))
    }

    async fn create(
        &self,
        request: Request<grpc::CreateCollection>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let sparse = req
            .sparse_vectors_config
            .map(|c| {
                c.map
                    .into_iter()
                    .map(|(name, params)| {
                        if params.index.is_some() {
                            return Err(unsupported("sparse index parameters"));
                        }
                        Ok((name, params.modifier.map(modifier_in).transpose()?))
                    })
                    .collect::<Result<Vec<_>, Status>>()
            })
            .transpose()?
            .unwrap_or_default();
        if req.quantization_config.is_some() {
            return Err(unsupported("quantization"));
        }
        use grpc::vectors_config::Config;
        let params = match req.vectors_config.and_then(|v| v.config) {
            Some(Config::Params(p)) => p,
            Some(Config::ParamsMap(_)) => return Err(unsupported("named vectors")),
            None => return Err(unsupported("collections without a dense vector")),
        };
        if params.multivector_config.is_some() || params.quantization_config.is_some() {
            return Err(unsupported("multivectors and quantization"));
        }
        let distance = distance_in(params.distance)?;
        let size = usize::try_from(params.size)
            .map_err(|_| Status::invalid_argument("Wrong input: vector size too large"))?;
        let registry = Arc::clone(&self.registry);
        let name = req.collection_name;
        blocking(move || registry.create(&name, size, distance, sparse)).await?;
        Ok(Response::new(grpc::CollectionOperationResponse {
            result: true,
            time: secs(started),
        }))
    }

    async fn delete(
        &self,
        request: Request<grpc::DeleteCollection>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().collection_name;
        let registry = Arc::clone(&self.registry);
        let deleted = blocking(move || registry.delete(&name)).await?;
        Ok(Response::new(grpc::CollectionOperationResponse {
            result: deleted,
            time: secs(started),
        }))
    }

    async fn collection_exists(
        &self,
        request: Request<grpc::CollectionExistsRequest>,
    ) -> Result<Response<grpc::CollectionExistsResponse>, Status> {
        let started = Instant::now();
        let exists = self.registry.exists(&request.into_inner().collection_name);
        Ok(Response::new(grpc::CollectionExistsResponse {
            result: Some(grpc::CollectionExists { exists }),
            time: secs(started),
        }))
    }

    unimplemented_rpcs! {
        update(UpdateCollection) -> CollectionOperationResponse;
        update_aliases(ChangeAliases) -> CollectionOperationResponse;
        list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        collection_cluster_info(CollectionClusterInfoRequest) -> CollectionClusterInfoResponse;
        update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
        create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
        delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
        list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
    }
}

fn distance_in(distance: i32) -> Result<edge::Distance, Status> {
    match grpc::Distance::try_from(distance) {
        Ok(grpc::Distance::Cosine) => Ok(edge::Distance::Cosine),
        Ok(grpc::Distance::Euclid) => Ok(edge::Distance::Euclid),
        Ok(grpc::Distance::Dot) => Ok(edge::Distance::Dot),
        Ok(grpc::Distance::Manhattan) => Ok(edge::Distance::Manhattan),
        Ok(grpc::Distance::UnknownDistance) | Err(_) => Err(Status::invalid_argument(format!(
            "Wrong input: unknown distance {distance}"
        ))),
    }
}

fn modifier_in(modifier: i32) -> Result<edge::Modifier, Status> {
    match grpc::Modifier::try_from(modifier) {
        Ok(grpc::Modifier::None) => Ok(edge::Modifier::None),
        Ok(grpc::Modifier::Idf) => Ok(edge::Modifier::Idf),
        Err(_) => Err(Status::invalid_argument(format!(
            "Wrong input: unknown modifier {modifier}"
        ))),
    }
}

fn modifier_out(modifier: edge::Modifier) -> grpc::Modifier {
    match modifier {
        edge::Modifier::None => grpc::Modifier::None,
        edge::Modifier::Idf => grpc::Modifier::Idf,
    }
}

fn distance_out(distance: edge::Distance) -> grpc::Distance {
    match distance {
        edge::Distance::Cosine => grpc::Distance::Cosine,
        edge::Distance::Euclid => grpc::Distance::Euclid,
        edge::Distance::Dot => grpc::Distance::Dot,
        edge::Distance::Manhattan => grpc::Distance::Manhattan,
    }
}

fn collection_info(shard: &edge::EdgeShard) -> grpc::CollectionInfo {
    let config = shard.config();
    let vectors_config =
        config
            .vectors
            .get(edge::DEFAULT_VECTOR_NAME)
            .map(|p| grpc::VectorsConfig {
                config: Some(grpc::vectors_config::Config::Params(grpc::VectorParams {
                    size: p.size as u64,
                    distance: distance_out(p.distance) as i32,
                    ..grpc::VectorParams::default()
                })),
            });
    let sparse_vectors_config =
        (!config.sparse_vectors.is_empty()).then(|| grpc::SparseVectorConfig {
            map: config
                .sparse_vectors
                .iter()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        grpc::SparseVectorParams {
                            index: None,
                            modifier: p.modifier.map(|m| modifier_out(m) as i32),
                        },
                    )
                })
                .collect(),
        });
    let info = shard.info();
    let payload_schema = info
        .payload_schema
        .into_iter()
        .map(|(path, index)| (path.to_string(), payload_schema_out(index)))
        .collect();
    grpc::CollectionInfo {
        status: grpc::CollectionStatus::Green as i32,
        optimizer_status: Some(grpc::OptimizerStatus {
            ok: true,
            error: String::new(),
        }),
        segments_count: info.segments_count as u64,
        config: Some(grpc::CollectionConfig {
            params: Some(grpc::CollectionParams {
                shard_number: 1,
                vectors_config,
                sparse_vectors_config,
                replication_factor: Some(1),
                write_consistency_factor: Some(1),
                ..grpc::CollectionParams::default()
            }),
            ..grpc::CollectionConfig::default()
        }),
        payload_schema,
        points_count: Some(info.points_count as u64),
        indexed_vectors_count: Some(info.indexed_vectors_count as u64),
        ..grpc::CollectionInfo::default()
    }
}

fn payload_schema_out(index: edge::PayloadIndexInfo) -> grpc::PayloadSchemaInfo {
    use edge::PayloadSchemaType as T;
    let data_type = match index.data_type {
        T::Keyword => grpc::PayloadSchemaType::Keyword,
        T::Integer => grpc::PayloadSchemaType::Integer,
        T::Float => grpc::PayloadSchemaType::Float,
        T::Geo => grpc::PayloadSchemaType::Geo,
        T::Text => grpc::PayloadSchemaType::Text,
        T::Bool => grpc::PayloadSchemaType::Bool,
        T::Datetime => grpc::PayloadSchemaType::Datetime,
        T::Uuid => grpc::PayloadSchemaType::Uuid,
    };
    let params = match index.params {
        Some(edge::PayloadSchemaParams::Keyword(k)) => Some(grpc::PayloadIndexParams {
            index_params: Some(grpc::payload_index_params::IndexParams::KeywordIndexParams(
                grpc::KeywordIndexParams {
                    is_tenant: k.is_tenant,
                    ..grpc::KeywordIndexParams::default()
                },
            )),
        }),
        // Only keyword parameters are translated; the type above still says what the index is.
        Some(_) | None => None,
    };
    grpc::PayloadSchemaInfo {
        data_type: data_type as i32,
        params,
        points: Some(index.points as u64),
    }
}

// ---------------------------------------------------------------------------------------------
// qdrant.Points

#[tonic::async_trait]
impl Points for Service {
    async fn upsert(
        &self,
        request: Request<grpc::UpsertPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        if req.update_filter.is_some() {
            return Err(unsupported("conditional upserts (update_filter)"));
        }
        if req.shard_key_selector.is_some() {
            return Err(unsupported("shard keys"));
        }
        let points = req
            .points
            .into_iter()
            .map(|p| {
                Ok(edge::PointStructPersisted {
                    id: point_id_in(p.id)?,
                    vector: vectors_in(p.vectors)?,
                    payload: Some(payload_in(p.payload)),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        if points.is_empty() {
            return Ok(Response::new(completed(started)));
        }
        self.with_collection(req.collection_name, move |c| {
            c.write(|shard| {
                let op =
                    edge::UpdateOperation::PointOperation(edge::PointOperations::UpsertPoints(
                        edge::PointInsertOperations::PointsList(points),
                    ));
                shard.update(op).map_err(map_edge_err)?;
                Ok(((), true))
            })
        })
        .await?;
        Ok(Response::new(completed(started)))
    }

    async fn delete(
        &self,
        request: Request<grpc::DeletePoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        use grpc::points_selector::PointsSelectorOneOf;
        let started = Instant::now();
        let req = request.into_inner();
        let op = match req.points.and_then(|p| p.points_selector_one_of) {
            Some(PointsSelectorOneOf::Points(list)) => edge::PointOperations::DeletePoints {
                ids: point_ids_in(list.ids)?,
            },
            Some(PointsSelectorOneOf::Filter(f)) => {
                edge::PointOperations::DeletePointsByFilter(filter_in(f)?)
            }
            None => return Err(Status::invalid_argument("Wrong input: no points selector")),
        };
        self.with_collection(req.collection_name, move |c| {
            c.write(|shard| {
                shard
                    .update(edge::UpdateOperation::PointOperation(op))
                    .map_err(map_edge_err)?;
                Ok(((), true))
            })
        })
        .await?;
        Ok(Response::new(completed(started)))
    }

    async fn get(
        &self,
        request: Request<grpc::GetPoints>,
    ) -> Result<Response<grpc::GetResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let ids = point_ids_in(req.ids)?;
        let with_payload = with_payload_in(req.with_payload, true)?;
        let with_vector = with_vectors_in(req.with_vectors);
        let records = self
            .with_collection(req.collection_name, move |c| {
                c.read(|shard| {
                    shard
                        .retrieve(&ids, Some(with_payload), Some(with_vector))
                        .map_err(map_edge_err)
                })
            })
            .await?;
        Ok(Response::new(grpc::GetResponse {
            result: records.into_iter().map(record_out).collect(),
            time: secs(started),
            usage: None,
        }))
    }

    async fn create_field_index(
        &self,
        request: Request<grpc::CreateFieldIndexCollection>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let path = json_path(&req.field_name)?;
        let schema = field_schema_in(req.field_type, req.field_index_params)?;
        self.with_collection(req.collection_name, move |c| {
            c.write(|shard| {
                // Creating an index that exists with the same schema is a no-op, as on the
                // server (which is what makes `ensure_collection` cheap to repeat).
                let existing = shard.info().payload_schema.remove(&path);
                if let Some(existing) = existing {
                    let existing = match existing.params {
                        Some(params) => edge::PayloadFieldSchema::FieldParams(params),
                        None => edge::PayloadFieldSchema::FieldType(existing.data_type),
                    };
                    if existing == schema {
                        return Ok(((), false));
                    }
                }
                let op = edge::UpdateOperation::FieldIndexOperation(
                    edge::FieldIndexOperations::CreateIndex(edge::CreateIndex {
                        field_name: path,
                        field_schema: Some(schema),
                    }),
                );
                shard.update(op).map_err(map_edge_err)?;
                Ok(((), true))
            })
        })
        .await?;
        Ok(Response::new(completed(started)))
    }

    async fn delete_field_index(
        &self,
        request: Request<grpc::DeleteFieldIndexCollection>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let path = json_path(&req.field_name)?;
        self.with_collection(req.collection_name, move |c| {
            c.write(|shard| {
                let op = edge::UpdateOperation::FieldIndexOperation(
                    edge::FieldIndexOperations::DeleteIndex(path),
                );
                shard.update(op).map_err(map_edge_err)?;
                Ok(((), true))
            })
        })
        .await?;
        Ok(Response::new(completed(started)))
    }

    async fn search(
        &self,
        request: Request<grpc::SearchPoints>,
    ) -> Result<Response<grpc::SearchResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        if req.vector_name.as_deref().is_some_and(|n| !n.is_empty()) {
            return Err(unsupported("named vectors"));
        }
        if req.sparse_indices.is_some() {
            return Err(unsupported("sparse vectors"));
        }
        if req.limit == 0 {
            return Err(Status::invalid_argument(
                "Validation error in body: [limit: value 0 invalid, must be 1 or larger]",
            ));
        }
        let limit = limit_of(Some(req.limit));
        let offset = req.offset.map_or(0, usize_of);
        let query = ShardQuery {
            request: edge::QueryRequest {
                prefetches: Vec::new(),
                query: Some(edge::ScoringQuery::Vector(edge::QueryEnum::Nearest(
                    edge::NamedQuery {
                        query: edge::VectorInternal::Dense(req.vector),
                        using: None,
                    },
                ))),
                filter: optional_filter_in(req.filter)?,
                score_threshold: req.score_threshold.map(OrderedFloat),
                limit: offset.saturating_add(limit),
                offset: 0,
                params: None,
                with_vector: with_vectors_in(req.with_vectors),
                with_payload: with_payload_in(req.with_payload, false)?,
            },
            offset,
            limit,
        };
        let result = self
            .with_collection(req.collection_name, move |c| c.read(|s| query.run(s)))
            .await?;
        Ok(Response::new(grpc::SearchResponse {
            result,
            time: secs(started),
            usage: None,
        }))
    }

    async fn query(
        &self,
        request: Request<grpc::QueryPoints>,
    ) -> Result<Response<grpc::QueryResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let name = req.collection_name.clone();
        let query = ShardQuery::from_grpc(req)?;
        let result = self
            .with_collection(name, move |c| c.read(|s| query.run(s)))
            .await?;
        Ok(Response::new(grpc::QueryResponse {
            result,
            time: secs(started),
            usage: None,
        }))
    }

    async fn query_batch(
        &self,
        request: Request<grpc::QueryBatchPoints>,
    ) -> Result<Response<grpc::QueryBatchResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let queries = req
            .query_points
            .into_iter()
            .map(|q| {
                if q.collection_name != req.collection_name && !q.collection_name.is_empty() {
                    return Err(Status::invalid_argument(
                        "Wrong input: every query of a batch must name the batch's collection",
                    ));
                }
                ShardQuery::from_grpc(q)
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let result = self
            .with_collection(req.collection_name, move |c| {
                c.read(|s| {
                    queries
                        .into_iter()
                        .map(|q| Ok(grpc::BatchResult { result: q.run(s)? }))
                        .collect::<Result<Vec<_>, Status>>()
                })
            })
            .await?;
        Ok(Response::new(grpc::QueryBatchResponse {
            result,
            time: secs(started),
            usage: None,
        }))
    }

    async fn update_vectors(
        &self,
        request: Request<grpc::UpdatePointVectors>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        if req.shard_key_selector.is_some() {
            return Err(unsupported("shard keys"));
        }
        let points = req
            .points
            .into_iter()
            .map(|p| {
                Ok(edge::PointVectorsPersisted {
                    id: point_id_in(p.id)?,
                    vector: vectors_in(p.vectors)?,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let update_filter = optional_filter_in(req.update_filter)?;
        self.with_collection(req.collection_name, move |c| {
            c.write(|shard| {
                let op = edge::UpdateOperation::VectorOperation(
                    edge::VectorOperations::UpdateVectors(edge::UpdateVectorsOp {
                        points,
                        update_filter,
                    }),
                );
                shard.update(op).map_err(map_edge_err)?;
                Ok(((), true))
            })
        })
        .await?;
        Ok(Response::new(completed(started)))
    }

    async fn create_vector_name(
        &self,
        request: Request<grpc::CreateVectorNameRequest>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        use grpc::create_vector_name_request::VectorConfig;
        let started = Instant::now();
        let req = request.into_inner();
        if req.vector_name.is_empty() {
            return Err(Status::invalid_argument(
                "Wrong input: the new vector needs a name",
            ));
        }
        let config = match req.vector_config {
            Some(VectorConfig::SparseConfig(c)) => {
                edge::VectorNameConfig::sparse(edge::SparseVectorConfig {
                    modifier: c.modifier.map(modifier_in).transpose()?,
                    datatype: None,
                })
            }
            Some(VectorConfig::DenseConfig(c)) => {
                if c.multivector_config.is_some() || c.datatype.is_some() {
                    return Err(unsupported("multivectors and datatypes"));
                }
                edge::VectorNameConfig::dense(edge::DenseVectorConfig {
                    size: usize::try_from(c.size).map_err(|_| {
                        Status::invalid_argument("Wrong input: vector size too large")
                    })?,
                    distance: distance_in(c.distance)?,
                    multivector_config: None,
                    datatype: None,
                })
            }
            None => {
                return Err(Status::invalid_argument(
                    "Wrong input: no vector configuration",
                ));
            }
        };
        let vector_name = req.vector_name;
        self.with_collection(req.collection_name, move |c| {
            c.write(|shard| {
                let config_has = |shard: &edge::EdgeShard| {
                    let config = shard.config();
                    config.vectors.contains_key(&vector_name)
                        || config.sparse_vectors.contains_key(&vector_name)
                };
                if config_has(shard) {
                    return Err(Status::invalid_argument(format!(
                        "Wrong input: Vector with name {vector_name} already exists"
                    )));
                }
                let op = edge::UpdateOperation::VectorNameOperation(
                    edge::VectorNameOperations::CreateVectorName(edge::CreateVectorName {
                        vector_name: vector_name.clone(),
                        config,
                    }),
                );
                shard.update(op).map_err(map_edge_err)?;
                Ok(((), true))
            })
        })
        .await?;
        Ok(Response::new(completed(started)))
    }

    async fn scroll(
        &self,
        request: Request<grpc::ScrollPoints>,
    ) -> Result<Response<grpc::ScrollResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        if req.order_by.is_some() {
            return Err(unsupported("scroll order_by"));
        }
        let scroll = edge::ScrollRequest {
            offset: req.offset.map(|id| point_id_in(Some(id))).transpose()?,
            limit: Some(limit_of(req.limit.map(u64::from))),
            filter: optional_filter_in(req.filter)?,
            with_payload: Some(with_payload_in(req.with_payload, true)?),
            with_vector: with_vectors_in(req.with_vectors),
            order_by: None,
        };
        let (records, next) = self
            .with_collection(req.collection_name, move |c| {
                c.read(|shard| shard.scroll(scroll).map_err(map_edge_err))
            })
            .await?;
        Ok(Response::new(grpc::ScrollResponse {
            next_page_offset: next.map(point_id_out),
            result: records.into_iter().map(record_out).collect(),
            time: secs(started),
            usage: None,
        }))
    }

    async fn count(
        &self,
        request: Request<grpc::CountPoints>,
    ) -> Result<Response<grpc::CountResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let count = edge::CountRequest {
            filter: optional_filter_in(req.filter)?,
            // The server counts exactly unless told otherwise.
            exact: req.exact.unwrap_or(true),
        };
        let n = self
            .with_collection(req.collection_name, move |c| {
                c.read(|shard| shard.count(count).map_err(map_edge_err))
            })
            .await?;
        Ok(Response::new(grpc::CountResponse {
            result: Some(grpc::CountResult { count: n as u64 }),
            time: secs(started),
            usage: None,
        }))
    }

    unimplemented_rpcs! {
        delete_vectors(DeletePointVectors) -> PointsOperationResponse;
        set_payload(SetPayloadPoints) -> PointsOperationResponse;
        overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
        delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
        clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
        delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
        search_batch(SearchBatchPoints) -> SearchBatchResponse;
        search_groups(SearchPointGroups) -> SearchGroupsResponse;
        recommend(RecommendPoints) -> RecommendResponse;
        recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
        recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
        discover(DiscoverPoints) -> DiscoverResponse;
        discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
        update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
        query_groups(QueryPointGroups) -> QueryGroupsResponse;
        facet(FacetCounts) -> FacetResponse;
        search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
        search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
    }
}

/// A `Search` or `Query` as the engine runs it, and the page of its answer to return.
struct ShardQuery {
    /// Asks for the top `offset + limit` (the offset is applied here, as the server applies
    /// it above its shards).
    request: edge::QueryRequest,
    offset: usize,
    limit: usize,
}

impl ShardQuery {
    fn from_grpc(req: grpc::QueryPoints) -> Result<Self, Status> {
        if req.lookup_from.is_some() {
            return Err(unsupported("lookup_from"));
        }
        if req.shard_key_selector.is_some() {
            return Err(unsupported("shard keys"));
        }
        let limit = limit_of(req.limit);
        let offset = req.offset.map_or(0, usize_of);
        let end = offset.saturating_add(limit);
        let prefetches = prefetches_in(req.prefetch)?;
        let query = query_in(req.query, req.using, end)?;
        if !prefetches.is_empty() && query.is_none() {
            return Err(Status::invalid_argument(
                "Wrong input: cannot have prefetches without a query",
            ));
        }
        Ok(Self {
            request: edge::QueryRequest {
                prefetches,
                query,
                filter: optional_filter_in(req.filter)?,
                score_threshold: req.score_threshold.map(OrderedFloat),
                limit: end,
                offset: 0,
                params: None,
                with_vector: with_vectors_in(req.with_vectors),
                with_payload: with_payload_in(req.with_payload, false)?,
            },
            offset,
            limit,
        })
    }

    fn run(self, shard: &edge::EdgeShard) -> Result<Vec<grpc::ScoredPoint>, Status> {
        Ok(shard
            .query(self.request)
            .map_err(map_edge_err)?
            .into_iter()
            .skip(self.offset)
            .take(self.limit)
            .map(|p| grpc::ScoredPoint {
                id: Some(point_id_out(p.id)),
                payload: payload_out(p.payload),
                score: p.score,
                version: p.version,
                vectors: vectors_out(p.vector),
                shard_key: None,
                order_value: None,
            })
            .collect())
    }
}

fn record_out(r: edge::Record) -> grpc::RetrievedPoint {
    grpc::RetrievedPoint {
        id: Some(point_id_out(r.id)),
        payload: payload_out(r.payload),
        vectors: vectors_out(r.vector),
        shard_key: None,
        order_value: None,
    }
}

/// `field_type` + `field_index_params` → the engine's index schema. Keyword parameters are
/// kept (`is_tenant`; `on_disk` is deprecated in the API and ignored); other types get their default parameters.
fn field_schema_in(
    field_type: Option<i32>,
    params: Option<grpc::PayloadIndexParams>,
) -> Result<edge::PayloadFieldSchema, Status> {
    use grpc::payload_index_params::IndexParams;
    if let Some(IndexParams::KeywordIndexParams(k)) = params.and_then(|p| p.index_params) {
        return Ok(edge::PayloadFieldSchema::FieldParams(
            edge::PayloadSchemaParams::Keyword(edge::KeywordIndexParams {
                is_tenant: k.is_tenant,
                ..edge::KeywordIndexParams::default()
            }),
        ));
    }
    let Some(field_type) = field_type else {
        return Err(Status::invalid_argument(
            "Wrong input: field_type is required",
        ));
    };
    use edge::PayloadSchemaType as T;
    let schema_type = match grpc::FieldType::try_from(field_type) {
        Ok(grpc::FieldType::Keyword) => T::Keyword,
        Ok(grpc::FieldType::Integer) => T::Integer,
        Ok(grpc::FieldType::Float) => T::Float,
        Ok(grpc::FieldType::Geo) => T::Geo,
        Ok(grpc::FieldType::Text) => T::Text,
        Ok(grpc::FieldType::Bool) => T::Bool,
        Ok(grpc::FieldType::Datetime) => T::Datetime,
        Ok(grpc::FieldType::Uuid) => T::Uuid,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "Wrong input: unknown field type {field_type}"
            )));
        }
    };
    Ok(edge::PayloadFieldSchema::FieldType(schema_type))
}
