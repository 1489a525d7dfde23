//! The document projection: what the latest request made of each asset managed as a document.
//!
//! It is folded from `requested` events only: a `document` job names a new version of its
//! asset, a `delete_asset` job removes the asset. The record names the job of that latest
//! request, and the document's state (pending, indexed, failed) is that job's status, read with
//! it: outcomes are folded once, into job status, and the record never has to wait for them.
//! The fold keeps the request with the highest stream sequence, so replays, redeliveries and
//! events that arrive out of order leave the same record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{EventData, JobEvent};
use crate::ids::Target;
use crate::jobs::{DocumentParams, JobSpec};
use crate::{AssetId, Metadata};

/// A document's record: the latest request for its asset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub org_id: Uuid,
    pub asset_id: AssetId,
    /// The job of the latest request (a version, or the delete).
    pub job_id: Uuid,
    /// That job's `requested` event: its stream sequence and time.
    pub requested_seq: u64,
    pub updated_at: DateTime<Utc>,
    /// The version the document is (or is becoming); `None` once it is deleted.
    pub version: Option<DocumentVersion>,
}

/// What one version of a document is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentVersion {
    /// The version hash ([`DocumentParams::version`]).
    pub version: String,
    /// Chunks and characters of text (up to the last chunk's end); `None` for a file, which
    /// the worker extracts and chunks (its job's result counts them).
    pub chunks: Option<usize>,
    pub chars: Option<usize>,
    pub model: String,
    pub model_ver: String,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// Where the text came from: `text` (sent as text) or `file` (uploaded).
    pub source: String,
    /// The uploaded file: its format, name and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileVersion>,
}

/// What a document version knows of its file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileVersion {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub size: u64,
    pub sha256: String,
    /// Its object in the files bucket.
    pub object: String,
    /// The chunking it was indexed with (absent in records projected before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<usize>,
}

/// A `requested` event that changes a document: the asset, and what it becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentChange {
    pub org_id: Uuid,
    pub asset_id: AssetId,
    pub job_id: Uuid,
    pub seq: u64,
    pub time: DateTime<Utc>,
    /// `None`: the asset is deleted.
    pub version: Option<DocumentVersion>,
}

impl DocumentChange {
    /// The change an event at stream sequence `seq` makes, if it makes one.
    pub fn of(event: &JobEvent, seq: u64) -> Option<Self> {
        let EventData::Requested(requested) = &event.data else {
            return None;
        };
        let (asset_id, version) = match &requested.spec {
            JobSpec::Document(params) => (params.asset_id.clone(), Some(version_of(params))),
            JobSpec::DeleteAsset(params) => (params.asset_id.clone(), None),
            JobSpec::MockEmbedding(_) | JobSpec::Embedding(_) | JobSpec::DeletePoint(_) => {
                return None;
            }
        };
        Some(Self {
            org_id: event.org_id,
            asset_id,
            job_id: event.job_id,
            seq,
            time: event.time,
            version,
        })
    }

    /// The key of the document it changes.
    pub fn key(&self) -> String {
        document_key(self.org_id, &self.asset_id)
    }
}

fn version_of(params: &DocumentParams) -> DocumentVersion {
    let file = params.file.as_ref().map(|file| FileVersion {
        format: file.format.clone(),
        name: file.name.clone(),
        size: file.size,
        sha256: file.sha256.clone(),
        object: file.object.clone(),
        max_tokens: Some(file.max_tokens),
        overlap: Some(file.overlap),
    });
    let from_text = file.is_none();
    DocumentVersion {
        version: params.version.clone(),
        chunks: from_text.then_some(params.chunks.len()),
        chars: from_text.then(|| params.chunks.last().map_or(0, |chunk| chunk.char_end)),
        model: params.model.clone(),
        model_ver: params.model_ver.clone(),
        metadata: params.metadata.clone(),
        source: if from_text { "text" } else { "file" }.to_owned(),
        file,
    }
}

/// The projection's key of a document: `<org_id>.<asset token>` (see [`Target::token`]: asset
/// ids may hold characters a key cannot).
pub fn document_key(org_id: Uuid, asset_id: &AssetId) -> String {
    format!(
        "{org_id}.{}",
        Target::Asset(asset_id.as_str().to_owned()).token()
    )
}

/// Whether a fold changed the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folded {
    Changed,
    /// The change is not newer than the record: it was applied already, or overtaken.
    Unchanged,
}

impl DocumentRecord {
    /// The record a first change makes.
    pub fn new(change: &DocumentChange) -> Self {
        Self {
            org_id: change.org_id,
            asset_id: change.asset_id.clone(),
            job_id: change.job_id,
            requested_seq: change.seq,
            updated_at: change.time,
            version: change.version.clone(),
        }
    }

    /// Applies a change if it is newer than the record.
    pub fn apply(&mut self, change: &DocumentChange) -> Folded {
        if change.seq <= self.requested_seq {
            return Folded::Unchanged;
        }
        self.job_id = change.job_id;
        self.requested_seq = change.seq;
        self.updated_at = change.time;
        self.version = change.version.clone();
        Folded::Changed
    }

    pub fn is_deleted(&self) -> bool {
        self.version.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;
    use crate::events::Requested;
    use crate::jobs::{DeleteAssetParams, DocumentChunk};

    fn org() -> Uuid {
        Uuid::from_u128(7)
    }

    fn requested(job: u128, spec: JobSpec) -> JobEvent {
        JobEvent {
            id: format!("{job}:requested"),
            org_id: org(),
            job_id: Uuid::from_u128(job),
            time: DateTime::from_timestamp(1_700_000_000 + job as i64, 0).expect("a valid time"),
            data: EventData::Requested(Requested {
                job_id: Uuid::from_u128(job),
                job_key: format!("key-{job}"),
                user_id: "u".to_owned(),
                spec,
            }),
        }
    }

    fn document(version: &str, chunks: usize) -> JobSpec {
        JobSpec::Document(DocumentParams {
            asset_id: AssetId::parse("guide").expect("valid"),
            version: version.to_owned(),
            model: "mock".to_owned(),
            model_ver: "v1".to_owned(),
            generation: 0,
            chunks: (0..chunks)
                .map(|n| DocumentChunk {
                    text: format!("chunk {n}"),
                    char_start: n * 10,
                    char_end: n * 10 + 7,
                })
                .collect(),
            file: None,
            metadata: Metadata::default(),
        })
    }

    fn delete() -> JobSpec {
        JobSpec::DeleteAsset(DeleteAssetParams {
            asset_id: AssetId::parse("guide").expect("valid"),
            request_id: RequestId::parse("r1").expect("valid"),
        })
    }

    #[test]
    fn a_version_describes_its_chunks() {
        let change = DocumentChange::of(&requested(1, document("v-a", 3)), 10).expect("a change");
        let version = change.version.expect("a version");
        assert_eq!(
            (version.version.as_str(), version.chunks, version.chars),
            ("v-a", Some(3), Some(27))
        );
        assert_eq!(version.source, "text");
    }

    #[test]
    fn the_latest_request_wins_in_whatever_order_events_arrive() {
        let a = DocumentChange::of(&requested(1, document("v-a", 10)), 10).expect("a change");
        let b = DocumentChange::of(&requested(2, document("v-b", 4)), 20).expect("a change");
        let mut in_order = DocumentRecord::new(&a);
        assert_eq!(in_order.apply(&b), Folded::Changed);
        let mut reversed = DocumentRecord::new(&b);
        assert_eq!(reversed.apply(&a), Folded::Unchanged);
        assert_eq!(in_order, reversed);
        assert_eq!(in_order.job_id, Uuid::from_u128(2));
        assert_eq!(in_order.version.as_ref().and_then(|v| v.chunks), Some(4));
        // A replay changes nothing.
        assert_eq!(in_order.apply(&b), Folded::Unchanged);
    }

    #[test]
    fn a_delete_ends_the_document_and_a_new_version_starts_it_again() {
        let a = DocumentChange::of(&requested(1, document("v-a", 3)), 10).expect("a change");
        let gone = DocumentChange::of(&requested(2, delete()), 20).expect("a change");
        let again = DocumentChange::of(&requested(3, document("v-a", 3)), 30).expect("a change");
        let mut record = DocumentRecord::new(&a);
        record.apply(&gone);
        assert!(record.is_deleted());
        record.apply(&again);
        assert!(!record.is_deleted());
        assert_eq!(record.job_id, Uuid::from_u128(3));
    }

    #[test]
    fn segments_and_outcomes_are_not_document_changes() {
        let segment = JobSpec::DeletePoint(crate::jobs::DeletePointParams {
            point_id: Uuid::from_u128(9),
            request_id: RequestId::parse("r").expect("valid"),
        });
        assert_eq!(DocumentChange::of(&requested(1, segment), 1), None);
    }

    #[test]
    fn keys_hold_no_character_of_the_asset_id() {
        let key = document_key(org(), &AssetId::parse("a b.c/*>").expect("valid"));
        assert!(key.starts_with(&format!("{}.a-", org())));
        assert!(!key.contains(' ') && !key.contains('*') && !key.contains('>'));
    }
}
