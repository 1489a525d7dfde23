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
    /// even represent) and other algorithms are reported as what they are.
    fn check_algorithm(&self, token: &str) -> Result<(), AuthError> {
        use base64::Engine as _;
        #[derive(Deserialize)]
        struct RawHeader {
            alg: String,
        }
        let header = token.split('.').next().ok_or(AuthError::Malformed)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed)?;
        let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
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

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains(SECRET));
        assert!(shown.contains("redacted"));
    }
}
