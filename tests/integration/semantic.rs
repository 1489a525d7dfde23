//! Real embeddings end to end: text in through the API, the worker embeds with MiniLM, search
//! finds it. Uses the real weights that `deploy/setup.sh` installs.

use std::time::Duration;

use heimdex_domain::ids;
use heimdex_domain::jobs::{EmbedParams, JobSpec};
use heimdex_embed::Embedder;
use heimdex_tests::TestApp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::publish_requested;

const WAIT: Duration = Duration::from_secs(60);

fn job_ids(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .expect("job list")
        .iter()
        .map(|j| j["job_id"].as_str().expect("job_id").to_owned())
        .collect()
}

const TOPICS: [(&str, &str); 5] = [
    (
        "astronomy",
        "Telescopes collect light from distant galaxies. Astronomers study how stars are born \
         inside clouds of gas and dust. A supernova is the explosion of a massive star at the end \
         of its life. Black holes bend light so strongly that nothing escapes them. The Hubble \
         and James Webb space telescopes observe the early universe in infrared light.",
    ),
    (
        "cooking",
        "To bake bread, mix flour, water, yeast and salt, then knead the dough until it is \
         smooth. Let it rise for an hour in a warm kitchen. Preheat the oven and bake the loaf \
         until the crust is golden brown. Fresh basil, garlic and olive oil make a simple pasta \
         sauce. Season the soup with pepper before serving.",
    ),
    (
        "football",
        "The striker scored a goal in the final minute of the match. The goalkeeper saved a \
         penalty kick and the fans cheered in the stadium. The coach changed the team's tactics \
         at half time. The league championship is decided over a long season of matches. A \
         red card sends a player off the pitch.",
    ),
    (
        "programming",
        "Rust's borrow checker prevents data races at compile time. A function takes ownership \
         of its arguments unless they are borrowed by reference. Cargo builds the crate and runs \
         its unit tests. Async functions return futures that an executor such as tokio polls. \
         Compilers turn source code into machine code.",
    ),
    (
        "gardening",
        "Plant tomato seedlings in spring after the last frost. Water the vegetable garden \
         early in the morning and mulch the soil to keep it moist. Roses need pruning in late \
         winter. Compost adds nutrients to the flower beds. Pull weeds before they set seed.",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_on_distinct_topics_then_a_query_finds_its_topic_first() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());

    let mut jobs = Vec::new();
    let mut chunk_lists = Vec::new();
    for (asset, text) in TOPICS {
        let response = app
            .post_json(
                &token,
                "/vectors/documents",
                &json!({"asset_id": asset, "text": text, "chunk": {"max_tokens": 40, "overlap": 8}}),
            )
            .await;
        assert_eq!(response.status(), 202, "{asset}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], "minilm-l6-v2");
        let chunks = body["chunks"].as_array().unwrap().clone();
        assert!(chunks.len() >= 2, "{asset} makes several 40-token chunks");
        for (n, c) in chunks.iter().enumerate() {
            assert_eq!(c["segment_id"], format!("chunk-{n}"));
            assert_eq!(c["chunk_index"], n);
        }
        jobs.extend(job_ids(&body, "chunks"));
        chunk_lists.push((asset, text, chunks));
    }
    app.wait_for_jobs(&token, &jobs, "SUCCEEDED", WAIT).await;

    // Each chunk's payload carries its text and where it sits in the document.
    for (asset, text, chunks) in &chunk_lists {
        let chars: Vec<char> = text.chars().collect();
        for c in chunks {
            let point = c["point_id"].as_str().unwrap();
            let stored: Value = app
                .get(&token, &format!("/vectors/{point}"))
                .await
                .json()
                .await
                .unwrap();
            let p = &stored["payload"];
            assert_eq!(p["asset_id"], *asset);
            let (start, end) = (
                p["char_start"].as_u64().unwrap() as usize,
                p["char_end"].as_u64().unwrap() as usize,
            );
            let slice: String = chars[start..end].iter().collect();
            assert_eq!(p["text"], slice.as_str());
            assert_eq!(p["chunk_index"], c["chunk_index"]);
            assert_eq!(p["model"], "minilm-l6-v2");
        }
    }

    for (query, topic) in [
        ("How do telescopes observe faraway galaxies?", "astronomy"),
        ("recipe for baking a loaf of bread", "cooking"),
        ("who scored in the soccer game", "football"),
        (
            "memory safety in a systems programming language",
            "programming",
        ),
        ("when should I plant tomatoes", "gardening"),
    ] {
        let results = app
            .search(&token, &json!({"query": query, "limit": 3}))
            .await;
        let top = &results["results"][0];
        assert_eq!(top["payload"]["asset_id"], topic, "{query}: {results}");
        let scores: Vec<f64> = results["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "best first: {scores:?}"
        );

        // Narrowed to another asset, the topic's chunks never answer.
        let other = if topic == "cooking" {
            "football"
        } else {
            "cooking"
        };
        let narrowed = app
            .search(
                &token,
                &json!({"query": query, "limit": 5, "filter": {"asset_id": other}}),
            )
            .await;
        assert!(
            narrowed["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["payload"]["asset_id"] == other),
            "{narrowed}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_segment_holds_the_models_vector() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let text = "The quick brown fox jumps over the lazy dog.";
    let response = app
        .post_json(
            &token,
            "/vectors/embed",
            &json!({"asset_id": "doc", "segment_id": "s-1", "text": text}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap();
    let job = app.wait_for_job(&token, job_id, "SUCCEEDED", WAIT).await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["result"]["point_ids"][0], accepted["point_id"]);
    assert_eq!(job["result"]["model"], "minilm-l6-v2");
    assert_eq!(job["result"]["model_ver"], accepted["model_ver"]);
    assert_eq!(job["attempts"], 1);

    let model = heimdex_embed::MiniLm::load_default().expect("weights installed");
    assert_eq!(accepted["model_ver"], model.model_ver());
    let expected = model.embed(&[text]).unwrap().remove(0);
    let point = accepted["point_id"].as_str().unwrap();
    let stored: Value = app
        .get(&token, &format!("/vectors/{point}?with_vector=true"))
        .await
        .json()
        .await
        .unwrap();
    let vector: Vec<f32> = serde_json::from_value(stored["vector"].clone()).unwrap();
    let cosine: f32 = vector.iter().zip(&expected).map(|(a, b)| a * b).sum();
    assert!(cosine > 0.9999, "cosine {cosine}");
    assert_eq!(stored["payload"]["text"], text);

    // The point id is the Python-compatible id over the model and its version.
    let org = heimdex_api::auth::Verifier::new(&app.settings.api.jwt)
        .unwrap()
        .verify(&token)
        .unwrap()
        .org_id;
    assert_eq!(
        point,
        ids::point_id(org, "doc", "s-1", "minilm-l6-v2", model.model_ver()).to_string()
    );

    // Searching by that vector finds the point first, with a cosine of 1.
    let results = app
        .search(
            &token,
            &json!({"vector": expected, "limit": 1, "with_vector": true, "mode": "dense"}),
        )
        .await;
    assert_eq!(results["results"][0]["point_id"], point);
    let score = results["results"][0]["score"].as_f64().unwrap();
    assert!((score - 1.0).abs() < 1e-4, "{score}");
    assert_eq!(
        results["results"][0]["vector"].as_array().map(Vec::len),
        Some(384)
    );

    // The same request again is the same job; changed text is a new job on the same point.
    let again: Value = app
        .post_json(
            &token,
            "/vectors/embed",
            &json!({"asset_id": "doc", "segment_id": "s-1", "text": text}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["job_id"], accepted["job_id"]);
    let changed: Value = app
        .post_json(
            &token,
            "/vectors/embed",
            &json!({"asset_id": "doc", "segment_id": "s-1", "text": "Something else entirely."}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(changed["job_id"], accepted["job_id"]);
    assert_eq!(changed["point_id"], accepted["point_id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_idempotent_job_per_segment() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let segments: Vec<Value> = (0..40)
        .map(|i| json!({"segment_id": format!("s-{i}"), "text": format!("Sentence number {i} about topic {}.", i % 7)}))
        .collect();
    let body = json!({"asset_id": "batch-doc", "segments": segments});
    let response = app.post_json(&token, "/vectors/embed/batch", &body).await;
    assert_eq!(response.status(), 202);
    let first: Value = response.json().await.unwrap();
    let ids = job_ids(&first, "jobs");
    assert_eq!(ids.len(), 40);
    assert_eq!(first["jobs"][7]["segment_id"], "s-7");
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 40);

    // Resending the batch (a client retry) names the same jobs.
    let again: Value = app
        .post_json(&token, "/vectors/embed/batch", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job_ids(&again, "jobs"), ids);

    let jobs = app.wait_for_jobs(&token, &ids, "SUCCEEDED", WAIT).await;
    assert!(jobs.iter().all(|j| j["attempts"] == 1));
    let results = app
        .search(
            &token,
            &json!({"query": "topic 3", "limit": 100, "filter": {"asset_id": "batch-doc"}}),
        )
        .await;
    assert_eq!(results["results"].as_array().unwrap().len(), 40);
    app.stop().await;
}

/// Jobs that can never succeed (here published straight to the stream, past the API's
/// checks) fail on their first attempt with the reason, and are not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_jobs_fail_on_the_first_attempt() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let token = app.token(org);
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let cases = [
        ("no-such-model", "v1", "some text", "unknown model"),
        ("minilm-l6-v2", "st-v1-00000000", "some text", "not served"),
        ("minilm-l6-v2", "st-v1-53aa5117", "   ", "empty"),
    ];
    for (i, (model, model_ver, text, reason)) in cases.into_iter().enumerate() {
        let spec = JobSpec::Embedding(EmbedParams {
            asset_id: heimdex_domain::AssetId::parse("poison").unwrap(),
            segment_id: heimdex_domain::SegmentId::parse(format!("s-{i}")).unwrap(),
            model: model.into(),
            model_ver: model_ver.into(),
            text: text.into(),
            chunk: None,
            generation: 0,
            metadata: Default::default(),
        });
        let job_id = publish_requested(&js, org, "test", spec).await;
        let job = app
            .wait_for_job(&token, &job_id.to_string(), "FAILED", WAIT)
            .await;
        assert_eq!(job["status"], "FAILED", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        assert_eq!(job["error"]["code"], "invalid_input", "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_is_reported_by_readyz_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(&[("HEIMDEX_MODEL_DIR", dir.path().to_str().unwrap())]).await;
    let token = app.token(Uuid::new_v4());

    let response = app
        .post_json(
            &token,
            "/vectors/embed",
            &json!({"asset_id": "a", "segment_id": "s", "text": "hello"}),
        )
        .await;
    assert_eq!(response.status(), 503);
    // Retrying cannot help until an operator installs the weights: no Retry-After.
    assert!(!response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "model_unavailable");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("minilm-l6-v2") && detail.contains("setup.sh"),
        "{detail}"
    );

    let response = app
        .post_json(&token, "/vectors/search", &json!({"query": "hello"}))
        .await;
    assert_eq!(response.status(), 503);

    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["deps"]["model"]["ok"], false);
    assert_eq!(ready["deps"]["model"]["name"], "minilm-l6-v2");
    assert!(
        ready["deps"]["model"]["error"]
            .as_str()
            .unwrap()
            .contains("model.safetensors")
            || ready["deps"]["model"]["error"]
                .as_str()
                .unwrap()
                .contains("config.json"),
        "{ready}"
    );

    // The mock model needs no weights and still works.
    let response = app
        .post_json(
            &token,
            "/vectors/embed",
            &json!({"asset_id": "a", "segment_id": "s", "text": "hello", "model": "mock"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    app.stop().await;
}

/// The second MiniLM is served beside the default one: a document sent with
/// `model: paraphrase-minilm-l3-v2` is embedded by it, found by a search naming it, with its
/// `model_ver`, and never answers a search of the default model (vectors of two models are
/// not comparable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_model_embeds_and_searches_apart_from_the_default() {
    const L3: &str = "paraphrase-minilm-l3-v2";
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let mut jobs = Vec::new();
    for (asset, text) in TOPICS {
        let response = app
            .post_json(
                &token,
                "/vectors/documents",
                &json!({"asset_id": asset, "text": text, "model": L3}),
            )
            .await;
        assert_eq!(response.status(), 202, "{asset}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], L3);
        jobs.extend(job_ids(&body, "chunks"));
    }
    app.wait_for_jobs(&token, &jobs, "SUCCEEDED", WAIT).await;

    let l3 = heimdex_embed::Registry::load(None, 384, heimdex_embed::ThreadBudget::ONE)
        .get(Some(L3))
        .expect("paraphrase-minilm-l3-v2 installed by deploy/setup.sh");
    for (query, topic) in [
        ("How do telescopes observe faraway galaxies?", "astronomy"),
        ("recipe for baking a loaf of bread", "cooking"),
        ("when should I plant tomatoes", "gardening"),
    ] {
        let results = app
            .search(&token, &json!({"query": query, "limit": 3, "model": L3}))
            .await;
        assert_eq!(results["model"], L3, "{results}");
        assert_eq!(results["model_ver"], l3.model_ver(), "{results}");
        let top = &results["results"][0];
        assert_eq!(top["payload"]["asset_id"], topic, "{query}: {results}");
        assert_eq!(top["payload"]["model"], L3);
        let default = app.search(&token, &json!({"query": query})).await;
        assert_eq!(default["model"], "minilm-l6-v2");
        assert_eq!(default["results"], json!([]), "{default}");
    }
    app.stop().await;
}
