//! `heimdex-store`: the one place Heimdex talks to a vector database.
//!
//! # Why a trait
//!
//! Heimdex runs in two shapes: a single self-contained binary (vectors kept in-process by
//! [Qdrant Edge](https://qdrant.tech/edge/), no server to operate) and a scaled-out deployment
//! against a Qdrant server over gRPC. The services (API, worker, projector) only ever see
//! [`VectorStore`]; [`open`] picks the adapter from [`StoreConfig`]. Both adapters pass the same
//! contract suite (`tests/contract.rs`), so behaviour that the services rely on — tenant
//! isolation, overwrite-by-id, ordering, error classes — cannot drift between them.
//!
//! # Rules every adapter keeps
//!
//! * **Tenant isolation.** Every read and delete is filtered by `org_id` inside the store query
//!   itself (never by post-filtering in Rust): a point of org A is invisible to org B through
//!   `get`, `search`, `count`, `scroll_ids`, `delete_points` and `delete_by_filter`.
//! * **Durability.** A write (`upsert`, `delete_points`, `delete_by_filter`) that returns `Ok`
//!   is durable: it survives a crash (`kill -9`) of the process right after. The embedded
//!   adapter has to work for this: Qdrant Edge 0.7 does *not* replay its WAL on load, so each
//!   write flushes the segments to disk before returning. The remote adapter writes with
//!   `wait=true`, so Qdrant has applied the operation before answering.
//! * **Validation before I/O.** Wrong vector dimension, non-finite components or payload
//!   `extra` keys that shadow a reserved field are rejected with
//!   [`StoreError::InvalidInput`] before the store is touched.
//! * **Cosine normalisation.** Collections use cosine distance, and Qdrant stores cosine
//!   vectors L2-normalised: a vector read back (`with_vector`) is `v / |v|`, not the input `v`
//!   (see [`l2_normalized`]). Scores are cosine similarities in `[-1, 1]`, higher is better.
//! * **Ids** are UUIDs used as-is (no version bits rewritten).
//! * **Two vectors per point.** The unnamed dense vector (cosine), and a BM25 sparse vector
//!   named [`KEYWORD_VECTOR`] computed from the payload's `text` by [`keyword`] (empty when
//!   there is no text), with Qdrant's IDF modifier. A search ranks by either or fuses both
//!   ([`SearchMode`]); fusion and MMR run in the engine's query API, planned once in
//!   [`query`] for both adapters.
//! * **Old collections are upgraded when opened** ([`upgrade`]): a collection made before
//!   keyword search (one unnamed dense vector) gains the sparse vector, and every point that
//!   lacks it gets it from its stored text. Nothing else is touched.

#![forbid(unsafe_code)]

pub mod collections;
mod embedded;
pub mod keyword;
pub mod meta;
mod metered;
pub mod query;
mod remote;
pub mod upgrade;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use heimdex_domain::{MetaFilter, Metadata};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use collections::{Collections, Named};
pub use embedded::EmbeddedStore;
pub use keyword::{KEYWORD_VECTOR, SparseVector};
pub use metered::Metered;
pub use query::{Fusion, Mmr, SearchMode};
pub use remote::RemoteStore;

/// Payload field names that are stored as first-class fields of [`Payload`]. They may not
/// appear in [`Payload::extra`].
pub const RESERVED_PAYLOAD_KEYS: [&str; 9] = [
    "org_id",
    "asset_id",
    "segment_id",
    "model",
    "model_ver",
    "text",
    "seq",
    "meta",
    "moved_from",
];

/// Payload key holding the client's metadata, an object: a client's key `k` is the payload
/// path `meta.k`, so no client key can reach (or shadow) a key of Heimdex's own. Not indexed:
/// the keys are the client's, unknown ahead of time (see [`meta`]).
pub const META_KEY: &str = "meta";

/// Payload key holding the stream sequence of the job that wrote the point (see
/// [`Payload::seq`]).
pub const SEQ_KEY: &str = "seq";

/// Payload key holding the tenant (keyword index, tenant-optimised).
pub const ORG_ID_KEY: &str = "org_id";
/// Payload key holding the asset id (keyword index).
pub const ASSET_ID_KEY: &str = "asset_id";
/// Payload key holding the segment id (filterable, not indexed).
pub const SEGMENT_ID_KEY: &str = "segment_id";
/// Payload key holding the model name (keyword index: every search filters on it).
pub const MODEL_KEY: &str = "model";
/// Payload key holding the model version (keyword index: every search filters on it).
pub const MODEL_VER_KEY: &str = "model_ver";
/// Payload key holding, in a point a model change re-embedded, the id the point has under the
/// model its job named (see [`Payload::moved_from`]; filterable, not indexed).
pub const MOVED_FROM_KEY: &str = "moved_from";

/// Where and how vectors are stored.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Collection name. For the embedded backend it is also a directory name, so it must match
    /// `[A-Za-z0-9_.-]+` (and not be `.` or `..`).
    pub collection: String,
    /// Dimension of every vector in the collection.
    pub vector_size: usize,
}

/// Which adapter [`open`] builds.
#[derive(Clone)]
pub enum Backend {
    /// In-process Qdrant Edge. The shard lives in `<path>/<collection>/` (created if absent),
    /// e.g. `path = <data_dir>/qdrant`.
    Embedded { path: PathBuf },
    /// A Qdrant server over gRPC, e.g. `http://qdrant:6334`.
    Remote {
        url: String,
        api_key: Option<SecretString>,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Embedded { path } => f.debug_struct("Embedded").field("path", path).finish(),
            Backend::Remote { url, api_key } => f
                .debug_struct("Remote")
                .field("url", url)
                .field("api_key", &api_key.as_ref().map(|_| "[REDACTED]"))
                .finish(),
        }
    }
}

/// Payload stored with every point. Serialised flat: the named fields plus everything in
/// `extra` (chunk metadata etc.) at the top level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub org_id: Uuid,
    pub asset_id: String,
    pub segment_id: String,
    pub model: String,
    pub model_ver: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The stream sequence of the job event that wrote the point: a delete at sequence `s`
    /// removes only points written before `s` ([`PointFilter::before_seq`]), so a write that
    /// comes after the delete in the log survives it whichever is applied first. Absent in
    /// points written before sequences were recorded (they count as older than any delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The client's metadata, under [`META_KEY`] (absent when empty).
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub meta: Metadata,
    /// In a collection a model change built, a point whose job named a model moved to another
    /// one: the id it has under that model (the id its job's result named, and a client may
    /// delete by). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<Uuid>,
    /// Free-form extra fields. Keys must not be one of [`RESERVED_PAYLOAD_KEYS`].
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A point to write.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPoint {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub payload: Payload,
}

/// A point read back by id.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPoint {
    pub id: Uuid,
    pub payload: Payload,
    /// The stored (L2-normalised) vector, when requested.
    pub vector: Option<Vec<f32>>,
}

/// A search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPoint {
    pub id: Uuid,
    /// Higher is better. What it measures depends on the search: cosine similarity (dense
    /// mode, and any search with MMR), the BM25 score (keyword mode) or the fused score
    /// (hybrid mode: RRF or DBSF).
    pub score: f32,
    pub payload: Payload,
    /// The stored (L2-normalised) dense vector, when requested.
    pub vector: Option<Vec<f32>>,
    /// Where the point ranks in each list, when the search asked to `explain`.
    pub explain: Option<Explanation>,
}

/// Why a point ranks where it does: its place in the dense and in the keyword ranking (each as
/// deep as a hybrid search's legs). `None` where the list was not run (no input for it) or the
/// point is not in it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Explanation {
    pub dense: Option<Ranked>,
    pub keyword: Option<Ranked>,
}

/// A point's score and rank (from 1) in one list.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ranked {
    pub score: f32,
    pub rank: usize,
}

/// Optional extra conditions, AND-ed with the mandatory `org_id` condition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PointFilter {
    pub asset_id: Option<String>,
    pub segment_id: Option<String>,
    /// Only points embedded by this model (vectors of different models are not comparable).
    pub model: Option<String>,
    /// Only points of this model version.
    pub model_ver: Option<String>,
    /// Only points re-embedded from this id by a model change ([`Payload::moved_from`]).
    pub moved_from: Option<Uuid>,
    /// Only points written before this stream sequence (or with none recorded): what a delete
    /// at that sequence may remove.
    pub before_seq: Option<u64>,
    /// Conditions on the client's metadata ([`meta`]): its `must` are AND-ed with the rest,
    /// its `must_not` exclude.
    pub meta: MetaFilter,
}

/// A search, always scoped to one org. See [`SearchMode`] for what each mode needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchRequest {
    pub org_id: Uuid,
    /// The dense query vector: needed by `dense` and `hybrid`, and by MMR.
    pub vector: Option<Vec<f32>>,
    /// The query text: needed by `keyword` and by `hybrid`'s keyword side.
    pub text: Option<String>,
    pub mode: SearchMode,
    /// How `hybrid` merges its lists (ignored by the other modes).
    pub fusion: Fusion,
    /// Re-rank for diversity.
    pub mmr: Option<Mmr>,
    /// Fill [`ScoredPoint::explain`].
    pub explain: bool,
    pub limit: usize,
    pub offset: usize,
    pub filter: PointFilter,
    /// Only return hits with `score >= score_threshold`, compared with the score the hits
    /// carry (see [`ScoredPoint::score`]).
    pub score_threshold: Option<f32>,
    pub with_vector: bool,
}

impl SearchRequest {
    /// Nearest neighbours of `vector` by cosine similarity, the first `limit`.
    pub fn dense(org_id: Uuid, vector: Vec<f32>, limit: usize) -> Self {
        Self {
            org_id,
            vector: Some(vector),
            text: None,
            mode: SearchMode::Dense,
            fusion: Fusion::default(),
            mmr: None,
            explain: false,
            limit,
            offset: 0,
            filter: PointFilter::default(),
            score_threshold: None,
            with_vector: false,
        }
    }

    /// Best BM25 matches of `text`, the first `limit`.
    pub fn keyword(org_id: Uuid, text: impl Into<String>, limit: usize) -> Self {
        Self {
            vector: None,
            text: Some(text.into()),
            mode: SearchMode::Keyword,
            ..Self::dense(org_id, Vec::new(), limit)
        }
    }

    /// `vector` and `text` fused (reciprocal rank fusion, k = 60), the first `limit`.
    pub fn hybrid(org_id: Uuid, vector: Vec<f32>, text: impl Into<String>, limit: usize) -> Self {
        Self {
            text: Some(text.into()),
            mode: SearchMode::Hybrid,
            ..Self::dense(org_id, vector, limit)
        }
    }
}

/// Which adapter a store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    Embedded,
    Remote,
}

/// A cosine vector collection with per-org isolation. See the crate docs for the rules every
/// implementation keeps.
///
/// Vectors are stored L2-normalised (Qdrant does this for cosine distance): a vector read back
/// with `with_vector` equals [`l2_normalized`] of what was written, up to float rounding.
#[async_trait::async_trait]
pub trait VectorStore: Send + Sync + 'static {
    fn kind(&self) -> StoreKind;

    fn vector_size(&self) -> usize;

    /// Create the collection and its payload indexes if missing. Idempotent; safe to call
    /// repeatedly and concurrently (also from several processes for the remote adapter).
    async fn ensure_collection(&self) -> Result<(), StoreError>;

    /// Insert or overwrite (same id) a batch of points. Validates every point first
    /// (dimension, finite values, reserved payload keys); durable when `Ok`.
    async fn upsert(&self, points: Vec<NewPoint>) -> Result<(), StoreError>;

    /// The point with `id`, or `None` if it does not exist *or belongs to another org*.
    async fn get(
        &self,
        org_id: Uuid,
        id: Uuid,
        with_vector: bool,
    ) -> Result<Option<StoredPoint>, StoreError>;

    /// `req.org_id`'s points ranked as `req.mode` says, best first.
    async fn search(&self, req: SearchRequest) -> Result<Vec<ScoredPoint>, StoreError>;

    /// Exact number of points of `org_id` matching `filter`.
    async fn count(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError>;

    /// Ids of all points of `org_id` matching `filter` (pages internally; order unspecified).
    async fn scroll_ids(&self, org_id: Uuid, filter: PointFilter) -> Result<Vec<Uuid>, StoreError>;

    /// The points matching `filter` with their payloads (no vectors), in no fixed order.
    async fn scroll_points(
        &self,
        org_id: Uuid,
        filter: PointFilter,
    ) -> Result<Vec<StoredPoint>, StoreError>;

    /// Delete those of `ids` that belong to `org_id`; returns how many existed. Idempotent.
    async fn delete_points(&self, org_id: Uuid, ids: &[Uuid]) -> Result<u64, StoreError>;

    /// Delete every point of `org_id` matching `filter` (e.g. a whole asset); returns how many
    /// existed. An empty filter deletes all of the org's points.
    async fn delete_by_filter(&self, org_id: Uuid, filter: PointFilter) -> Result<u64, StoreError>;

    /// Cheap health check.
    async fn probe(&self) -> Result<(), StoreError>;

    /// Sets the gauges that say what the store holds, read from it now; the metrics sampler
    /// calls this every few seconds. The embedded store sets its points and indexed vectors;
    /// a remote collection is shared and its server reports it, so by default nothing.
    async fn sample_gauges(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl fmt::Debug for dyn VectorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorStore")
            .field("kind", &self.kind())
            .field("vector_size", &self.vector_size())
            .finish_non_exhaustive()
    }
}

/// Errors of a [`VectorStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Transient: the store cannot be reached or timed out. Retry later.
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (e.g. wrong dimension). Never retry.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Anything else.
    #[error("vector store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Open (or create) the configured store.
///
/// * Embedded: creates `<path>/<collection>/` and the shard if absent, else loads it; fails
///   with [`StoreError::InvalidInput`] if an existing shard has another vector size or
///   distance.
/// * Remote: builds a lazily-connecting gRPC client; no request is sent (call
///   [`VectorStore::ensure_collection`] / [`VectorStore::probe`] for that).
///
/// Either comes [`Metered`]: the duration of every operation is recorded.
pub async fn open(config: StoreConfig) -> Result<Arc<dyn VectorStore>, StoreError> {
    if config.vector_size == 0 {
        return Err(StoreError::InvalidInput("vector_size must be > 0".into()));
    }
    if config.collection.is_empty() {
        return Err(StoreError::InvalidInput("collection name is empty".into()));
    }
    match config.backend {
        Backend::Embedded { path } => {
            let store = EmbeddedStore::open(path, config.collection, config.vector_size).await?;
            Ok(Arc::new(Metered::new(store)))
        }
        Backend::Remote { url, api_key } => {
            let store = RemoteStore::connect(&url, api_key, config.collection, config.vector_size)?;
            Ok(Arc::new(Metered::new(store)))
        }
    }
}

/// `v / |v|` — what Qdrant stores for a cosine collection. A zero vector is returned unchanged.
pub fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm < f32::EPSILON {
        return v.to_vec();
    }
    v.iter().map(|x| x / norm).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the adapters.

fn check_vector(vector: &[f32], vector_size: usize, what: &str) -> Result<(), StoreError> {
    if vector.len() != vector_size {
        return Err(StoreError::InvalidInput(format!(
            "{what}: vector has dimension {}, collection expects {vector_size}",
            vector.len()
        )));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(StoreError::InvalidInput(format!(
            "{what}: vector component {i} is not finite"
        )));
    }
    Ok(())
}

/// A point checked and ready to write: its payload as a JSON object and its keyword vector.
struct PreparedPoint {
    payload: serde_json::Map<String, serde_json::Value>,
    keyword: SparseVector,
}

/// Validate a batch, turn each payload into a JSON object and compute each keyword vector.
fn prepare_points(
    points: &[NewPoint],
    vector_size: usize,
) -> Result<Vec<PreparedPoint>, StoreError> {
    points
        .iter()
        .map(|p| {
            check_vector(&p.vector, vector_size, &format!("point {}", p.id))?;
            Ok(PreparedPoint {
                payload: payload_to_json(&p.payload)?,
                keyword: keyword::document(p.payload.text.as_deref().unwrap_or("")),
            })
        })
        .collect()
}

/// What [`finish_hits`] needs of a hit: its id and score, and a place for its explanation. A
/// [`ScoredPoint`], or only the id and score when the payloads are read after the page is
/// known (the embedded store).
trait Hit {
    fn id(&self) -> Uuid;
    fn score(&self) -> f32;
    fn explain(&mut self, explanation: Explanation);
}

impl Hit for ScoredPoint {
    fn id(&self) -> Uuid {
        self.id
    }

    fn score(&self) -> f32 {
        self.score
    }

    fn explain(&mut self, explanation: Explanation) {
        self.explain = Some(explanation);
    }
}

/// Orders equal scores by point id (see [`query::TIE_SLACK`]), drops the first `offset` hits
/// (the engine answers from the top) and fills in the explanation from the legs' own rankings.
fn finish_hits<H: Hit>(
    mut hits: Vec<H>,
    plan: &query::Plan,
    legs: Vec<(query::LegKind, Vec<(Uuid, f32)>)>,
) -> Vec<H> {
    if plan.ordered_by_score {
        hits.sort_by(|a, b| b.score().total_cmp(&a.score()).then(a.id().cmp(&b.id())));
    }
    let mut hits: Vec<H> = hits
        .into_iter()
        .skip(plan.offset)
        .take(plan.limit)
        .collect();
    if plan.explain.is_empty() {
        return hits;
    }
    // Each leg's rank is its place in the engine's list: the rank fusion used. Equal scores
    // within a leg are in the engine's order, which two engines may choose differently.
    let ranks = |list: &[(Uuid, f32)]| -> std::collections::HashMap<Uuid, Ranked> {
        list.iter()
            .enumerate()
            .map(|(i, (id, score))| {
                (
                    *id,
                    Ranked {
                        score: *score,
                        rank: i + 1,
                    },
                )
            })
            .collect()
    };
    let mut dense = None;
    let mut keyword = None;
    for (kind, list) in &legs {
        match kind {
            query::LegKind::Dense => dense = Some(ranks(list)),
            query::LegKind::Keyword => keyword = Some(ranks(list)),
        }
    }
    for hit in &mut hits {
        let id = hit.id();
        hit.explain(Explanation {
            dense: dense.as_ref().and_then(|m| m.get(&id).copied()),
            keyword: keyword.as_ref().and_then(|m| m.get(&id).copied()),
        });
    }
    hits
}

fn payload_to_json(
    payload: &Payload,
) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
    if let Some(key) = payload
        .extra
        .keys()
        .find(|k| RESERVED_PAYLOAD_KEYS.contains(&k.as_str()))
    {
        // Serialising would let `extra` shadow the real field (e.g. `org_id`): refuse.
        return Err(StoreError::InvalidInput(format!(
            "payload extra field `{key}` shadows a reserved field"
        )));
    }
    match serde_json::to_value(payload) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(StoreError::Internal(format!(
            "payload serialised to a non-object: {other}"
        ))),
        Err(e) => Err(StoreError::InvalidInput(format!("payload: {e}"))),
    }
}

fn payload_from_json(
    id: Uuid,
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<Payload, StoreError> {
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| StoreError::Internal(format!("point {id} has a malformed payload: {e}")))
}

fn check_collection_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "collection name {name:?} must match [A-Za-z0-9_.-]+"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        Payload {
            org_id: Uuid::from_u128(1),
            asset_id: "a".into(),
            segment_id: "s".into(),
            model: "m".into(),
            model_ver: "1".into(),
            text: None,
            seq: None,
            meta: Metadata::default(),
            moved_from: None,
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn debug_redacts_api_key() {
        let cfg = StoreConfig {
            backend: Backend::Remote {
                url: "http://q:6334".into(),
                api_key: Some(SecretString::from("hunter2-secret")),
            },
            collection: "c".into(),
            vector_size: 3,
        };
        let s = format!("{cfg:?}");
        assert!(!s.contains("hunter2-secret"), "{s}");
        assert!(s.contains("REDACTED"), "{s}");
        assert!(s.contains("http://q:6334"), "{s}");
    }

    #[test]
    fn payload_roundtrip_flattens_extra() {
        let mut p = payload();
        p.text = Some("hello".into());
        p.extra
            .insert("chunk".into(), serde_json::json!({"start": 1, "end": 2.5}));
        let json = payload_to_json(&p).expect("serialise");
        assert_eq!(
            json.get("chunk"),
            Some(&serde_json::json!({"start": 1, "end": 2.5}))
        );
        assert_eq!(
            json.get("org_id"),
            Some(&serde_json::json!(Uuid::from_u128(1)))
        );
        let back = payload_from_json(Uuid::nil(), json).expect("deserialise");
        assert_eq!(back, p);
    }

    #[test]
    fn reserved_extra_key_rejected() {
        let mut p = payload();
        p.extra.insert(
            "org_id".into(),
            serde_json::json!(Uuid::from_u128(2).to_string()),
        );
        assert!(matches!(
            payload_to_json(&p),
            Err(StoreError::InvalidInput(_))
        ));
    }

    #[test]
    fn vector_checks() {
        assert!(check_vector(&[1.0, 2.0], 2, "x").is_ok());
        assert!(matches!(
            check_vector(&[1.0], 2, "x"),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(matches!(
            check_vector(&[1.0, f32::NAN], 2, "x"),
            Err(StoreError::InvalidInput(_))
        ));
    }

    #[test]
    fn collection_names() {
        assert!(check_collection_name("heimdex_chunks-v1.2").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(check_collection_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normalisation() {
        let n = l2_normalized(&[3.0, 4.0]);
        assert!((n[0] - 0.6).abs() < 1e-6 && (n[1] - 0.8).abs() < 1e-6);
        assert_eq!(l2_normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn retryable() {
        assert!(StoreError::Unavailable("x".into()).is_retryable());
        assert!(!StoreError::InvalidInput("x".into()).is_retryable());
        assert!(!StoreError::Internal("x".into()).is_retryable());
    }
}
