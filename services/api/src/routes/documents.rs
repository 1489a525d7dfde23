//! `/documents`: a document is the unit a client manages. `PUT /documents/{asset_id}` sends a
//! version (one `document` job, which replaces what the asset held), `GET` reads back its record
//! and chunks, `DELETE` removes it, and `GET /documents` lists the organization's documents
//! from the document projection. `POST /vectors/documents` is the same `PUT` with the asset in
//! the body.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiRequest, ApiResponse, Enum, Object, OpenApi, Tags};
use serde::Serialize;
use uuid::Uuid;

use heimdex_domain::documents::DocumentRecord;
use heimdex_domain::ids::{self, Target};
use heimdex_domain::jobs::{DocumentChunk, DocumentParams, JobSpec};
use heimdex_domain::jobs::{JobStatus, Status};
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
use crate::routes::jobs::JobErrorView;
use crate::routes::parse_ident;
use crate::routes::upload::{FileForm, FileUpload, submit_file};
use crate::routes::vectors::{DeleteResponse, delete_asset};
use crate::strict::{Known, StrictString, StrictText};

/// Most bytes of chunk text one document version may carry. The version travels whole in its
/// job's `requested` event, and events stay well below the stream's 1 MiB message limit: with
/// the default chunking (32 tokens of overlap in 256) this is about 670,000 characters of
/// English.
pub const MAX_DOCUMENT_CHUNK_BYTES: usize = 768 * 1024;
/// Documents per page of `GET /documents` when `limit` is not given, and the most it may ask
/// for.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1_000;
/// Cursors of `GET /documents` start with this version tag (inside the base64).
const CURSOR_V1: &str = "documents-v1:";

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

/// The options of `PUT /documents/{asset_id}` given as query parameters.
struct QueryOptions {
    model: Option<String>,
    metadata: Option<String>,
    max_tokens: Option<u32>,
    overlap: Option<u32>,
    name: Option<String>,
}

/// `PUT /documents/{asset_id}` body: the text as JSON, or a file.
#[derive(ApiRequest)]
pub enum DocumentBody {
    /// The document's text and options.
    Json(Json<Known<PutDocument>>),
    /// A file as a multipart form.
    Form(FileForm),
    /// A file as the raw body, sent with its media type (see the operation).
    File(Binary<Vec<u8>>),
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
    /// For a PDF: the page the chunk starts on (1-based), and the page it ends on when that
    /// is another.
    #[oai(skip_serializing_if_is_none)]
    pub page: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub page_end: Option<u64>,
    /// For HTML, Markdown and DOCX: the nearest heading before the chunk.
    #[oai(skip_serializing_if_is_none)]
    pub section: Option<String>,
    pub model: String,
    pub model_ver: String,
    #[oai(skip_serializing_if_is_none)]
    pub text: Option<String>,
    /// The chunk's metadata, when it has any.
    #[oai(skip_serializing_if_is_none)]
    pub metadata: Option<serde_json::Value>,
}

/// Where a document stands: the state of the job of its latest version.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum DocumentState {
    /// The latest version is queued or being written; search may still show the one before.
    Pending,
    /// The latest version is what search sees.
    Indexed,
    /// The latest version could not be written (`error` says why); search shows what was
    /// there before it.
    Failed,
}

/// A document as the document projection records it.
#[derive(Object, Debug)]
pub struct DocumentSummary {
    pub asset_id: String,
    /// The latest version's hash (of its text, options and metadata).
    pub version: String,
    pub state: DocumentState,
    /// Why the latest version failed (`state` = `failed`).
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<JobErrorView>,
    /// Chunks of the latest version (for a file: once its job has chunked it, else absent).
    #[oai(skip_serializing_if_is_none)]
    pub chunks: Option<u64>,
    /// Characters of its text (for a file: of the text extracted, once indexed).
    #[oai(skip_serializing_if_is_none)]
    pub chars: Option<u64>,
    pub model: String,
    pub model_ver: String,
    #[oai(skip_serializing_if_is_none)]
    pub metadata: Option<serde_json::Value>,
    /// Where the text came from: `text` (sent as JSON) or `file` (uploaded).
    pub source: String,
    /// The uploaded file, for `source` = `file`.
    #[oai(skip_serializing_if_is_none)]
    pub file: Option<FileView>,
    /// The job of the latest version: `GET /jobs/{job_id}`.
    pub job_id: Uuid,
    /// When the latest version was sent, or its job last changed.
    pub updated_at: DateTime<Utc>,
}

impl DocumentSummary {
    /// The summary of a live record whose latest job is `job` (`None`: not projected yet).
    fn new(record: DocumentRecord, job: Option<JobStatus>) -> Option<Self> {
        let version = record.version?;
        // A file's chunks are counted by its job.
        let from_result = job
            .as_ref()
            .and_then(|job| job.result.as_ref())
            .map(|result| result.point_ids.len() as u64);
        let (state, error, updated_at) = match job {
            Some(job) => {
                let state = match job.status {
                    Status::Queued | Status::Running => DocumentState::Pending,
                    Status::Succeeded => DocumentState::Indexed,
                    Status::Failed => DocumentState::Failed,
                };
                let error = job.error.filter(|_| state == DocumentState::Failed);
                (
                    state,
                    error.map(JobErrorView::from),
                    job.updated_at.max(record.updated_at),
                )
            }
            None => (DocumentState::Pending, None, record.updated_at),
        };
        Some(Self {
            asset_id: record.asset_id.into_inner(),
            version: version.version,
            state,
            error,
            chunks: version.chunks.map(|n| n as u64).or(from_result),
            chars: version.chars.map(|n| n as u64),
            model: version.model,
            model_ver: version.model_ver,
            metadata: (!version.metadata.is_empty()).then(|| version.metadata.to_json()),
            source: version.source,
            file: version.file.map(|file| FileView {
                format: file.format,
                name: file.name,
                size: file.size,
                sha256: file.sha256,
                max_tokens: file.max_tokens.map(|n| n as u64),
                overlap: file.overlap.map(|n| n as u64),
            }),
            job_id: record.job_id,
            updated_at,
        })
    }
}

/// An uploaded file as a document version records it.
#[derive(Object, Debug)]
pub struct FileView {
    /// `pdf`, `docx`, `html`, `markdown` or `text`.
    pub format: String,
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// Bytes.
    pub size: u64,
    /// `hex(sha256)` of the bytes: what `heimdex ingest --sync` compares.
    pub sha256: String,
    /// Most tokens per chunk it was indexed with (the asked-for value, capped by the model's
    /// window less its special tokens).
    #[oai(skip_serializing_if_is_none)]
    pub max_tokens: Option<u64>,
    /// Tokens neighbouring chunks share.
    #[oai(skip_serializing_if_is_none)]
    pub overlap: Option<u64>,
}

/// `GET /documents/{asset_id}` answer: the document's record and its points as stored, in
/// chunk order.
#[derive(Object, Debug)]
pub struct DocumentView {
    pub asset_id: String,
    /// The document's record; absent for an asset written only as single segments
    /// (`POST /vectors/embed`), and while its delete is pending.
    #[oai(skip_serializing_if_is_none)]
    pub document: Option<DocumentSummary>,
    pub chunks: Vec<StoredChunk>,
}

/// One page of `GET /documents`.
#[derive(Object, Debug)]
pub struct DocumentPage {
    /// In the order the projector recorded each document's latest version, oldest first.
    pub documents: Vec<DocumentSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<DocumentPage>),
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
    /// List documents
    ///
    /// The caller's organization's documents (sent with `PUT /documents/{asset_id}` or
    /// `POST /vectors/documents`, not yet deleted), from the document projection, paginated
    /// with an opaque cursor, in the order the projector recorded each document's latest
    /// version, oldest first: a document sent again during a walk is listed again, with its new version, on a later
    /// page, and none is missed. `state` is that of the latest version's job. A page costs what
    /// it holds, however many documents the organization has; it may hold fewer than `limit`
    /// (documents that changed while it was read are left out, to be listed later) and still
    /// have a `next_cursor`. A `limit` outside 1..=1000, or a cursor this server did not issue
    /// for this listing, get 400.
    #[oai(path = "/documents", method = "get")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Documents per page, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page; absent for the first page.
        cursor: Query<Option<String>>,
    ) -> Result<ListResponse, ProblemResponse> {
        let from = cursor
            .0
            .as_deref()
            .map(decode_cursor)
            .transpose()?
            .unwrap_or(1);
        let limit = limit
            .0
            .unwrap_or(DEFAULT_LIST_LIMIT)
            .clamp(1, MAX_LIST_LIMIT) as usize;
        let org_id = auth.0.org_id;
        let page = self
            .state
            .documents
            .list(org_id, limit, from)
            .await
            .map_err(ApiError::from)?;
        let documents = futures::future::try_join_all(
            page.documents
                .into_iter()
                .map(|record| self.state.summary(org_id, record)),
        )
        .await?;
        Ok(ListResponse::Ok(Json(DocumentPage {
            documents: documents.into_iter().flatten().collect(),
            next_cursor: page.next.map(encode_cursor),
        })))
    }

    /// Send a document, as text or as a file (a new version replaces the old one)
    ///
    /// **Text** (`application/json`): chunks `text` (see `POST /vectors/documents`) and queues
    /// one `document` job for the whole version. **A file**: PDF, DOCX, HTML, Markdown or
    /// plain text, up to 10 MiB, as a multipart form (`file`, and optionally `metadata` as a
    /// JSON object, `model`, `max_tokens`, `overlap`), or as the raw body with its media type
    /// (`application/pdf`, `application/vnd.openxmlformats-officedocument.wordprocessingml.document`,
    /// `text/html`, `text/markdown`, `text/plain`; with `application/octet-stream` the `name`'s
    /// extension or the first bytes tell PDF and DOCX) and the options as query parameters.
    /// The query options serve every body kind; an option the JSON body or the form also
    /// gives is taken from there (`chunk` as a whole), and `name` names only files.
    /// The file is stored before the `202`; the worker extracts its text and chunks it (at
    /// most 10,000 chunks), and each chunk records where it came from (`page`, `page_end`,
    /// `section`). Another media type is 415, a larger file 413; a file that is not what its
    /// type says, or text that is not UTF-8, is 422 when that shows in its first bytes, and
    /// otherwise (encrypted, damaged, no text) its job fails `invalid_input` with the reason.
    /// For a file, the response lists no chunks: the job's result names its points.
    ///
    /// The job The job writes the chunks that are new or changed, leaves the ones
    /// whose text, index, offsets, location and metadata are unchanged untouched, and deletes
    /// every stored point of the asset the new version lacks; its result counts `written`,
    /// `kept` and `deleted`. The version is a hash of the text (or the file's bytes and
    /// format), the options and the metadata:
    /// sending the same again is the same job, unless the document was deleted since, when it
    /// is written again. `metadata` (your own keys, see `filter.metadata` in search) is stored
    /// in every chunk's payload under `meta`; a wrong shape is 422 with the reason. The
    /// document is whole when the job is `SUCCEEDED` (`GET /jobs/{job_id}`). At most
    /// 1,000,000 characters, 1,000 chunks and 768 KiB of chunk text for a text (413).
    #[oai(path = "/documents/:asset_id", method = "put")]
    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        auth: BearerAuth,
        asset_id: Path<String>,
        body: DocumentBody,
        request: &poem::Request,
        /// The model, for a body that does not name one (a raw file's only way to name it).
        model: Query<Option<String>>,
        /// The metadata as a JSON object, for a body that does not carry it.
        metadata: Query<Option<String>>,
        /// Most tokens per chunk, 8–256 (default 256), for a body that does not say.
        #[oai(validator(minimum(value = "8"), maximum(value = "256")))]
        max_tokens: Query<Option<u32>>,
        /// Tokens shared by neighbouring chunks, less than half of `max_tokens` (default 32),
        /// for a body that does not say.
        #[oai(validator(maximum(value = "127")))]
        overlap: Query<Option<u32>>,
        /// A file's name (shown in the listing; its extension tells the format when the media
        /// type is `application/octet-stream`); a JSON text has none.
        name: Query<Option<String>>,
    ) -> Result<PutResponse, ProblemResponse> {
        let query = QueryOptions {
            model: model.0,
            metadata: metadata.0,
            max_tokens: max_tokens.0,
            overlap: overlap.0,
            name: name.0,
        };
        let accepted = match body {
            DocumentBody::Json(body) => {
                let PutDocument {
                    text,
                    model,
                    chunk,
                    metadata,
                } = body.0.0;
                // The body's options win over the query's.
                let metadata = match (metadata, query.metadata) {
                    (Some(body), _) => Some(body),
                    (None, Some(text)) => Some(MetadataBody(serde_json::from_str(&text).map_err(
                        |err| ApiError::Validation(format!("metadata is not JSON: {err}")),
                    )?)),
                    (None, None) => None,
                };
                let chunk = chunk.unwrap_or(ChunkRequest {
                    max_tokens: query.max_tokens,
                    overlap: query.overlap,
                });
                submit_document(
                    &self.state,
                    &auth.0,
                    asset_id.0,
                    text.0,
                    model.map(|m| m.0).or(query.model),
                    chunk,
                    metadata,
                )
                .await?
            }
            DocumentBody::Form(form) => {
                // The form's fields win over the query's.
                let mut upload = FileUpload::from_form(form).await?;
                upload.model = upload.model.or(query.model);
                upload.metadata = upload.metadata.or(query.metadata);
                if upload.chunk.max_tokens.is_none() && upload.chunk.overlap.is_none() {
                    upload.chunk = ChunkRequest {
                        max_tokens: query.max_tokens,
                        overlap: query.overlap,
                    };
                }
                upload.name = upload.name.or(query.name);
                submit_file(&self.state, &auth.0, asset_id.0, upload).await?
            }
            DocumentBody::File(bytes) => {
                let upload = FileUpload {
                    bytes: bytes.0,
                    content_type: request.content_type().map(str::to_owned),
                    name: query.name,
                    model: query.model,
                    chunk: ChunkRequest {
                        max_tokens: query.max_tokens,
                        overlap: query.overlap,
                    },
                    metadata: query.metadata,
                };
                submit_file(&self.state, &auth.0, asset_id.0, upload).await?
            }
        };
        Ok(PutResponse::Accepted(Json(accepted)))
    }

    /// Read a document: its record and its stored chunks
    ///
    /// `document` is the record `GET /documents` lists (latest version, state, metadata).
    /// `chunks` are the asset's points in the vector store (of every model), ordered by chunk
    /// index then segment id: what search sees now, so while a new version is pending they
    /// are the previous version's. `404` when the caller's organization has neither.
    #[oai(path = "/documents/:asset_id", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        asset_id: Path<String>,
    ) -> Result<GetResponse, ProblemResponse> {
        let asset: AssetId = parse_ident("asset_id", asset_id.0)?;
        let org_id = auth.0.org_id;
        let filter = PointFilter {
            asset_id: Some(asset.to_string()),
            ..PointFilter::default()
        };
        let (record, points) = futures::join!(
            self.state.documents.entry(org_id, &asset),
            self.state.store.scroll_points(org_id, filter)
        );
        let points = points.map_err(ApiError::from)?;
        let document = match record.map_err(ApiError::from)? {
            Some(stored) => self.state.summary(org_id, stored.record).await?,
            None => None,
        };
        if points.is_empty() && document.is_none() {
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
                page: number(&point.payload, "page"),
                page_end: number(&point.payload, "page_end"),
                section: point
                    .payload
                    .extra
                    .get("section")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned),
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
            document,
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

impl AppState {
    /// A live record with its latest job's state; `None` for a deleted one.
    async fn summary(
        &self,
        org_id: Uuid,
        record: DocumentRecord,
    ) -> Result<Option<DocumentSummary>, ApiError> {
        if record.is_deleted() {
            return Ok(None);
        }
        let job = self.statuses.get(org_id, record.job_id).await?;
        Ok(DocumentSummary::new(record, job))
    }
}

/// `documents-v1:<sequence>` in URL-safe base64: where the next page starts.
fn encode_cursor(from: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_V1}{from}"))
}

fn decode_cursor(cursor: &str) -> Result<u64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_V1)?.parse::<u64>().ok())
        .filter(|&from| from > 0)
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_cursor",
            detail: "cursor is not one this server issued for GET /documents: pass \
                     `next_cursor` from the previous page as it is"
                .to_owned(),
        })
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
    let (embedder, _) = state.model(model.as_deref())?;
    let options = ChunkOptions {
        max_tokens: options
            .max_tokens
            .min(embedder.max_tokens() - embedder.special_tokens()),
        ..options
    };
    let version = ids::document_version(
        text.as_bytes(),
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
        file: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use heimdex_domain::documents::DocumentVersion;
    use heimdex_domain::jobs::{JobError, JobErrorCode};

    fn record(deleted: bool) -> DocumentRecord {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time");
        DocumentRecord {
            org_id: Uuid::from_u128(1),
            asset_id: AssetId::parse("guide").expect("valid"),
            job_id: Uuid::from_u128(2),
            requested_seq: 5,
            updated_at: at,
            version: (!deleted).then(|| DocumentVersion {
                version: "abc".to_owned(),
                chunks: Some(4),
                chars: Some(100),
                model: "mock".to_owned(),
                model_ver: "v1".to_owned(),
                metadata: Metadata::default(),
                source: "text".to_owned(),
                file: None,
            }),
        }
    }

    fn job(status: Status) -> JobStatus {
        let r = record(false);
        let mut job = JobStatus::empty(r.org_id, r.job_id, r.updated_at);
        job.status = status;
        job.updated_at = r.updated_at + chrono::Duration::seconds(3);
        job.error = Some(JobError::new(JobErrorCode::InvalidInput, "no text"));
        job
    }

    #[test]
    fn the_state_is_the_latest_jobs() {
        let state = |job: Option<JobStatus>| {
            DocumentSummary::new(record(false), job).map(|s| (s.state, s.error.is_some()))
        };
        assert_eq!(state(None), Some((DocumentState::Pending, false)));
        assert_eq!(
            state(Some(job(Status::Queued))),
            Some((DocumentState::Pending, false))
        );
        assert_eq!(
            state(Some(job(Status::Running))),
            Some((DocumentState::Pending, false))
        );
        assert_eq!(
            state(Some(job(Status::Succeeded))),
            Some((DocumentState::Indexed, false))
        );
        let failed = DocumentSummary::new(record(false), Some(job(Status::Failed)))
            .expect("a live document");
        assert_eq!(failed.state, DocumentState::Failed);
        assert_eq!(failed.error.map(|e| e.message), Some("no text".to_owned()));
        assert_eq!(failed.updated_at, job(Status::Failed).updated_at);
        assert!(DocumentSummary::new(record(true), None).is_none());
    }

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert!(!encode_cursor(42).contains("42"), "opaque");
        let job_cursor = URL_SAFE_NO_PAD.encode("v3:all:42");
        for bad in [
            "",
            "42",
            "!!",
            &job_cursor,
            &URL_SAFE_NO_PAD.encode("documents-v1:0"),
        ] {
            assert!(
                matches!(
                    decode_cursor(bad),
                    Err(ApiError::BadRequest {
                        code: "invalid_cursor",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
