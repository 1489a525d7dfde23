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
        ("oversized", json_ct, vec![b' '; 2 * 1024 * 1024], 413),
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
