//! Contract suite for every `VectorStore` adapter.
//!
//! Each `contract::*` function is run against the embedded adapter (fresh tempdir) and against
//! the remote adapter, in a fresh collection `heimdex_contract_<uuid>` that is dropped
//! afterwards. The remote adapter talks to the Qdrant server at `QDRANT_URL` (optionally
//! `QDRANT_API_KEY`) when that is set, and otherwise to a `heimdex-qdrant-standin` of the
//! test's own (Qdrant's gRPC API over the Qdrant engine, random port, temp dir), so the remote
//! adapter is exercised in every run. Embedded-only tests (durability across restart and crash,
//! shard config checks) follow.

use std::collections::BTreeSet;
use std::sync::Arc;

use heimdex_store::{
    Backend, NewPoint, Payload, PointFilter, SearchRequest, StoreConfig, StoreError, StoreKind,
    VectorStore, l2_normalized, open,
};
use serde_json::json;
use uuid::Uuid;

const DIM: usize = 4;

fn payload(org_id: Uuid, asset_id: &str, segment_id: &str) -> Payload {
    Payload {
        org_id,
        asset_id: asset_id.to_owned(),
        segment_id: segment_id.to_owned(),
        model: "test-model".to_owned(),
        model_ver: "1".to_owned(),
        text: None,
        extra: serde_json::Map::new(),
    }
}

fn point(org_id: Uuid, asset_id: &str, segment_id: &str, vector: [f32; DIM]) -> NewPoint {
    NewPoint {
        id: Uuid::new_v4(),
        vector: vector.to_vec(),
        payload: payload(org_id, asset_id, segment_id),
    }
}

fn search_req(org_id: Uuid, vector: [f32; DIM], limit: usize) -> SearchRequest {
    SearchRequest {
        org_id,
        vector: vector.to_vec(),
        limit,
        offset: 0,
        filter: PointFilter::default(),
        score_threshold: None,
        with_vector: false,
    }
}

fn asset(a: &str) -> PointFilter {
    PointFilter {
        asset_id: Some(a.to_owned()),
        ..PointFilter::default()
    }
}

fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-5, "{actual:?} vs {expected:?}");
    }
}

fn set(ids: impl IntoIterator<Item = Uuid>) -> BTreeSet<Uuid> {
    ids.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    store: Arc<dyn VectorStore>,
    /// The stand-in server when `QDRANT_URL` is unset; stopped before `_dir` goes.
    standin: Option<heimdex_qdrant_standin::Standin>,
    _dir: Option<tempfile::TempDir>,
    /// (url, api key, collection) to drop at the end of a remote test.
    remote: Option<(String, Option<String>, String)>,
}

impl Harness {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(StoreConfig {
            backend: Backend::Embedded {
                path: dir.path().join("qdrant"),
            },
            collection: "chunks".to_owned(),
            vector_size: DIM,
        })
        .await
        .expect("open embedded store");
        assert_eq!(store.kind(), StoreKind::Embedded);
        store.ensure_collection().await.expect("ensure_collection");
        Self {
            store,
            standin: None,
            _dir: Some(dir),
            remote: None,
        }
    }

    async fn remote() -> Self {
        let (url, standin, dir) = match std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => (url, None, None),
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let standin = heimdex_qdrant_standin::Standin::start(
                    dir.path(),
                    "127.0.0.1:0".parse().expect("address"),
                )
                .await
                .expect("start qdrant stand-in");
                (standin.url(), Some(standin), Some(dir))
            }
        };
        let api_key = std::env::var("QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        let collection = format!("heimdex_contract_{}", Uuid::new_v4().simple());
        let store = open(StoreConfig {
            backend: Backend::Remote {
                url: url.clone(),
                api_key: api_key.clone().map(secrecy::SecretString::from),
            },
            collection: collection.clone(),
            vector_size: DIM,
        })
        .await
        .expect("open remote store");
        assert_eq!(store.kind(), StoreKind::Remote);
        store.ensure_collection().await.expect("ensure_collection");
        Self {
            store,
            standin,
            _dir: dir,
            remote: Some((url, api_key, collection)),
        }
    }

    async fn cleanup(self) {
        if let Some((url, api_key, collection)) = self.remote {
            let client = qdrant_client::Qdrant::from_url(&url)
                .api_key(api_key)
                .skip_compatibility_check()
                .build()
                .expect("client");
            if let Err(e) = client.delete_collection(&collection).await {
                eprintln!("could not drop test collection {collection}: {e}");
            }
        }
        if let Some(standin) = self.standin {
            standin.stop().await;
        }
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::embedded().await;
                    super::contract::$name(h.store.clone()).await;
                    h.cleanup().await;
                }
            )*
        }
        mod remote {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::remote().await;
                    super::contract::$name(h.store.clone()).await;
                    h.cleanup().await;
                }
            )*
        }
    };
}

contract_tests!(
    ensure_collection_is_idempotent,
    upsert_then_get,
    upsert_same_id_overwrites,
    invalid_input_is_rejected_before_writing,
    tenant_isolation,
    search_order_limit_offset,
    search_filters_and_threshold,
    deletes_are_idempotent,
    count_matches_scroll,
    concurrent_upserts,
    probe_and_metadata,
);

// ---------------------------------------------------------------------------------------------
// The contract

mod contract {
    use super::*;

    pub async fn ensure_collection_is_idempotent(store: Arc<dyn VectorStore>) {
        // Harness already called it once.
        store.ensure_collection().await.expect("second call");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.ensure_collection().await })
            })
            .collect();
        for h in handles {
            h.await
                .expect("join")
                .expect("concurrent ensure_collection");
        }
        // Still a working collection, and nothing was lost by the repeated calls.
        let org = Uuid::new_v4();
        let p = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        store.upsert(vec![p.clone()]).await.expect("upsert");
        store.ensure_collection().await.expect("after data");
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            1
        );
        assert!(store.get(org, p.id, false).await.expect("get").is_some());
    }

    pub async fn upsert_then_get(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let mut p = point(org, "asset-1", "seg-1", [1.0, 2.0, 3.0, 4.0]);
        p.payload.text = Some("hello wörld".to_owned());
        p.payload.extra.insert(
            "chunk".to_owned(),
            json!({"start_ms": 1500, "end_ms": 3000, "confidence": 0.75, "tags": ["a", "b"]}),
        );
        p.payload.extra.insert("lang".to_owned(), json!("en"));
        let mut bare = point(org, "asset-1", "seg-2", [0.0, 0.0, 3.0, 4.0]);
        bare.payload.model_ver = "2".to_owned();
        store
            .upsert(vec![p.clone(), bare.clone()])
            .await
            .expect("upsert");

        let got = store
            .get(org, p.id, false)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.id, p.id);
        assert_eq!(got.payload, p.payload);
        assert_eq!(got.vector, None);

        let got = store
            .get(org, p.id, true)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.payload, p.payload);
        let stored = got.vector.expect("vector requested");
        // Cosine collections store the L2-normalised vector, not the input.
        assert_close(&stored, &l2_normalized(&p.vector));
        assert!(
            (stored[0] - 1.0).abs() > 0.1,
            "vector was not normalised: {stored:?}"
        );

        let got = store
            .get(org, bare.id, true)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.payload, bare.payload);
        assert_eq!(got.payload.text, None);
        assert_close(&got.vector.expect("vector"), &[0.0, 0.0, 0.6, 0.8]);

        assert!(
            store
                .get(org, Uuid::new_v4(), true)
                .await
                .expect("get")
                .is_none()
        );
        // Empty batch is a no-op.
        store.upsert(Vec::new()).await.expect("empty upsert");
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            2
        );
    }

    pub async fn upsert_same_id_overwrites(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let first = point(org, "asset-1", "seg-1", [1.0, 0.0, 0.0, 0.0]);
        store.upsert(vec![first.clone()]).await.expect("upsert 1");
        let mut second = point(org, "asset-2", "seg-9", [0.0, 1.0, 0.0, 0.0]);
        second.id = first.id;
        second.payload.text = Some("v2".to_owned());
        store.upsert(vec![second.clone()]).await.expect("upsert 2");

        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            1
        );
        assert_eq!(store.count(org, asset("asset-1")).await.expect("count"), 0);
        assert_eq!(store.count(org, asset("asset-2")).await.expect("count"), 1);
        let got = store
            .get(org, first.id, true)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.payload, second.payload);
        assert_close(&got.vector.expect("vector"), &[0.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            store
                .scroll_ids(org, PointFilter::default())
                .await
                .expect("scroll"),
            vec![first.id]
        );
    }

    pub async fn invalid_input_is_rejected_before_writing(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let good = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        let mut short = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        short.vector.pop();
        let err = store
            .upsert(vec![good.clone(), short])
            .await
            .expect_err("wrong dimension");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert!(!err.is_retryable());

        let mut long = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        long.vector.push(1.0);
        let err = store.upsert(vec![long]).await.expect_err("wrong dimension");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

        let mut nan = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        nan.vector[2] = f32::NAN;
        let err = store.upsert(vec![nan]).await.expect_err("NaN");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

        // `extra` must not be able to smuggle in another org_id.
        let mut shadow = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        shadow
            .payload
            .extra
            .insert("org_id".to_owned(), json!(Uuid::new_v4().to_string()));
        let err = store.upsert(vec![shadow]).await.expect_err("reserved key");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

        let mut req = search_req(org, [1.0, 0.0, 0.0, 0.0], 10);
        req.vector.push(0.0);
        let err = store.search(req).await.expect_err("wrong query dimension");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");

        // Nothing of the rejected batches was written, not even its valid point.
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            0
        );
        assert!(store.get(org, good.id, false).await.expect("get").is_none());
    }

    pub async fn tenant_isolation(store: Arc<dyn VectorStore>) {
        let (org_a, org_b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = point(org_a, "shared-asset", "s1", [1.0, 0.0, 0.0, 0.0]);
        let a2 = point(org_a, "shared-asset", "s2", [0.9, 0.1, 0.0, 0.0]);
        let b1 = point(org_b, "shared-asset", "s1", [0.0, 1.0, 0.0, 0.0]);
        store
            .upsert(vec![a1.clone(), a2.clone(), b1.clone()])
            .await
            .expect("upsert");

        // get
        assert!(store.get(org_b, a1.id, true).await.expect("get").is_none());
        assert!(store.get(org_a, b1.id, true).await.expect("get").is_none());
        assert!(store.get(org_a, a1.id, false).await.expect("get").is_some());

        // search: B querying with A's exact vector only sees B's point.
        let hits = store
            .search(search_req(org_b, [1.0, 0.0, 0.0, 0.0], 10))
            .await
            .expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![b1.id]);
        assert!(hits.iter().all(|h| h.payload.org_id == org_b));
        let hits = store
            .search(search_req(org_a, [0.0, 1.0, 0.0, 0.0], 10))
            .await
            .expect("search");
        assert_eq!(set(hits.iter().map(|h| h.id)), set([a1.id, a2.id]));

        // count / scroll
        assert_eq!(
            store
                .count(org_a, PointFilter::default())
                .await
                .expect("count"),
            2
        );
        assert_eq!(
            store
                .count(org_b, PointFilter::default())
                .await
                .expect("count"),
            1
        );
        assert_eq!(
            store
                .count(org_b, asset("shared-asset"))
                .await
                .expect("count"),
            1
        );
        assert_eq!(
            store
                .count(Uuid::new_v4(), PointFilter::default())
                .await
                .expect("count"),
            0
        );
        assert_eq!(
            set(store
                .scroll_ids(org_b, PointFilter::default())
                .await
                .expect("scroll")),
            set([b1.id])
        );

        // delete_points: B cannot delete A's points by id.
        assert_eq!(
            store
                .delete_points(org_b, &[a1.id, a2.id])
                .await
                .expect("delete"),
            0
        );
        assert_eq!(
            store
                .count(org_a, PointFilter::default())
                .await
                .expect("count"),
            2
        );

        // delete_by_filter: B deleting the shared asset leaves A's copy alone.
        assert_eq!(
            store
                .delete_by_filter(org_b, asset("shared-asset"))
                .await
                .expect("delete"),
            1
        );
        assert_eq!(
            store
                .count(org_b, PointFilter::default())
                .await
                .expect("count"),
            0
        );
        assert_eq!(
            store
                .count(org_a, asset("shared-asset"))
                .await
                .expect("count"),
            2
        );
        assert!(store.get(org_a, a2.id, false).await.expect("get").is_some());

        // An org-wide delete (empty filter) is still scoped to the org.
        assert_eq!(
            store
                .delete_by_filter(org_b, PointFilter::default())
                .await
                .expect("delete"),
            0
        );
        assert_eq!(
            store
                .count(org_a, PointFilter::default())
                .await
                .expect("count"),
            2
        );
    }

    /// Five points at known angles to the query [1,0,0,0].
    async fn fan(store: &Arc<dyn VectorStore>, org: Uuid) -> (Vec<NewPoint>, Vec<f32>) {
        let vectors = [
            [2.0, 0.0, 0.0, 0.0],  // cos 1
            [1.0, 0.5, 0.0, 0.0],  // cos 0.894
            [1.0, 1.0, 0.0, 0.0],  // cos 0.707
            [0.0, 0.0, 1.0, 0.0],  // cos 0
            [-1.0, 0.0, 0.0, 0.0], // cos -1
        ];
        let expected = vec![1.0, 0.894_427_2, std::f32::consts::FRAC_1_SQRT_2, 0.0, -1.0];
        let points: Vec<_> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let asset_id = if i % 2 == 0 { "even" } else { "odd" };
                point(org, asset_id, &format!("seg-{i}"), *v)
            })
            .collect();
        // Insert in scrambled order so ordering can't come from insertion order.
        let mut scrambled = points.clone();
        scrambled.swap(0, 4);
        scrambled.swap(1, 3);
        store.upsert(scrambled).await.expect("upsert");
        (points, expected)
    }

    pub async fn search_order_limit_offset(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let (points, expected) = fan(&store, org).await;
        let ids: Vec<Uuid> = points.iter().map(|p| p.id).collect();

        let hits = store
            .search(search_req(org, [3.0, 0.0, 0.0, 0.0], 10))
            .await
            .expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids);
        for (hit, want) in hits.iter().zip(&expected) {
            assert!(
                (hit.score - want).abs() < 1e-4,
                "score {} want {want}",
                hit.score
            );
        }
        for (hit, p) in hits.iter().zip(&points) {
            assert_eq!(hit.payload, p.payload);
            assert_eq!(hit.vector, None);
        }

        let hits = store
            .search(search_req(org, [1.0, 0.0, 0.0, 0.0], 2))
            .await
            .expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids[..2]);

        let mut req = search_req(org, [1.0, 0.0, 0.0, 0.0], 2);
        req.offset = 2;
        req.with_vector = true;
        let hits = store.search(req).await.expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids[2..4]);
        assert_close(
            hits[0].vector.as_deref().expect("vector"),
            &l2_normalized(&points[2].vector),
        );

        let mut req = search_req(org, [1.0, 0.0, 0.0, 0.0], 10);
        req.offset = 4;
        let hits = store.search(req).await.expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids[4..]);

        let mut req = search_req(org, [1.0, 0.0, 0.0, 0.0], 10);
        req.offset = 5;
        assert!(store.search(req).await.expect("search").is_empty());
        assert!(
            store
                .search(search_req(org, [1.0, 0.0, 0.0, 0.0], 0))
                .await
                .expect("search")
                .is_empty()
        );
    }

    pub async fn search_filters_and_threshold(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let (points, _) = fan(&store, org).await;
        let ids: Vec<Uuid> = points.iter().map(|p| p.id).collect();
        let q = [1.0, 0.0, 0.0, 0.0];

        let mut req = search_req(org, q, 10);
        req.filter = asset("even");
        let hits = store.search(req).await.expect("search");
        assert_eq!(
            hits.iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![ids[0], ids[2], ids[4]]
        );

        let mut req = search_req(org, q, 10);
        req.filter = asset("odd");
        let hits = store.search(req).await.expect("search");
        assert_eq!(
            hits.iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![ids[1], ids[3]]
        );

        let mut req = search_req(org, q, 10);
        req.filter = PointFilter {
            segment_id: Some("seg-3".to_owned()),
            ..PointFilter::default()
        };
        let hits = store.search(req).await.expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ids[3]]);

        let mut req = search_req(org, q, 10);
        req.filter = PointFilter {
            asset_id: Some("even".to_owned()),
            segment_id: Some("seg-3".to_owned()),
            ..PointFilter::default()
        };
        assert!(store.search(req).await.expect("search").is_empty());

        // Model and version filters: a point of another model never answers.
        let mut other = point(org, "even", "seg-other-model", [1.0, 0.0, 0.0, 0.0]);
        other.payload.model = "other-model".to_owned();
        store.upsert(vec![other.clone()]).await.expect("upsert");
        let mut req = search_req(org, q, 10);
        req.filter = PointFilter {
            model: Some("test-model".to_owned()),
            model_ver: Some("1".to_owned()),
            ..PointFilter::default()
        };
        let hits = store.search(req).await.expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids);
        let mut req = search_req(org, q, 10);
        req.filter = PointFilter {
            model: Some("other-model".to_owned()),
            ..PointFilter::default()
        };
        let hits = store.search(req).await.expect("search");
        assert_eq!(
            hits.iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![other.id]
        );
        let mut req = search_req(org, q, 10);
        req.filter = PointFilter {
            model: Some("test-model".to_owned()),
            model_ver: Some("2".to_owned()),
            ..PointFilter::default()
        };
        assert!(store.search(req).await.expect("search").is_empty());
        assert_eq!(
            store.delete_points(org, &[other.id]).await.expect("delete"),
            1
        );

        let mut req = search_req(org, q, 10);
        req.score_threshold = Some(0.5);
        let hits = store.search(req).await.expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids[..3]);
        assert!(hits.iter().all(|h| h.score >= 0.5));

        let mut req = search_req(org, q, 10);
        req.score_threshold = Some(0.8);
        req.filter = asset("even");
        let hits = store.search(req).await.expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ids[0]]);

        // count / scroll honour the same filters.
        assert_eq!(store.count(org, asset("even")).await.expect("count"), 3);
        assert_eq!(
            set(store.scroll_ids(org, asset("odd")).await.expect("scroll")),
            set([ids[1], ids[3]])
        );
    }

    pub async fn deletes_are_idempotent(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let p1 = point(org, "a1", "s1", [1.0, 0.0, 0.0, 0.0]);
        let p2 = point(org, "a1", "s2", [0.0, 1.0, 0.0, 0.0]);
        let p3 = point(org, "a2", "s1", [0.0, 0.0, 1.0, 0.0]);
        let p4 = point(org, "a2", "s2", [0.0, 0.0, 0.0, 1.0]);
        store
            .upsert(vec![p1.clone(), p2.clone(), p3.clone(), p4.clone()])
            .await
            .expect("upsert");

        assert_eq!(store.delete_points(org, &[p1.id]).await.expect("delete"), 1);
        assert_eq!(
            store
                .delete_points(org, &[p1.id])
                .await
                .expect("delete again"),
            0
        );
        assert!(store.get(org, p1.id, false).await.expect("get").is_none());
        // Mixed existing + missing ids count only the existing ones.
        assert_eq!(
            store
                .delete_points(org, &[p1.id, p2.id, Uuid::new_v4()])
                .await
                .expect("delete"),
            1
        );
        assert_eq!(store.delete_points(org, &[]).await.expect("empty"), 0);

        assert_eq!(
            store
                .delete_by_filter(org, asset("a2"))
                .await
                .expect("delete"),
            2
        );
        assert_eq!(
            store
                .delete_by_filter(org, asset("a2"))
                .await
                .expect("again"),
            0
        );
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            0
        );
        assert!(
            store
                .scroll_ids(org, PointFilter::default())
                .await
                .expect("scroll")
                .is_empty()
        );
        assert!(
            store
                .search(search_req(org, [0.0, 0.0, 1.0, 0.0], 10))
                .await
                .expect("search")
                .is_empty()
        );

        // Re-upserting a deleted id brings it back.
        store.upsert(vec![p3.clone()]).await.expect("re-upsert");
        assert_eq!(
            store
                .get(org, p3.id, false)
                .await
                .expect("get")
                .map(|p| p.payload),
            Some(p3.payload)
        );
    }

    pub async fn count_matches_scroll(store: Arc<dyn VectorStore>) {
        // More than one scroll page (1024) to exercise paging.
        let org = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut all = Vec::new();
        for batch in 0..5 {
            let points: Vec<_> = (0..300)
                .map(|i| {
                    let x = (batch * 300 + i) as f32;
                    let asset_id = if i % 3 == 0 { "third" } else { "rest" };
                    point(org, asset_id, "s", [1.0, x, x.sin(), x.cos()])
                })
                .collect();
            all.extend(points.iter().map(|p| p.id));
            store.upsert(points).await.expect("upsert");
        }
        store
            .upsert(vec![point(other, "third", "s", [1.0, 1.0, 1.0, 1.0])])
            .await
            .expect("upsert other org");

        let count = store
            .count(org, PointFilter::default())
            .await
            .expect("count");
        let ids = store
            .scroll_ids(org, PointFilter::default())
            .await
            .expect("scroll");
        assert_eq!(count, 1500);
        assert_eq!(ids.len() as u64, count);
        assert_eq!(set(ids), set(all));

        let count = store.count(org, asset("third")).await.expect("count");
        let ids = store.scroll_ids(org, asset("third")).await.expect("scroll");
        assert_eq!(count, 500);
        assert_eq!(ids.len() as u64, count);
        assert_eq!(set(ids).len(), 500);
    }

    pub async fn concurrent_upserts(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..5 {
                        let points: Vec<_> = (0..10)
                            .map(|j| {
                                let x = (t * 50 + i * 10 + j) as f32;
                                point(org, &format!("task-{t}"), "s", [1.0, x, 0.5, -x])
                            })
                            .collect();
                        store.upsert(points).await?;
                        store.count(org, PointFilter::default()).await?;
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        for h in handles {
            h.await.expect("join").expect("concurrent upsert");
        }
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            400
        );
        assert_eq!(store.count(org, asset("task-3")).await.expect("count"), 50);
    }

    pub async fn probe_and_metadata(store: Arc<dyn VectorStore>) {
        store.probe().await.expect("probe");
        assert_eq!(store.vector_size(), DIM);
    }
}

// ---------------------------------------------------------------------------------------------
// Embedded-only: durability, config checks.

mod embedded_only {
    use super::*;

    async fn open_at(
        path: &std::path::Path,
        vector_size: usize,
    ) -> Result<Arc<dyn VectorStore>, StoreError> {
        open(StoreConfig {
            backend: Backend::Embedded {
                path: path.to_owned(),
            },
            collection: "chunks".to_owned(),
            vector_size,
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_drop_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let keep = point(org, "a", "s1", [1.0, 2.0, 0.0, 0.0]);
        let gone = point(org, "a", "s2", [0.0, 2.0, 1.0, 0.0]);
        {
            let store = open_at(dir.path(), DIM).await.expect("open");
            store.ensure_collection().await.expect("ensure");
            store
                .upsert(vec![keep.clone(), gone.clone()])
                .await
                .expect("upsert");
            assert_eq!(
                store.delete_points(org, &[gone.id]).await.expect("delete"),
                1
            );
        }
        assert!(
            dir.path().join("chunks").is_dir(),
            "shard lives in <path>/<collection>"
        );

        let store = open_at(dir.path(), DIM).await.expect("reopen");
        store
            .ensure_collection()
            .await
            .expect("ensure after reopen");
        let got = store
            .get(org, keep.id, true)
            .await
            .expect("get")
            .expect("survived");
        assert_eq!(got.payload, keep.payload);
        assert_close(&got.vector.expect("vector"), &l2_normalized(&keep.vector));
        assert!(store.get(org, gone.id, false).await.expect("get").is_none());
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            1
        );

        // Writes keep working (and keep surviving) after a reopen.
        let later = point(org, "b", "s1", [0.0, 0.0, 0.0, 1.0]);
        store
            .upsert(vec![later.clone()])
            .await
            .expect("upsert after reopen");
        drop(store);
        let store = open_at(dir.path(), DIM).await.expect("reopen 2");
        assert_eq!(
            set(store
                .scroll_ids(org, PointFilter::default())
                .await
                .expect("scroll")),
            set([keep.id, later.id])
        );
    }

    const CRASH_DIR_ENV: &str = "HEIMDEX_STORE_CRASH_TEST_DIR";

    /// Child half of `writes_survive_a_crash`: writes, then aborts without running any
    /// destructor (no `Drop` flush), like `kill -9`. A no-op when run normally.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_child() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let org: Uuid = std::fs::read_to_string(dir.join("org"))
            .expect("org file")
            .trim()
            .parse()
            .expect("org uuid");
        let store = open_at(&dir, DIM).await.expect("open");
        store.ensure_collection().await.expect("ensure");
        let keep = NewPoint {
            id: Uuid::from_u128(1),
            ..point(org, "a", "s1", [1.0, 2.0, 3.0, 4.0])
        };
        let gone = NewPoint {
            id: Uuid::from_u128(2),
            ..point(org, "a", "s2", [4.0, 3.0, 2.0, 1.0])
        };
        store.upsert(vec![keep, gone]).await.expect("upsert");
        assert_eq!(
            store
                .delete_points(org, &[Uuid::from_u128(2)])
                .await
                .expect("delete"),
            1
        );
        std::process::abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_survive_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        std::fs::write(dir.path().join("org"), org.to_string()).expect("write org");
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "embedded_only::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("spawn child");
        assert!(!status.success(), "child must die by abort, got {status:?}");

        let store = open_at(dir.path(), DIM).await.expect("open after crash");
        let got = store
            .get(org, Uuid::from_u128(1), true)
            .await
            .expect("get")
            .expect("acknowledged upsert survived the crash");
        assert_eq!(got.payload, payload(org, "a", "s1"));
        assert_close(
            &got.vector.expect("vector"),
            &l2_normalized(&[1.0, 2.0, 3.0, 4.0]),
        );
        assert!(
            store
                .get(org, Uuid::from_u128(2), false)
                .await
                .expect("get")
                .is_none(),
            "acknowledged delete survived the crash"
        );
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_with_other_vector_size_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open_at(dir.path(), DIM).await.expect("open"));
        let err = open_at(dir.path(), DIM + 1)
            .await
            .expect_err("size mismatch");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert!(open_at(dir.path(), DIM).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_open_of_same_dir_is_refused_while_first_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open_at(dir.path(), DIM).await.expect("open");
        let err = open_at(dir.path(), DIM).await.expect_err("dir is locked");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.is_retryable());
        drop(first);
        assert!(open_at(dir.path(), DIM).await.is_ok());
    }

    /// Past a few thousand points the optimizers index the segments (in the background, and on
    /// demand): afterwards the vectors are HNSW-indexed, and search, counts, scroll and a reopen
    /// see exactly the same data. 384-d, so the segment crosses Qdrant's indexing threshold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn optimizing_keeps_every_point_and_the_same_answers() {
        use heimdex_store::EmbeddedStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        const D: usize = 384;
        let store = EmbeddedStore::open(dir.path().to_owned(), "chunks".into(), D)
            .await
            .expect("open");
        store.ensure_collection().await.expect("ensure");
        let vector = |i: usize| -> Vec<f32> {
            (0..D)
                .map(|d| ((i * D + d) as f32 * 0.618_034).sin())
                .collect()
        };
        let mut ids = Vec::new();
        for batch in 0..14 {
            let points: Vec<NewPoint> = (batch * 500..(batch + 1) * 500)
                .map(|i| {
                    let id = Uuid::new_v4();
                    ids.push(id);
                    NewPoint {
                        id,
                        vector: vector(i),
                        payload: payload(org, &format!("a-{}", i % 10), &format!("s-{i}")),
                    }
                })
                .collect();
            store.upsert(points).await.expect("upsert");
        }
        let query = |i: usize| SearchRequest {
            org_id: org,
            vector: vector(i),
            limit: 3,
            offset: 0,
            filter: PointFilter::default(),
            score_threshold: None,
            with_vector: false,
        };
        let before: Vec<Uuid> = store
            .search(query(1234))
            .await
            .expect("search")
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(before[0], ids[1234]);
        store.optimize().await.expect("optimize");
        let indexed = store.indexed_vectors().await.expect("info");
        assert!(indexed >= 5_000, "only {indexed} of 7,000 vectors indexed");
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            7_000
        );
        assert_eq!(store.count(org, asset("a-4")).await.expect("count"), 700);
        let after: Vec<Uuid> = store
            .search(query(1234))
            .await
            .expect("search")
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(after[0], ids[1234]);
        for i in [0, 777, 6999] {
            let hits = store.search(query(i)).await.expect("search");
            assert_eq!(hits[0].id, ids[i], "nearest of {i}");
        }
        assert_eq!(
            set(store
                .scroll_ids(org, PointFilter::default())
                .await
                .expect("scroll")),
            set(ids.clone())
        );
        // Survives a reopen (the background run may still hold the directory for a moment).
        drop(store);
        let reopened = heimdex_tests_reopen(dir.path()).await;
        assert_eq!(
            reopened
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            7_000
        );
    }

    async fn heimdex_tests_reopen(path: &std::path::Path) -> Arc<dyn VectorStore> {
        for _ in 0..50 {
            match open(StoreConfig {
                backend: Backend::Embedded {
                    path: path.to_owned(),
                },
                collection: "chunks".to_owned(),
                vector_size: 384,
            })
            .await
            {
                Ok(store) => return store,
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                }
                Err(err) => panic!("reopen: {err}"),
            }
        }
        panic!("store still locked");
    }

    /// `EdgeShard`'s own drop flushes and panics when that fails; a store whose directory was
    /// removed underneath it (a test's temp dir, an operator's `rm -rf`) must still drop quietly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_after_directory_removed_does_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let store = open_at(dir.path(), DIM).await.expect("open");
        store.ensure_collection().await.expect("ensure");
        store
            .upsert(vec![point(org, "a", "s1", [1.0, 0.0, 0.0, 0.0])])
            .await
            .expect("upsert");
        std::fs::remove_dir_all(dir.path()).expect("remove the data dir");
        drop(store);
    }

    #[tokio::test]
    async fn bad_config_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        for collection in ["../escape", "a/b", ""] {
            let err = open(StoreConfig {
                backend: Backend::Embedded {
                    path: dir.path().to_owned(),
                },
                collection: collection.to_owned(),
                vector_size: DIM,
            })
            .await
            .expect_err("bad collection name");
            assert!(
                matches!(err, StoreError::InvalidInput(_)),
                "{collection:?}: {err:?}"
            );
        }
        let err = open_at(dir.path(), 0).await.expect_err("zero size");
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    }
}
