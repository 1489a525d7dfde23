//! Hybrid search through the API: every mode, fusion, MMR and `explain` on real MiniLM
//! embeddings; bad ranking options refused with 422 naming the field; tenancy in every mode;
//! and a data dir written before hybrid search, served and upgraded with nothing lost.

use std::time::Duration;

use heimdex_domain::ids;
use heimdex_embed::{Embedder, Mock};
use heimdex_tests::TestApp;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// (segment, text). The product code is found only by its letters; the paraphrase only by its
/// meaning; the three twins are the same text (the same vector).
const DOCS: [(&str, &str); 8] = [
    (
        "code",
        "Replacement battery pack XQ-7731 for the field radio, rated at twelve volts.",
    ),
    (
        "paraphrase",
        "How to swap the power cell inside a portable two-way transceiver.",
    ),
    ("bread", "Bread dough rises for an hour in a warm kitchen."),
    (
        "match",
        "The striker scored a goal in the final minute of the match.",
    ),
    (
        "twin-1",
        "Telescopes observe distant galaxies in infrared light.",
    ),
    (
        "twin-2",
        "Telescopes observe distant galaxies in infrared light.",
    ),
    (
        "twin-3",
        "Telescopes observe distant galaxies in infrared light.",
    ),
    (
        "stars",
        "Astronomers measure the chemical spectra of nearby stars.",
    ),
];

async fn ingest(app: &TestApp, token: &str, asset: &str, docs: &[(&str, &str)], model: &str) {
    let segments: Vec<Value> = docs
        .iter()
        .map(|(segment, text)| json!({"segment_id": segment, "text": text}))
        .collect();
    let response = app
        .post_json(
            token,
            "/vectors/embed/batch",
            &json!({"asset_id": asset, "segments": segments, "model": model}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let jobs: Vec<String> = accepted["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    app.wait_for_jobs(token, &jobs, "SUCCEEDED", WAIT).await;
}

fn segments(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["payload"]["segment_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_fusion_mmr_and_explain_through_the_api() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    ingest(&app, &token, "docs", &DOCS, "minilm-l6-v2").await;

    // Keyword: only the text with the code.
    let keyword = app
        .search(&token, &json!({"query": "XQ-7731", "mode": "keyword"}))
        .await;
    assert_eq!(keyword["mode"], "keyword");
    assert_eq!(segments(&keyword), vec!["code"], "{keyword}");

    // Dense: every point, cosine scores, the paraphrase near the top for a query in other words.
    let dense = app
        .search(
            &token,
            &json!({"query": "battery for a radio", "mode": "dense", "limit": 10}),
        )
        .await;
    assert_eq!(dense["mode"], "dense");
    assert_eq!(segments(&dense).len(), DOCS.len());
    assert!(
        segments(&dense)[..2].contains(&"paraphrase".to_owned()),
        "{dense}"
    );
    for hit in dense["results"].as_array().unwrap() {
        let score = hit["score"].as_f64().unwrap();
        assert!((-1.0..=1.0001).contains(&score), "{hit}");
        assert!(hit.get("explain").is_none());
    }

    // Hybrid (the default): both the code (keyword) and the paraphrase (dense) on top, each
    // hit's score the RRF of its two ranks, which `explain` shows.
    let hybrid = app
        .search(
            &token,
            &json!({"query": "XQ-7731 battery for a radio", "limit": 10, "explain": true}),
        )
        .await;
    assert_eq!(hybrid["mode"], "hybrid");
    let top = segments(&hybrid);
    assert_eq!(top[0], "code", "{hybrid}");
    assert!(top[..3].contains(&"paraphrase".to_owned()), "{hybrid}");
    for hit in hybrid["results"].as_array().unwrap() {
        let explain = &hit["explain"];
        let dense_rank = explain["dense"]["rank"].as_f64();
        let keyword_rank = explain["keyword"]["rank"].as_f64();
        assert!(
            dense_rank.is_some(),
            "every point is in the dense list: {hit}"
        );
        if keyword_rank.is_none() {
            assert!(explain["keyword"]["score"].is_null(), "{hit}");
        }
        let expected: f64 = [dense_rank, keyword_rank]
            .iter()
            .flatten()
            .map(|r| 1.0 / (60.0 + r))
            .sum();
        assert!(
            (hit["score"].as_f64().unwrap() - expected).abs() < 1e-6,
            "{hit}"
        );
    }
    let code = &hybrid["results"][0]["explain"];
    assert_eq!(code["keyword"]["rank"], 1);
    assert!(code["keyword"]["score"].as_f64().unwrap() > 0.0);

    // DBSF, and RRF with the keyword list muted: the dense order.
    let dbsf = app
        .search(
            &token,
            &json!({"query": "XQ-7731 battery for a radio", "fusion": {"method": "dbsf"}}),
        )
        .await;
    assert_eq!(segments(&dbsf)[0], "code", "{dbsf}");
    let muted = app
        .search(
            &token,
            &json!({"query": "battery for a radio", "limit": 10,
                    "fusion": {"method": "rrf", "k": 60, "weights": {"keyword": 0}}}),
        )
        .await;
    // (The twins share one vector, so their order among themselves is not compared.)
    let twinless = |v: &Value| -> Vec<String> {
        segments(v)
            .into_iter()
            .map(|s| {
                if s.starts_with("twin") {
                    "twin".to_owned()
                } else {
                    s
                }
            })
            .collect()
    };
    assert_eq!(twinless(&muted), twinless(&dense));

    // A vector alone cannot run the keyword side: hybrid is dense.
    let model = heimdex_embed::MiniLm::load_default().expect("weights installed");
    let v = model.embed(&["battery for a radio"]).unwrap().remove(0);
    let by_vector = app.search(&token, &json!({"vector": v, "limit": 10})).await;
    assert_eq!(by_vector["mode"], "dense");
    assert_eq!(segments(&by_vector), segments(&dense));

    // MMR: the three twins fill a plain top 3; diversified, one twin and two other texts.
    let query = "telescopes looking at faraway galaxies";
    let plain = app
        .search(
            &token,
            &json!({"query": query, "limit": 3, "mode": "dense"}),
        )
        .await;
    let mut twins = segments(&plain);
    twins.sort();
    assert_eq!(twins, vec!["twin-1", "twin-2", "twin-3"], "{plain}");
    // (Keyword mode would re-rank only the texts with the query's words: the twins.)
    for mode in ["dense", "hybrid"] {
        let diverse = app
            .search(
                &token,
                &json!({"query": query, "limit": 3, "mode": mode,
                        "mmr": {"diversity": 0.5, "candidates": 8}}),
            )
            .await;
        let got = segments(&diverse);
        assert_eq!(got.len(), 3, "{mode}: {diverse}");
        let n_twins = got.iter().filter(|s| s.starts_with("twin")).count();
        assert_eq!(n_twins, 1, "{mode}: one twin, then other texts: {diverse}");
        assert!(
            got[0].starts_with("twin"),
            "{mode}: the most relevant first: {diverse}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranking_options_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let vector = vec![0.0_f32; 384];
    let cases = [
        (json!({"query": "q", "mode": "fuzzy"}), "mode"),
        (json!({"vector": vector, "mode": "keyword"}), "keyword"),
        (
            json!({"query": "q", "mmr": {"diversity": 1.5}}),
            "mmr.diversity",
        ),
        (
            json!({"query": "q", "mmr": {"diversity": -0.5}}),
            "mmr.diversity",
        ),
        (
            json!({"query": "q", "limit": 20, "mmr": {"candidates": 10}}),
            "mmr.candidates",
        ),
        (
            json!({"query": "q", "mmr": {"candidates": 5000}}),
            "mmr.candidates",
        ),
        (
            json!({"query": "q", "fusion": {"method": "max"}}),
            "fusion.method",
        ),
        (json!({"query": "q", "fusion": {"k": 0}}), "fusion.k"),
        (
            json!({"query": "q", "fusion": {"weights": {"dense": -1}}}),
            "fusion.weights.dense",
        ),
        (
            json!({"query": "q", "fusion": {"weights": {"dense": 0, "keyword": 0}}}),
            "fusion.weights",
        ),
        (
            json!({"query": "q", "fusion": {"method": "dbsf", "k": 10}}),
            "fusion.k",
        ),
    ];
    for (body, field) in cases {
        let response = app.post_json(&token, "/vectors/search", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "validation_error", "{body}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_holds_in_every_mode() {
    let app = TestApp::spawn().await;
    let (org_a, org_b) = (Uuid::new_v4(), Uuid::new_v4());
    let (a, b) = (app.token(org_a), app.token(org_b));
    let secret = "Confidential merger of Initech and Globex, code name Bluebird.";
    ingest(
        &app,
        &a,
        "secret",
        &[("s-1", secret), ("s-2", secret)],
        "mock",
    )
    .await;
    ingest(
        &app,
        &b,
        "mine",
        &[("m-1", "Quarterly report on the merger market.")],
        "mock",
    )
    .await;
    let mut asked = 0;
    for mode in ["hybrid", "dense", "keyword"] {
        for fusion in [json!({"method": "rrf"}), json!({"method": "dbsf"})] {
            for mmr in [Value::Null, json!({"diversity": 0.5})] {
                let mut body = json!({"query": secret, "model": "mock", "mode": mode,
                                      "fusion": fusion, "explain": true, "limit": 100,
                                      "score_threshold": -1.0});
                if !mmr.is_null() {
                    body["mmr"] = mmr.clone();
                }
                let results = app.search(&b, &body).await;
                for hit in results["results"].as_array().unwrap() {
                    assert_eq!(hit["payload"]["org_id"], org_b.to_string(), "{body}: {hit}");
                }
                let own = app.search(&a, &body).await;
                assert!(!own["results"].as_array().unwrap().is_empty(), "{body}");
                for hit in own["results"].as_array().unwrap() {
                    assert_eq!(hit["payload"]["org_id"], org_a.to_string(), "{body}: {hit}");
                }
                asked += 1;
            }
        }
    }
    assert_eq!(asked, 12);
    app.stop().await;
}

/// A data dir as Heimdex wrote it before hybrid search (the shard with one unnamed dense vector
/// and the payload indexes, points as the worker wrote them), served by the current code: the
/// store is upgraded at start-up, every point is still there and unchanged, keyword and hybrid
/// search find the old points, and new writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_before_hybrid_search_is_upgraded() {
    let data = tempfile::tempdir().unwrap();
    let org = Uuid::new_v4();
    let mock = Mock::new(384);
    let texts: Vec<(String, String)> = (0..300)
        .map(|i| {
            let topic = ["kernel scheduling", "bread baking", "tomato gardening"][i % 3];
            (
                format!("chunk-{i}"),
                format!("Note {i} about {topic} and other things."),
            )
        })
        .collect();
    let points = old_data_dir(data.path(), org, &mock, &texts);

    let app = TestApp::spawn_in(data, &[]).await;
    let token = app.token(org);
    // Every point, unchanged.
    assert_eq!(
        app.store
            .count(org, heimdex_store::PointFilter::default())
            .await
            .unwrap(),
        300
    );
    for (i, id) in points.iter().enumerate().step_by(37) {
        let stored: Value = app
            .get(&token, &format!("/vectors/{id}?with_vector=true"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(stored["payload"]["text"], texts[i].1.as_str(), "{stored}");
        let vector: Vec<f32> = serde_json::from_value(stored["vector"].clone()).unwrap();
        let expected = heimdex_store::l2_normalized(&mock.embed(&[&texts[i].1]).unwrap()[0]);
        assert!(
            vector
                .iter()
                .zip(&expected)
                .all(|(a, b)| (a - b).abs() < 1e-5),
            "vector of point {i} changed"
        );
    }
    // Keyword search finds the old points by their words; hybrid too.
    let keyword = app
        .search(
            &token,
            &json!({"query": "tomato gardening note 155", "mode": "keyword", "model": "mock",
                    "limit": 5}),
        )
        .await;
    assert_eq!(
        keyword["results"][0]["point_id"],
        points[155].to_string(),
        "{keyword}"
    );
    let hybrid = app
        .search(
            &token,
            &json!({"query": texts[42].1, "model": "mock", "limit": 3, "explain": true}),
        )
        .await;
    assert_eq!(
        hybrid["results"][0]["point_id"],
        points[42].to_string(),
        "{hybrid}"
    );
    assert_eq!(hybrid["results"][0]["explain"]["dense"]["rank"], 1);
    assert_eq!(hybrid["results"][0]["explain"]["keyword"]["rank"], 1);
    // New writes carry keyword vectors at once.
    ingest(
        &app,
        &token,
        "new",
        &[("n-1", "A freshly written sourdough recipe.")],
        "mock",
    )
    .await;
    let new = app
        .search(
            &token,
            &json!({"query": "sourdough", "mode": "keyword", "model": "mock"}),
        )
        .await;
    assert_eq!(segments(&new), vec!["n-1"]);
    app.stop().await;
}

/// Writes `<data>/qdrant/embeddings` as Heimdex did before hybrid search; returns the point ids.
fn old_data_dir(
    data: &std::path::Path,
    org: Uuid,
    mock: &Mock,
    texts: &[(String, String)],
) -> Vec<Uuid> {
    use qdrant_edge::{
        CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard, EdgeVectorParamsBuilder,
        FieldIndexOperations, JsonPath, KeywordIndexParams, PayloadFieldSchema,
        PayloadSchemaParams, PointId, PointInsertOperations, PointOperations, PointStructPersisted,
        UpdateOperation, VectorStructPersisted,
    };
    let dir = data.join("qdrant").join("embeddings");
    std::fs::create_dir_all(&dir).unwrap();
    let config = EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParamsBuilder::new(384, Distance::Cosine).build(),
        )
        .build();
    let shard = EdgeShard::new(&dir, config).unwrap();
    for (key, tenant) in [
        ("org_id", true),
        ("asset_id", false),
        ("model", false),
        ("model_ver", false),
    ] {
        shard
            .update(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name: JsonPath::try_from(key).unwrap(),
                    field_schema: Some(PayloadFieldSchema::FieldParams(
                        PayloadSchemaParams::Keyword(KeywordIndexParams {
                            is_tenant: tenant.then_some(true),
                            ..KeywordIndexParams::default()
                        }),
                    )),
                }),
            ))
            .unwrap();
    }
    let mut ids_out = Vec::new();
    let points = texts
        .iter()
        .map(|(segment, text)| {
            let id = ids::point_id(org, "old-notes", segment, Mock::NAME, Mock::VERSION);
            ids_out.push(id);
            let payload = json!({
                "org_id": org, "asset_id": "old-notes", "segment_id": segment,
                "model": Mock::NAME, "model_ver": Mock::VERSION, "text": text,
            });
            let Value::Object(payload) = payload else {
                unreachable!("a JSON object")
            };
            PointStructPersisted {
                id: PointId::Uuid(id),
                vector: VectorStructPersisted::Single(mock.embed(&[text]).unwrap().remove(0)),
                payload: Some(qdrant_edge::Payload(payload)),
            }
        })
        .collect();
    shard
        .update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .unwrap();
    shard.flush();
    ids_out
}
