//! Bearer-token authentication. A token names the tenant (`org_id`, a UUID) and the user
//! (`sub`); every read and write is scoped to that tenant.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Tokens longer than this are refused before any parsing: a JWT carrying our claims is a few
/// hundred bytes, and nothing good comes from base64-decoding megabytes of header.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The caller, as proven by a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub org_id: Uuid,
    pub user_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Parsed as a string so a non-UUID value is reported as such, not as a format error.
    org_id: Option<String>,
    /// Optional here so that a missing `exp` is reported by the validator as a missing claim.
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Why a request is not authenticated. Every variant becomes a 401; the message is safe to show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token too large")]
    TooLarge,
    #[error("token algorithm not accepted")]
    Algorithm,
    /// The header names `crit` extensions (RFC 7515 §4.1.11): none is understood here, and a
    /// recipient must reject what it does not understand (`b64: false` would change what the
    /// signature covers).
    #[error("token header has critical extensions")]
    CriticalHeader,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer or audience not accepted")]
    IssuerOrAudience,
    #[error("token has no org_id claim")]
    MissingOrg,
    #[error("token org_id is not a UUID")]
    InvalidOrg,
    #[error("token claims invalid: {0}")]
    Claims(String),
}

/// Where verification keys come from. Exactly one algorithm family is accepted per deployment,
/// which is what defeats algorithm-confusion attacks (an HS256 token signed with a public key).
#[derive(Clone)]
pub struct JwtConfig {
    pub secret: SecretString,
    /// PEM public key; when set, RS256 or ES256 tokens are verified with it instead of HS256.
    pub public_key_pem: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &"[redacted]")
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(|_| "[set]"),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT_PUBLIC_KEY is not a PEM RSA or EC public key")]
    PublicKey,
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// Verifies bearer tokens. Built once at start-up.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Result<Self, KeyError> {
        let (key, algorithm) = match &config.public_key_pem {
            None => (
                DecodingKey::from_secret(config.secret.expose_secret().as_bytes()),
                Algorithm::HS256,
            ),
            Some(pem) => match DecodingKey::from_rsa_pem(pem.as_bytes()) {
                Ok(key) => (key, Algorithm::RS256),
                Err(_) => (
                    DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|_| KeyError::PublicKey)?,
                    Algorithm::ES256,
                ),
            },
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self { key, validation })
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`).
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge);
        }
        self.check_algorithm(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|err| classify(err.kind()))?;
        let org = data.claims.org_id.ok_or(AuthError::MissingOrg)?;
        let org_id = Uuid::parse_str(&org).map_err(|_| AuthError::InvalidOrg)?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Claims("empty sub".into()));
        }
        Ok(Principal {
            org_id,
            user_id: data.claims.sub,
        })
    }
}

impl Verifier {
    /// Reads the header's `alg` before anything else, so `none` (which the JWT library cannot
    /// even represent) and other algorithms are reported as what they are. Also refuses `crit`,
    /// which the JWT library parses but does not enforce. Key-selecting headers (`kid`, `jku`,
    /// `x5u`, `jwk`, `x5c`) are never consulted: the one configured key verifies every token.
    fn check_algorithm(&self, token: &str) -> Result<(), AuthError> {
        use base64::Engine as _;
        #[derive(Deserialize)]
        struct RawHeader {
            alg: String,
            #[serde(default)]
            crit: Option<serde_json::Value>,
        }
        let header = token.split('.').next().ok_or(AuthError::Malformed)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed)?;
        let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
        if raw.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        let accepted = self
            .validation
            .algorithms
            .iter()
            .any(|alg| format!("{alg:?}") == raw.alg);
        if accepted {
            Ok(())
        } else {
            Err(AuthError::Algorithm)
        }
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::InvalidSubject => {
            AuthError::IssuerOrAudience
        }
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Claims(format!("missing {claim}")),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::Claims(format!("bad {claim}")),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::RsaFailedSigning
        | ErrorKind::Signing(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => AuthError::Signature,
        // `ErrorKind` is non-exhaustive: a kind added by a future release is a rejection.
        _ => AuthError::Malformed,
    }
}

/// Mints an HS256 development token (`heimdex token`).
pub fn issue_token(
    config: &JwtConfig,
    org_id: Uuid,
    user_id: &str,
    ttl: std::time::Duration,
) -> Result<String, KeyError> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user_id.to_owned(),
        org_id: Some(org_id.to_string()),
        exp: Some(now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)),
        iat: Some(now),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
    };
    let key = EncodingKey::from_secret(config.secret.expose_secret().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|err| KeyError::Sign(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn config() -> JwtConfig {
        JwtConfig {
            secret: SecretString::from(SECRET),
            public_key_pem: None,
            issuer: None,
            audience: None,
        }
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn exp() -> i64 {
        chrono::Utc::now().timestamp() + 600
    }

    fn b64(value: &serde_json::Value) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn issued_token_verifies() {
        let org = Uuid::new_v4();
        let token = issue_token(&config(), org, "alice", Duration::from_secs(60)).unwrap();
        let principal = Verifier::new(&config()).unwrap().verify(&token).unwrap();
        assert_eq!(
            principal,
            Principal {
                org_id: org,
                user_id: "alice".into()
            }
        );
    }

    #[test]
    fn header_parsing() {
        let verifier = Verifier::new(&config()).unwrap();
        let token = issue_token(&config(), Uuid::new_v4(), "a", Duration::from_secs(60)).unwrap();
        assert!(
            verifier
                .verify_header(Some(&format!("Bearer {token}")))
                .is_ok()
        );
        assert!(
            verifier
                .verify_header(Some(&format!("bearer  {token}")))
                .is_ok()
        );
        assert_eq!(verifier.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            verifier.verify_header(Some(&format!("Basic {token}"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            verifier.verify_header(Some("Bearer")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            verifier.verify_header(Some("Bearer ")),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn hostile_tokens_are_rejected_with_their_reason() {
        let verifier = Verifier::new(&config()).unwrap();
        let org = Uuid::new_v4().to_string();
        let none_alg = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&json!({"sub": "a", "org_id": org, "exp": exp()}))
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "a", "org_id": org, "exp": exp()}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let cases = [
            (none_alg, AuthError::Algorithm),
            (hs512, AuthError::Algorithm),
            (
                sign(json!({"sub": "a", "org_id": org, "exp": 1_000}), SECRET),
                AuthError::Expired,
            ),
            (
                sign(
                    json!({"sub": "a", "org_id": org, "exp": exp()}),
                    "wrong-secret-wrong-secret-wrong!",
                ),
                AuthError::Signature,
            ),
            (
                sign(json!({"sub": "a", "exp": exp()}), SECRET),
                AuthError::MissingOrg,
            ),
            (
                sign(json!({"sub": "a", "org_id": "acme", "exp": exp()}), SECRET),
                AuthError::InvalidOrg,
            ),
            (
                sign(
                    json!({"sub": "a", "org_id": org, "exp": exp(), "nbf": exp() + 3600}),
                    SECRET,
                ),
                AuthError::NotYetValid,
            ),
            ("garbage".to_owned(), AuthError::Malformed),
            ("a.b.c".to_owned(), AuthError::Malformed),
            ("x".repeat(MAX_TOKEN_LEN + 1), AuthError::TooLarge),
        ];
        for (token, want) in cases {
            assert_eq!(
                verifier.verify(&token),
                Err(want.clone()),
                "token for {want:?}"
            );
        }
        let no_exp = sign(json!({"sub": "a", "org_id": org}), SECRET);
        assert!(matches!(
            verifier.verify(&no_exp),
            Err(AuthError::Claims(_))
        ));
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let strict = JwtConfig {
            issuer: Some("heimdex".into()),
            audience: Some("search".into()),
            ..config()
        };
        let verifier = Verifier::new(&strict).unwrap();
        let org = Uuid::new_v4();
        let good = issue_token(&strict, org, "a", Duration::from_secs(60)).unwrap();
        assert!(verifier.verify(&good).is_ok());
        let plain = issue_token(&config(), org, "a", Duration::from_secs(60)).unwrap();
        assert!(verifier.verify(&plain).is_err());
        let wrong_aud = sign(
            json!({"sub": "a", "org_id": org.to_string(), "exp": exp(), "iss": "heimdex", "aud": "other"}),
            SECRET,
        );
        assert_eq!(
            verifier.verify(&wrong_aud),
            Err(AuthError::IssuerOrAudience)
        );
    }

    /// A token made of raw header and payload JSON (so duplicates and odd spacing survive),
    /// signed with `key`.
    fn forge(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
        format!("{message}.{signature}")
    }

    fn hs(secret: &str) -> EncodingKey {
        EncodingKey::from_secret(secret.as_bytes())
    }

    const RSA_PRIVATE: &str = include_str!("../../testdata/jwt-rs256-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../testdata/jwt-rs256-public.pem");
    const EC_PRIVATE: &str = include_str!("../../testdata/jwt-es256-private.pem");
    const EC_PUBLIC: &str = include_str!("../../testdata/jwt-es256-public.pem");
    const ATTACKER_PRIVATE: &str = include_str!("../../testdata/jwt-attacker-rs256-private.pem");

    fn payload(org: &str) -> String {
        json!({"sub": "a", "org_id": org, "exp": exp()}).to_string()
    }

    /// Checks every `(name, token, expected)`; `None` expects acceptance.
    fn check(verifier: &Verifier, cases: Vec<(&str, String, Option<AuthError>)>) {
        let mut wrong = Vec::new();
        for (name, token, want) in cases {
            let got = verifier.verify(&token);
            let ok = match &want {
                None => got.is_ok(),
                Some(want) => got.as_ref().err() == Some(want),
            };
            if !ok {
                wrong.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn header_attacks_on_an_hs256_deployment() {
        let verifier = Verifier::new(&config()).unwrap();
        let org = Uuid::new_v4().to_string();
        let body = payload(&org);
        let ours = hs(SECRET);
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let hs256 = Algorithm::HS256;
        let cases = vec![
            (
                "control: a plain HS256 token",
                forge(r#"{"alg":"HS256","typ":"JWT"}"#, &body, &ours, hs256),
                None,
            ),
            // alg confusion
            (
                "RS256 header, HMAC-signed with the secret",
                forge(r#"{"alg":"RS256"}"#, &body, &ours, hs256),
                Some(AuthError::Algorithm),
            ),
            (
                "ES256 header, HMAC-signed with the secret",
                forge(r#"{"alg":"ES256"}"#, &body, &ours, hs256),
                Some(AuthError::Algorithm),
            ),
            (
                "a real RS256 token on an HS256 deployment",
                forge(r#"{"alg":"RS256"}"#, &body, &rsa, Algorithm::RS256),
                Some(AuthError::Algorithm),
            ),
            (
                "alg in lower case",
                forge(r#"{"alg":"hs256"}"#, &body, &ours, hs256),
                Some(AuthError::Algorithm),
            ),
            (
                "alg with a trailing space",
                forge(r#"{"alg":"HS256 "}"#, &body, &ours, hs256),
                Some(AuthError::Algorithm),
            ),
            (
                "alg as a list",
                forge(r#"{"alg":["HS256"]}"#, &body, &ours, hs256),
                Some(AuthError::Malformed),
            ),
            (
                "no alg",
                forge(r#"{"typ":"JWT"}"#, &body, &ours, hs256),
                Some(AuthError::Malformed),
            ),
            (
                "alg none, signed anyway",
                forge(r#"{"alg":"none"}"#, &body, &ours, hs256),
                Some(AuthError::Algorithm),
            ),
            (
                "duplicate alg (HS256, then none)",
                forge(r#"{"alg":"HS256","alg":"none"}"#, &body, &ours, hs256),
                Some(AuthError::Malformed),
            ),
            // kid tricks: kid never selects a key, so it can neither help nor hurt
            (
                "kid pointing at /dev/null, signed with an empty key",
                forge(
                    r#"{"alg":"HS256","kid":"../../../../../dev/null"}"#,
                    &body,
                    &hs(""),
                    hs256,
                ),
                Some(AuthError::Signature),
            ),
            (
                "SQL-ish kid, signed with the value it would select",
                forge(
                    r#"{"alg":"HS256","kid":"x' UNION SELECT 'attacker-key' --"}"#,
                    &body,
                    &hs("attacker-key"),
                    hs256,
                ),
                Some(AuthError::Signature),
            ),
            (
                "kid pointing nowhere, signed with the real secret",
                forge(
                    r#"{"alg":"HS256","kid":"no-such-key"}"#,
                    &body,
                    &ours,
                    hs256,
                ),
                None,
            ),
            (
                "huge kid",
                forge(
                    &json!({"alg": "HS256", "kid": "k".repeat(MAX_TOKEN_LEN)}).to_string(),
                    &body,
                    &ours,
                    hs256,
                ),
                Some(AuthError::TooLarge),
            ),
            // embedded-key headers are ignored
            (
                "jku/x5u/jwk naming the attacker's key, HMAC-signed with another secret",
                forge(
                    r#"{"alg":"HS256","jku":"https://evil.example/jwks.json","x5u":"https://evil.example/cert.pem","jwk":{"kty":"oct","k":"YXR0YWNrZXI"}}"#,
                    &body,
                    &hs("attacker"),
                    hs256,
                ),
                Some(AuthError::Signature),
            ),
            (
                "jku naming the attacker, but signed with the real secret",
                forge(
                    r#"{"alg":"HS256","jku":"https://evil.example/jwks.json"}"#,
                    &body,
                    &ours,
                    hs256,
                ),
                None,
            ),
            // crit: not understood, so refused even with a good signature
            (
                "crit naming exp",
                forge(
                    r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
                    &body,
                    &ours,
                    hs256,
                ),
                Some(AuthError::CriticalHeader),
            ),
            (
                "crit b64=false (unencoded payload)",
                forge(
                    r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
                    &body,
                    &ours,
                    hs256,
                ),
                Some(AuthError::CriticalHeader),
            ),
            (
                "empty crit",
                forge(r#"{"alg":"HS256","crit":[]}"#, &body, &ours, hs256),
                Some(AuthError::CriticalHeader),
            ),
        ];
        check(&verifier, cases);
    }

    #[test]
    fn payload_and_encoding_games_are_rejected() {
        use base64::Engine as _;
        let verifier = Verifier::new(&config()).unwrap();
        let (a, b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
        let ours = hs(SECRET);
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let sign = |payload: &str| forge(header, payload, &ours, Algorithm::HS256);
        let good = sign(&payload(&a));
        let (head, rest) = good.split_once('.').unwrap();
        let (claims, signature) = rest.split_once('.').unwrap();
        let padded_signature = format!("{head}.{claims}.{signature}=");
        let std_signature = {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            format!(
                "{head}.{claims}.{}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        let padded_header = {
            let message = format!(
                "{}.{claims}",
                base64::engine::general_purpose::URL_SAFE.encode(r#"{"alg":"HS256","typ":"JWT"} "#)
            );
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &ours, Algorithm::HS256).unwrap();
            format!("{message}.{signature}")
        };
        let far = exp() + 3600;
        let cases = vec![
            ("control", good.clone(), None),
            (
                "JSON whitespace inside the signed parts is fine",
                forge(
                    "{ \"alg\" : \"HS256\" }",
                    &format!("{{ \"sub\": \"a\", \"org_id\": \"{a}\", \"exp\": {far} }}"),
                    &ours,
                    Algorithm::HS256,
                ),
                None,
            ),
            (
                "duplicate org_id (second one another tenant's)",
                sign(&format!(
                    r#"{{"sub":"a","org_id":"{a}","org_id":"{b}","exp":{far}}}"#
                )),
                Some(AuthError::Malformed),
            ),
            (
                "duplicate exp (expired, then valid)",
                sign(&format!(
                    r#"{{"sub":"a","org_id":"{a}","exp":1000,"exp":{far}}}"#
                )),
                Some(AuthError::Malformed),
            ),
            (
                "duplicate sub",
                sign(&format!(
                    r#"{{"sub":"a","sub":"admin","org_id":"{a}","exp":{far}}}"#
                )),
                Some(AuthError::Malformed),
            ),
            (
                "exp as a string",
                sign(&format!(r#"{{"sub":"a","org_id":"{a}","exp":"{far}"}}"#)),
                Some(AuthError::Malformed),
            ),
            (
                "future nbf as a string",
                sign(&format!(
                    r#"{{"sub":"a","org_id":"{a}","exp":{far},"nbf":"{far}"}}"#
                )),
                Some(AuthError::Claims("bad nbf".into())),
            ),
            (
                "org_id as a number",
                sign(&format!(r#"{{"sub":"a","org_id":42,"exp":{far}}}"#)),
                Some(AuthError::Malformed),
            ),
            (
                "sub as a number",
                sign(&format!(r#"{{"sub":7,"org_id":"{a}","exp":{far}}}"#)),
                Some(AuthError::Malformed),
            ),
            (
                "org_id with surrounding spaces",
                sign(&format!(r#"{{"sub":"a","org_id":" {a} ","exp":{far}}}"#)),
                Some(AuthError::InvalidOrg),
            ),
            (
                "padding on the signature",
                padded_signature,
                Some(AuthError::Malformed),
            ),
            (
                "standard (not URL-safe) base64 signature",
                std_signature,
                Some(AuthError::Malformed),
            ),
            (
                "padding on the header",
                padded_header,
                Some(AuthError::Malformed),
            ),
            (
                "leading space",
                format!(" {good}"),
                Some(AuthError::Malformed),
            ),
            (
                "inner newline (the signature covers it)",
                good.replacen('.', ".\n", 1),
                Some(AuthError::Signature),
            ),
            (
                "a fourth part",
                format!("{good}.x"),
                Some(AuthError::Malformed),
            ),
            (
                "five parts (JWE shape)",
                format!("{good}.x.y"),
                Some(AuthError::Malformed),
            ),
            (
                "no signature",
                format!("{head}.{claims}."),
                Some(AuthError::Signature),
            ),
            (
                "two parts",
                format!("{head}.{claims}"),
                Some(AuthError::Malformed),
            ),
            (
                "64 KiB token",
                format!("{good}{}", "A".repeat(64 * 1024)),
                Some(AuthError::TooLarge),
            ),
            (
                "1 MiB token",
                "e".repeat(1024 * 1024),
                Some(AuthError::TooLarge),
            ),
        ];
        check(&verifier, cases);
    }

    #[test]
    fn public_key_deployments_refuse_algorithm_confusion() {
        let org = Uuid::new_v4().to_string();
        let body = payload(&org);
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let attacker = EncodingKey::from_rsa_pem(ATTACKER_PRIVATE.as_bytes()).unwrap();
        for (public, own_alg, own_key) in [
            (RSA_PUBLIC, Algorithm::RS256, &rsa),
            (EC_PUBLIC, Algorithm::ES256, &ec),
        ] {
            let verifier = Verifier::new(&JwtConfig {
                public_key_pem: Some(public.to_owned()),
                ..config()
            })
            .unwrap();
            let own_header = format!(r#"{{"alg":"{own_alg:?}"}}"#);
            let cases = vec![
                ("control", forge(&own_header, &body, own_key, own_alg), None),
                (
                    "HS256 signed with the public key as the HMAC secret",
                    forge(r#"{"alg":"HS256"}"#, &body, &hs(public), Algorithm::HS256),
                    Some(AuthError::Algorithm),
                ),
                (
                    "HS256 signed with the shared secret",
                    forge(r#"{"alg":"HS256"}"#, &body, &hs(SECRET), Algorithm::HS256),
                    Some(AuthError::Algorithm),
                ),
                (
                    "own alg header, HMAC-signed with the public key",
                    forge(&own_header, &body, &hs(public), Algorithm::HS256),
                    Some(AuthError::Signature),
                ),
                (
                    "alg none",
                    format!(
                        "{}.",
                        forge(r#"{"alg":"none"}"#, &body, &hs("x"), Algorithm::HS256)
                            .rsplit_once('.')
                            .unwrap()
                            .0
                    ),
                    Some(AuthError::Algorithm),
                ),
                (
                    "the attacker's own RSA key, announced in jwk/jku/x5u",
                    forge(
                        &format!(
                            r#"{{"alg":"{own_alg:?}","kid":"attacker","jku":"https://evil.example/jwks.json","x5u":"https://evil.example/c.pem","jwk":{{"kty":"RSA","e":"AQAB","n":"sXch"}}}}"#
                        ),
                        &body,
                        &attacker,
                        Algorithm::RS256,
                    ),
                    Some(AuthError::Signature),
                ),
                (
                    "PS256 with the right RSA key family",
                    forge(r#"{"alg":"PS256"}"#, &body, &rsa, Algorithm::PS256),
                    Some(AuthError::Algorithm),
                ),
            ];
            check(&verifier, cases);
        }
    }

    #[test]
    fn configured_issuer_and_audience_are_required_and_exact() {
        let strict = JwtConfig {
            issuer: Some("heimdex".into()),
            audience: Some("search".into()),
            ..config()
        };
        let verifier = Verifier::new(&strict).unwrap();
        let org = Uuid::new_v4().to_string();
        let far = exp();
        let token = |extra: &str| {
            forge(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sub":"a","org_id":"{org}","exp":{far}{extra}}}"#),
                &hs(SECRET),
                Algorithm::HS256,
            )
        };
        let cases = vec![
            ("control", token(r#","iss":"heimdex","aud":"search""#), None),
            (
                "missing aud",
                token(r#","iss":"heimdex""#),
                Some(AuthError::Claims("missing aud".into())),
            ),
            (
                "missing iss",
                token(r#","aud":"search""#),
                Some(AuthError::Claims("missing iss".into())),
            ),
            (
                "wrong aud",
                token(r#","iss":"heimdex","aud":"admin""#),
                Some(AuthError::IssuerOrAudience),
            ),
            (
                "wrong iss",
                token(r#","iss":"evil","aud":"search""#),
                Some(AuthError::IssuerOrAudience),
            ),
            (
                "iss in another case",
                token(r#","iss":"Heimdex","aud":"search""#),
                Some(AuthError::IssuerOrAudience),
            ),
            (
                "null aud",
                token(r#","iss":"heimdex","aud":null"#),
                Some(AuthError::Claims("missing aud".into())),
            ),
            // A list-valued `aud` is refused outright (the claims are read as one string).
            (
                "aud as a list without ours",
                token(r#","iss":"heimdex","aud":["admin"]"#),
                Some(AuthError::Malformed),
            ),
            (
                "empty iss",
                token(r#","iss":"","aud":"search""#),
                Some(AuthError::IssuerOrAudience),
            ),
        ];
        check(&verifier, cases);
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains(SECRET));
        assert!(shown.contains("redacted"));
    }
}
