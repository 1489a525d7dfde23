//! RFC 9457 problem details: the one place where errors become HTTP. Handlers return
//! [`ApiError`]; [`ApiError::into_problem`] is an exhaustive match from error kind to status, and
//! [`catch_all`] gives errors raised by the framework itself (bad JSON, missing auth, unknown
//! route, oversized body) the same shape. 5xx bodies never carry internals; the cause is logged.

use std::time::Duration;

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use heimdex_embed::ModelError;
use heimdex_event_store::documents::DocumentError;
use heimdex_event_store::log::{AppendError, LogReadError};
use heimdex_event_store::status::StatusError;
use heimdex_store::StoreError;
use heimdex_telemetry::ErrorChain;

use crate::auth::AuthError;

/// A cause kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Clone, Debug, Object)]
pub struct Problem {
    /// A stable URI naming the problem type: `urn:heimdex:problem:<code>`.
    #[oai(rename = "type")]
    pub problem_type: String,
    /// Short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code (the last segment of `type`).
    pub code: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:heimdex:problem:{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
        }
    }
}

/// Every error response an operation can give, as documented in the OpenAPI spec.
#[derive(ApiResponse, Debug)]
pub enum ProblemResponse {
    /// The request is malformed.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// Missing or invalid bearer token.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// Not found, or not visible to the caller's organization.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The request conflicts with the resource's current state (e.g. retrying a job that has
    /// not failed).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The request body is too large.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body's media type is not one the operation takes.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// The request is well-formed but its values are not acceptable.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// This organization is over its job rate limit; nothing was accepted. Retry after the
    /// given seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// Unexpected failure; details are in the server log.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency (NATS, the vector store) is unavailable, or the workers are too far behind;
    /// retry after the given seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// The service cannot do this until an operator acts (say, installs a model's weights):
    /// retrying will not help, so no `Retry-After`.
    #[oai(status = 503, content_type = "application/problem+json")]
    NotServed(Json<Problem>),
    /// The event store is out of space; nothing was accepted. No `Retry-After`: it takes an
    /// operator to make room.
    #[oai(status = 507, content_type = "application/problem+json")]
    InsufficientStorage(Json<Problem>),
}

/// What can go wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(String),
    /// A query parameter that cannot be used as sent (e.g. a cursor this server did not issue);
    /// `code` names the parameter's problem.
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// The resource is not in a state that allows the request; `code` says which state.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A dependency failed in a way that retrying may fix.
    #[error("{what} is unavailable")]
    Unavailable {
        what: &'static str,
        retry_after: Duration,
        #[source]
        source: Option<BoxError>,
    },
    #[error("the event store is full")]
    StorageFull(#[source] AppendError),
    /// The caller's organization is over its rate limit.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    /// The workers are too far behind to take more jobs.
    #[error("the job backlog is full")]
    Overloaded { retry_after: Duration },
    /// Over a documented size limit (segments, text, chunks).
    #[error("{0}")]
    TooLarge(String),
    /// A body of a media type the operation does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The model is known but not loaded here (e.g. its weights are not installed).
    #[error(transparent)]
    ModelUnavailable(ModelError),
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl ApiError {
    /// NATS failed: the answer is 503 with `Retry-After`, the cause goes to the log.
    pub fn nats(source: impl Into<BoxError>) -> Self {
        ApiError::Unavailable {
            what: "NATS",
            retry_after: Duration::from_secs(2),
            source: Some(source.into()),
        }
    }

    pub fn internal(source: impl Into<BoxError>) -> Self {
        ApiError::Internal(source.into())
    }

    pub fn into_problem(self) -> ProblemResponse {
        match self {
            ApiError::Validation(detail) => ProblemResponse::Unprocessable(Json(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                "Request validation failed",
                detail,
            ))),
            ApiError::BadRequest { code, detail } => ProblemResponse::BadRequest(Json(
                Problem::new(StatusCode::BAD_REQUEST, code, "Bad request", detail),
            )),
            ApiError::Conflict { code, detail } => ProblemResponse::Conflict(Json(Problem::new(
                StatusCode::CONFLICT,
                code,
                "Conflict",
                detail,
            ))),
            ApiError::NotFound(detail) => ProblemResponse::NotFound(Json(Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                detail,
            ))),
            ApiError::Auth(err) => unauthorized(&err.to_string()),
            ApiError::Unavailable {
                what,
                retry_after,
                source,
            } => {
                if let Some(source) = &source {
                    tracing::warn!(error = %ErrorChain(source.as_ref()), "{what} unavailable");
                }
                ProblemResponse::Unavailable(
                    Json(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Service temporarily unavailable",
                        format!("{what} is unavailable; nothing was accepted, retry later"),
                    )),
                    retry_after.as_secs().max(1),
                )
            }
            ApiError::StorageFull(source) => {
                tracing::error!(error = %ErrorChain(&source), "event store full");
                ProblemResponse::InsufficientStorage(Json(Problem::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "Event store full",
                    "the event store has no space left; nothing was accepted",
                )))
            }
            ApiError::RateLimited { retry_after } => ProblemResponse::TooManyRequests(
                Json(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Rate limit exceeded",
                    "this organization is submitting jobs faster than its rate limit; nothing \
                     was accepted, retry after the time in Retry-After",
                )),
                retry_after_secs(retry_after),
            ),
            ApiError::Overloaded { retry_after } => ProblemResponse::Unavailable(
                Json(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backlog_full",
                    "Too much work in flight",
                    "the workers are behind by more jobs than the configured backlog; nothing \
                     was accepted, retry after the time in Retry-After",
                )),
                retry_after_secs(retry_after),
            ),
            ApiError::TooLarge(detail) => ProblemResponse::PayloadTooLarge(Json(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                detail,
            ))),
            ApiError::UnsupportedMediaType(detail) => {
                ProblemResponse::UnsupportedMediaType(Json(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "Unsupported media type",
                    detail,
                )))
            }
            ApiError::ModelUnavailable(err) => ProblemResponse::NotServed(Json(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "model_unavailable",
                "Model unavailable",
                format!("{err}; nothing was accepted"),
            ))),
            ApiError::Internal(source) => {
                tracing::error!(error = %ErrorChain(source.as_ref()), "internal error");
                ProblemResponse::Internal(Json(internal_problem()))
            }
        }
    }
}

impl From<ApiError> for ProblemResponse {
    fn from(err: ApiError) -> Self {
        err.into_problem()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidInput(detail) => ApiError::Validation(detail),
            err @ StoreError::Unavailable(_) => ApiError::Unavailable {
                what: "the vector store",
                retry_after: Duration::from_secs(2),
                source: Some(err.into()),
            },
            err @ StoreError::Internal(_) => ApiError::Internal(err.into()),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(err: AppendError) -> Self {
        match err {
            err @ AppendError::Full(_) => ApiError::StorageFull(err),
            err @ (AppendError::Disconnected
            | AppendError::Unavailable(_)
            | AppendError::Refused(_)) => ApiError::nats(err),
        }
    }
}

impl From<StatusError> for ApiError {
    fn from(err: StatusError) -> Self {
        match err {
            err @ StatusError::Decode { .. } => ApiError::internal(err),
            err @ (StatusError::Read(_)
            | StatusError::Create(_)
            | StatusError::Update(_)
            | StatusError::Listing(_)
            | StatusError::Info(_)
            | StatusError::Stream(_)) => ApiError::nats(err),
        }
    }
}

impl From<DocumentError> for ApiError {
    fn from(err: DocumentError) -> Self {
        match err {
            err @ DocumentError::Decode { .. } => ApiError::internal(err),
            err @ (DocumentError::Read(_)
            | DocumentError::Create(_)
            | DocumentError::Update(_)
            | DocumentError::Put(_)
            | DocumentError::Listing(_)
            | DocumentError::Replay(_)) => ApiError::nats(err),
        }
    }
}

impl From<LogReadError> for ApiError {
    fn from(err: LogReadError) -> Self {
        match err {
            err @ (LogReadError::Decode { .. } | LogReadError::BadTombstone { .. }) => {
                ApiError::internal(err)
            }
            err @ (LogReadError::Read(_)
            | LogReadError::Info(_)
            | LogReadError::DirectGet(_)
            | LogReadError::Tombstones(_)
            | LogReadError::History(_)) => ApiError::nats(err),
        }
    }
}

impl From<ModelError> for ProblemResponse {
    fn from(err: ModelError) -> Self {
        ApiError::from(err).into_problem()
    }
}

impl From<ModelError> for ApiError {
    fn from(err: ModelError) -> Self {
        match err {
            ModelError::Unknown { .. } => ApiError::Validation(err.to_string()),
            ModelError::Unavailable { .. } => ApiError::ModelUnavailable(err),
        }
    }
}

/// `Retry-After` is whole seconds: round up, and never tell a client to retry at once.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn unauthorized(detail: &str) -> ProblemResponse {
    ProblemResponse::Unauthorized(
        Json(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )),
        "Bearer".to_owned(),
    )
}

fn internal_problem() -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal server error",
        "an unexpected error occurred; it has been logged",
    )
}

/// Turns any error that escaped a handler (raised by poem or poem-openapi before or after the
/// handler ran) into a problem document with the error's status.
pub async fn catch_all(err: poem::Error) -> Response {
    let status = err.status();
    if let Some(auth) = err.downcast_ref::<AuthError>() {
        return unauthorized(&auth.to_string()).into_response();
    }
    if let Some(admin) = err.downcast_ref::<crate::auth::AdminError>() {
        return match admin {
            crate::auth::AdminError::Invalid => unauthorized(&admin.to_string()).into_response(),
            crate::auth::AdminError::Disabled => problem_response(Problem::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "Forbidden",
                admin.to_string(),
            )),
        };
    }
    let response = err.into_response();
    let is_problem = response
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let detail = match response.into_body().into_string().await {
        Ok(body) if !body.is_empty() && !status.is_server_error() => body,
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let problem = match status {
        StatusCode::UNAUTHORIZED => return unauthorized("missing bearer token").into_response(),
        StatusCode::NOT_FOUND => Problem::new(status, "not_found", "Not found", detail),
        StatusCode::METHOD_NOT_ALLOWED => {
            Problem::new(status, "method_not_allowed", "Method not allowed", detail)
        }
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            status,
            "payload_too_large",
            "Payload too large",
            "the request body exceeds the limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
            status,
            "unsupported_media_type",
            "Unsupported media type",
            "send a JSON body with Content-Type: application/json",
        ),
        s if s.is_client_error() => Problem::new(s, "bad_request", "Bad request", detail),
        s => {
            tracing::error!(status = %s, "unhandled server error");
            Problem {
                status: s.as_u16(),
                ..internal_problem()
            }
        }
    };
    problem_response(problem)
}

fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "type": problem.problem_type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
    });
    Response::builder()
        .status(status)
        .content_type(PROBLEM_JSON)
        .body(body.to_string())
}
