//! The bearer-token security scheme: every protected operation takes a [`BearerAuth`], whose
//! checker verifies the JWT and yields the caller's [`Principal`].

use std::sync::Arc;

use poem::Request;
use poem::http::StatusCode;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

mod jwt;

pub use jwt::{AuthError, JwtConfig, KeyError, MAX_TOKEN_LEN, Principal, Verifier, issue_token};

/// JWT bearer token (HS256 by default) with claims `sub`, `org_id` (UUID) and `exp`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "verify")]
pub struct BearerAuth(pub Principal);

async fn verify(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let verifier = req
        .data::<Arc<Verifier>>()
        .ok_or_else(|| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    verifier
        .verify(&bearer.token)
        .map_err(|err| poem::Error::new(err, StatusCode::UNAUTHORIZED))
}
