//! What a job is (its spec), what it produces, and its status: the projection of its events.
//! `JobStatus::apply` is pure — no I/O, no business rules beyond "status never moves backwards" —
//! so the projection is tested given/when/then without infrastructure.
//!
//! A job runs in rounds: round 0 is the run its `requested` event asked for, round n the n-th
//! `retried`. A round starts with its `retried` event; events of an earlier round that arrive
//! late are ignored; within a round the first terminal event wins, so status never moves
//! backwards. The only way back from FAILED to QUEUED is an explicit retry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{EventData, JobEvent};
use crate::ident::{AssetId, RequestId, SegmentId};
use crate::metadata::Metadata;

/// Model name and version of the mock embedder (the Python service's contract).
pub const MOCK_MODEL: &str = "mock";
pub const MOCK_MODEL_VER: &str = "v1";

/// The job's type and parameters, exactly as hashed into its idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "job_type", content = "params", rename_all = "snake_case")]
pub enum JobSpec {
    /// Deterministic ChaCha20 vector for one segment (the Python service's `mock_embedding`).
    MockEmbedding(MockParams),
    /// Embed one segment's text with a model and upsert it.
    Embedding(EmbedParams),
    /// Delete one point of the tenant.
    DeletePoint(DeletePointParams),
    /// Delete every point of one asset of the tenant.
    DeleteAsset(DeleteAssetParams),
    /// Replace a whole document (all the chunks of one asset) with a new version.
    Document(DocumentParams),
}

impl JobSpec {
    pub fn job_type(&self) -> &'static str {
        match self {
            JobSpec::MockEmbedding(_) => "mock_embedding",
            JobSpec::Embedding(_) => "embedding",
            JobSpec::DeletePoint(_) => "delete_point",
            JobSpec::DeleteAsset(_) => "delete_asset",
            JobSpec::Document(_) => "document",
        }
    }

    /// The parameters that name the job (hashed with sorted keys into the job key).
    pub fn params(&self) -> serde_json::Value {
        let params = match self {
            JobSpec::MockEmbedding(params) => serde_json::to_value(params),
            JobSpec::Embedding(params) => serde_json::to_value(params),
            JobSpec::DeletePoint(params) => serde_json::to_value(params),
            JobSpec::DeleteAsset(params) => serde_json::to_value(params),
            JobSpec::Document(params) => serde_json::to_value(params),
        };
        params.expect("job parameters serialize to JSON")
    }
}

/// `POST /vectors/mock`: the Python service hashed `{asset_id, segment_id, model, model_ver}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockParams {
    pub asset_id: AssetId,
    pub segment_id: SegmentId,
    pub model: String,
    pub model_ver: String,
}

impl MockParams {
    pub fn new(asset_id: AssetId, segment_id: SegmentId) -> Self {
        Self {
            asset_id,
            segment_id,
            model: MOCK_MODEL.to_owned(),
            model_ver: MOCK_MODEL_VER.to_owned(),
        }
    }
}

/// `POST /vectors/embed`, `/embed/batch`, `/documents`: one segment's text. The text is part of
/// the key, so sending changed text for a segment is a new job (which overwrites the point),
/// while resending the same text returns the existing job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedParams {
    pub asset_id: AssetId,
    pub segment_id: SegmentId,
    pub model: String,
    pub model_ver: String,
    pub text: String,
    /// Where the segment sits in its document, when it is a chunk of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkInfo>,
    /// The segment's generation: 0 until its point or its asset is deleted, then the sum of
    /// the sequences of their last tombstones (see [`crate::ids::Target`]). It is part of the
    /// job key, so identical text sent after a delete is a new job that writes the point
    /// again, while a job sent twice with no delete between is one job. Absent (0) in jobs
    /// written before deletes had generations, whose keys therefore did not change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The segment's metadata, stored in its point's payload under `meta`. Part of the job
    /// key: changed metadata is a new job that rewrites the point. Absent when empty, so jobs
    /// without metadata keep the keys they had before metadata existed.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

/// `PUT /documents/{asset_id}` (and `POST /vectors/documents`): a whole document, cut into
/// chunks by the API. Sending a document again replaces it: the worker writes the chunks that
/// are new or changed, leaves the identical ones (same text at the same index) untouched and
/// deletes the chunks the new version no longer has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentParams {
    pub asset_id: AssetId,
    /// `hex(sha256)` of the raw text and the options (model, version, chunking): identical
    /// content with the same options is the same version, and so (with the same generation)
    /// the same job.
    pub version: String,
    pub model: String,
    pub model_ver: String,
    /// As for [`EmbedParams::generation`], from the asset's tombstone only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The chunks, in order: chunk `n` is segment `chunk-<n>`. Empty for a file, which the
    /// worker extracts and chunks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<DocumentChunk>,
    /// The uploaded file this version is, stored in the files bucket before the job was
    /// requested; `None` for a text sent as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// The document's metadata, stored in every chunk's payload under `meta`. Part of the
    /// version: changed metadata is a new version, which rewrites every chunk.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

/// An uploaded file, as its document job names it: the event carries the reference, never the
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSource {
    /// The object's name in the files bucket: `<org_id>.<asset token>.<version>`.
    pub object: String,
    /// `hex(sha256)` of the file's bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// `pdf`, `docx`, `html`, `markdown` or `text`.
    pub format: String,
    /// The file's name as the client gave it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How the worker cuts the extracted text.
    pub max_tokens: usize,
    pub overlap: usize,
}

impl FileSource {
    /// The object name of a document version's file.
    pub fn object_name(org_id: Uuid, asset_id: &AssetId, version: &str) -> String {
        format!(
            "{org_id}.{}.{version}",
            crate::ids::Target::Asset(asset_id.as_str().to_owned()).token()
        )
    }
}

/// One chunk of a document: its text and where it sits (offsets in chars).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentChunk {
    pub text: String,
    pub char_start: usize,
    pub char_end: usize,
}

impl DocumentParams {
    /// The segment id of chunk `index`.
    pub fn segment_id(index: usize) -> SegmentId {
        SegmentId::parse(format!("chunk-{index}")).expect("chunk segment ids are valid")
    }

    /// The point id of chunk `index` of this version, in `org_id`.
    pub fn chunk_point_id(&self, org_id: Uuid, index: usize) -> Uuid {
        crate::ids::point_id(
            org_id,
            self.asset_id.as_str(),
            Self::segment_id(index).as_str(),
            &self.model,
            &self.model_ver,
        )
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A chunk's place in its document; offsets count Unicode scalar values (chars).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub chunk_index: usize,
    pub char_start: usize,
    pub char_end: usize,
}

/// Where a chunk of an uploaded file sits in the file: its page (and last page, when it
/// crosses one) for a PDF, the nearest heading before it for HTML, Markdown and DOCX.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_end: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
}

/// `DELETE /vectors/{point_id}`. `request_id` (the `Idempotency-Key` header, or a fresh UUID)
/// names the request: deleting is idempotent in its effect, and a retried request with the same
/// key is the same job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePointParams {
    pub point_id: Uuid,
    pub request_id: RequestId,
}

/// `DELETE /assets/{asset_id}`; `request_id` as for [`DeletePointParams`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAssetParams {
    pub asset_id: AssetId,
    pub request_id: RequestId,
}

/// What a successful job produced. Embedding jobs fill `point_ids`, `model` and `model_ver`;
/// delete jobs fill `deleted` (how many points the delete removed; 0 when they were already
/// gone) and list the point ids they targeted, if known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub collection: String,
    pub point_ids: Vec<Uuid>,
    pub vector_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// Document jobs: chunks embedded and written by this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
    /// Document jobs: chunks left untouched (the same text at the same index was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<u64>,
    /// Document and embedding jobs: a later delete (or, for a document, a later version) of
    /// the same target was already in the log, so in stream order this job's write is undone:
    /// nothing was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
}

/// Why a job failed, with a stable machine-readable code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: JobErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// The input can never succeed (bad dimension, unknown model, ...): failed on first attempt.
    InvalidInput,
    /// The vector store kept failing until the last delivery.
    VectorStore,
    /// The job's messages ran out of deliveries without a word from the worker (e.g. it crashed
    /// on every attempt); recorded from the max-deliveries advisory.
    MaxDeliveries,
    /// Anything else that stayed broken through every retry.
    Internal,
}

impl JobErrorCode {
    /// The code as it is serialized (`vector_store`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobErrorCode::InvalidInput => "invalid_input",
            JobErrorCode::VectorStore => "vector_store",
            JobErrorCode::MaxDeliveries => "max_deliveries",
            JobErrorCode::Internal => "internal",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        match self {
            Status::Succeeded | Status::Failed => true,
            Status::Queued | Status::Running => false,
        }
    }
}

/// At most this many past failures are kept in a status (the oldest are dropped); the stream
/// keeps them all.
pub const MAX_FAILURES_KEPT: usize = 10;

/// How an earlier round of a retried job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PastFailure {
    pub round: u32,
    pub attempts: u32,
    pub error: JobError,
    /// When the status last changed in that round (its `failed` event, as a rule).
    pub failed_at: DateTime<Utc>,
}

/// The KV value under `<org_id>.<job_id>` in `HEIMDEX_JOB_STATUS`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: Uuid,
    pub org_id: Uuid,
    /// Empty until the `requested` event has been applied (only possible when a projection
    /// starts mid-stream).
    pub user_id: String,
    pub job_type: String,
    pub status: Status,
    /// The last event applied (`requested`, `started`, ...).
    pub stage: String,
    /// Deliveries in the current round.
    pub attempts: u32,
    /// How many times the job was retried: the current round.
    #[serde(default)]
    pub retries: u32,
    /// The failures of earlier rounds, oldest first (at most [`MAX_FAILURES_KEPT`]).
    #[serde(default)]
    pub failures: Vec<PastFailure>,
    pub params: serde_json::Value,
    pub result: Option<JobResult>,
    pub error: Option<JobError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Stream sequence of the last event applied; older or repeated events are ignored.
    pub last_event_seq: u64,
}

/// Whether an event changed the projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// Already applied (sequence not newer) — nothing to write.
    Stale,
}

impl JobStatus {
    /// The status a job has before any of its events is applied.
    pub fn empty(org_id: Uuid, job_id: Uuid, time: DateTime<Utc>) -> Self {
        Self {
            job_id,
            org_id,
            user_id: String::new(),
            job_type: String::new(),
            status: Status::Queued,
            stage: String::new(),
            attempts: 0,
            retries: 0,
            failures: Vec::new(),
            params: serde_json::Value::Null,
            result: None,
            error: None,
            created_at: time,
            updated_at: time,
            last_event_seq: 0,
        }
    }

    /// The status right after the `requested` event (what `GET /jobs/{id}` answers from the
    /// stream while the projection has not caught up).
    pub fn from_event(event: &JobEvent, seq: u64) -> Self {
        let mut status = Self::empty(event.org_id, event.job_id, event.time);
        status.apply(event, seq);
        status
    }

    /// Folds one event in. Events at or below `last_event_seq` are ignored; events of a round
    /// older than the current one change nothing; within a round a terminal status is final
    /// (the first terminal event wins) and nothing moves a job backwards.
    pub fn apply(&mut self, event: &JobEvent, seq: u64) -> Applied {
        if seq <= self.last_event_seq {
            return Applied::Stale;
        }
        self.last_event_seq = seq;
        let round = event.data.round();
        if round > self.retries {
            // A new round: its `retried` event, or (when the projection started past that
            // event) the round's first worker event.
            self.start_round(round);
        }
        self.updated_at = self.updated_at.max(event.time);
        let earlier_round = round < self.retries;
        match &event.data {
            EventData::Requested(requested) => {
                self.user_id.clone_from(&requested.user_id);
                self.job_type = requested.spec.job_type().to_owned();
                self.params = requested.spec.params();
                self.created_at = event.time;
                if self.stage.is_empty() {
                    self.stage = "requested".to_owned();
                }
            }
            EventData::Retried(retried) => {
                if self.job_type.is_empty() {
                    self.job_type = retried.spec.job_type().to_owned();
                    self.params = retried.spec.params();
                }
            }
            // A late event of an earlier round (a slow redelivery, say): history, not status.
            EventData::Started(_) | EventData::Succeeded(_) | EventData::Failed(_)
                if earlier_round => {}
            EventData::Started(started) => {
                self.attempts = self.attempts.max(started.attempt);
                if self.status == Status::Queued {
                    self.status = Status::Running;
                    self.stage = "started".to_owned();
                }
            }
            EventData::Succeeded(succeeded) => {
                self.attempts = self.attempts.max(succeeded.attempt);
                if !self.status.is_terminal() {
                    self.status = Status::Succeeded;
                    self.stage = "succeeded".to_owned();
                    self.result = Some(succeeded.result.clone());
                }
            }
            EventData::Failed(failed) => {
                self.attempts = self.attempts.max(failed.attempt);
                if !self.status.is_terminal() {
                    self.status = Status::Failed;
                    self.stage = "failed".to_owned();
                    self.error = Some(failed.error.clone());
                }
            }
        }
        Applied::Changed
    }

    /// Starts round `round`: the current round's failure (if it failed) moves to `failures`,
    /// and the job is QUEUED again with no attempts, result or error.
    fn start_round(&mut self, round: u32) {
        if let Some(error) = self.error.take() {
            self.failures.push(PastFailure {
                round: self.retries,
                attempts: self.attempts,
                error,
                failed_at: self.updated_at,
            });
            let excess = self.failures.len().saturating_sub(MAX_FAILURES_KEPT);
            self.failures.drain(..excess);
        }
        self.retries = round;
        self.status = Status::Queued;
        self.stage = "retried".to_owned();
        self.attempts = 0;
        self.result = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Failed, Requested, Retried, Started, Succeeded};

    fn org() -> Uuid {
        Uuid::from_u128(0x550e_8400)
    }

    fn mock_params(asset: &str, segment: &str) -> MockParams {
        MockParams::new(
            AssetId::parse(asset).unwrap(),
            SegmentId::parse(segment).unwrap(),
        )
    }

    fn job() -> Uuid {
        Uuid::from_u128(42)
    }

    fn event(data: EventData) -> JobEvent {
        JobEvent::new(org(), job(), data)
    }

    fn requested() -> JobEvent {
        event(EventData::Requested(Requested {
            job_id: job(),
            job_key: "k".into(),
            user_id: "alice".into(),
            spec: JobSpec::MockEmbedding(mock_params("doc-123", "chunk-0")),
        }))
    }

    fn started(attempt: u32) -> JobEvent {
        started_in(0, attempt)
    }

    fn started_in(round: u32, attempt: u32) -> JobEvent {
        event(EventData::Started(Started { attempt, round }))
    }

    fn result() -> JobResult {
        JobResult {
            collection: "embeddings".into(),
            point_ids: vec![Uuid::from_u128(1)],
            vector_size: 384,
            model: Some(MOCK_MODEL.into()),
            model_ver: Some(MOCK_MODEL_VER.into()),
            deleted: None,
            written: None,
            kept: None,
            superseded: false,
        }
    }

    fn succeeded(attempt: u32) -> JobEvent {
        succeeded_in(0, attempt)
    }

    fn succeeded_in(round: u32, attempt: u32) -> JobEvent {
        event(EventData::Succeeded(Succeeded {
            attempt,
            round,
            result: result(),
        }))
    }

    fn failed(attempt: u32) -> JobEvent {
        failed_in(0, attempt)
    }

    fn failed_in(round: u32, attempt: u32) -> JobEvent {
        event(EventData::Failed(Failed {
            attempt,
            round,
            error: JobError::new(JobErrorCode::VectorStore, format!("unreachable in {round}")),
        }))
    }

    fn retried(round: u32) -> JobEvent {
        event(EventData::Retried(Retried {
            round,
            user_id: "ops".into(),
            spec: JobSpec::MockEmbedding(mock_params("doc-123", "chunk-0")),
        }))
    }

    /// requested, then four failed deliveries: FAILED in round 0 at sequence 6.
    fn failed_job() -> JobStatus {
        let mut status = JobStatus::from_event(&requested(), 1);
        for (seq, attempt) in [(2, 1), (3, 2), (4, 3), (5, 4)] {
            status.apply(&started(attempt), seq);
        }
        status.apply(&failed(4), 6);
        assert_eq!(status.status, Status::Failed);
        status
    }

    #[test]
    fn given_requested_then_queued_with_params() {
        let status = JobStatus::from_event(&requested(), 1);
        assert_eq!(status.status, Status::Queued);
        assert_eq!(status.stage, "requested");
        assert_eq!(status.user_id, "alice");
        assert_eq!(status.job_type, "mock_embedding");
        assert_eq!(status.params["segment_id"], "chunk-0");
        assert_eq!(status.params["model"], "mock");
        assert_eq!(status.last_event_seq, 1);
    }

    #[test]
    fn given_started_when_succeeded_then_terminal_with_result() {
        let mut status = JobStatus::from_event(&requested(), 1);
        assert_eq!(status.apply(&started(1), 2), Applied::Changed);
        assert_eq!(status.status, Status::Running);
        status.apply(&succeeded(1), 3);
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.result, Some(result()));
        assert_eq!(status.attempts, 1);
    }

    #[test]
    fn replayed_or_older_events_are_stale() {
        let mut status = JobStatus::from_event(&requested(), 5);
        assert_eq!(status.apply(&started(1), 5), Applied::Stale);
        assert_eq!(status.apply(&started(1), 4), Applied::Stale);
        assert_eq!(status.status, Status::Queued);
    }

    #[test]
    fn status_never_moves_backwards() {
        let mut status = JobStatus::from_event(&requested(), 1);
        status.apply(&succeeded(2), 10);
        // A late `started` from a slow redelivered attempt, and a later `failed`.
        status.apply(&started(3), 11);
        status.apply(&failed(3), 12);
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.error, None);
        assert_eq!(status.attempts, 3);
        assert_eq!(status.last_event_seq, 12);
    }

    #[test]
    fn failure_after_retries_records_reason() {
        let mut status = JobStatus::from_event(&requested(), 1);
        for (seq, attempt) in [(2, 1), (3, 2), (4, 3), (5, 4)] {
            status.apply(&started(attempt), seq);
            assert_eq!(status.status, Status::Running);
        }
        status.apply(&failed(4), 6);
        assert_eq!(status.status, Status::Failed);
        assert_eq!(status.attempts, 4);
        assert_eq!(
            status.error.as_ref().map(|e| e.code),
            Some(JobErrorCode::VectorStore)
        );
    }

    #[test]
    fn events_without_requested_still_project() {
        let mut status = JobStatus::empty(org(), job(), chrono::Utc::now());
        status.apply(&started(1), 7);
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.job_id, job());
    }

    #[test]
    fn jobs_without_metadata_keep_the_keys_they_had_before_metadata() {
        let params = EmbedParams {
            asset_id: AssetId::parse("a").unwrap(),
            segment_id: SegmentId::parse("s").unwrap(),
            model: "mock".into(),
            model_ver: "v1".into(),
            text: "hello".into(),
            chunk: None,
            generation: 0,
            metadata: crate::Metadata::default(),
        };
        let json = serde_json::to_value(&params).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"asset_id": "a", "segment_id": "s", "model": "mock",
                               "model_ver": "v1", "text": "hello"})
        );
        assert_eq!(serde_json::from_value::<EmbedParams>(json).unwrap(), params);
        let with = EmbedParams {
            metadata: crate::Metadata::from_json(serde_json::json!({"k": 1})).unwrap(),
            ..params.clone()
        };
        assert_ne!(
            crate::ids::job_key(
                Uuid::nil(),
                "embedding",
                &serde_json::to_value(&with).unwrap()
            ),
            crate::ids::job_key(
                Uuid::nil(),
                "embedding",
                &serde_json::to_value(&params).unwrap()
            ),
            "metadata names the job"
        );
    }

    #[test]
    fn every_job_type_round_trips_and_names_itself() {
        let specs = [
            JobSpec::MockEmbedding(mock_params("a", "s")),
            JobSpec::Embedding(EmbedParams {
                asset_id: AssetId::parse("a").unwrap(),
                segment_id: SegmentId::parse("chunk-0").unwrap(),
                model: "minilm-l6-v2".into(),
                model_ver: "st-v1-53aa5117".into(),
                text: "hello".into(),
                chunk: Some(ChunkInfo {
                    chunk_index: 0,
                    char_start: 0,
                    char_end: 5,
                }),
                generation: 3,
                metadata: crate::Metadata::from_json(serde_json::json!({"lang": "en"})).unwrap(),
            }),
            JobSpec::Document(DocumentParams {
                asset_id: AssetId::parse("a").unwrap(),
                version: "v".into(),
                model: "mock".into(),
                model_ver: "v1".into(),
                generation: 0,
                chunks: vec![DocumentChunk {
                    text: "hello".into(),
                    char_start: 0,
                    char_end: 5,
                }],
                file: None,
                metadata: crate::Metadata::from_json(serde_json::json!({"tags": ["a"]})).unwrap(),
            }),
            JobSpec::DeletePoint(DeletePointParams {
                point_id: Uuid::from_u128(7),
                request_id: RequestId::parse("r").unwrap(),
            }),
            JobSpec::DeleteAsset(DeleteAssetParams {
                asset_id: AssetId::parse("a").unwrap(),
                request_id: RequestId::parse("r").unwrap(),
            }),
        ];
        for spec in specs {
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(json["job_type"], spec.job_type());
            assert_eq!(json["params"], spec.params());
            assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), spec);
        }
    }

    #[test]
    fn given_failed_when_retried_then_queued_again_with_the_failure_kept() {
        let mut status = failed_job();
        assert_eq!(status.apply(&retried(1), 7), Applied::Changed);
        assert_eq!(status.status, Status::Queued);
        assert_eq!(status.stage, "retried");
        assert_eq!(status.retries, 1);
        assert_eq!(status.attempts, 0, "attempts count the current round");
        assert_eq!(status.error, None);
        assert_eq!(status.failures.len(), 1);
        let past = &status.failures[0];
        assert_eq!((past.round, past.attempts), (0, 4));
        assert_eq!(past.error.code, JobErrorCode::VectorStore);
        assert_eq!(past.error.message, "unreachable in 0");
        // The job's identity is untouched.
        assert_eq!(status.user_id, "alice");
        assert_eq!(status.params["segment_id"], "chunk-0");
    }

    #[test]
    fn given_a_retried_round_when_it_succeeds_then_succeeded() {
        let mut status = failed_job();
        status.apply(&retried(1), 7);
        status.apply(&started_in(1, 1), 8);
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.attempts, 1);
        status.apply(&succeeded_in(1, 1), 9);
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.result, Some(result()));
        assert_eq!(status.error, None);
        assert_eq!(status.failures.len(), 1);
    }

    #[test]
    fn late_events_of_an_earlier_round_never_overwrite_the_current_one() {
        let mut status = failed_job();
        status.apply(&retried(1), 7);
        status.apply(&started_in(1, 1), 8);
        // Round 0's slow redelivery reports in after round 1 began.
        assert_eq!(status.apply(&started(4), 9), Applied::Changed);
        assert_eq!(status.apply(&failed(4), 10), Applied::Changed);
        assert_eq!(status.apply(&succeeded(4), 11), Applied::Changed);
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.attempts, 1);
        assert_eq!(status.error, None);
        assert_eq!(status.result, None);
        assert_eq!(status.last_event_seq, 11);
        status.apply(&succeeded_in(1, 1), 12);
        // And a late failure of round 1 itself cannot undo its success.
        status.apply(&failed_in(1, 2), 13);
        assert_eq!(status.status, Status::Succeeded);
        assert_eq!(status.error, None);
    }

    #[test]
    fn a_repeated_or_older_retry_changes_nothing() {
        let mut status = failed_job();
        status.apply(&retried(1), 7);
        status.apply(&started_in(1, 1), 8);
        let before = status.clone();
        status.apply(&retried(1), 9);
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.retries, 1);
        assert_eq!(status.failures, before.failures);
        assert_eq!(status.attempts, 1);
    }

    #[test]
    fn every_round_that_failed_is_kept_oldest_first_up_to_the_limit() {
        let mut status = failed_job();
        let mut seq = 6;
        let rounds = u32::try_from(MAX_FAILURES_KEPT).unwrap() + 3;
        for round in 1..=rounds {
            seq += 1;
            status.apply(&retried(round), seq);
            seq += 1;
            status.apply(&started_in(round, 1), seq);
            seq += 1;
            status.apply(&failed_in(round, 1), seq);
            assert_eq!(status.status, Status::Failed);
            assert_eq!(status.retries, round);
        }
        assert_eq!(status.failures.len(), MAX_FAILURES_KEPT);
        let kept: Vec<u32> = status.failures.iter().map(|f| f.round).collect();
        let first = rounds - u32::try_from(MAX_FAILURES_KEPT).unwrap();
        assert_eq!(kept, (first..rounds).collect::<Vec<_>>());
        assert_eq!(
            status.error.as_ref().map(|e| e.message.as_str()),
            Some(format!("unreachable in {rounds}").as_str())
        );
    }

    #[test]
    fn a_round_whose_retried_event_was_not_seen_still_projects() {
        // A projection that starts past the `retried` event (mid-stream) adopts the round from
        // its first worker event.
        let mut status = failed_job();
        status.apply(&started_in(2, 1), 20);
        assert_eq!(status.retries, 2);
        assert_eq!(status.status, Status::Running);
        assert_eq!(status.failures.len(), 1);
    }

    #[test]
    fn statuses_written_before_retries_existed_still_decode() {
        let mut json = serde_json::to_value(failed_job()).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("retries");
        object.remove("failures");
        let status: JobStatus = serde_json::from_value(json).unwrap();
        assert_eq!(status.retries, 0);
        assert!(status.failures.is_empty());
        assert_eq!(status.status, Status::Failed);
    }

    #[test]
    fn status_serializes_in_screaming_case() {
        assert_eq!(
            serde_json::to_value(Status::Succeeded).unwrap(),
            "SUCCEEDED"
        );
    }
}
