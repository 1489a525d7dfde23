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

/// The JWT attack set over HTTP (the verifier's own tests cover each trick in detail): huge
/// tokens are cheap 401s (or 431 from the HTTP layer), never 5xx; `crit` and embedded-key
/// headers do not get a token in; a configured issuer and audience are required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_attacks_over_http_get_401_never_5xx() {
    let app = TestApp::spawn_with(&[("JWT_ISSUER", "heimdex"), ("JWT_AUDIENCE", "search")]).await;
    let org = Uuid::new_v4().to_string();
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"sub": "a", "org_id": org, "exp": exp, "iss": "heimdex", "aud": "search"});
    let signed_with_header = |header: serde_json::Value| {
        let message = format!("{}.{}", b64(header), b64(claims.clone()));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    };
    let good = sign(claims.clone(), JWT_SECRET);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("admin");
    let mut no_iss = claims.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let cases: Vec<(&str, String, &[u16])> = vec![
        ("control", good.clone(), &[202]),
        (
            "64 KiB token",
            format!("{good}{}", "A".repeat(64 * 1024)),
            &[401, 431],
        ),
        ("256 KiB token", "e".repeat(256 * 1024), &[401, 431]),
        (
            "crit header",
            signed_with_header(json!({"alg": "HS256", "crit": ["exp"]})),
            &[401],
        ),
        (
            "jku/x5u/jwk naming another key",
            {
                let message = format!(
                    "{}.{}",
                    b64(
                        json!({"alg": "HS256", "jku": "https://evil.example/jwks.json",
                               "x5u": "https://evil.example/c.pem",
                               "jwk": {"kty": "oct", "k": "YXR0YWNrZXI"}})
                    ),
                    b64(claims.clone())
                );
                let signature = jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(b"attacker"),
                    Algorithm::HS256,
                )
                .unwrap();
                format!("{message}.{signature}")
            },
            &[401],
        ),
        (
            "kid to /dev/null, empty key",
            {
                let message = format!(
                    "{}.{}",
                    b64(json!({"alg": "HS256", "kid": "../../../../dev/null"})),
                    b64(claims.clone())
                );
                let signature = jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(b""),
                    Algorithm::HS256,
                )
                .unwrap();
                format!("{message}.{signature}")
            },
            &[401],
        ),
        (
            "RS256 header, HMAC-signed",
            signed_with_header(json!({"alg": "RS256"})),
            &[401],
        ),
        ("wrong aud", sign(wrong_aud, JWT_SECRET), &[401]),
        ("missing iss", sign(no_iss, JWT_SECRET), &[401]),
    ];
    for (name, token, want) in cases {
        let response = app
            .http
            .post(app.url("/vectors/mock"))
            .header("Authorization", format!("Bearer {token}"))
            .json(&json!({"asset_id": "a", "segment_id": "b"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(want.contains(&status), "{name}: {status}");
        if status == 401 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{name}"
            );
        }
    }
    // Still serving.
    let response = app.post_mock(&sign(claims, JWT_SECRET), "a", "c").await;
    assert_eq!(response.status(), 202);
    app.stop().await;
}
