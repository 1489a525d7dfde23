//! Deterministic identifiers: the same request always names the same job, and the same segment
//! always lands on the same point. Idempotency at every layer rests on these functions.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `hex(sha256(org_id ":" job_type ":" canonical_json(params)))`: the job's idempotency key. It is
/// also the `Nats-Msg-Id` of the job's `requested` event.
pub fn job_key(org_id: Uuid, job_type: &str, params: &impl Serialize) -> String {
    let canonical = canonical_json(params);
    let digest = Sha256::digest(format!("{org_id}:{job_type}:{canonical}"));
    hex::encode(digest)
}

/// The UUID made of the first 16 bytes of `sha256(job_key)`.
pub fn job_id(job_key: &str) -> Uuid {
    uuid_from_digest(&Sha256::digest(job_key.as_bytes()))
}

/// Point id, byte-for-byte the Python service's: the first 16 bytes of
/// `sha256("{org_id}:{asset_id}:{segment_id}:{model}:{model_ver}")`, used as they are (no version
/// bits rewritten), so collections written by the old service stay addressable.
pub fn point_id(
    org_id: Uuid,
    asset_id: &str,
    segment_id: &str,
    model: &str,
    model_ver: &str,
) -> Uuid {
    let digest = Sha256::digest(format!(
        "{org_id}:{asset_id}:{segment_id}:{model}:{model_ver}"
    ));
    uuid_from_digest(&digest)
}

/// What a delete removes, and so what its tombstone names: one point, or every point of an
/// asset. A write's generation is read from the tombstones of its targets (its asset, and for
/// a single segment its point), so a write sent after a delete is a new job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Point(Uuid),
    Asset(String),
}

impl Target {
    /// A subject token for the target: `p-<point uuid>`, or `a-<first 16 bytes of
    /// sha256(asset_id) in hex>` (asset ids may hold characters a subject cannot).
    pub fn token(&self) -> String {
        match self {
            Target::Point(id) => format!("p-{}", id.simple()),
            Target::Asset(asset_id) => {
                format!(
                    "a-{}",
                    hex::encode(&Sha256::digest(asset_id.as_bytes())[..16])
                )
            }
        }
    }
}

/// A document's version: `hex(sha256(canonical_json(options) "\n" content))`, where the
/// content is the raw bytes sent: the text, or the file as uploaded.
pub fn document_version(content: &[u8], options: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical_json(options).as_bytes());
    hasher.update(b"\n");
    hasher.update(content);
    hex::encode(hasher.finalize())
}

/// `hex(sha256(bytes))`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The mock embedding: `size` values uniform in `[0, 1)` from a ChaCha20 stream seeded with
/// `sha256("{org}:{asset}:{segment}:mock:v1")`. Each value takes the top 24 bits of one `u32`
/// draw, scaled by 2^-24, so the sequence is exact in `f32` and does not depend on any crate's
/// float-sampling implementation: the same inputs give the same vector on every machine.
pub fn mock_vector(org_id: Uuid, asset_id: &str, segment_id: &str, size: usize) -> Vec<f32> {
    let seed: [u8; 32] = Sha256::digest(format!("{org_id}:{asset_id}:{segment_id}:mock:v1")).into();
    let mut rng = ChaCha20Rng::from_seed(seed);
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    (0..size)
        .map(|_| (rng.next_u32() >> 8) as f32 * SCALE)
        .collect()
}

/// JSON with object keys sorted at every level and no insignificant whitespace. Keys are sorted
/// explicitly: whether `serde_json`'s map keeps insertion order depends on a feature that any
/// crate in the build can switch on, and a job key must not.
pub fn canonical_json(value: &impl Serialize) -> String {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let entries: std::collections::BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(entries.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            scalar @ (serde_json::Value::Null
            | serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::String(_)) => scalar,
        }
    }
    let value = serde_json::to_value(value).expect("job parameters serialize to JSON");
    sorted(value).to_string()
}

fn uuid_from_digest(digest: &[u8]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORG: &str = "550e8400-e29b-41d4-a716-446655440000";

    #[test]
    fn point_id_matches_python_service() {
        let org = Uuid::parse_str(ORG).unwrap();
        let id = point_id(org, "doc-123", "chunk-0", "mock", "v1");
        assert_eq!(id.to_string(), "cd06127a-af4f-615d-9176-a9d88d136bc9");
    }

    #[test]
    fn job_key_matches_python_sorted_json() {
        // Cross-checked with Python: sha256(f"{org}:mock_embedding:" +
        // json.dumps(params, sort_keys=True, separators=(",", ":"))).
        let org = Uuid::parse_str(ORG).unwrap();
        let params = crate::jobs::JobSpec::MockEmbedding(crate::jobs::MockParams::new(
            crate::AssetId::parse("doc-123").unwrap(),
            crate::SegmentId::parse("chunk-0").unwrap(),
        ));
        let key = job_key(org, params.job_type(), &params.params());
        assert_eq!(
            key,
            "9f9a6fa89358b80280226316e05f9fbd486348c36249d60eded0f5da128fdaa0"
        );
        assert_eq!(
            job_id(&key).to_string(),
            "b0d7603d-6984-fce3-82e9-f5c813d995b5"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"z": true, "y": [3, {"k": 1, "j": 2}]}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"y":[3,{"j":2,"k":1}],"z":true},"b":1}"#
        );
    }

    #[test]
    fn job_key_and_id_are_deterministic_and_org_scoped() {
        let org = Uuid::parse_str(ORG).unwrap();
        let params = json!({"segment_id": "chunk-0", "asset_id": "doc-123"});
        let reordered = json!({"asset_id": "doc-123", "segment_id": "chunk-0"});
        let key = job_key(org, "mock_embedding", &params);
        assert_eq!(key, job_key(org, "mock_embedding", &reordered));
        assert_eq!(key.len(), 64);
        assert_eq!(job_id(&key), job_id(&key));
        let other_org = Uuid::from_u128(1);
        assert_ne!(key, job_key(other_org, "mock_embedding", &params));
        assert_ne!(key, job_key(org, "embedding", &params));
    }

    #[test]
    fn mock_vector_is_deterministic_and_in_unit_interval() {
        let org = Uuid::parse_str(ORG).unwrap();
        let v = mock_vector(org, "doc-123", "chunk-0", 384);
        assert_eq!(v.len(), 384);
        assert_eq!(v, mock_vector(org, "doc-123", "chunk-0", 384));
        assert_ne!(v, mock_vector(org, "doc-123", "chunk-1", 384));
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        // A uniform sample of 384 values has a mean close to 0.5.
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn mock_vector_prefix_is_stable() {
        // Pinned so a dependency upgrade that changed the stream would be caught.
        let org = Uuid::parse_str(ORG).unwrap();
        let v = mock_vector(org, "doc-123", "chunk-0", 4);
        let seed: [u8; 32] = Sha256::digest(format!("{ORG}:doc-123:chunk-0:mock:v1")).into();
        let mut rng = ChaCha20Rng::from_seed(seed);
        let first = (rng.next_u32() >> 8) as f32 / 16_777_216.0;
        assert_eq!(v[0], first);
        assert_eq!(v.len(), 4);
    }
}
