//! Text in: `POST /vectors/embed`, `/vectors/embed/batch` and `/vectors/documents`. Each segment
//! becomes one `embedding` job (its own idempotency key); the worker embeds and upserts it.

use std::collections::HashMap;
use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use crate::auth::Principal;
use heimdex_domain::ids::Target;
use heimdex_domain::jobs::{EmbedParams, JobSpec};
use heimdex_domain::{AssetId, Metadata, SegmentId, ids};
use heimdex_embed::{ChunkOptions, Embedder};

use crate::AppState;
use crate::auth::BearerAuth;
use crate::metadata::{MetadataBody, parse_metadata};
use crate::problem::{ApiError, ProblemResponse};
use crate::routes::parse_ident;
use crate::strict::{Known, StrictString, StrictText};

/// Most characters in one segment's text. The model reads at most its token limit (256 for
/// `minilm-l6-v2`, about 1,000 characters of English) and truncates the rest; send long text to
/// `/vectors/documents`, which chunks it.
pub const MAX_SEGMENT_CHARS: usize = 16_384;
/// Most segments in one `/vectors/embed/batch` call, and most chunks one document may make.
pub const MAX_SEGMENTS: usize = 1_000;
/// Most characters in one document.
pub const MAX_DOCUMENT_CHARS: usize = 1_000_000;

#[derive(Tags)]
enum Tag {
    /// Embedding jobs: text in, vectors stored.
    Ingest,
}

pub struct IngestApi {
    pub state: Arc<AppState>,
}

/// `POST /vectors/embed` body.
#[derive(Object, Debug)]
pub struct EmbedRequest {
    /// Asset the segment belongs to: 1–256 characters, no control characters.
    pub asset_id: StrictString,
    /// Segment within the asset: 1–256 characters, no control characters.
    pub segment_id: StrictString,
    /// Text to embed: not blank, at most 16,384 characters.
    pub text: StrictText,
    /// Model name (`minilm-l6-v2`, the default, or `mock`).
    pub model: Option<StrictString>,
    pub metadata: Option<MetadataBody>,
}

/// One segment of a batch.
#[derive(Object, Debug)]
pub struct SegmentInput {
    /// 1–256 characters, no control characters; unique within the batch.
    pub segment_id: StrictString,
    /// Not blank, at most 16,384 characters.
    pub text: StrictText,
    pub metadata: Option<MetadataBody>,
}

/// `POST /vectors/embed/batch` body: at most 1,000 segments and 8 MiB.
#[derive(Object, Debug)]
pub struct EmbedBatchRequest {
    pub asset_id: StrictString,
    pub segments: Vec<SegmentInput>,
    pub model: Option<StrictString>,
}

/// How to cut a document.
#[derive(Object, Debug, Default)]
pub struct ChunkRequest {
    /// Most tokens per chunk, 8–256 (default 256). The model's special tokens count: with
    /// `minilm-l6-v2` a chunk holds at most 254 tokens of text, so nothing is truncated.
    pub max_tokens: Option<u32>,
    /// Tokens shared by neighbouring chunks, less than half of `max_tokens` (default 32).
    pub overlap: Option<u32>,
}

/// `POST /vectors/documents` body: at most 1,000,000 characters of text, 1,000 chunks, 8 MiB.
#[derive(Object, Debug)]
pub struct DocumentRequest {
    pub asset_id: StrictString,
    /// The document. Split into chunks at sentence boundaries where possible; chunk `n` is
    /// stored as segment `chunk-<n>`.
    pub text: StrictText,
    pub model: Option<StrictString>,
    pub chunk: Option<ChunkRequest>,
    /// Stored in every chunk's payload; part of the version (see `PUT /documents/{asset_id}`).
    pub metadata: Option<MetadataBody>,
}

/// One accepted embedding job.
#[derive(Object, Debug)]
pub struct SegmentJob {
    pub segment_id: String,
    pub job_id: Uuid,
    /// Where the vector will be stored (deterministic: org, asset, segment, model, version).
    pub point_id: Uuid,
}

/// `POST /vectors/embed` answer.
#[derive(Object, Debug)]
pub struct EmbedAccepted {
    pub job_id: Uuid,
    pub point_id: Uuid,
    pub asset_id: String,
    pub segment_id: String,
    pub model: String,
    pub model_ver: String,
}

/// `POST /vectors/embed/batch` answer: one job per segment, in request order.
#[derive(Object, Debug)]
pub struct BatchAccepted {
    pub asset_id: String,
    pub model: String,
    pub model_ver: String,
    pub jobs: Vec<SegmentJob>,
}

/// One chunk of a document and its job.
#[derive(Object, Debug)]
pub struct ChunkJob {
    pub segment_id: String,
    pub job_id: Uuid,
    pub point_id: Uuid,
    pub chunk_index: u32,
    /// Offsets into the document in Unicode scalar values (Python `str` indices).
    pub char_start: u64,
    pub char_end: u64,
}

/// `POST /vectors/documents` and `PUT /documents/{asset_id}` answer.
#[derive(Object, Debug)]
pub struct DocumentAccepted {
    pub asset_id: String,
    /// The document job: one job writes the whole version (every chunk's `job_id` is this).
    pub job_id: Uuid,
    /// `hex(sha256)` of the text and the options: the same content and options are the same
    /// version, and (unless the document was deleted since) the same job.
    pub version: String,
    pub model: String,
    pub model_ver: String,
    pub chunks: Vec<ChunkJob>,
}

#[derive(ApiResponse)]
pub enum EmbedResponse {
    /// Accepted: the job's `requested` event is stored. Poll `GET /jobs/{job_id}`.
    #[oai(status = 202)]
    Accepted(Json<EmbedAccepted>),
}

#[derive(ApiResponse)]
pub enum BatchResponse {
    /// Accepted: every segment's `requested` event is stored.
    #[oai(status = 202)]
    Accepted(Json<BatchAccepted>),
}

#[derive(ApiResponse)]
pub enum DocumentResponse {
    /// Accepted: the document job's `requested` event is stored.
    #[oai(status = 202)]
    Accepted(Json<DocumentAccepted>),
}

#[OpenApi(tag = "Tag::Ingest")]
impl IngestApi {
    /// Embed one segment
    ///
    /// Queues a job that embeds `text` with the model and stores the vector at the segment's
    /// point, with `metadata` (if any) in its payload under `meta`. Idempotent: the same text
    /// and metadata for the same segment and model name the same job; changed text or metadata
    /// is a new job that overwrites the point. Empty text, text over 16,384 characters, bad
    /// metadata or an unknown model get 422 at once; a model whose weights are not installed
    /// gets 503.
    #[oai(path = "/vectors/embed", method = "post")]
    async fn embed(
        &self,
        auth: BearerAuth,
        body: Json<Known<EmbedRequest>>,
    ) -> Result<EmbedResponse, ProblemResponse> {
        let EmbedRequest {
            asset_id,
            segment_id,
            text,
            model,
            metadata,
        } = body.0.0;
        let asset_id: AssetId = parse_ident("asset_id", asset_id.0)?;
        let segment_id: SegmentId = parse_ident("segment_id", segment_id.0)?;
        validate_text("text", &text.0)?;
        let metadata = parse_metadata("metadata", metadata)?;
        let (embedder, _) = self.state.model(model.as_ref().map(|m| m.0.as_str()))?;
        let point_id = point_of(&auth.0, &*embedder, &asset_id, &segment_id);
        let generation = self
            .state
            .submitter
            .generation(&auth.0, &segment_targets(&asset_id, point_id))
            .await?;
        let spec = embed_spec(
            &*embedder,
            &asset_id,
            &segment_id,
            text.0,
            metadata,
            generation,
        );
        let submitted = self.state.submitter.submit(&auth.0, spec).await?;
        Ok(EmbedResponse::Accepted(Json(EmbedAccepted {
            job_id: submitted.job_id,
            point_id,
            asset_id: asset_id.into_inner(),
            segment_id: segment_id.into_inner(),
            model: embedder.model().to_owned(),
            model_ver: embedder.model_ver().to_owned(),
        })))
    }

    /// Embed many segments of one asset
    ///
    /// One job per segment, each idempotent on its own and with its own `metadata` (see
    /// `POST /vectors/embed`). Up to 1,000 segments and 8 MiB per call (413 beyond the size,
    /// 422 beyond the count); segment ids must be unique within the call. Either every segment is accepted or the call fails
    /// (503): retrying it is safe.
    #[oai(path = "/vectors/embed/batch", method = "post")]
    async fn embed_batch(
        &self,
        auth: BearerAuth,
        body: Json<Known<EmbedBatchRequest>>,
    ) -> Result<BatchResponse, ProblemResponse> {
        let EmbedBatchRequest {
            asset_id,
            segments,
            model,
        } = body.0.0;
        let asset_id: AssetId = parse_ident("asset_id", asset_id.0)?;
        if segments.is_empty() {
            return Err(ApiError::Validation("segments must not be empty".into()).into());
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(ApiError::Validation(format!(
                "at most {MAX_SEGMENTS} segments per call, got {}",
                segments.len()
            ))
            .into());
        }
        let mut seen = HashMap::with_capacity(segments.len());
        let mut segment_ids: Vec<SegmentId> = Vec::with_capacity(segments.len());
        let mut metadata: Vec<Metadata> = Vec::with_capacity(segments.len());
        for (i, segment) in segments.iter().enumerate() {
            segment_ids.push(parse_ident(
                &format!("segments[{i}].segment_id"),
                segment.segment_id.0.clone(),
            )?);
            validate_text(&format!("segments[{i}].text"), &segment.text.0)?;
            metadata.push(parse_metadata(
                &format!("segments[{i}].metadata"),
                segment.metadata.clone(),
            )?);
            if let Some(first) = seen.insert(segment.segment_id.0.as_str(), i) {
                return Err(ApiError::Validation(format!(
                    "segments[{i}].segment_id repeats segments[{first}].segment_id"
                ))
                .into());
            }
        }
        let (embedder, _) = self.state.model(model.as_ref().map(|m| m.0.as_str()))?;
        let point_ids: Vec<Uuid> = segment_ids
            .iter()
            .map(|segment_id| point_of(&auth.0, &*embedder, &asset_id, segment_id))
            .collect();
        let (submitter, principal, asset) = (&self.state.submitter, &auth.0, &asset_id);
        let generations = futures::future::try_join_all(point_ids.iter().map(|point_id| {
            let targets = segment_targets(asset, *point_id);
            async move { submitter.generation(principal, &targets).await }
        }))
        .await?;
        let mut specs = Vec::with_capacity(segments.len());
        let mut jobs = Vec::with_capacity(segments.len());
        for ((((SegmentInput { text, .. }, segment_id), point_id), generation), metadata) in
            segments
                .into_iter()
                .zip(segment_ids)
                .zip(point_ids)
                .zip(generations)
                .zip(metadata)
        {
            specs.push(embed_spec(
                &*embedder,
                &asset_id,
                &segment_id,
                text.0,
                metadata,
                generation,
            ));
            jobs.push((segment_id.into_inner(), point_id));
        }
        let submitted = self.state.submitter.submit_many(&auth.0, specs).await?;
        Ok(BatchResponse::Accepted(Json(BatchAccepted {
            asset_id: asset_id.into_inner(),
            model: embedder.model().to_owned(),
            model_ver: embedder.model_ver().to_owned(),
            jobs: jobs
                .into_iter()
                .zip(submitted)
                .map(|((segment_id, point_id), s)| SegmentJob {
                    segment_id,
                    job_id: s.job_id,
                    point_id,
                })
                .collect(),
        })))
    }

    /// Chunk, embed and store a document (the same as `PUT /documents/{asset_id}`)
    ///
    /// Splits `text` into chunks of at most `chunk.max_tokens` model tokens (default 256) with
    /// `chunk.overlap` tokens shared between neighbours (default 32), cutting at sentence
    /// boundaries where it can, and queues one `document` job that stores chunk `n` as segment
    /// `chunk-<n>`. Each point's payload carries `chunk_index`, `char_start` and `char_end`,
    /// and the document's `metadata` under `meta`.
    /// Sending the asset again replaces it: new and changed chunks are written, identical ones
    /// kept, and the chunks the new version lacks deleted. See `PUT /documents/{asset_id}`
    /// for the limits.
    #[oai(path = "/vectors/documents", method = "post")]
    async fn document(
        &self,
        auth: BearerAuth,
        body: Json<Known<DocumentRequest>>,
    ) -> Result<DocumentResponse, ProblemResponse> {
        let DocumentRequest {
            asset_id,
            text,
            model,
            chunk,
            metadata,
        } = body.0.0;
        let accepted = crate::routes::documents::submit_document(
            &self.state,
            &auth.0,
            asset_id.0,
            text.0,
            model.map(|m| m.0),
            chunk.unwrap_or_default(),
            metadata,
        )
        .await?;
        Ok(DocumentResponse::Accepted(Json(accepted)))
    }
}

fn embed_spec(
    embedder: &dyn Embedder,
    asset_id: &AssetId,
    segment_id: &SegmentId,
    text: String,
    metadata: Metadata,
    generation: u64,
) -> JobSpec {
    JobSpec::Embedding(EmbedParams {
        asset_id: asset_id.clone(),
        segment_id: segment_id.clone(),
        model: embedder.model().to_owned(),
        model_ver: embedder.model_ver().to_owned(),
        text,
        chunk: None,
        generation,
        metadata,
    })
}

/// What a delete of which makes a segment's write a new job: its asset and its point.
fn segment_targets(asset_id: &AssetId, point_id: Uuid) -> [Target; 2] {
    [Target::Asset(asset_id.to_string()), Target::Point(point_id)]
}

pub(crate) fn point_of(
    principal: &Principal,
    embedder: &dyn Embedder,
    asset_id: &AssetId,
    segment_id: &SegmentId,
) -> Uuid {
    ids::point_id(
        principal.org_id,
        asset_id.as_str(),
        segment_id.as_str(),
        embedder.model(),
        embedder.model_ver(),
    )
}

/// Segment text: not blank, at most [`MAX_SEGMENT_CHARS`] characters.
pub fn validate_text(field: &str, text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::Validation(format!(
            "{field} is empty or whitespace-only"
        )));
    }
    let chars = text.chars().count();
    if chars > MAX_SEGMENT_CHARS {
        return Err(ApiError::Validation(format!(
            "{field} is {chars} characters; at most {MAX_SEGMENT_CHARS} (use /vectors/documents \
             for long text)"
        )));
    }
    Ok(())
}

pub(crate) fn chunk_options(req: ChunkRequest) -> Result<ChunkOptions, ApiError> {
    let defaults = ChunkOptions::default();
    let max_tokens = req.max_tokens.map_or(defaults.max_tokens, |v| v as usize);
    let overlap = req.overlap.map_or(defaults.overlap, |v| v as usize);
    if !(8..=256).contains(&max_tokens) {
        return Err(ApiError::Validation(format!(
            "chunk.max_tokens must be 8 to 256, got {max_tokens}"
        )));
    }
    if overlap * 2 >= max_tokens {
        return Err(ApiError::Validation(format!(
            "chunk.overlap must be less than half of chunk.max_tokens ({max_tokens}), got {overlap}"
        )));
    }
    Ok(ChunkOptions {
        max_tokens,
        overlap,
    })
}
