//! `POST /vectors/search`: tenant-scoped semantic search, by text (embedded here with the
//! model) or by vector. Reads the vector store directly; no event is involved.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use heimdex_domain::{AssetId, SegmentId};
use heimdex_store::{PointFilter, SearchRequest as StoreSearch};

use crate::AppState;
use crate::auth::BearerAuth;
use crate::problem::{ApiError, ProblemResponse};
use crate::routes::parse_ident;
use crate::strict::{StrictString, StrictText};

/// Most characters in a text query.
pub const MAX_QUERY_CHARS: usize = 4_096;
/// Deepest page: `offset + limit` may not exceed this.
pub const MAX_DEPTH: u32 = 10_000;

#[derive(Tags)]
enum Tag {
    /// Semantic search over the caller's points.
    Search,
}

pub struct SearchApi {
    pub state: Arc<AppState>,
}

/// Narrows a search to one asset and/or segment.
#[derive(Object, Debug, Default)]
pub struct SearchFilter {
    pub asset_id: Option<StrictString>,
    pub segment_id: Option<StrictString>,
}

/// `POST /vectors/search` body: exactly one of `query` and `vector`.
#[derive(Object, Debug)]
pub struct SearchBody {
    /// Text to search for (embedded with `model`): not blank, at most 4,096 characters.
    pub query: Option<StrictText>,
    /// A query vector of the model's dimension (384 for `minilm-l6-v2`).
    pub vector: Option<Vec<f32>>,
    /// Results to return, 1–100 (default 10).
    pub limit: Option<i64>,
    /// Results to skip, for paging (default 0; `offset + limit` at most 10,000).
    pub offset: Option<i64>,
    /// Model whose points are searched (default `minilm-l6-v2`): vectors of different models
    /// are never compared.
    pub model: Option<StrictString>,
    pub filter: Option<SearchFilter>,
    /// Only results with at least this cosine similarity.
    pub score_threshold: Option<f32>,
    /// Include each result's stored vector.
    pub with_vector: Option<bool>,
}

/// One hit.
#[derive(Object, Debug)]
pub struct SearchHit {
    pub point_id: Uuid,
    /// Cosine similarity, higher is better.
    pub score: f32,
    pub payload: serde_json::Value,
    #[oai(skip_serializing_if_is_none)]
    pub vector: Option<Vec<f32>>,
}

/// Results, best first.
#[derive(Object, Debug)]
pub struct SearchResults {
    pub model: String,
    pub model_ver: String,
    pub results: Vec<SearchHit>,
}

#[derive(ApiResponse)]
pub enum SearchResponse {
    #[oai(status = 200)]
    Ok(Json<SearchResults>),
}

#[OpenApi(tag = "Tag::Search")]
impl SearchApi {
    /// Search the caller's points
    ///
    /// By `query` text (embedded with the model) or by `vector`, never both. Only the caller's
    /// organization's points of the given model and version are searched, optionally narrowed
    /// by `filter`. Results are best first.
    #[oai(path = "/vectors/search", method = "post")]
    async fn search(
        &self,
        auth: BearerAuth,
        body: Json<SearchBody>,
    ) -> Result<SearchResponse, ProblemResponse> {
        let body = body.0;
        let limit = body.limit.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(
                ApiError::Validation(format!("limit must be 1 to 100, got {limit}")).into(),
            );
        }
        let offset = body.offset.unwrap_or(0);
        if offset < 0 || offset + limit > i64::from(MAX_DEPTH) {
            return Err(ApiError::Validation(format!(
                "offset must be 0 or more with offset + limit at most {MAX_DEPTH}, got {offset}"
            ))
            .into());
        }
        if let Some(threshold) = body.score_threshold
            && !threshold.is_finite()
        {
            return Err(ApiError::Validation("score_threshold must be a number".into()).into());
        }
        let filter = body.filter.unwrap_or_default();
        if let Some(asset_id) = &filter.asset_id {
            parse_ident::<AssetId>("filter.asset_id", asset_id.0.clone())?;
        }
        if let Some(segment_id) = &filter.segment_id {
            parse_ident::<SegmentId>("filter.segment_id", segment_id.0.clone())?;
        }
        let embedder = self
            .state
            .models
            .get(body.model.as_ref().map(|m| m.0.as_str()))?;

        let vector = match (body.query, body.vector) {
            (Some(_), Some(_)) => {
                return Err(
                    ApiError::Validation("give either query or vector, not both".into()).into(),
                );
            }
            (None, None) => {
                return Err(ApiError::Validation("give a query or a vector".into()).into());
            }
            (None, Some(vector)) => {
                if vector.len() != embedder.dim() {
                    return Err(ApiError::Validation(format!(
                        "vector has dimension {}; model `{}` uses {}",
                        vector.len(),
                        embedder.model(),
                        embedder.dim()
                    ))
                    .into());
                }
                vector
            }
            (Some(query), None) => {
                let query = query.0;
                if query.trim().is_empty() {
                    return Err(
                        ApiError::Validation("query is empty or whitespace-only".into()).into(),
                    );
                }
                let chars = query.chars().count();
                if chars > MAX_QUERY_CHARS {
                    return Err(ApiError::Validation(format!(
                        "query is {chars} characters; at most {MAX_QUERY_CHARS}"
                    ))
                    .into());
                }
                let embedder = embedder.clone();
                let span = tracing::info_span!("embed.query", model = embedder.model());
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    embedder.embed(&[query.as_str()])
                })
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?
                .pop()
                .ok_or_else(|| ApiError::internal("the embedder returned no vector"))?
            }
        };

        let hits = self
            .state
            .store
            .search(StoreSearch {
                org_id: auth.0.org_id,
                vector,
                limit: limit as usize,
                offset: offset as usize,
                filter: PointFilter {
                    asset_id: filter.asset_id.map(|a| a.0),
                    segment_id: filter.segment_id.map(|s| s.0),
                    model: Some(embedder.model().to_owned()),
                    model_ver: Some(embedder.model_ver().to_owned()),
                },
                score_threshold: body.score_threshold,
                with_vector: body.with_vector.unwrap_or(false),
            })
            .await
            .map_err(ApiError::from)?;
        let mut results = Vec::with_capacity(hits.len());
        for hit in hits {
            results.push(SearchHit {
                point_id: hit.id,
                score: hit.score,
                payload: serde_json::to_value(&hit.payload).map_err(ApiError::internal)?,
                vector: hit.vector,
            });
        }
        Ok(SearchResponse::Ok(Json(SearchResults {
            model: embedder.model().to_owned(),
            model_ver: embedder.model_ver().to_owned(),
            results,
        })))
    }
}
