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

/// The operator's credential for `/admin/*`: a bearer token of its own (`HEIMDEX_ADMIN_TOKEN`),
/// never a tenant's JWT. The index operations act on every tenant's vectors at once.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "verify_admin")]
pub struct AdminAuth(pub Admin);

/// A caller that presented the admin token.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

/// The configured admin token, if any.
pub struct AdminKey(Option<secrecy::SecretString>);

impl AdminKey {
    pub fn new(token: Option<secrecy::SecretString>) -> Self {
        Self(token)
    }
}

/// Why a caller is not the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("the admin endpoints are off: set HEIMDEX_ADMIN_TOKEN to use them")]
    Disabled,
    #[error("not the admin credential (a tenant's token is never one)")]
    Invalid,
}

async fn verify_admin(req: &Request, bearer: Bearer) -> poem::Result<Admin> {
    use secrecy::ExposeSecret as _;
    let key = req
        .data::<Arc<AdminKey>>()
        .ok_or_else(|| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    let Some(expected) = &key.0 else {
        return Err(poem::Error::new(
            AdminError::Disabled,
            StatusCode::FORBIDDEN,
        ));
    };
    if same_bytes(expected.expose_secret().as_bytes(), bearer.token.as_bytes()) {
        Ok(Admin)
    } else {
        Err(poem::Error::new(
            AdminError::Invalid,
            StatusCode::UNAUTHORIZED,
        ))
    }
}

/// Equality whose time does not depend on where two equally long inputs differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}
