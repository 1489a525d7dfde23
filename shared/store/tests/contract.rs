//! Contract suite for every `VectorStore` adapter.
//!
//! Each `contract::*` function is run three times, each in a fresh store:
//! * `embedded`: the embedded adapter in a temp dir;
//! * `remote`: the remote adapter against the Qdrant server at `QDRANT_URL` (optionally
//!   `QDRANT_API_KEY`) when that is set, and otherwise against a `heimdex-qdrant-standin` of the
//!   test's own (Qdrant's gRPC API over the Qdrant engine, random port, temp dir), so the remote
//!   adapter is exercised in every run;
//! * `server`: the remote adapter against a real Qdrant server: `QDRANT_URL`, or the binary
//!   `../shared/tools/qdrant` started for the test. Without either it prints that it skipped.
//!
//! Remote stores use a fresh collection `heimdex_contract_<uuid>`, dropped afterwards.
//! `ranking::*` loads one corpus into every adapter at hand and checks that each search ranks
//! alike everywhere. Embedded-only tests (durability across restart and crash, shard config
//! checks, the upgrade of an old shard) and remote upgrade tests follow.

use std::collections::BTreeSet;
use std::sync::Arc;

use heimdex_domain::Metadata;
use heimdex_domain::metadata::{MetaCondition, MetaFilter, MetaRange};
use heimdex_store::{
    Backend, Fusion, Mmr, NewPoint, Payload, PointFilter, ScoredPoint, SearchMode, SearchRequest,
    StoreConfig, StoreError, StoreKind, VectorStore, l2_normalized, open,
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
        seq: None,
        meta: Metadata::default(),
        moved_from: None,
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
    SearchRequest::dense(org_id, vector.to_vec(), limit)
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
    /// A real Qdrant server started for the test (killed on drop).
    _server: Option<heimdex_qdrant_standin::real::RealQdrant>,
    _dir: Option<tempfile::TempDir>,
    /// (url, api key, collection) to drop at the end of a remote test.
    remote: Option<(String, Option<String>, String)>,
}

fn fresh_collection() -> String {
    format!("heimdex_contract_{}", Uuid::new_v4().simple())
}

/// A Qdrant server for the remote adapter, and what keeps it running.
struct QdrantAt {
    url: String,
    api_key: Option<String>,
    standin: Option<heimdex_qdrant_standin::Standin>,
    server: Option<heimdex_qdrant_standin::real::RealQdrant>,
    dir: Option<tempfile::TempDir>,
}

impl QdrantAt {
    async fn start(source: Remote) -> Option<Self> {
        let api_key = std::env::var("QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        match source {
            Remote::RealServer => {
                let server = heimdex_qdrant_standin::real::RealQdrant::start().await?;
                Some(Self {
                    url: server.url().to_owned(),
                    api_key,
                    standin: None,
                    server: Some(server),
                    dir: None,
                })
            }
            Remote::UrlOrStandin => {
                match std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty()) {
                    Some(url) => Some(Self {
                        url,
                        api_key,
                        standin: None,
                        server: None,
                        dir: None,
                    }),
                    None => {
                        let dir = tempfile::tempdir().expect("tempdir");
                        let standin = heimdex_qdrant_standin::Standin::start(
                            dir.path(),
                            "127.0.0.1:0".parse().expect("address"),
                        )
                        .await
                        .expect("start qdrant stand-in");
                        Some(Self {
                            url: standin.url(),
                            api_key,
                            standin: Some(standin),
                            server: None,
                            dir: Some(dir),
                        })
                    }
                }
            }
        }
    }

    /// A real server, or `None` after saying the test skipped it.
    async fn start_real(test: &str) -> Option<Self> {
        let qdrant = Self::start(Remote::RealServer).await;
        if qdrant.is_none() {
            eprintln!(
                "{test}: skipped against a real Qdrant server: set QDRANT_URL or put the binary \
                 at ../shared/tools/qdrant"
            );
        }
        qdrant
    }

    fn client(&self) -> qdrant_client::Qdrant {
        qdrant_client::Qdrant::from_url(&self.url)
            .api_key(self.api_key.clone())
            .skip_compatibility_check()
            .build()
            .expect("client")
    }
}

/// Where a remote harness's Qdrant comes from.
enum Remote {
    /// `QDRANT_URL` if set, else a stand-in.
    UrlOrStandin,
    /// A real server (`QDRANT_URL`, or `../shared/tools/qdrant`), if there is one.
    RealServer,
}

impl Harness {
    async fn embedded() -> Self {
        Self::embedded_with(DIM).await
    }

    async fn embedded_with(vector_size: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(StoreConfig {
            backend: Backend::Embedded {
                path: dir.path().join("qdrant"),
            },
            collection: "chunks".to_owned(),
            vector_size,
        })
        .await
        .expect("open embedded store");
        assert_eq!(store.kind(), StoreKind::Embedded);
        store.ensure_collection().await.expect("ensure_collection");
        Self {
            store,
            standin: None,
            _server: None,
            _dir: Some(dir),
            remote: None,
        }
    }

    async fn remote() -> Self {
        let qdrant = QdrantAt::start(Remote::UrlOrStandin)
            .await
            .expect("a stand-in is always available");
        Self::on(qdrant, fresh_collection(), DIM).await
    }

    /// A real Qdrant server, or `None` (after saying so) when there is none.
    async fn server(test: &str) -> Option<Self> {
        let qdrant = QdrantAt::start_real(test).await?;
        Some(Self::on(qdrant, fresh_collection(), DIM).await)
    }

    /// The remote adapter on `qdrant`'s `collection` (which may exist already).
    async fn on(qdrant: QdrantAt, collection: String, vector_size: usize) -> Self {
        let store = open(StoreConfig {
            backend: Backend::Remote {
                url: qdrant.url.clone(),
                api_key: qdrant.api_key.clone().map(secrecy::SecretString::from),
            },
            collection: collection.clone(),
            vector_size,
        })
        .await
        .expect("open remote store");
        assert_eq!(store.kind(), StoreKind::Remote);
        store.ensure_collection().await.expect("ensure_collection");
        Self {
            store,
            standin: qdrant.standin,
            _server: qdrant.server,
            _dir: qdrant.dir,
            remote: Some((qdrant.url, qdrant.api_key, collection)),
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
        mod server {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = super::Harness::server(stringify!($name)).await else {
                        return;
                    };
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
    deletes_spare_later_writes,
    count_matches_scroll,
    concurrent_upserts,
    probe_and_metadata,
    keyword_search_ranks_by_bm25,
    hybrid_fuses_both_lists,
    fusion_choices,
    mmr_diversifies_near_duplicates,
    explain_shows_each_list,
    tenant_isolation_in_every_mode,
    invalid_searches_are_rejected,
    metadata_is_stored_under_meta,
    metadata_filters,
    tenant_isolation_with_metadata_filters,
    moved_points_are_found_and_deleted_by_the_id_they_moved_from,
);

// ---------------------------------------------------------------------------------------------
// The contract

mod contract {
    use super::*;

    /// A point a model change re-embedded records the id its job named (`moved_from`): it
    /// comes back as written, a filter on it finds exactly it (in the caller's org only), and
    /// a delete by it (before a sequence) removes it.
    pub async fn moved_points_are_found_and_deleted_by_the_id_they_moved_from(
        store: Arc<dyn VectorStore>,
    ) {
        let (org, other) = (Uuid::new_v4(), Uuid::new_v4());
        let original = Uuid::new_v4();
        let mut moved = point(org, "doc", "s-0", [1.0, 0.0, 0.0, 0.0]);
        moved.payload.moved_from = Some(original);
        moved.payload.seq = Some(7);
        let plain = point(org, "doc", "s-1", [0.0, 1.0, 0.0, 0.0]);
        let mut foreign = point(other, "doc", "s-0", [1.0, 0.0, 0.0, 0.0]);
        foreign.payload.moved_from = Some(original);
        store
            .upsert(vec![moved.clone(), plain.clone(), foreign.clone()])
            .await
            .expect("upsert");
        let read = store.get(org, moved.id, false).await.expect("get");
        assert_eq!(read.map(|p| p.payload.moved_from), Some(Some(original)));
        let by = |before_seq| PointFilter {
            moved_from: Some(original),
            before_seq,
            ..PointFilter::default()
        };
        assert_eq!(
            store.scroll_ids(org, by(None)).await.expect("scroll"),
            vec![moved.id]
        );
        // A delete that comes before the write in the log spares it.
        assert_eq!(
            store
                .delete_by_filter(org, by(Some(5)))
                .await
                .expect("delete"),
            0
        );
        assert_eq!(
            store
                .delete_by_filter(org, by(Some(9)))
                .await
                .expect("delete"),
            1
        );
        for (org, id, held) in [
            (org, moved.id, false),
            (org, plain.id, true),
            (other, foreign.id, true),
        ] {
            let got = store.get(org, id, false).await.expect("get");
            assert_eq!(got.is_some(), held, "{id}");
        }
    }

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
        req.vector.as_mut().expect("vector").push(0.0);
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

        // Model and version filters: a point of another model never answers, whether it is
        // written before or after a search of one model (the embedded store skips conditions
        // every point meets while the collection holds one model).
        let one_model = |model: &str, model_ver: &str| {
            let mut req = search_req(org, q, 10);
            req.filter = PointFilter {
                model: Some(model.to_owned()),
                model_ver: Some(model_ver.to_owned()),
                ..PointFilter::default()
            };
            req
        };
        let hits = store
            .search(one_model("test-model", "1"))
            .await
            .expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), ids);
        for (model, model_ver) in [("test-model", "2"), ("other-model", "1")] {
            let hits = store.search(one_model(model, model_ver)).await;
            assert!(hits.expect("search").is_empty(), "{model} {model_ver}");
        }
        let mut other = point(org, "even", "seg-other-model", [1.0, 0.0, 0.0, 0.0]);
        other.payload.model = "other-model".to_owned();
        store.upsert(vec![other.clone()]).await.expect("upsert");
        let hits = store
            .search(one_model("test-model", "1"))
            .await
            .expect("search");
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
        let hits = store.search(one_model("test-model", "2")).await;
        assert!(hits.expect("search").is_empty());
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

    /// A delete at sequence `s` (`before_seq`) removes points written before `s` and points
    /// without a sequence, never points written at or after `s`; `scroll_points` reads the
    /// payloads back, `seq` included, scoped to the org.
    pub async fn deletes_spare_later_writes(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut points = Vec::new();
        for (segment, seq) in [
            ("old", Some(5)),
            ("unknown", None),
            ("edge", Some(10)),
            ("new", Some(12)),
        ] {
            let mut p = point(org, "doc", segment, [1.0, 0.0, 0.0, 0.0]);
            p.payload.seq = seq;
            points.push(p);
        }
        let mut foreign = point(other, "doc", "old", [1.0, 0.0, 0.0, 0.0]);
        foreign.payload.seq = Some(1);
        points.push(foreign.clone());
        let ids: Vec<Uuid> = points.iter().map(|p| p.id).collect();
        store.upsert(points).await.expect("upsert");

        let read = store
            .scroll_points(org, asset("doc"))
            .await
            .expect("scroll");
        assert_eq!(read.len(), 4);
        let seq_of = |segment: &str| {
            read.iter()
                .find(|p| p.payload.segment_id == segment)
                .map(|p| p.payload.seq)
        };
        assert_eq!(seq_of("old"), Some(Some(5)));
        assert_eq!(seq_of("unknown"), Some(None));
        assert_eq!(seq_of("new"), Some(Some(12)));
        assert!(
            read.iter()
                .all(|p| p.vector.is_none() && p.payload.org_id == org)
        );

        let filter = PointFilter {
            before_seq: Some(10),
            ..asset("doc")
        };
        assert_eq!(store.count(org, filter.clone()).await.expect("count"), 2);
        assert_eq!(
            store.delete_by_filter(org, filter).await.expect("delete"),
            2
        );
        let left: BTreeSet<String> = store
            .scroll_points(org, asset("doc"))
            .await
            .expect("scroll")
            .into_iter()
            .map(|p| p.payload.segment_id)
            .collect();
        assert_eq!(left, ["edge", "new"].map(String::from).into());
        // The other org's older point is untouched.
        assert!(
            store
                .get(other, foreign.id, false)
                .await
                .expect("get")
                .is_some()
        );
        assert_eq!(ids.len(), 5);
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

    // -----------------------------------------------------------------------------------------
    // Keyword and hybrid search, MMR, explain.

    /// A point with text.
    fn doc(org: Uuid, segment: &str, text: &str, vector: [f32; DIM]) -> NewPoint {
        let mut p = point(org, "docs", segment, vector);
        p.payload.text = Some(text.to_owned());
        p
    }

    fn ids(hits: &[ScoredPoint]) -> Vec<Uuid> {
        hits.iter().map(|h| h.id).collect()
    }

    /// Six documents about three topics; the query "thread scheduling" with the vector of
    /// `memory`'s topic.
    struct Library {
        kernel: NewPoint,
        disk: NewPoint,
        compiler: NewPoint,
        parser: NewPoint,
        memory: NewPoint,
        sorting: NewPoint,
    }

    async fn library(store: &Arc<dyn VectorStore>, org: Uuid) -> Library {
        let lib = Library {
            // Distinct similarities to QUERY_VECTOR, so the dense ranking has no ties.
            kernel: doc(
                org,
                "kernel",
                "Kernel thread scheduling in operating systems",
                [1.0, 0.0, 0.1, 0.0],
            ),
            disk: doc(
                org,
                "disk",
                "Scheduling of disk requests",
                [0.9, 0.1, 0.05, 0.0],
            ),
            compiler: doc(
                org,
                "compiler",
                "A compiler for algebraic languages",
                [0.0, 1.0, 0.02, 0.0],
            ),
            parser: doc(
                org,
                "parser",
                "Parsing algebraic expressions with a compiler",
                [0.0, 0.9, 0.3, 0.0],
            ),
            memory: doc(
                org,
                "memory",
                "Memory paging and thread scheduling",
                [0.0, 0.0, 1.0, 0.0],
            ),
            sorting: doc(org, "sorting", "Sorting algorithms", [0.0, 0.0, -0.1, 1.0]),
        };
        store
            .upsert(vec![
                lib.kernel.clone(),
                lib.disk.clone(),
                lib.compiler.clone(),
                lib.parser.clone(),
                lib.memory.clone(),
                lib.sorting.clone(),
            ])
            .await
            .expect("upsert");
        lib
    }

    const QUERY_VECTOR: [f32; DIM] = [0.0, 0.0, 1.0, 0.0];
    const QUERY_TEXT: &str = "thread scheduling";

    pub async fn keyword_search_ranks_by_bm25(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let lib = library(&store, org).await;
        let hits = store
            .search(SearchRequest::keyword(org, QUERY_TEXT, 10))
            .await
            .expect("keyword search");
        // Both terms, shortest text first (BM25's length normalisation), then the document
        // with only the commoner term ("scheduling" is in three texts, "thread" in two).
        assert_eq!(ids(&hits), vec![lib.memory.id, lib.kernel.id, lib.disk.id]);
        assert!(hits.windows(2).all(|w| w[0].score > w[1].score), "{hits:?}");
        assert!(hits.iter().all(|h| h.explain.is_none()));
        assert_eq!(hits[0].payload, lib.memory.payload);

        // Stemming: "threads scheduled" finds the same texts.
        let hits = store
            .search(SearchRequest::keyword(org, "Threads SCHEDULED", 10))
            .await
            .expect("keyword search");
        assert_eq!(ids(&hits), vec![lib.memory.id, lib.kernel.id, lib.disk.id]);

        // Only stop words: nothing to match.
        let hits = store
            .search(SearchRequest::keyword(org, "the of and", 10))
            .await
            .expect("keyword search");
        assert!(hits.is_empty());

        // The threshold compares BM25 scores; filters apply; paging by offset.
        let all = store
            .search(SearchRequest::keyword(org, QUERY_TEXT, 10))
            .await
            .expect("search");
        let mut req = SearchRequest::keyword(org, QUERY_TEXT, 10);
        req.score_threshold = Some((all[1].score + all[2].score) / 2.0);
        assert_eq!(
            ids(&store.search(req).await.expect("search")),
            ids(&all[..2])
        );
        let mut req = SearchRequest::keyword(org, QUERY_TEXT, 10);
        req.filter = PointFilter {
            segment_id: Some("disk".to_owned()),
            ..PointFilter::default()
        };
        assert_eq!(
            ids(&store.search(req).await.expect("search")),
            vec![lib.disk.id]
        );
        let mut req = SearchRequest::keyword(org, QUERY_TEXT, 1);
        req.offset = 1;
        assert_eq!(
            ids(&store.search(req).await.expect("search")),
            vec![lib.kernel.id]
        );

        // A point rewritten with other text is found by its new text only.
        let mut rewritten = lib.disk.clone();
        rewritten.payload.text = Some("Sorting disk blocks".to_owned());
        store.upsert(vec![rewritten]).await.expect("upsert");
        let hits = store
            .search(SearchRequest::keyword(org, QUERY_TEXT, 10))
            .await
            .expect("search");
        assert_eq!(ids(&hits), vec![lib.memory.id, lib.kernel.id]);
        let hits = store
            .search(SearchRequest::keyword(org, "sorting", 10))
            .await
            .expect("search");
        assert_eq!(set(ids(&hits)), set([lib.disk.id, lib.sorting.id]));
    }

    pub async fn hybrid_fuses_both_lists(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let lib = library(&store, org).await;
        let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
        req.explain = true;
        let hits = store.search(req).await.expect("hybrid search");
        // First in both lists, so first fused; every point is in the dense list.
        assert_eq!(hits[0].id, lib.memory.id);
        assert_eq!(set(ids(&hits)), set(ids(&all_points(&lib))));
        for hit in &hits {
            let explain = hit.explain.expect("explain");
            // RRF, k = 60: each list a point is in adds 1 / (60 + rank).
            let expected: f32 = [explain.dense, explain.keyword]
                .iter()
                .flatten()
                .map(|r| 1.0 / (60.0 + r.rank as f32))
                .sum();
            assert!((hit.score - expected).abs() < 1e-6, "{hit:?}");
        }
        assert!(
            hits.windows(2).all(|w| w[0].score >= w[1].score),
            "{hits:?}"
        );

        // Without query text, hybrid is dense.
        let req = SearchRequest {
            mode: SearchMode::Hybrid,
            ..SearchRequest::dense(org, QUERY_VECTOR.to_vec(), 10)
        };
        assert_eq!(req.effective_mode(), SearchMode::Dense);
        let hybrid = store.search(req).await.expect("hybrid, vector only");
        let dense = store
            .search(SearchRequest::dense(org, QUERY_VECTOR.to_vec(), 10))
            .await
            .expect("dense");
        assert_eq!(hybrid, dense);
        assert!((dense[0].score - 1.0).abs() < 1e-5);

        // Paging through a fused ranking neither repeats nor skips a point.
        let mut paged = Vec::new();
        for offset in 0..6 {
            let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 1);
            req.offset = offset;
            paged.extend(ids(&store.search(req).await.expect("page")));
        }
        assert_eq!(paged, ids(&hits));

        // The threshold compares fused scores.
        let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
        req.score_threshold = Some(hits[2].score);
        let above = store.search(req).await.expect("threshold");
        assert!(above.len() >= 3 && above.iter().all(|h| h.score >= hits[2].score));
    }

    fn all_points(lib: &Library) -> Vec<ScoredPoint> {
        [
            &lib.kernel,
            &lib.disk,
            &lib.compiler,
            &lib.parser,
            &lib.memory,
            &lib.sorting,
        ]
        .into_iter()
        .map(|p| ScoredPoint {
            id: p.id,
            score: 0.0,
            payload: p.payload.clone(),
            vector: None,
            explain: None,
        })
        .collect()
    }

    pub async fn fusion_choices(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let lib = library(&store, org).await;
        let hybrid = |fusion: Fusion| {
            let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
            req.fusion = fusion;
            req.explain = true;
            let store = Arc::clone(&store);
            async move { store.search(req).await.expect("hybrid search") }
        };
        let dense = store
            .search(SearchRequest::dense(org, QUERY_VECTOR.to_vec(), 10))
            .await
            .expect("dense");
        let keyword = store
            .search(SearchRequest::keyword(org, QUERY_TEXT, 10))
            .await
            .expect("keyword");

        // Weight 0 on one side: the other side's order (points only on the muted side last).
        let dense_only = hybrid(Fusion::Rrf {
            k: 60,
            dense_weight: 1.0,
            keyword_weight: 0.0,
        })
        .await;
        assert_eq!(ids(&dense_only), ids(&dense));
        let keyword_only = hybrid(Fusion::Rrf {
            k: 60,
            dense_weight: 0.0,
            keyword_weight: 1.0,
        })
        .await;
        assert_eq!(ids(&keyword_only[..3]), ids(&keyword));

        // Weights scale ranks: with the keyword list weighted 3, a keyword rank r counts as
        // rank r / 3.
        let weighted = hybrid(Fusion::Rrf {
            k: 60,
            dense_weight: 1.0,
            keyword_weight: 3.0,
        })
        .await;
        for hit in &weighted {
            let explain = hit.explain.expect("explain");
            let expected = explain.dense.map_or(0.0, |r| 1.0 / (60.0 + r.rank as f32))
                + explain
                    .keyword
                    .map_or(0.0, |r| 1.0 / (60.0 + r.rank as f32 / 3.0));
            assert!((hit.score - expected).abs() < 1e-6, "{hit:?}");
        }
        // A small k makes the top ranks count for more.
        let small_k = hybrid(Fusion::Rrf {
            k: 1,
            dense_weight: 1.0,
            keyword_weight: 1.0,
        })
        .await;
        assert!((small_k[0].score - 1.0).abs() < 1e-6, "{small_k:?}");
        assert_eq!(small_k[0].id, lib.memory.id);

        // DBSF: each list scaled into [0, 1] by its mean ± 3 sigma, then summed.
        let dbsf = hybrid(Fusion::Dbsf).await;
        assert_eq!(dbsf[0].id, lib.memory.id);
        assert!(
            dbsf.iter().all(|h| (0.0..=2.0).contains(&h.score)),
            "{dbsf:?}"
        );
        assert!(dbsf.windows(2).all(|w| w[0].score >= w[1].score));
        assert_eq!(set(ids(&dbsf)), set(ids(&dense)));
    }

    pub async fn mmr_diversifies_near_duplicates(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let text = "thread scheduling for kernels";
        let twins = [
            doc(org, "twin-1", text, [1.0, 0.0, 0.0, 0.0]),
            doc(org, "twin-2", text, [1.0, 0.02, 0.0, 0.0]),
            doc(org, "twin-3", text, [1.0, 0.0, 0.02, 0.0]),
        ];
        let pools = doc(org, "pools", "thread pools", [0.8, 0.6, 0.0, 0.0]);
        let queues = doc(org, "queues", "scheduling queues", [0.8, 0.0, 0.0, 0.6]);
        let mut all = twins.to_vec();
        all.extend([pools.clone(), queues.clone()]);
        store.upsert(all).await.expect("upsert");
        let twin_ids = set(twins.iter().map(|t| t.id));
        let q = [1.0, 0.0, 0.0, 0.0];

        for mode in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
            let mut req = SearchRequest::hybrid(org, q.to_vec(), "thread scheduling", 3);
            req.mode = mode;
            let plain = store.search(req.clone()).await.expect("search");
            if mode != SearchMode::Keyword {
                // Without MMR the three near-duplicates fill the page.
                assert_eq!(set(ids(&plain)), twin_ids, "{mode:?}");
            }
            req.mmr = Some(Mmr {
                diversity: 0.8,
                candidates: 5,
            });
            let diverse = store.search(req.clone()).await.expect("mmr search");
            assert_eq!(diverse.len(), 3, "{mode:?}");
            let dups = diverse.iter().filter(|h| twin_ids.contains(&h.id)).count();
            assert_eq!(
                dups, 1,
                "{mode:?}: one twin, then the two distinct texts: {diverse:?}"
            );
            assert!(
                twin_ids.contains(&diverse[0].id),
                "{mode:?}: most relevant first"
            );
            assert_eq!(
                set(ids(&diverse[1..])),
                set([pools.id, queues.id]),
                "{mode:?}"
            );
            // MMR reports each hit's similarity to the query vector.
            assert!((diverse[0].score - 1.0).abs() < 1e-3, "{diverse:?}");

            // No diversity: relevance order, the twins again.
            req.mmr = Some(Mmr {
                diversity: 0.0,
                candidates: 5,
            });
            let relevant = store.search(req).await.expect("mmr search");
            assert_eq!(set(ids(&relevant)), twin_ids, "{mode:?}");
        }
    }

    pub async fn explain_shows_each_list(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let lib = library(&store, org).await;
        let dense = store
            .search(SearchRequest::dense(org, QUERY_VECTOR.to_vec(), 10))
            .await
            .expect("dense");
        let keyword = store
            .search(SearchRequest::keyword(org, QUERY_TEXT, 10))
            .await
            .expect("keyword");
        for mode in [SearchMode::Hybrid, SearchMode::Dense, SearchMode::Keyword] {
            let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
            req.mode = mode;
            req.explain = true;
            let hits = store.search(req).await.expect("search");
            assert!(!hits.is_empty());
            for hit in &hits {
                let explain = hit.explain.expect("explain");
                let in_list = |list: &[ScoredPoint]| {
                    list.iter()
                        .position(|h| h.id == hit.id)
                        .map(|i| (i + 1, list[i].score))
                };
                assert_eq!(
                    explain.dense.map(|r| (r.rank, r.score)),
                    in_list(&dense),
                    "{mode:?} {hit:?}"
                );
                assert_eq!(
                    explain.keyword.map(|r| (r.rank, r.score)),
                    in_list(&keyword),
                    "{mode:?} {hit:?}"
                );
            }
        }
        // `compiler` has none of the query's words: no keyword rank.
        let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
        req.explain = true;
        let hits = store.search(req).await.expect("search");
        let compiler = hits
            .iter()
            .find(|h| h.id == lib.compiler.id)
            .expect("in dense list");
        assert!(compiler.explain.expect("explain").keyword.is_none());
        assert!(compiler.explain.expect("explain").dense.is_some());
        // Keyword mode without a vector has no dense list to explain with.
        let mut req = SearchRequest::keyword(org, QUERY_TEXT, 10);
        req.explain = true;
        let hits = store.search(req).await.expect("search");
        assert!(
            hits.iter()
                .all(|h| h.explain.expect("explain").dense.is_none())
        );
    }

    pub async fn tenant_isolation_in_every_mode(store: Arc<dyn VectorStore>) {
        let (org_a, org_b) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = doc(
            org_a,
            "a",
            "Confidential merger of Initech and Globex",
            [1.0, 0.0, 0.0, 0.0],
        );
        let twin = doc(
            org_a,
            "a2",
            "Confidential merger of Initech and Globex",
            [1.0, 0.01, 0.0, 0.0],
        );
        let mine = doc(org_b, "b", "Quarterly merger report", [0.0, 1.0, 0.0, 0.0]);
        store
            .upsert(vec![secret.clone(), twin.clone(), mine.clone()])
            .await
            .expect("upsert");
        let query = "confidential merger Initech Globex";
        for mode in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
            for fusion in [Fusion::default(), Fusion::Dbsf] {
                for mmr in [
                    None,
                    Some(Mmr {
                        diversity: 0.5,
                        candidates: 10,
                    }),
                ] {
                    let mut req = SearchRequest::hybrid(org_b, vec![1.0, 0.0, 0.0, 0.0], query, 10);
                    req.mode = mode;
                    req.fusion = fusion;
                    req.mmr = mmr;
                    req.explain = true;
                    let hits = store.search(req).await.expect("search");
                    let seen = ids(&hits);
                    assert!(
                        seen.iter().all(|id| *id == mine.id),
                        "{mode:?} {fusion:?} {mmr:?}: org B saw {seen:?}"
                    );
                    assert!(hits.iter().all(|h| h.payload.org_id == org_b));
                    // Org A's own search does find them.
                    let mut req = SearchRequest::hybrid(org_a, vec![1.0, 0.0, 0.0, 0.0], query, 10);
                    req.mode = mode;
                    req.fusion = fusion;
                    req.mmr = mmr;
                    let hits = store.search(req).await.expect("search");
                    assert!(ids(&hits).contains(&secret.id), "{mode:?}");
                    assert!(!ids(&hits).contains(&mine.id), "{mode:?}");
                }
            }
        }
        // A tenant with no points finds nothing in any mode.
        let nobody = Uuid::new_v4();
        for mode in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
            let mut req = SearchRequest::hybrid(nobody, vec![1.0, 0.0, 0.0, 0.0], query, 10);
            req.mode = mode;
            assert!(store.search(req).await.expect("search").is_empty());
        }
    }

    pub async fn invalid_searches_are_rejected(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        library(&store, org).await;
        let invalid = |req: SearchRequest| {
            let store = Arc::clone(&store);
            async move {
                let err = store.search(req.clone()).await.expect_err("invalid");
                assert!(
                    matches!(err, StoreError::InvalidInput(_)),
                    "{req:?}: {err:?}"
                );
            }
        };
        // Keyword search needs text; dense and hybrid need a vector.
        let mut req = SearchRequest::dense(org, QUERY_VECTOR.to_vec(), 10);
        req.mode = SearchMode::Keyword;
        invalid(req).await;
        let mut req = SearchRequest::keyword(org, QUERY_TEXT, 10);
        req.mode = SearchMode::Hybrid;
        invalid(req.clone()).await;
        req.mode = SearchMode::Dense;
        invalid(req).await;
        // MMR needs a vector and a diversity in 0..1, and enough candidates for the page.
        let mut req = SearchRequest::keyword(org, QUERY_TEXT, 10);
        req.mmr = Some(Mmr {
            diversity: 0.5,
            candidates: 10,
        });
        invalid(req).await;
        for mmr in [
            Mmr {
                diversity: 1.5,
                candidates: 10,
            },
            Mmr {
                diversity: -0.1,
                candidates: 10,
            },
            Mmr {
                diversity: 0.5,
                candidates: 5,
            },
        ] {
            let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
            req.mmr = Some(mmr);
            invalid(req).await;
        }
        let mut req = SearchRequest::hybrid(org, QUERY_VECTOR.to_vec(), QUERY_TEXT, 10);
        req.fusion = Fusion::Rrf {
            k: 0,
            dense_weight: 1.0,
            keyword_weight: 1.0,
        };
        invalid(req).await;
        let mut req = SearchRequest::hybrid(org, vec![1.0, 0.0], QUERY_TEXT, 10);
        req.mode = SearchMode::Hybrid;
        invalid(req).await;
    }

    fn meta(value: serde_json::Value) -> Metadata {
        Metadata::from_json(value).expect("valid metadata")
    }

    fn eq(key: &str, value: serde_json::Value) -> MetaCondition {
        MetaCondition::parse(key, Some(value), None, None).expect("condition")
    }

    fn any(key: &str, values: Vec<serde_json::Value>) -> MetaCondition {
        MetaCondition::parse(key, None, Some(values), None).expect("condition")
    }

    fn range(key: &str, range: MetaRange) -> MetaCondition {
        MetaCondition::parse(key, None, None, Some(range)).expect("condition")
    }

    fn meta_filter(must: Vec<MetaCondition>, must_not: Vec<MetaCondition>) -> PointFilter {
        PointFilter {
            meta: MetaFilter::new(must, must_not).expect("filter"),
            ..PointFilter::default()
        }
    }

    pub async fn metadata_is_stored_under_meta(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let mut p = point(org, "a", "s", [1.0, 0.0, 0.0, 0.0]);
        p.payload.meta = meta(json!({
            "lang": "en", "year": 2004, "score": 2.0, "ratio": 0.25, "draft": false,
            "tags": ["x", "y"], "org_id": "not-the-tenant"
        }));
        store.upsert(vec![p.clone()]).await.expect("upsert");
        let got = store
            .get(org, p.id, false)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.payload, p.payload, "integers and floats kept apart");
        assert_eq!(
            got.payload.org_id, org,
            "a metadata key cannot shadow org_id"
        );
        // `meta` is Heimdex's key: a free-form extra field may not take it.
        let mut bad = point(org, "a", "s2", [1.0, 0.0, 0.0, 0.0]);
        bad.payload
            .extra
            .insert("meta".into(), json!({"lang": "en"}));
        assert!(matches!(
            store.upsert(vec![bad]).await,
            Err(StoreError::InvalidInput(_))
        ));
    }

    pub async fn metadata_filters(store: Arc<dyn VectorStore>) {
        let org = Uuid::new_v4();
        let docs = [
            (
                "en-2004",
                json!({"lang": "en", "year": 2004, "draft": false, "tags": ["a", "b"]}),
            ),
            (
                "de-1999",
                json!({"lang": "de", "year": 1999, "draft": true, "tags": ["b"]}),
            ),
            (
                "en-2010",
                json!({"lang": "en", "year": 2010.0, "score": 0.5, "tags": []}),
            ),
            (
                "str-year",
                json!({"lang": "fr", "year": "2004", "tags": ["c"]}),
            ),
            ("bare", json!({})),
        ];
        let mut by_name = std::collections::HashMap::new();
        let mut points = Vec::new();
        for (i, (name, m)) in docs.iter().enumerate() {
            let mut p = point(org, "lib", name, [1.0, i as f32 * 0.1, 0.0, 0.0]);
            p.payload.meta = meta(m.clone());
            by_name.insert(*name, p.id);
            points.push(p);
        }
        store.upsert(points).await.expect("upsert");
        let names =
            |expected: &[&str]| -> BTreeSet<Uuid> { expected.iter().map(|n| by_name[n]).collect() };
        let check = |what: &'static str, filter: PointFilter, expected: &'static [&'static str]| {
            let store = Arc::clone(&store);
            let expected = names(expected);
            async move {
                let mut req = search_req(org, [1.0, 0.0, 0.0, 0.0], 10);
                req.filter = filter.clone();
                let hits = store.search(req).await.expect("search");
                assert_eq!(set(hits.iter().map(|h| h.id)), expected, "search: {what}");
                let ids = store.scroll_ids(org, filter.clone()).await.expect("scroll");
                assert_eq!(set(ids), expected, "scroll: {what}");
                let n = store.count(org, filter).await.expect("count");
                assert_eq!(n, expected.len() as u64, "count: {what}");
            }
        };
        let all: &[&str] = &["en-2004", "de-1999", "en-2010", "str-year", "bare"];

        // Equality: strings, numbers (5 equals 5.0; never the string "5"), booleans, and an
        // element of an array of strings.
        check(
            "eq string",
            meta_filter(vec![eq("lang", json!("en"))], vec![]),
            &["en-2004", "en-2010"],
        )
        .await;
        check(
            "eq integer",
            meta_filter(vec![eq("year", json!(2004))], vec![]),
            &["en-2004"],
        )
        .await;
        check(
            "eq 2010 matches 2010.0",
            meta_filter(vec![eq("year", json!(2010))], vec![]),
            &["en-2010"],
        )
        .await;
        check(
            "eq float",
            meta_filter(vec![eq("score", json!(0.5))], vec![]),
            &["en-2010"],
        )
        .await;
        check(
            "eq string \"2004\" is not 2004",
            meta_filter(vec![eq("year", json!("2004"))], vec![]),
            &["str-year"],
        )
        .await;
        check(
            "eq bool",
            meta_filter(vec![eq("draft", json!(true))], vec![]),
            &["de-1999"],
        )
        .await;
        check(
            "eq array element",
            meta_filter(vec![eq("tags", json!("b"))], vec![]),
            &["en-2004", "de-1999"],
        )
        .await;
        // Any-of: strings, numbers, and both kinds at once (a string and a number value).
        check(
            "any strings",
            meta_filter(vec![any("lang", vec![json!("de"), json!("fr")])], vec![]),
            &["de-1999", "str-year"],
        )
        .await;
        check(
            "any array elements",
            meta_filter(vec![any("tags", vec![json!("a"), json!("c")])], vec![]),
            &["en-2004", "str-year"],
        )
        .await;
        check(
            "any numbers",
            meta_filter(vec![any("year", vec![json!(1999), json!(2010)])], vec![]),
            &["de-1999", "en-2010"],
        )
        .await;
        check(
            "any mixed",
            meta_filter(vec![any("year", vec![json!("2004"), json!(2004)])], vec![]),
            &["en-2004", "str-year"],
        )
        .await;
        // Ranges: numbers only (the string "2004" is in no range), bounds open or closed.
        let r = |gt, gte, lt, lte| MetaRange { gt, gte, lt, lte };
        check(
            "range gte lt",
            meta_filter(
                vec![range("year", r(None, Some(2000.0), Some(2010.0), None))],
                vec![],
            ),
            &["en-2004"],
        )
        .await;
        check(
            "range gt lte",
            meta_filter(
                vec![range("year", r(Some(1999.0), None, None, Some(2010.0)))],
                vec![],
            ),
            &["en-2004", "en-2010"],
        )
        .await;
        check(
            "range one bound",
            meta_filter(
                vec![range("year", r(None, None, Some(2005.0), None))],
                vec![],
            ),
            &["en-2004", "de-1999"],
        )
        .await;
        // Negation: a point without the key is kept.
        check(
            "must_not eq",
            meta_filter(vec![], vec![eq("lang", json!("en"))]),
            &["de-1999", "str-year", "bare"],
        )
        .await;
        check(
            "must_not bool",
            meta_filter(vec![], vec![eq("draft", json!(true))]),
            &["en-2004", "en-2010", "str-year", "bare"],
        )
        .await;
        check(
            "must_not range",
            meta_filter(
                vec![],
                vec![range("year", r(None, Some(2000.0), None, None))],
            ),
            &["de-1999", "str-year", "bare"],
        )
        .await;
        check(
            "must_not any",
            meta_filter(vec![], vec![any("tags", vec![json!("a"), json!("c")])]),
            &["de-1999", "en-2010", "bare"],
        )
        .await;
        // Conditions are AND-ed.
        check(
            "and",
            meta_filter(
                vec![
                    eq("lang", json!("en")),
                    range("year", r(None, Some(2005.0), None, None)),
                ],
                vec![eq("draft", json!(true))],
            ),
            &["en-2010"],
        )
        .await;
        // A key no point has: every positive test matches nothing, negation everything.
        check(
            "missing eq",
            meta_filter(vec![eq("nope", json!("x"))], vec![]),
            &[],
        )
        .await;
        check(
            "missing eq number",
            meta_filter(vec![eq("nope", json!(1))], vec![]),
            &[],
        )
        .await;
        check(
            "missing any",
            meta_filter(vec![any("nope", vec![json!("x"), json!(1)])], vec![]),
            &[],
        )
        .await;
        check(
            "missing range",
            meta_filter(vec![range("nope", r(None, Some(0.0), None, None))], vec![]),
            &[],
        )
        .await;
        check(
            "missing must_not",
            meta_filter(vec![], vec![eq("nope", json!("x"))]),
            all,
        )
        .await;
        // An empty array holds no value: it equals nothing.
        check(
            "empty array",
            meta_filter(
                vec![],
                vec![any("tags", vec![json!("a"), json!("b"), json!("c")])],
            ),
            &["en-2010", "bare"],
        )
        .await;
        // The same filter drives deletes.
        let deleted = store
            .delete_by_filter(org, meta_filter(vec![eq("lang", json!("en"))], vec![]))
            .await
            .expect("delete");
        assert_eq!(deleted, 2);
        check(
            "after delete",
            PointFilter::default(),
            &["de-1999", "str-year", "bare"],
        )
        .await;
    }

    pub async fn tenant_isolation_with_metadata_filters(store: Arc<dyn VectorStore>) {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut points = Vec::new();
        for org in [a, b] {
            for (i, lang) in ["en", "de"].iter().enumerate() {
                let mut p = point(org, "doc", &format!("s{i}"), [1.0, i as f32, 0.0, 0.0]);
                p.payload.meta = meta(json!({"lang": lang, "year": 2000 + i}));
                points.push(p);
            }
        }
        let b_ids: BTreeSet<Uuid> = points
            .iter()
            .filter(|p| p.payload.org_id == b)
            .map(|p| p.id)
            .collect();
        store.upsert(points).await.expect("upsert");
        // Filters that match everything or anything must still see only the caller's points:
        // negation on a missing key, an any-of, a wide range, in every search mode.
        let filters = [
            meta_filter(vec![], vec![eq("nope", json!("x"))]),
            meta_filter(vec![any("lang", vec![json!("en"), json!("de")])], vec![]),
            meta_filter(
                vec![range(
                    "year",
                    MetaRange {
                        gte: Some(0.0),
                        ..MetaRange::default()
                    },
                )],
                vec![],
            ),
            meta_filter(vec![], vec![eq("org_id", json!(a.to_string()))]),
        ];
        for filter in filters {
            for mode in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
                let mut req = SearchRequest::hybrid(b, vec![1.0, 0.0, 0.0, 0.0], "doc", 10);
                req.mode = mode;
                req.filter = filter.clone();
                let hits = store.search(req).await.expect("search");
                assert!(
                    hits.iter()
                        .all(|h| b_ids.contains(&h.id) && h.payload.org_id == b),
                    "{mode:?} {filter:?}"
                );
            }
            assert_eq!(
                set(store.scroll_ids(b, filter.clone()).await.expect("scroll")),
                b_ids
            );
            assert_eq!(store.count(b, filter.clone()).await.expect("count"), 2);
        }
        // A delete with a filter that matches everything removes only the caller's points.
        let everything = meta_filter(vec![], vec![eq("nope", json!("x"))]);
        assert_eq!(
            store
                .delete_by_filter(b, everything.clone())
                .await
                .expect("delete"),
            2
        );
        assert_eq!(store.count(a, everything).await.expect("count"), 2);
    }
}

// ---------------------------------------------------------------------------------------------
// The adapters rank alike: one corpus in every store at hand, every kind of search compared.

mod ranking {
    use super::*;

    const D: usize = 8;
    const DOCS: usize = 200;
    const WORDS: [&str; 40] = [
        "kernel", "thread", "schedule", "memory", "page", "disk", "compiler", "parser", "algebra",
        "language", "sort", "search", "index", "query", "network", "packet", "protocol", "graph",
        "matrix", "vector", "storage", "cache", "lock", "process", "signal", "file", "system",
        "time", "sharing", "program", "loop", "array", "list", "tree", "hash", "table", "record",
        "report", "user", "terminal",
    ];

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Skewed towards the first words, as word frequencies are.
        fn word(&mut self) -> &'static str {
            let a = self.next() % WORDS.len() as u64;
            let b = self.next() % WORDS.len() as u64;
            WORDS[a.min(b) as usize]
        }

        fn unit(&mut self) -> f32 {
            (self.next() % 20_001) as f32 / 10_000.0 - 1.0
        }

        fn vector(&mut self) -> Vec<f32> {
            (0..D).map(|_| self.unit()).collect()
        }
    }

    /// Every document has its own length, so no two BM25 scores tie (a tie would leave the
    /// order of the tied points to each engine's internals).
    fn corpus(org: Uuid) -> Vec<NewPoint> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        (0..DOCS)
            .map(|i| {
                let text = (0..6 + i).map(|_| rng.word()).collect::<Vec<_>>().join(" ");
                let mut payload = payload(org, &format!("asset-{}", i % 7), &format!("s-{i}"));
                payload.text = Some(text);
                let lang = ["en", "de", "fr"][i % 3];
                payload.meta = Metadata::from_json(json!({
                    "year": 1990 + i % 30,
                    "lang": lang,
                    "tags": [WORDS[i % 40], WORDS[(i * 7) % 40]],
                }))
                .expect("metadata");
                NewPoint {
                    id: Uuid::from_u128(0x1000 + i as u128),
                    vector: rng.vector(),
                    payload,
                }
            })
            .collect()
    }

    fn searches(org: Uuid) -> Vec<SearchRequest> {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut out = Vec::new();
        for q in 0..8 {
            let text = (0..2 + q % 3)
                .map(|_| rng.word())
                .collect::<Vec<_>>()
                .join(" ");
            let vector = rng.vector();
            let base = SearchRequest {
                explain: true,
                ..SearchRequest::hybrid(org, vector, text, 10)
            };
            let rrf_weighted = Fusion::Rrf {
                k: 10,
                dense_weight: 2.0,
                keyword_weight: 0.5,
            };
            for (mode, fusion) in [
                (SearchMode::Dense, Fusion::default()),
                (SearchMode::Keyword, Fusion::default()),
                (SearchMode::Hybrid, Fusion::default()),
                (SearchMode::Hybrid, rrf_weighted),
                (SearchMode::Hybrid, Fusion::Dbsf),
            ] {
                for mmr in [
                    None,
                    Some(Mmr {
                        diversity: 0.5,
                        candidates: 40,
                    }),
                ] {
                    out.push(SearchRequest {
                        mode,
                        fusion,
                        mmr,
                        ..base.clone()
                    });
                }
                // A later page, and a filter.
                out.push(SearchRequest {
                    mode,
                    fusion,
                    offset: 7,
                    filter: PointFilter {
                        asset_id: Some(format!("asset-{}", q % 7)),
                        ..PointFilter::default()
                    },
                    ..base.clone()
                });
                // A metadata filter: every kind of test at once. Not in hybrid mode: the
                // filter leaves BM25 ties in the keyword list (scores equal as f32), and how
                // the engine orders a tie before fusing is its own choice, which moves fused
                // scores. The filter is the same condition in every list, so the dense and
                // the keyword list check its translation.
                if mode == SearchMode::Hybrid {
                    continue;
                }
                let condition = |key: &str, eq, any, range| {
                    MetaCondition::parse(key, eq, any, range).expect("condition")
                };
                let meta = MetaFilter::new(
                    vec![
                        condition(
                            "year",
                            None,
                            None,
                            Some(MetaRange {
                                gte: Some(1995.0),
                                lt: Some(2015.0),
                                ..MetaRange::default()
                            }),
                        ),
                        condition("lang", None, Some(vec![json!("en"), json!("fr")]), None),
                    ],
                    vec![condition("tags", Some(json!(WORDS[q * 5])), None, None)],
                )
                .expect("filter");
                out.push(SearchRequest {
                    mode,
                    fusion,
                    filter: PointFilter {
                        meta,
                        ..PointFilter::default()
                    },
                    ..base.clone()
                });
            }
        }
        out
    }

    async fn answers(store: &Arc<dyn VectorStore>, org: Uuid) -> Vec<Vec<ScoredPoint>> {
        store.upsert(corpus(org)).await.expect("upsert corpus");
        let mut out = Vec::new();
        for mut req in searches(org) {
            if let (SearchMode::Hybrid, Some(mut mmr)) = (req.mode, req.mmr) {
                // Qdrant's fusion leaves equal fused scores in no fixed order, so which of two
                // equally fused points at the edge of MMR's candidate list make it in is the
                // engine's choice. Cut the list where the scores differ (the same place for
                // every adapter, if they rank alike).
                let fused = store
                    .search(SearchRequest {
                        mmr: None,
                        explain: false,
                        limit: 100,
                        ..req.clone()
                    })
                    .await
                    .expect("search");
                mmr.candidates = (mmr.candidates..fused.len())
                    .find(|&c| fused[c - 1].score != fused[c].score)
                    .unwrap_or(fused.len());
                req.mmr = Some(mmr);
            }
            out.push(store.search(req).await.expect("search"));
        }
        out
    }

    fn assert_alike(what: &str, expected: &[Vec<ScoredPoint>], actual: &[Vec<ScoredPoint>]) {
        let requests = searches(Uuid::nil());
        assert_eq!(expected.len(), actual.len());
        for ((want, got), req) in expected.iter().zip(actual).zip(&requests) {
            let context = format!(
                "{what}: {:?} {:?} mmr={:?} offset={} metadata filter={}",
                req.mode,
                req.fusion,
                req.mmr,
                req.offset,
                !req.filter.meta.is_empty()
            );
            assert!(!want.is_empty(), "{context}: no results to compare");
            assert_eq!(ids(want), ids(got), "{context}");
            for (w, g) in want.iter().zip(got) {
                assert!(
                    (w.score - g.score).abs() <= 1e-4 * w.score.abs().max(1.0),
                    "{context}: score {} vs {}",
                    w.score,
                    g.score
                );
                let legs = |h: &ScoredPoint| h.explain.map(|e| [e.dense, e.keyword]);
                match (legs(w), legs(g)) {
                    (Some(want_legs), Some(got_legs)) => {
                        for (wl, gl) in want_legs.iter().zip(&got_legs) {
                            match (wl, gl) {
                                (Some(wl), Some(gl)) => {
                                    assert!(
                                        (wl.score - gl.score).abs()
                                            <= 1e-4 * wl.score.abs().max(1.0),
                                        "{context}: leg score {} vs {}",
                                        wl.score,
                                        gl.score
                                    );
                                    // A leg's equal scores come in the engine's order, which
                                    // is not fixed (not even between two runs of one engine),
                                    // so ranks may differ within a tie, by a few places. Where
                                    // the ranks make the score (RRF), the score check above
                                    // holds them to more.
                                    assert!(
                                        wl.rank.abs_diff(gl.rank) <= 3,
                                        "{context}: rank {} vs {}",
                                        wl.rank,
                                        gl.rank
                                    );
                                }
                                (None, None) => {}
                                (wl, gl) => panic!("{context}: leg {wl:?} vs {gl:?}"),
                            }
                        }
                    }
                    (None, None) => {}
                    (w, g) => panic!("{context}: explain {w:?} vs {g:?}"),
                }
                assert_eq!(w.payload, g.payload, "{context}");
            }
        }
    }

    fn ids(hits: &[ScoredPoint]) -> Vec<Uuid> {
        hits.iter().map(|h| h.id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_and_remote_adapters_rank_alike() {
        let org = Uuid::new_v4();
        let embedded = Harness::embedded_with(D).await;
        let expected = answers(&embedded.store, org).await;
        embedded.cleanup().await;

        let standin = QdrantAt::start(Remote::UrlOrStandin)
            .await
            .expect("stand-in");
        let remote = Harness::on(standin, fresh_collection(), D).await;
        let actual = answers(&remote.store, org).await;
        remote.cleanup().await;
        assert_alike("remote (QDRANT_URL or stand-in)", &expected, &actual);

        let Some(server) = QdrantAt::start_real("embedded_and_remote_adapters_rank_alike").await
        else {
            return;
        };
        let remote = Harness::on(server, fresh_collection(), D).await;
        let actual = answers(&remote.store, org).await;
        remote.cleanup().await;
        assert_alike("real Qdrant server", &expected, &actual);
        eprintln!(
            "{} searches ranked alike by the embedded store and a real Qdrant server",
            expected.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrading a collection made before keyword search (one unnamed dense vector).

mod upgrade {
    use super::*;
    use qdrant_client::qdrant::{
        CreateCollectionBuilder, Distance, PointStruct, UpsertPointsBuilder, Value,
        VectorParamsBuilder,
    };
    use std::collections::HashMap;

    /// Old points: text, no text, and a text of stop words only.
    pub(super) fn old_points(org: Uuid) -> Vec<NewPoint> {
        let texts = [
            Some("Kernel thread scheduling in operating systems"),
            Some("Memory paging and thread scheduling"),
            None,
            Some("the of and"),
        ];
        let mut points: Vec<NewPoint> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut p = point(org, "old", &format!("s-{i}"), [1.0, i as f32, 0.5, 0.0]);
                p.id = Uuid::from_u128(0x5000 + i as u128);
                p.payload.text = text.map(str::to_owned);
                p
            })
            .collect();
        // More than one backfill page.
        for i in 0..2_500u128 {
            let mut p = point(org, "bulk", &format!("b-{i}"), [0.5, 0.5, i as f32, 1.0]);
            p.id = Uuid::from_u128(0x10_000 + i);
            p.payload.text = Some(format!("bulk record number {i} about storage"));
            points.push(p);
        }
        points
    }

    /// What a store must answer after the upgrade: every old point, unchanged, and found by
    /// keyword and hybrid search.
    pub(super) async fn check_upgraded(store: &Arc<dyn VectorStore>, org: Uuid, old: &[NewPoint]) {
        let counted = store.count(org, asset("old")).await.expect("count")
            + store.count(org, asset("bulk")).await.expect("count");
        assert_eq!(counted, old.len() as u64, "nothing lost");
        for p in old.iter().take(4) {
            let got = store
                .get(org, p.id, true)
                .await
                .expect("get")
                .expect("old point still there");
            assert_eq!(got.payload, p.payload);
            assert_close(&got.vector.expect("vector"), &l2_normalized(&p.vector));
        }
        let hits = store
            .search(SearchRequest::keyword(org, "thread scheduling", 10))
            .await
            .expect("keyword search over upgraded points");
        assert_eq!(
            set(hits.iter().map(|h| h.id)),
            set([old[0].id, old[1].id]),
            "{hits:?}"
        );
        let hits = store
            .search(SearchRequest::keyword(org, "storage record 2499", 5))
            .await
            .expect("keyword search");
        assert_eq!(hits[0].id, old.last().expect("bulk").id, "{hits:?}");
        let hits = store
            .search(SearchRequest::hybrid(
                org,
                old[1].vector.clone(),
                "memory paging",
                3,
            ))
            .await
            .expect("hybrid search");
        assert_eq!(hits[0].id, old[1].id);
        let hits = store
            .search(SearchRequest::dense(org, old[0].vector.clone(), 1))
            .await
            .expect("dense search");
        assert_eq!(hits[0].id, old[0].id);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        // New writes carry keyword vectors at once.
        let mut new = doc_point(org, "new", "Freshly written compiler notes");
        new.id = Uuid::from_u128(0x9_0000);
        store.upsert(vec![new.clone()]).await.expect("upsert");
        let hits = store
            .search(SearchRequest::keyword(org, "freshly", 10))
            .await
            .expect("search");
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![new.id]);
    }

    fn doc_point(org: Uuid, segment: &str, text: &str) -> NewPoint {
        let mut p = point(org, "new", segment, [0.0, 0.0, 0.0, 1.0]);
        p.payload.text = Some(text.to_owned());
        p
    }

    /// Makes a collection the way Heimdex did before keyword search: one unnamed dense
    /// vector, the payload indexes, points with a dense vector only.
    async fn old_collection(qdrant: &QdrantAt, collection: &str, points: &[NewPoint]) {
        let client = qdrant.client();
        client
            .create_collection(
                CreateCollectionBuilder::new(collection)
                    .vectors_config(VectorParamsBuilder::new(DIM as u64, Distance::Cosine)),
            )
            .await
            .expect("create old collection");
        for batch in points.chunks(500) {
            let batch: Vec<PointStruct> = batch
                .iter()
                .map(|p| {
                    let serde_json::Value::Object(payload) =
                        serde_json::to_value(&p.payload).expect("payload")
                    else {
                        panic!("payload is an object");
                    };
                    let payload: HashMap<String, Value> = payload
                        .into_iter()
                        .map(|(k, v)| (k, json_value(v)))
                        .collect();
                    PointStruct::new(p.id.to_string(), p.vector.clone(), payload)
                })
                .collect();
            client
                .upsert_points(UpsertPointsBuilder::new(collection, batch).wait(true))
                .await
                .expect("upsert old points");
        }
    }

    fn json_value(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::String(s) => Value::from(s),
            other @ (serde_json::Value::Null
            | serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Array(_)
            | serde_json::Value::Object(_)) => {
                panic!("the old payloads hold strings only, not {other}")
            }
        }
    }

    async fn old_collection_is_upgraded(qdrant: QdrantAt) {
        let org = Uuid::new_v4();
        let collection = fresh_collection();
        let old = old_points(org);
        old_collection(&qdrant, &collection, &old).await;
        // `Harness::on` opens the store and ensures the collection: that is the upgrade.
        let h = Harness::on(qdrant, collection, DIM).await;
        check_upgraded(&h.store, org, &old).await;
        // A second start finds nothing to do and changes nothing.
        h.store.ensure_collection().await.expect("ensure again");
        check_upgraded(&h.store, org, &old).await;
        h.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_remote_collection_is_upgraded() {
        let qdrant = QdrantAt::start(Remote::UrlOrStandin)
            .await
            .expect("stand-in");
        old_collection_is_upgraded(qdrant).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_collection_on_a_real_server_is_upgraded() {
        let Some(qdrant) =
            QdrantAt::start_real("old_collection_on_a_real_server_is_upgraded").await
        else {
            return;
        };
        old_collection_is_upgraded(qdrant).await;
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

    /// The embedded store skips the model conditions of a search while every point is in the
    /// query's model (its `spaces`). A reopen must find out which models the shard holds: a
    /// point of another model never answers, whether it was written before the reopen or after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn models_stay_apart_across_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let q = [1.0, 0.0, 0.0, 0.0];
        let of_model = |model: &str, segment: &str| {
            let mut p = point(org, "a", segment, [1.0, 0.1, 0.0, 0.0]);
            p.payload.model = model.to_owned();
            p
        };
        let hits_of = |store: Arc<dyn VectorStore>, model: &'static str| async move {
            let mut req = search_req(org, q, 10);
            req.filter = PointFilter {
                model: Some(model.to_owned()),
                model_ver: Some("1".to_owned()),
                ..PointFilter::default()
            };
            set(store
                .search(req)
                .await
                .expect("search")
                .into_iter()
                .map(|h| h.id))
        };
        let a1 = of_model("model-a", "s1");
        let b1 = of_model("model-b", "s2");
        {
            let store = open_at(dir.path(), DIM).await.expect("open");
            store.ensure_collection().await.expect("ensure");
            store.upsert(vec![a1.clone()]).await.expect("upsert");
        }
        // Reopened with one model: a later point of another model still stays apart.
        {
            let store = open_at(dir.path(), DIM).await.expect("reopen");
            store.ensure_collection().await.expect("ensure");
            assert_eq!(hits_of(store.clone(), "model-a").await, set([a1.id]));
            store.upsert(vec![b1.clone()]).await.expect("upsert");
            assert_eq!(hits_of(store.clone(), "model-a").await, set([a1.id]));
            assert_eq!(hits_of(store.clone(), "model-b").await, set([b1.id]));
        }
        // Reopened with two models.
        let store = open_at(dir.path(), DIM).await.expect("reopen 2");
        store.ensure_collection().await.expect("ensure");
        assert_eq!(hits_of(store.clone(), "model-a").await, set([a1.id]));
        assert_eq!(hits_of(store.clone(), "model-b").await, set([b1.id]));
        // Deleting one model's points does not narrow what the open store assumes...
        assert_eq!(store.delete_points(org, &[b1.id]).await.expect("delete"), 1);
        let a2 = of_model("model-a", "s3");
        store.upsert(vec![a2.clone()]).await.expect("upsert");
        assert_eq!(hits_of(store.clone(), "model-a").await, set([a1.id, a2.id]));
        drop(store);
        // ...and after a reopen (whatever the facets make of the deleted point), a new model
        // still stays apart.
        let store = open_at(dir.path(), DIM).await.expect("reopen 3");
        store.ensure_collection().await.expect("ensure");
        assert_eq!(hits_of(store.clone(), "model-a").await, set([a1.id, a2.id]));
        let b2 = of_model("model-b", "s4");
        store.upsert(vec![b2.clone()]).await.expect("upsert");
        assert_eq!(hits_of(store.clone(), "model-a").await, set([a1.id, a2.id]));
        assert_eq!(hits_of(store, "model-b").await, set([b2.id]));
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
    /// destructor (no `Drop` flush), like `kill -9`. Only the parent runs it (with `--ignored`
    /// and the directory in the environment); on its own it would check nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "the child process of writes_survive_a_crash, which runs it"]
    async fn crash_child() {
        let dir = std::env::var(CRASH_DIR_ENV)
            .expect("run by writes_survive_a_crash, which sets the crash directory");
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
                "--ignored",
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

    /// An embedded store of 384-d vectors: a few thousand points cross Qdrant's indexing
    /// threshold (about 6,700 of them).
    async fn indexable_store(path: &std::path::Path) -> heimdex_store::EmbeddedStore {
        let store =
            heimdex_store::EmbeddedStore::open(path.to_owned(), "chunks".into(), INDEXABLE_DIM)
                .await
                .expect("open");
        store.ensure_collection().await.expect("ensure");
        store
    }

    const INDEXABLE_DIM: usize = 384;

    /// A spread-out vector of [`INDEXABLE_DIM`] per `i`.
    fn vector(i: usize) -> Vec<f32> {
        (0..INDEXABLE_DIM)
            .map(|d| ((i * INDEXABLE_DIM + d) as f32 * 0.618_034).sin())
            .collect()
    }

    /// Past a few thousand points the optimizers index the segments (in the background, and on
    /// demand): afterwards the vectors are HNSW-indexed, and search, counts, scroll and a reopen
    /// see exactly the same data. 384-d, so the segment crosses Qdrant's indexing threshold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn optimizing_keeps_every_point_and_the_same_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let store = indexable_store(dir.path()).await;
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
        let query = |i: usize| SearchRequest::dense(org, vector(i), 3);
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

    /// The optimizer indexes beside the writes: while a background run builds the HNSW index of
    /// a segment past the indexing threshold, upserts of new points keep returning (each
    /// flushed), a delete returns once the run has ended, and after a reopen every point is
    /// there (or gone) as written. A due run first waits for the writes to pause (a second
    /// without one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_on_while_the_optimizer_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let store = indexable_store(dir.path()).await;
        let point = |i: usize| NewPoint {
            id: Uuid::from_u128(i as u128 + 1),
            vector: vector(i),
            payload: payload(org, &format!("a-{}", i % 10), &format!("s-{i}")),
        };
        // 4,000 points stay under the background trigger (5,000) and the indexing threshold
        // (~6,700 such vectors); 3,000 more cross both, and the write that does starts the run.
        store
            .upsert((0..4_000).map(point).collect())
            .await
            .expect("upsert");
        assert!(!store.optimizing());
        store
            .upsert((4_000..7_000).map(point).collect())
            .await
            .expect("upsert");
        assert!(store.optimizing(), "7,000 points written: a run is due");
        assert!(
            !store.indexing(),
            "a due run waits for the writes to pause before it starts"
        );
        until_the_run_starts(&store).await;

        // New points are answered while the run goes on; a delete of existing points waits for
        // the first flush after the run (until then it may sit in the run's proxy segment).
        let gone: Vec<Uuid> = (0..20).map(|i| Uuid::from_u128(i * 7 + 1)).collect();
        let delete = async {
            store.delete_points(org, &gone).await.expect("delete");
            store.indexing()
        };
        let upserts = async {
            let (mut next, mut written_meanwhile) = (7_000, 0);
            while store.indexing() {
                store
                    .upsert((next..next + 20).map(point).collect())
                    .await
                    .expect("upsert while optimizing");
                next += 20;
                written_meanwhile += 1;
            }
            (next, written_meanwhile)
        };
        let (running_when_deleted, (next, written_meanwhile)) = tokio::join!(delete, upserts);
        assert!(
            !running_when_deleted,
            "a delete made during the run returned before the run ended"
        );
        // Before, every write waited for the whole run: at most the one queued when it ended.
        assert!(
            written_meanwhile >= 5,
            "only {written_meanwhile} upserts returned while the optimizer ran"
        );
        let indexed = store.indexed_vectors().await.expect("info");
        assert!(indexed >= 5_000, "only {indexed} vectors indexed");

        drop(store);
        let reopened = heimdex_tests_reopen(dir.path()).await;
        let expected = set((0..next)
            .map(|i| Uuid::from_u128(i as u128 + 1))
            .filter(|id| !gone.contains(id)));
        assert_eq!(
            set(reopened
                .scroll_ids(org, PointFilter::default())
                .await
                .expect("scroll")),
            expected
        );
        let last = next - 1;
        let hits = reopened
            .search(SearchRequest::dense(org, vector(last), 1))
            .await
            .expect("search");
        assert_eq!(hits[0].id, Uuid::from_u128(last as u128 + 1));
    }

    /// While a run rebuilds a segment, deletes and updates of its points sit in the run's proxy
    /// memory, and a flush does not persist them. A crash then would bring deleted points back
    /// and count updated ones twice, so such a write returns only once durable: a copy of the
    /// directory taken as soon as the writes return (what a `kill -9` would leave) has them all.
    /// Before, it had the 20 deleted points back and counted 7,010 points.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_to_existing_points_during_a_run_survive_a_crash_once_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let store = indexable_store(dir.path()).await;
        let point = |i: usize, asset: &str| NewPoint {
            id: Uuid::from_u128(i as u128 + 1),
            vector: vector(i),
            payload: payload(org, asset, &format!("s-{i}")),
        };
        store
            .upsert((0..7_000).map(|i| point(i, "a")).collect())
            .await
            .expect("upsert");
        until_the_run_starts(&store).await;
        // Well into the run: its proxies wrap the segment by now.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(store.indexing(), "the run is still going");
        let gone: Vec<Uuid> = (0..20).map(|i| Uuid::from_u128(i * 7 + 1)).collect();
        let (deleted, updated) = tokio::join!(
            store.delete_points(org, &gone),
            store.upsert((3_000..3_010).map(|i| point(i, "moved")).collect()),
        );
        assert_eq!(deleted.expect("delete"), 20);
        updated.expect("update");

        let crashed = tempfile::tempdir().expect("tempdir");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir.path().join("."))
            .arg(crashed.path())
            .status()
            .expect("cp");
        assert!(copied.success());
        let reopened = heimdex_tests_reopen(crashed.path()).await;
        let ids = set(reopened
            .scroll_ids(org, PointFilter::default())
            .await
            .expect("scroll"));
        assert!(
            gone.iter().all(|id| !ids.contains(id)),
            "deleted points came back"
        );
        assert_eq!(ids.len(), 6_980);
        let count = |filter| reopened.count(org, filter);
        assert_eq!(count(PointFilter::default()).await.expect("count"), 6_980);
        assert_eq!(count(asset("moved")).await.expect("count"), 10);
        assert_eq!(count(asset("a")).await.expect("count"), 6_970);
    }

    /// Qdrant Edge 0.7 never truncates its WAL, and an open removes the segments it will never
    /// read (`embedded/wal.rs`). Every point stays, and so do later updates of existing points:
    /// Edge takes point versions from the WAL's numbering, and a WAL numbered from 0 again would
    /// make them look older than the points they update, so Edge would skip them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_removes_the_wal_edge_never_reads_and_updates_still_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let closed_segments = || closed_wal_segments(dir.path()).len();
        let org = Uuid::new_v4();
        let point = wal_filling_points(org);
        let count = |store: Arc<dyn VectorStore>, filter| async move {
            store.count(org, filter).await.expect("count")
        };
        {
            let store = open_at(dir.path(), INDEXABLE_DIM).await.expect("open");
            store.ensure_collection().await.expect("ensure");
            for first in (0..1_600).step_by(100) {
                let batch = (first..first + 100).map(|i| point(i, "a")).collect();
                store.upsert(batch).await.expect("upsert");
            }
            store
                .upsert(vec![point(7, "before")])
                .await
                .expect("update");
        }
        let before = closed_segments();
        assert!(before >= 2, "the WAL has {before} closed segments");

        {
            let store = open_at(dir.path(), INDEXABLE_DIM).await.expect("reopen");
            assert_eq!(closed_segments(), 1, "the newest closed segment stays");
            assert_eq!(count(store.clone(), PointFilter::default()).await, 1_600);
            assert_eq!(count(store.clone(), asset("before")).await, 1);
            store
                .upsert(vec![point(7, "after"), point(8, "after")])
                .await
                .expect("update");
            assert_eq!(count(store.clone(), asset("after")).await, 2);
            assert_eq!(count(store.clone(), asset("before")).await, 0);
        }
        let store = open_at(dir.path(), INDEXABLE_DIM).await.expect("reopen");
        assert_eq!(count(store.clone(), PointFilter::default()).await, 1_600);
        assert_eq!(count(store.clone(), asset("after")).await, 2);
        assert_eq!(count(store.clone(), asset("a")).await, 1_598);
    }

    /// While the store is open, its writer frees the disk of the WAL segments Qdrant Edge will
    /// never read, in place (Edge keeps them mapped; `embedded/wal.rs`), at most once a second.
    /// Writes, updates and reads go on as before, and the next open removes those segments.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_frees_the_wal_edge_never_reads_while_the_store_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let closed_segments = || closed_wal_segments(dir.path());
        let org = Uuid::new_v4();
        let point = wal_filling_points(org);
        {
            let store = indexable_store(dir.path()).await;
            // The run every open starts is over before the writes (1,600 points start no other).
            until_no_run(&store).await;
            for first in (0..1_600).step_by(100) {
                let batch = (first..first + 100).map(|i| point(i, "a")).collect();
                store.upsert(batch).await.expect("upsert");
            }
            let before = closed_segments();
            assert!(
                before.len() >= 2,
                "the WAL has {} closed segments",
                before.len()
            );
            assert!(before.last().expect("newest").1 > 0);

            // The next write more than a second after the writer last tidied the WAL frees them.
            tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
            store
                .upsert(vec![point(7, "after"), point(8, "after")])
                .await
                .expect("update");

            let after = closed_segments();
            let (newest, older) = after.split_last().expect("closed segments");
            assert!(after.len() >= before.len(), "the files stay while mapped");
            assert!(
                older.iter().all(|&(_, bytes)| bytes == 0),
                "not freed: {after:?}"
            );
            assert!(newest.1 > 0, "the newest is kept: {after:?}");

            // The shard goes on as before: the update applied, reads see it, and an optimizer run
            // (which tidies the WAL again) changes none of it.
            assert_eq!(store.count(org, asset("after")).await.expect("count"), 2);
            store.optimize().await.expect("optimize");
            assert_eq!(closed_segments(), after);
            assert_eq!(
                store
                    .count(org, PointFilter::default())
                    .await
                    .expect("count"),
                1_600
            );
        }
        let store = open_at(dir.path(), INDEXABLE_DIM).await.expect("reopen");
        let left = closed_segments();
        assert_eq!(left.len(), 1, "the open removes what was freed: {left:?}");
        assert!(left[0].1 > 0, "and keeps the newest intact");
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            1_600
        );
        assert_eq!(store.count(org, asset("after")).await.expect("count"), 2);
        store
            .upsert(vec![point(9, "again")])
            .await
            .expect("update after the reopen");
        assert_eq!(store.count(org, asset("again")).await.expect("count"), 1);
        assert_eq!(store.count(org, asset("a")).await.expect("count"), 1_597);
    }

    /// Points of `org` with long texts, which fill the WAL's 32 MiB segments with a couple of
    /// thousand points: `point(i, asset)`.
    fn wal_filling_points(org: Uuid) -> impl Fn(usize, &str) -> NewPoint {
        let text = "lorem ".repeat(11_000);
        move |i, asset| {
            let mut payload = payload(org, asset, &format!("s-{i}"));
            payload.text = Some(text.clone());
            NewPoint {
                id: Uuid::from_u128(i as u128 + 1),
                vector: vector(i),
                payload,
            }
        }
    }

    /// The closed segments of the `chunks` shard's WAL under `path`, oldest first: (index of
    /// the first entry, allocated bytes).
    fn closed_wal_segments(path: &std::path::Path) -> Vec<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut closed: Vec<(u64, u64)> = std::fs::read_dir(path.join("chunks").join("wal"))
            .expect("wal dir")
            .filter_map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("utf-8");
                let start = name.strip_prefix("closed-")?.parse().ok()?;
                Some((start, e.metadata().expect("stat").blocks() * 512))
            })
            .collect();
        closed.sort_unstable();
        closed
    }

    /// Waits (at most 30 s) until no background run is due or under way.
    async fn until_no_run(store: &heimdex_store::EmbeddedStore) {
        let started = std::time::Instant::now();
        while store.optimizing() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the run did not end"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits (at most 30 s) for a due background run to start once the writes have paused.
    async fn until_the_run_starts(store: &heimdex_store::EmbeddedStore) {
        let started = std::time::Instant::now();
        while !store.indexing() && store.optimizing() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the run did not start once the writes paused"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
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

    /// Makes `<path>/chunks` the way Heimdex did before keyword search: a shard with one
    /// unnamed dense vector, the payload indexes, points with a dense vector only. With
    /// `interrupted`, also what an upgrade killed half-way leaves: the keyword vector added,
    /// and set on the first `interrupted` points only.
    fn old_shard(path: &std::path::Path, points: &[NewPoint], interrupted: Option<usize>) {
        use qdrant_edge::{
            CreateIndex, CreateVectorName, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard,
            EdgeVectorParamsBuilder, FieldIndexOperations, JsonPath, KeywordIndexParams, Modifier,
            PayloadFieldSchema, PayloadSchemaParams, PointId, PointInsertOperations,
            PointOperations, PointStructPersisted, PointVectorsPersisted, SparseVectorConfig,
            UpdateOperation, UpdateVectorsOp, VectorNameConfig, VectorNameOperations,
            VectorOperations, VectorPersisted, VectorStructPersisted,
        };
        let dir = path.join("chunks");
        std::fs::create_dir_all(&dir).expect("dir");
        let config = EdgeConfig::builder()
            .vector(
                DEFAULT_VECTOR_NAME,
                EdgeVectorParamsBuilder::new(DIM, Distance::Cosine).build(),
            )
            .build();
        let shard = EdgeShard::new(&dir, config).expect("old shard");
        for (key, tenant) in [
            ("org_id", true),
            ("asset_id", false),
            ("model", false),
            ("model_ver", false),
        ] {
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: JsonPath::try_from(key).expect("path"),
                        field_schema: Some(PayloadFieldSchema::FieldParams(
                            PayloadSchemaParams::Keyword(KeywordIndexParams {
                                is_tenant: tenant.then_some(true),
                                ..KeywordIndexParams::default()
                            }),
                        )),
                    }),
                ))
                .expect("index");
        }
        for batch in points.chunks(1_000) {
            let batch = batch
                .iter()
                .map(|p| {
                    let serde_json::Value::Object(payload) =
                        serde_json::to_value(&p.payload).expect("payload")
                    else {
                        panic!("payload is an object");
                    };
                    PointStructPersisted {
                        id: PointId::Uuid(p.id),
                        vector: VectorStructPersisted::Single(p.vector.clone()),
                        payload: Some(qdrant_edge::Payload(payload)),
                    }
                })
                .collect();
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                ))
                .expect("upsert");
        }
        if let Some(done) = interrupted {
            shard
                .update(UpdateOperation::VectorNameOperation(
                    VectorNameOperations::CreateVectorName(CreateVectorName {
                        vector_name: "bm25".to_owned(),
                        config: VectorNameConfig::sparse(SparseVectorConfig {
                            modifier: Some(Modifier::Idf),
                            datatype: None,
                        }),
                    }),
                ))
                .expect("add keyword vector");
            let vectors = points[..done]
                .iter()
                .map(|p| {
                    let v =
                        heimdex_store::keyword::document(p.payload.text.as_deref().unwrap_or(""));
                    PointVectorsPersisted {
                        id: PointId::Uuid(p.id),
                        vector: VectorStructPersisted::Named(
                            [(
                                "bm25".to_owned(),
                                VectorPersisted::Sparse(qdrant_edge::SparseVector {
                                    indices: v.indices,
                                    values: v.values,
                                }),
                            )]
                            .into(),
                        ),
                    }
                })
                .collect();
            shard
                .update(UpdateOperation::VectorOperation(
                    VectorOperations::UpdateVectors(UpdateVectorsOp {
                        points: vectors,
                        update_filter: None,
                    }),
                ))
                .expect("partial backfill");
        }
        shard.flush();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_shard_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let old = super::upgrade::old_points(org);
        old_shard(dir.path(), &old, None);
        let store = open_at(dir.path(), DIM).await.expect("open old shard");
        store.ensure_collection().await.expect("ensure");
        super::upgrade::check_upgraded(&store, org, &old).await;
        // And after a restart, with nothing left to do.
        drop(store);
        let store = heimdex_tests_reopen_at(dir.path(), DIM).await;
        super::upgrade::check_upgraded(&store, org, &old).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interrupted_upgrade_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let old = super::upgrade::old_points(org);
        old_shard(dir.path(), &old, Some(1_200));
        let store = open_at(dir.path(), DIM)
            .await
            .expect("open half-upgraded shard");
        super::upgrade::check_upgraded(&store, org, &old).await;
    }

    /// `cargo test --release -p heimdex-store --test contract upgrade_of_100k -- --ignored
    /// --nocapture`: how long opening a pre-hybrid shard of 100,000 384-d points with chunk-like
    /// texts takes (the upgrade), recorded in docs/BENCHMARKS.md.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "timing; run by hand"]
    async fn upgrade_of_100k_points() {
        use heimdex_store::EmbeddedStore;
        const N: usize = 100_000;
        const D384: usize = 384;
        let dir = tempfile::tempdir().expect("tempdir");
        let org = Uuid::new_v4();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let words: Vec<String> = (0..5_000).map(|i| format!("w{i}x")).collect();
        let points: Vec<NewPoint> = (0..N)
            .map(|i| {
                // 40 to 200 words (a chunk of 256 model tokens holds about 190).
                let len = 40 + (next() % 161) as usize;
                let text = (0..len)
                    .map(|_| {
                        let (a, b) = (next() % 5_000, next() % 5_000);
                        words[a.min(b) as usize].as_str()
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut p = NewPoint {
                    id: Uuid::from_u128(i as u128 + 1),
                    vector: (0..D384)
                        .map(|_| (next() % 2_000) as f32 / 1_000.0 - 1.0)
                        .collect(),
                    payload: payload(org, &format!("a-{}", i / 10), &format!("chunk-{}", i % 10)),
                };
                p.payload.text = Some(text);
                p
            })
            .collect();
        let made = std::time::Instant::now();
        old_shard_sized(dir.path(), &points, D384);
        let before = dir_size(&dir.path().join("chunks"));
        eprintln!(
            "old shard of {N} points made in {:.1} s, {:.1} MiB",
            made.elapsed().as_secs_f64(),
            before as f64 / 1_048_576.0
        );
        let started = std::time::Instant::now();
        let store = EmbeddedStore::open(dir.path().to_owned(), "chunks".into(), D384)
            .await
            .expect("open = upgrade");
        let upgraded = started.elapsed();
        store.optimize().await.expect("optimize");
        let optimized = started.elapsed();
        let after = dir_size(&dir.path().join("chunks"));
        eprintln!(
            "upgrade (open) of {N} points: {:.1} s; with the optimizer run that follows: {:.1} s; \
             {:.1} MiB -> {:.1} MiB",
            upgraded.as_secs_f64(),
            optimized.as_secs_f64(),
            before as f64 / 1_048_576.0,
            after as f64 / 1_048_576.0,
        );
        assert_eq!(
            store
                .count(org, PointFilter::default())
                .await
                .expect("count"),
            N as u64
        );
        let hits = store
            .search(SearchRequest::keyword(
                org,
                points[77].payload.text.clone().expect("text"),
                1,
            ))
            .await
            .expect("search");
        assert_eq!(hits[0].id, points[77].id);
    }

    fn old_shard_sized(path: &std::path::Path, points: &[NewPoint], dim: usize) {
        use qdrant_edge::{
            DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard, EdgeVectorParamsBuilder, PointId,
            PointInsertOperations, PointOperations, PointStructPersisted, UpdateOperation,
            VectorStructPersisted,
        };
        let dir = path.join("chunks");
        std::fs::create_dir_all(&dir).expect("dir");
        let config = EdgeConfig::builder()
            .vector(
                DEFAULT_VECTOR_NAME,
                EdgeVectorParamsBuilder::new(dim, Distance::Cosine).build(),
            )
            .build();
        let shard = EdgeShard::new(&dir, config).expect("old shard");
        for batch in points.chunks(1_000) {
            let batch = batch
                .iter()
                .map(|p| {
                    let serde_json::Value::Object(payload) =
                        serde_json::to_value(&p.payload).expect("payload")
                    else {
                        panic!("payload is an object");
                    };
                    PointStructPersisted {
                        id: PointId::Uuid(p.id),
                        vector: VectorStructPersisted::Single(p.vector.clone()),
                        payload: Some(qdrant_edge::Payload(payload)),
                    }
                })
                .collect();
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                ))
                .expect("upsert");
        }
        // As the old store did, the optimizer indexed the segments.
        shard.optimize().expect("optimize");
        shard.flush();
    }

    fn dir_size(path: &std::path::Path) -> u64 {
        let mut total = 0;
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            total += if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            };
        }
        total
    }

    async fn heimdex_tests_reopen_at(path: &std::path::Path, dim: usize) -> Arc<dyn VectorStore> {
        for _ in 0..50 {
            match open_at(path, dim).await {
                Ok(store) => return store,
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                }
                Err(err) => panic!("reopen: {err}"),
            }
        }
        panic!("store still locked");
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
