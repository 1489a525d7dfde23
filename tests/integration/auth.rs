use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

use heimdex_tests::{JWT_SECRET, TestApp};

fn sign(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64(value: serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_problem_json_on_every_protected_route() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4().to_string();
    let exp = chrono::Utc::now().timestamp() + 600;
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                b64(json!({"sub": "a", "org_id": org, "exp": exp}))
            )),
        ),
        (
            "expired",
            Some(sign(
                json!({"sub": "a", "org_id": org, "exp": 1_000_000}),
                JWT_SECRET,
            )),
        ),
        (
            "wrong signature",
            Some(sign(
                json!({"sub": "a", "org_id": org, "exp": exp}),
                "another-secret-another-secret-1234",
            )),
        ),
        (
            "missing org_id",
            Some(sign(json!({"sub": "a", "exp": exp}), JWT_SECRET)),
        ),
        (
            "non-UUID org_id",
            Some(sign(
                json!({"sub": "a", "org_id": "acme", "exp": exp}),
                JWT_SECRET,
            )),
        ),
        ("garbage", Some("garbage".to_owned())),
        ("empty", Some(String::new())),
    ];
    let job = Uuid::new_v4();
    for (name, token) in cases {
        for (method, path) in [
            ("POST", "/vectors/mock".to_owned()),
            ("GET", format!("/jobs/{job}")),
            ("GET", format!("/jobs/{job}/events")),
            ("GET", format!("/vectors/{job}")),
        ] {
            let mut request = match method {
                "POST" => app
                    .http
                    .post(app.url(&path))
                    .json(&json!({"asset_id": "a", "segment_id": "b"})),
                _ => app.http.get(app.url(&path)),
            };
            if let Some(token) = &token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{name} {method} {path}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{name}"
            );
            assert!(
                response.headers().contains_key("www-authenticate"),
                "{name}"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["status"], 401, "{name}");
            assert_eq!(body["code"], "unauthorized", "{name}");
            assert!(
                body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}"
            );
        }
    }
    // Basic auth is not bearer auth.
    let response = app
        .http
        .post(app.url("/vectors/mock"))
        .basic_auth("user", Some("pass"))
        .json(&json!({"asset_id": "a", "segment_id": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}
