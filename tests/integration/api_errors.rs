use heimdex_tests::TestApp;
use serde_json::json;
use uuid::Uuid;

/// Sends a raw body to `POST /vectors/mock` and returns (status, content-type, body).
async fn post_raw(
    app: &TestApp,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String, serde_json::Value) {
    let response = app
        .http
        .post(app.url("/vectors/mock"))
        .bearer_auth(token)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, ct, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_4xx_problem_json_never_5xx() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let json_ct = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("malformed JSON", json_ct, b"{\"asset_id\": ".to_vec(), 400),
        ("not an object", json_ct, b"[1,2,3]".to_vec(), 400),
        (
            "wrong types",
            json_ct,
            json!({"asset_id": 5, "segment_id": true})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "missing field",
            json_ct,
            json!({"asset_id": "a"}).to_string().into_bytes(),
            400,
        ),
        (
            "null field",
            json_ct,
            json!({"asset_id": null, "segment_id": "b"})
                .to_string()
                .into_bytes(),
            400,
        ),
        ("empty body", json_ct, Vec::new(), 400),
        (
            "empty asset_id",
            json_ct,
            json!({"asset_id": "", "segment_id": "b"})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "257-char asset_id",
            json_ct,
            json!({"asset_id": "x".repeat(257), "segment_id": "b"})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "control char",
            json_ct,
            json!({"asset_id": "a\u{1}b", "segment_id": "b"})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "newline in segment",
            json_ct,
            json!({"asset_id": "a", "segment_id": "b\nc"})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "wrong content type",
            "text/plain",
            b"asset_id=a".to_vec(),
            415,
        ),
        ("invalid UTF-8", json_ct, vec![b'"', 0xff, 0xfe, b'"'], 400),
    ];
    for (name, ct, body, want) in cases {
        let (status, content_type, problem) = post_raw(&app, &token, ct, body).await;
        assert_eq!(status, want, "{name}: {problem}");
        assert_eq!(content_type, "application/problem+json", "{name}");
        assert_eq!(problem["status"], want, "{name}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:heimdex:problem:"),
            "{name}"
        );
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{name}"
        );
    }
    // 256 characters (multi-byte) is the limit, inclusive.
    let (status, _, _) = post_raw(
        &app,
        &token,
        json_ct,
        json!({"asset_id": "é".repeat(256), "segment_id": "b"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 202);

    // Paths and methods.
    for (method, path, want) in [
        ("GET", "/jobs/not-a-uuid".to_owned(), 400),
        ("GET", "/vectors/not-a-uuid".to_owned(), 400),
        ("GET", format!("/jobs/{}", Uuid::new_v4()), 404),
        ("GET", format!("/jobs/{}/events", Uuid::new_v4()), 404),
        ("GET", format!("/vectors/{}", Uuid::new_v4()), 404),
        ("GET", "/nowhere".to_owned(), 404),
        ("DELETE", "/vectors/mock".to_owned(), 405),
    ] {
        let response = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), want, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    app.stop().await;
}

/// Every bad input on the embedding and search routes: a 4xx problem+json naming the reason,
/// and nothing accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_embed_and_search_input_gets_a_clear_4xx() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());
    let long = "word ".repeat(4_000); // 20,000 characters
    let too_many: Vec<serde_json::Value> = (0..1_001)
        .map(|i| json!({"segment_id": format!("s-{i}"), "text": "x"}))
        .collect();
    let vector_383 = vec![0.1f32; 383];
    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": ""}),
            422,
            "empty",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": " \n\t "}),
            422,
            "whitespace",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": long}),
            422,
            "at most 16384",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": "hi", "model": "gpt-9"}),
            422,
            "unknown model",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": 42}),
            400,
            "",
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s"}),
            400,
            "",
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "a", "segments": []}),
            422,
            "empty",
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "a", "segments": too_many}),
            422,
            "at most 1000",
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "a", "segments": [{"segment_id": "s", "text": "x"}, {"segment_id": "s", "text": "y"}]}),
            422,
            "repeats",
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "a", "segments": [{"segment_id": "s", "text": ""}]}),
            422,
            "segments[0].text",
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "   "}),
            422,
            "empty",
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "x", "chunk": {"max_tokens": 4}}),
            422,
            "max_tokens",
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "x", "chunk": {"max_tokens": 64, "overlap": 32}}),
            422,
            "overlap",
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "x", "model": "nope"}),
            422,
            "unknown model",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "vector": vector_383.clone()}),
            422,
            "not both",
        ),
        (
            "/vectors/search",
            json!({"limit": 5}),
            422,
            "query or a vector",
        ),
        (
            "/vectors/search",
            json!({"vector": vector_383}),
            422,
            "dimension 383",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "limit": 0}),
            422,
            "limit",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "limit": 101}),
            422,
            "limit",
        ),
        (
            "/vectors/search",
            json!({"query": "q", "offset": -1}),
            422,
            "offset",
        ),
        ("/vectors/search", json!({"query": "  "}), 422, "empty"),
        (
            "/vectors/search",
            json!({"query": "q", "model": "gpt-9"}),
            422,
            "unknown model",
        ),
        ("/vectors/search", json!({"query": 7}), 400, ""),
    ];
    for (path, body, status, needle) in cases {
        let response = app.post_json(&token, path, &body).await;
        let got = response.status().as_u16();
        let ct = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let problem: serde_json::Value = response.json().await.unwrap();
        let label = format!(
            "{path} {}",
            &body.to_string()[..body.to_string().len().min(120)]
        );
        assert_eq!(got, status, "{label}: {problem}");
        assert_eq!(ct, "application/problem+json", "{label}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{label}: {detail}");
    }

    // Over the route's limit (8 MiB on the bulk routes, 1 MiB elsewhere): 413 from the declared
    // length, before the body is read. (A client streaming the body may see the connection close
    // mid-upload instead, as the server does not read what it refused, so the request is written
    // by hand: headers only.)
    for (path, len, expected) in [
        ("/vectors/embed/batch", 9 * 1024 * 1024, "413"),
        ("/vectors/documents", 9 * 1024 * 1024, "413"),
        ("/vectors/embed", 2 * 1024 * 1024, "413"),
        ("/vectors/mock", 2 * 1024 * 1024, "413"),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expected}")),
            "{path}: {answer}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{path}: {answer}"
        );
    }
    // Under the bulk limit but over the 1 MiB default, the bulk routes read the body.
    let segments: Vec<serde_json::Value> = (0..200)
        .map(|i| json!({"segment_id": format!("s-{i}"), "text": "x".repeat(7_000)}))
        .collect();
    let body = json!({"asset_id": "a", "segments": segments, "model": "gpt-9"});
    assert!(body.to_string().len() > 1024 * 1024);
    let response = app.post_json(&token, "/vectors/embed/batch", &body).await;
    assert_eq!(
        response.status(),
        422,
        "read and validated, not refused for size"
    );
    // Nothing was accepted by any of it.
    let info = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap())
        .get_stream("HEIMDEX_JOBS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info, 0);
    app.stop().await;
}

/// A route, a valid body, and bodies with a typo each paired with the field the answer must name.
type TypoCase = (
    &'static str,
    serde_json::Value,
    Vec<(serde_json::Value, &'static str)>,
);

/// A misspelt or made-up field in any JSON body is refused with the same 400 as the other body
/// errors, naming the field, before anything is stored or searched. The routes come from the
/// live OpenAPI spec: a new route taking a JSON body fails this test until it has cases here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspelt_fields_are_refused_on_every_json_body() {
    const ADMIN: &str = "admin-token-for-the-typo-test-0123456789";
    let app = TestApp::spawn_with(&[("HEIMDEX_ADMIN_TOKEN", ADMIN)]).await;
    let tenant = app.token(Uuid::new_v4());
    // The admin route takes the admin token; every other one a tenant's.
    let token_for = |route: &str| match route.starts_with("/admin/") {
        true => ADMIN.to_owned(),
        false => tenant.clone(),
    };
    let token = tenant.clone();
    let cases: Vec<TypoCase> = vec![
        (
            "/admin/index/rebuild",
            json!({}),
            vec![
                (json!({"modle": "mock"}), "modle"),
                (json!({"model": "mock", "form": ["minilm-l6-v2"]}), "form"),
            ],
        ),
        (
            "/vectors/mock",
            json!({"asset_id": "a", "segment_id": "s"}),
            vec![
                (json!({"asset_id": "a", "segmnt_id": "s"}), "segmnt_id"),
                (
                    json!({"asset_id": "a", "segment_id": "s", "org_id": "x"}),
                    "org_id",
                ),
            ],
        ),
        (
            "/vectors/embed",
            json!({"asset_id": "a", "segment_id": "s", "text": "hello", "model": "mock"}),
            vec![
                (
                    json!({"asset_id": "a", "segment_id": "s", "text": "hello", "modle": "mock"}),
                    "modle",
                ),
                (
                    json!({"asset_id": "a", "segment_id": "s", "txt": "hello"}),
                    "txt",
                ),
            ],
        ),
        (
            "/vectors/embed/batch",
            json!({"asset_id": "a", "segments": [{"segment_id": "s", "text": "hi"}], "model": "mock"}),
            vec![
                (
                    json!({"asset_id": "a", "segments": [{"segment_id": "s", "text": "hi", "meta": {}}], "model": "mock"}),
                    "segments[0].meta",
                ),
                (
                    json!({"asset_id": "a", "segment": [{"segment_id": "s", "text": "hi"}]}),
                    "segment",
                ),
            ],
        ),
        (
            "/vectors/documents",
            json!({"asset_id": "a", "text": "One sentence. Another.", "model": "mock", "chunk": {"max_tokens": 128}}),
            vec![
                (
                    json!({"asset_id": "a", "text": "One.", "model": "mock", "chunk": {"max_token": 128}}),
                    "chunk.max_token",
                ),
                (
                    json!({"asset_id": "a", "text": "One.", "model": "mock", "chunks": {"max_tokens": 128}}),
                    "chunks",
                ),
            ],
        ),
        (
            "/vectors/search",
            json!({"query": "hello", "model": "mock", "filter": {"asset_id": "a"}}),
            vec![
                (
                    json!({"query": "hello", "model": "mock", "filters": {"asset_id": "a"}}),
                    "filters",
                ),
                (
                    json!({"query": "hello", "model": "mock", "filter": {"asset": "a"}}),
                    "filter.asset",
                ),
                (
                    json!({"query": "hello", "model": "mock", "top_k": 3}),
                    "top_k",
                ),
                (
                    json!({"query": "hello", "model": "mock",
                           "filter": {"metadata": {"must": [{"key": "k", "equals": 1}]}}}),
                    "filter.metadata.must[0].equals",
                ),
                (
                    json!({"query": "hello", "model": "mock", "fusion": {"methd": "rrf"}}),
                    "fusion.methd",
                ),
            ],
        ),
    ];

    // Every operation with a JSON request body has cases, and no case names a route that is
    // not one.
    let spec: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut json_routes: Vec<String> = Vec::new();
    let mut put_routes: Vec<String> = Vec::new();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let json_body = operation["requestBody"]["content"]
                .as_object()
                .is_some_and(|content| content.keys().any(|ct| ct.starts_with("application/json")));
            if json_body && method == "put" {
                put_routes.push(path.clone());
            } else if json_body {
                assert_eq!(method, "post", "{method} {path}: add it to this test");
                json_routes.push(path.clone());
            }
        }
    }
    json_routes.sort();
    let mut covered: Vec<String> = cases
        .iter()
        .map(|(route, ..)| (*route).to_owned())
        .collect();
    covered.sort();
    assert_eq!(covered, json_routes, "routes with a JSON body");
    assert_eq!(
        put_routes,
        ["/documents/{asset_id}"],
        "PUT routes with a JSON body"
    );
    let put = |body: serde_json::Value| {
        app.http
            .put(app.url("/documents/typo-doc"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let response = put(json!({"text": "One. Two.", "model": "mock"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "the valid document is accepted");
    for (body, field) in [
        (
            json!({"text": "One.", "model": "mock", "asset_id": "x"}),
            "asset_id",
        ),
        (
            json!({"text": "One.", "model": "mock", "chunk": {"max_token": 8}}),
            "chunk.max_token",
        ),
        (json!({"txt": "One.", "model": "mock"}), "txt"),
    ] {
        let response = put(body.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let problem: serde_json::Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("unknown field `{field}`")),
            "{body}: {detail}"
        );
    }

    for (route, valid, typos) in cases {
        let token = token_for(route);
        let response = app.post_json(&token, route, &valid).await;
        assert!(
            response.status().is_success(),
            "{route}: the valid body is accepted: {}",
            response.text().await.unwrap()
        );
        for (body, field) in typos {
            let response = app.post_json(&token, route, &body).await;
            let status = response.status().as_u16();
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{route} {body}"
            );
            let problem: serde_json::Value = response.json().await.unwrap();
            assert_eq!(status, 400, "{route} {body}: {problem}");
            assert_eq!(problem["code"], "bad_request", "{route} {body}: {problem}");
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.contains(&format!("unknown field `{field}`")),
                "{route} {body}: {detail}"
            );
            eprintln!("{route}: {detail}");
        }
    }
    app.stop().await;
}
