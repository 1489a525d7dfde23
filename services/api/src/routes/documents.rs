//! `/documents/{asset_id}`: a document is the unit a client manages. `PUT` sends a version
//! (one `document` job, which replaces what the asset held), `GET` reads back its chunks,
//! `DELETE` removes it. `POST /vectors/documents` is the same `PUT` with the asset in the body.

use std::sync::Arc;

use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::Serialize;
use uuid::Uuid;

use heimdex_domain::ids::{self, Target};
use heimdex_domain::jobs::{DocumentChunk, DocumentParams, JobSpec};
use heimdex_domain::{AssetId, Metadata, SegmentId};
use heimdex_embed::ChunkOptions;
use heimdex_store::PointFilter;

use crate::AppState;
use crate::auth::{BearerAuth, Principal};
use crate::metadata::{MetadataBody, parse_metadata};
use crate::problem::{ApiError, ProblemResponse};
use crate::routes::ingest::{
    ChunkJob, ChunkRequest, DocumentAccepted, MAX_DOCUMENT_CHARS, MAX_SEGMENTS, chunk_options,
    point_of,
};
use crate::routes::parse_ident;
use crate::routes::vectors::{DeleteResponse, delete_asset};
use crate::strict::{Known, StrictString, StrictText};

/// Most bytes of chunk text one document version may carry. The version travels whole in its
/// job's `requested` event, and events stay well below the stream's 1 MiB message limit: with
/// the default chunking (32 tokens of overlap in 256) this is about 670,000 characters of
/// English.
pub const MAX_DOCUMENT_CHUNK_BYTES: usize = 768 * 1024;

#[derive(Tags)]
enum Tag {
    /// Documents: whole texts, replaced as a whole.
    Documents,
}

pub struct DocumentsApi {
    pub state: Arc<AppState>,
}

/// `PUT /documents/{asset_id}` body.
#[derive(Object, Debug)]
pub struct PutDocument {
    /// The document's text: not blank, at most 1,000,000 characters.
    pub text: StrictText,
    /// Model name (`minilm-l6-v2`, the default, or `mock`).
    pub model: Option<StrictString>,
    pub chunk: Option<ChunkRequest>,
    /// Stored in every chunk's payload under `meta` (searchable with `filter.metadata`).
    /// Part of the version: changed metadata is a new version, which rewrites every chunk.
    pub metadata: Option<MetadataBody>,
}

/// One stored chunk of a document.
#[derive(Object, Debug, Serialize)]
pub struct StoredChunk {
    pub segment_id: String,
    pub point_id: Uuid,
    #[oai(skip_serializing_if_is_none)]
    pub chunk_index: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub char_start: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub char_end: Option<u64>,
    pub model: String,
    pub model_ver: String,
    #[oai(skip_serializing_if_is_none)]
    pub text: Option<String>,
    /// The chunk's metadata, when it has any.
    #[oai(skip_serializing_if_is_none)]
    pub metadata: Option<serde_json::Value>,
}

/// `GET /documents/{asset_id}` answer: the document's points as stored, in chunk order.
#[derive(Object, Debug)]
pub struct DocumentView {
    pub asset_id: String,
    pub chunks: Vec<StoredChunk>,
}

#[derive(ApiResponse)]
pub enum PutResponse {
    /// Accepted: the document job's `requested` event is stored. Wait for it with
    /// `GET /jobs/{job_id}`.
    #[oai(status = 202)]
    Accepted(Json<DocumentAccepted>),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    #[oai(status = 200)]
    Ok(Json<DocumentView>),
}

#[OpenApi(tag = "Tag::Documents")]
impl DocumentsApi {
    /// Send a document (a new version replaces the old one)
    ///
    /// Chunks `text` (see `POST /vectors/documents`) and queues one `document` job for the
    /// whole version. The job writes the chunks that are new or changed, leaves the ones
    /// whose text, index, offsets and metadata are unchanged untouched, and deletes every
    /// stored point of the asset the new version lacks; its result counts `written`, `kept`
    /// and `deleted`. The version is a hash of the text, the options and the metadata:
    /// sending the same again is the same job, unless the document was deleted since, when it
    /// is written again. `metadata` (your own keys, see `filter.metadata` in search) is stored
    /// in every chunk's payload under `meta`; a wrong shape is 422 with the reason. The
    /// document is whole when the job is `SUCCEEDED` (`GET /jobs/{job_id}`). At most
    /// 1,000,000 characters, 1,000 chunks, 768 KiB of chunk text (413) and 8 MiB of body.
    #[oai(path = "/documents/:asset_id", method = "put")]
    async fn put(
        &self,
        auth: BearerAuth,
        asset_id: Path<String>,
        body: Json<Known<PutDocument>>,
    ) -> Result<PutResponse, ProblemResponse> {
        let PutDocument {
            text,
            model,
            chunk,
            metadata,
        } = body.0.0;
        let accepted = submit_document(
            &self.state,
            &auth.0,
            asset_id.0,
            text.0,
            model.map(|m| m.0),
            chunk.unwrap_or_default(),
            metadata,
        )
        .await?;
        Ok(PutResponse::Accepted(Json(accepted)))
    }

    /// Read a document's stored chunks
    ///
    /// The asset's points in the vector store (of every model), ordered by chunk index then
    /// segment id: what search sees. `404` when the caller's organization has none.
    #[oai(path = "/documents/:asset_id", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        asset_id: Path<String>,
    ) -> Result<GetResponse, ProblemResponse> {
        let asset: AssetId = parse_ident("asset_id", asset_id.0)?;
        let filter = PointFilter {
            asset_id: Some(asset.to_string()),
            ..PointFilter::default()
        };
        let points = self
            .state
            .store
            .scroll_points(auth.0.org_id, filter)
            .await
            .map_err(ApiError::from)?;
        if points.is_empty() {
            return Err(ApiError::NotFound(format!("document {asset} not found")).into());
        }
        let number = |payload: &heimdex_store::Payload, key: &str| {
            payload.extra.get(key).and_then(serde_json::Value::as_u64)
        };
        let mut chunks: Vec<StoredChunk> = points
            .into_iter()
            .map(|point| StoredChunk {
                chunk_index: number(&point.payload, "chunk_index"),
                char_start: number(&point.payload, "char_start"),
                char_end: number(&point.payload, "char_end"),
                segment_id: point.payload.segment_id,
                point_id: point.id,
                model: point.payload.model,
                model_ver: point.payload.model_ver,
                text: point.payload.text,
                metadata: (!point.payload.meta.is_empty()).then(|| point.payload.meta.to_json()),
            })
            .collect();
        chunks.sort_by(|a, b| {
            (a.chunk_index.is_none(), a.chunk_index, &a.segment_id).cmp(&(
                b.chunk_index.is_none(),
                b.chunk_index,
                &b.segment_id,
            ))
        });
        Ok(GetResponse::Ok(Json(DocumentView {
            asset_id: asset.into_inner(),
            chunks,
        })))
    }

    /// Delete a document
    ///
    /// The same as `DELETE /assets/{asset_id}`: one job deletes every point of the asset.
    /// Sending the same document again afterwards writes it again.
    #[oai(path = "/documents/:asset_id", method = "delete")]
    async fn delete(
        &self,
        auth: BearerAuth,
        asset_id: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> Result<DeleteResponse, ProblemResponse> {
        delete_asset(&self.state, &auth, asset_id.0, idempotency_key.0).await
    }
}

/// The options a version hashes besides its text.
#[derive(Serialize)]
struct VersionOptions<'a> {
    model: &'a str,
    model_ver: &'a str,
    max_tokens: usize,
    overlap: usize,
    /// Absent when empty, so a document without metadata keeps the version it had before
    /// metadata existed.
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    metadata: &'a Metadata,
}

/// Validates and chunks a document, and submits its `document` job.
pub(crate) async fn submit_document(
    state: &AppState,
    principal: &Principal,
    asset_id: String,
    text: String,
    model: Option<String>,
    chunk: ChunkRequest,
    metadata: Option<MetadataBody>,
) -> Result<DocumentAccepted, ApiError> {
    let asset_id: AssetId = parse_ident("asset_id", asset_id)?;
    let metadata = parse_metadata("metadata", metadata)?;
    let chars = text.chars().count();
    if chars > MAX_DOCUMENT_CHARS {
        return Err(ApiError::Validation(format!(
            "text is {chars} characters; a document may have at most {MAX_DOCUMENT_CHARS}"
        )));
    }
    if text.trim().is_empty() {
        return Err(ApiError::Validation(
            "text is empty or whitespace-only".into(),
        ));
    }
    let options = chunk_options(chunk)?;
    let embedder = state.models.get(model.as_deref())?;
    let options = ChunkOptions {
        max_tokens: options
            .max_tokens
            .min(embedder.max_tokens() - embedder.special_tokens()),
        ..options
    };
    let version = ids::document_version(
        &text,
        &VersionOptions {
            model: embedder.model(),
            model_ver: embedder.model_ver(),
            max_tokens: options.max_tokens,
            overlap: options.overlap,
            metadata: &metadata,
        },
    );

    let document = Arc::new(text);
    let chunks = {
        let (embedder, document) = (embedder.clone(), document.clone());
        tokio::task::spawn_blocking(move || {
            let spans = embedder.token_spans(&document)?;
            Ok::<_, heimdex_embed::EmbedError>(heimdex_embed::chunk(&document, &spans, options))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    };
    if chunks.len() > MAX_SEGMENTS {
        return Err(ApiError::Validation(format!(
            "the document makes {} chunks; at most {MAX_SEGMENTS} per call: split it into \
             several assets or raise chunk.max_tokens",
            chunks.len()
        )));
    }
    let chunks: Vec<DocumentChunk> = chunks
        .iter()
        .map(|c| DocumentChunk {
            text: c.text(&document).to_owned(),
            char_start: c.char_start,
            char_end: c.char_end,
        })
        .collect();
    let bytes: usize = chunks.iter().map(|c| c.text.len()).sum();
    if bytes > MAX_DOCUMENT_CHUNK_BYTES {
        return Err(ApiError::TooLarge(format!(
            "the document's chunks hold {bytes} bytes of text; one document may hold at most \
             {MAX_DOCUMENT_CHUNK_BYTES}: split it into several assets"
        )));
    }
    let generation = state
        .submitter
        .generation(principal, &[Target::Asset(asset_id.to_string())])
        .await?;
    let views: Vec<ChunkJob> = chunks
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let segment_id: SegmentId = DocumentParams::segment_id(index);
            ChunkJob {
                point_id: point_of(principal, &*embedder, &asset_id, &segment_id),
                segment_id: segment_id.into_inner(),
                job_id: Uuid::nil(),
                chunk_index: u32::try_from(index).unwrap_or(u32::MAX),
                char_start: c.char_start as u64,
                char_end: c.char_end as u64,
            }
        })
        .collect();
    let spec = JobSpec::Document(DocumentParams {
        asset_id: asset_id.clone(),
        version: version.clone(),
        model: embedder.model().to_owned(),
        model_ver: embedder.model_ver().to_owned(),
        generation,
        chunks,
        metadata,
    });
    let submitted = state.submitter.submit(principal, spec).await?;
    Ok(DocumentAccepted {
        asset_id: asset_id.into_inner(),
        job_id: submitted.job_id,
        version,
        model: embedder.model().to_owned(),
        model_ver: embedder.model_ver().to_owned(),
        chunks: views
            .into_iter()
            .map(|view| ChunkJob {
                job_id: submitted.job_id,
                ..view
            })
            .collect(),
    })
}
