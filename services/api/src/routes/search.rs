//! `POST /vectors/search`: tenant-scoped search by text or by vector, ranked by dense vectors,
//! by BM25 keywords, or both fused (hybrid, the default), optionally diversified (MMR) and
//! explained. Reads the vector store directly; no event is involved. The ranking itself runs in
//! the vector store's query API (`heimdex_store::query`); this route checks the request and
//! embeds query text when the search needs a vector.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use tracing::Instrument;
use uuid::Uuid;

use heimdex_domain::{AssetId, SegmentId};
use heimdex_embed::Priority;
use heimdex_store::query::{DEFAULT_DIVERSITY, DEFAULT_RRF_K, MAX_MMR_CANDIDATES, MIN_DEPTH};
use heimdex_store::{Fusion, Mmr, PointFilter, Ranked, SearchMode, SearchRequest as StoreSearch};

use crate::AppState;
use crate::auth::BearerAuth;
use crate::metadata::{MetaFilterBody, parse_filter};
use crate::problem::{ApiError, ProblemResponse};
use crate::routes::parse_ident;
use crate::strict::{Known, StrictString, StrictText};

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

/// Narrows a search: to one asset and/or segment, and by metadata. Every condition is AND-ed
/// with the others and with the caller's organization.
#[derive(Object, Debug, Default)]
pub struct SearchFilter {
    pub asset_id: Option<StrictString>,
    pub segment_id: Option<StrictString>,
    /// Conditions on the points' `metadata`: equality (`eq`), any-of (`any`), numeric ranges
    /// (`range`), and negation (`must_not`). For example `{"must": [{"key": "lang", "eq":
    /// "en"}, {"key": "year", "range": {"gte": 2000, "lt": 2010}}], "must_not": [{"key":
    /// "draft", "eq": true}]}`. A key no point has is no error: `eq`, `any` and `range` on it
    /// match nothing, `must_not` everything. Metadata keys have no index: the filter is checked
    /// against each candidate's payload.
    pub metadata: Option<MetaFilterBody>,
}

/// How `hybrid` merges the dense and the keyword ranking.
#[derive(Object, Debug, Default)]
pub struct FusionBody {
    /// `rrf` (reciprocal rank fusion, the default) or `dbsf` (distribution-based score fusion).
    pub method: Option<StrictString>,
    /// RRF only: a point scores `Σ 1 / (k + rank / weight)` over the lists it is in, `rank`
    /// from 1. At least 1; default 60.
    pub k: Option<i64>,
    /// RRF only: each list's weight (default 1 each; 0 mutes a list).
    pub weights: Option<FusionWeights>,
}

/// RRF weights per list.
#[derive(Object, Debug, Default)]
pub struct FusionWeights {
    pub dense: Option<f32>,
    pub keyword: Option<f32>,
}

/// Maximal marginal relevance: re-rank the mode's best `candidates` so each next result is
/// relevant to the query (dense cosine) but unlike the results before it.
#[derive(Object, Debug, Default)]
pub struct MmrBody {
    /// 0 = relevance only, 1 = diversity only; default 0.5.
    pub diversity: Option<f32>,
    /// How many of the mode's best results are re-ranked: at least `offset + limit`, at most
    /// 1,000; default `max(100, offset + limit)`.
    pub candidates: Option<i64>,
}

/// `POST /vectors/search` body: exactly one of `query` and `vector`.
#[derive(Object, Debug)]
pub struct SearchBody {
    /// Text to search for (embedded with `model` for the dense side): not blank, at most 4,096
    /// characters.
    pub query: Option<StrictText>,
    /// A query vector of the model's dimension (384 for `minilm-l6-v2`). A vector can only be
    /// searched densely: `hybrid` with a vector is `dense`, and `keyword` needs `query`.
    pub vector: Option<Vec<f32>>,
    /// `hybrid` (default): the dense and the keyword ranking fused (see `fusion`); `dense`:
    /// cosine similarity of the model's vectors; `keyword`: BM25 over the points' text.
    pub mode: Option<StrictString>,
    /// How `hybrid` fuses (default: RRF, k = 60, equal weights).
    pub fusion: Option<FusionBody>,
    /// Diversify the results (needs the dense side: a `keyword` search embeds its query too).
    pub mmr: Option<MmrBody>,
    /// Give each result its rank and score in the dense and in the keyword ranking.
    pub explain: Option<bool>,
    /// Results to return, 1–100 (default 10).
    pub limit: Option<i64>,
    /// Results to skip, for paging (default 0; `offset + limit` at most 10,000).
    pub offset: Option<i64>,
    /// Model whose points are searched (default `minilm-l6-v2`): vectors of different models
    /// are never compared.
    pub model: Option<StrictString>,
    pub filter: Option<SearchFilter>,
    /// Only results whose `score` is at least this. The score is what the mode ranks by:
    /// cosine similarity (`dense`, and every search with `mmr`), the BM25 score (`keyword`:
    /// unbounded, grows with rare matching terms), or the fused score (`hybrid`: RRF scores are
    /// at most the sum of `1 / (k + 1/weight)`, about 0.033 by default; DBSF about 0 to 2).
    pub score_threshold: Option<f32>,
    /// Include each result's stored vector.
    pub with_vector: Option<bool>,
}

/// One hit.
#[derive(Object, Debug)]
pub struct SearchHit {
    pub point_id: Uuid,
    /// Higher is better; what it measures depends on the mode (see `score_threshold`).
    pub score: f32,
    pub payload: serde_json::Value,
    #[oai(skip_serializing_if_is_none)]
    pub vector: Option<Vec<f32>>,
    /// With `explain`: the hit's place in each ranking.
    #[oai(skip_serializing_if_is_none)]
    pub explain: Option<HitExplain>,
}

/// Where a hit ranks in the dense and in the keyword ranking (each as deep as a hybrid
/// search's own: at least 100). `rank` and `score` are `null` where the hit is not in that
/// ranking, or the ranking was not run (a `vector` search has no keyword ranking).
#[derive(Object, Debug)]
pub struct HitExplain {
    pub dense: ListRank,
    pub keyword: ListRank,
}

/// A rank (from 1) and a score in one ranking.
#[derive(Object, Debug)]
pub struct ListRank {
    pub rank: Option<u64>,
    pub score: Option<f32>,
}

impl From<Option<Ranked>> for ListRank {
    fn from(r: Option<Ranked>) -> Self {
        Self {
            rank: r.map(|r| r.rank as u64),
            score: r.map(|r| r.score),
        }
    }
}

/// Results, best first.
#[derive(Object, Debug)]
pub struct SearchResults {
    pub model: String,
    pub model_ver: String,
    /// The mode that ran: the one asked for, except `hybrid` with a `vector`, which is `dense`.
    pub mode: String,
    pub results: Vec<SearchHit>,
}

/// The ranking options of a request, checked.
struct Ranking {
    mode: SearchMode,
    fusion: Fusion,
    mmr: Option<Mmr>,
    explain: bool,
}

fn parse_mode(mode: Option<&str>) -> Result<SearchMode, ApiError> {
    match mode {
        None | Some("hybrid") => Ok(SearchMode::Hybrid),
        Some("dense") => Ok(SearchMode::Dense),
        Some("keyword") => Ok(SearchMode::Keyword),
        Some(other) => Err(ApiError::Validation(format!(
            "mode must be `hybrid`, `dense` or `keyword`, got `{other}`"
        ))),
    }
}

fn parse_fusion(fusion: Option<FusionBody>) -> Result<Fusion, ApiError> {
    let fusion = fusion.unwrap_or_default();
    match fusion.method.as_ref().map(|m| m.0.as_str()) {
        None | Some("rrf") => {
            let k = fusion.k.unwrap_or(i64::from(DEFAULT_RRF_K));
            let k = u32::try_from(k)
                .ok()
                .filter(|k| (1..=1_000_000).contains(k))
                .ok_or_else(|| {
                    ApiError::Validation(format!("fusion.k must be 1 to 1,000,000, got {k}"))
                })?;
            let weights = fusion.weights.unwrap_or_default();
            let weight = |name: &str, w: Option<f32>| -> Result<f32, ApiError> {
                let w = w.unwrap_or(1.0);
                if w.is_finite() && (0.0..=1_000.0).contains(&w) {
                    Ok(w)
                } else {
                    Err(ApiError::Validation(format!(
                        "fusion.weights.{name} must be 0 to 1,000, got {w}"
                    )))
                }
            };
            let dense_weight = weight("dense", weights.dense)?;
            let keyword_weight = weight("keyword", weights.keyword)?;
            if dense_weight == 0.0 && keyword_weight == 0.0 {
                return Err(ApiError::Validation(
                    "fusion.weights may not both be 0".into(),
                ));
            }
            Ok(Fusion::Rrf {
                k,
                dense_weight,
                keyword_weight,
            })
        }
        Some("dbsf") => {
            if fusion.k.is_some() || fusion.weights.is_some() {
                return Err(ApiError::Validation(
                    "fusion.k and fusion.weights apply to `rrf` only, not `dbsf`".into(),
                ));
            }
            Ok(Fusion::Dbsf)
        }
        Some(other) => Err(ApiError::Validation(format!(
            "fusion.method must be `rrf` or `dbsf`, got `{other}`"
        ))),
    }
}

fn parse_mmr(mmr: Option<MmrBody>, end: usize) -> Result<Option<Mmr>, ApiError> {
    let Some(mmr) = mmr else {
        return Ok(None);
    };
    let diversity = mmr.diversity.unwrap_or(DEFAULT_DIVERSITY);
    if !(0.0..=1.0).contains(&diversity) {
        return Err(ApiError::Validation(format!(
            "mmr.diversity must be in 0..1, got {diversity}"
        )));
    }
    let candidates = mmr.candidates.unwrap_or(end.max(MIN_DEPTH) as i64);
    if candidates < end as i64 || candidates > MAX_MMR_CANDIDATES as i64 {
        return Err(ApiError::Validation(format!(
            "mmr.candidates must be at least offset + limit ({end}) and at most \
             {MAX_MMR_CANDIDATES}, got {candidates}"
        )));
    }
    Ok(Some(Mmr {
        diversity,
        candidates: candidates as usize,
    }))
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
    /// By `query` text or by `vector`, never both; ranked by `mode`: `hybrid` (default; dense
    /// and BM25 keyword rankings fused by reciprocal rank fusion, k = 60), `dense` or
    /// `keyword`. Optionally diversified (`mmr`) and explained (`explain`). Only the caller's
    /// organization's points of the given model and version are searched, optionally narrowed
    /// by `filter`. Results are best first; equal scores are ordered by point id.
    #[oai(path = "/vectors/search", method = "post")]
    async fn search(
        &self,
        auth: BearerAuth,
        body: Json<Known<SearchBody>>,
    ) -> Result<SearchResponse, ProblemResponse> {
        let body = body.0.0;
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
        let meta = parse_filter("filter.metadata", filter.metadata)?;
        let ranking = Ranking {
            mode: parse_mode(body.mode.as_ref().map(|m| m.0.as_str()))?,
            fusion: parse_fusion(body.fusion)?,
            mmr: parse_mmr(body.mmr, (offset + limit) as usize)?,
            explain: body.explain.unwrap_or(false),
        };
        // The model and the collection come from one snapshot of the index state: a switch
        // meanwhile moves the next search, never half of this one.
        let (embedder, live) = self
            .state
            .model(body.model.as_ref().map(|m| m.0.as_str()))?;

        let started = std::time::Instant::now();
        let query_kind = if body.vector.is_some() {
            "vector"
        } else {
            "text"
        };
        let (vector, text) = match (body.query, body.vector) {
            (Some(_), Some(_)) => {
                return Err(
                    ApiError::Validation("give either query or vector, not both".into()).into(),
                );
            }
            (None, None) => {
                return Err(ApiError::Validation("give a query or a vector".into()).into());
            }
            (None, Some(vector)) => {
                if ranking.mode == SearchMode::Keyword {
                    return Err(ApiError::Validation(
                        "mode `keyword` ranks by the words of `query`; a `vector` alone cannot \
                         be searched by keyword"
                            .into(),
                    )
                    .into());
                }
                if vector.len() != embedder.dim() {
                    return Err(ApiError::Validation(format!(
                        "vector has dimension {}; model `{}` uses {}",
                        vector.len(),
                        embedder.model(),
                        embedder.dim()
                    ))
                    .into());
                }
                (Some(vector), None)
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
                // The dense side needs the query's vector: dense and hybrid ranking, MMR, and
                // the dense rank of `explain`. A plain keyword search skips the model. The
                // vector comes through the process's one embedding queue, ahead of any ingest
                // batch: it waits for at most the step of a forward pass already running.
                let needs_vector =
                    ranking.mode != SearchMode::Keyword || ranking.mmr.is_some() || ranking.explain;
                let vector = if needs_vector {
                    let vector = self
                        .state
                        .embeddings
                        .embed(embedder.clone(), vec![query.clone()], Priority::Query)
                        .instrument(tracing::info_span!("embed.query", model = embedder.model()))
                        .await
                        .map_err(ApiError::internal)?
                        .pop()
                        .ok_or_else(|| ApiError::internal("the embedder returned no vector"))?;
                    Some(vector)
                } else {
                    None
                };
                (vector, Some(query))
            }
        };

        let request = StoreSearch {
            org_id: auth.0.org_id,
            vector,
            text,
            mode: ranking.mode,
            fusion: ranking.fusion,
            mmr: ranking.mmr,
            explain: ranking.explain,
            limit: limit as usize,
            offset: offset as usize,
            filter: PointFilter {
                asset_id: filter.asset_id.map(|a| a.0),
                segment_id: filter.segment_id.map(|s| s.0),
                model: Some(embedder.model().to_owned()),
                model_ver: Some(embedder.model_ver().to_owned()),
                moved_from: None,
                before_seq: None,
                meta,
            },
            score_threshold: body.score_threshold,
            with_vector: body.with_vector.unwrap_or(false),
        };
        let mode = request.effective_mode();
        let hits = live.store.search(request).await.map_err(ApiError::from)?;
        metrics::histogram!(
            "heimdex_search_duration_seconds",
            "mode" => mode.as_str(),
            "query" => query_kind,
        )
        .record(started.elapsed().as_secs_f64());
        let mut results = Vec::with_capacity(hits.len());
        for hit in hits {
            results.push(SearchHit {
                point_id: hit.id,
                score: hit.score,
                payload: serde_json::to_value(&hit.payload).map_err(ApiError::internal)?,
                vector: hit.vector,
                explain: hit.explain.map(|e| HitExplain {
                    dense: e.dense.into(),
                    keyword: e.keyword.into(),
                }),
            });
        }
        Ok(SearchResponse::Ok(Json(SearchResults {
            model: embedder.model().to_owned(),
            model_ver: embedder.model_ver().to_owned(),
            mode: mode.as_str().to_owned(),
            results,
        })))
    }
}
