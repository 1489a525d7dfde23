//! `heimdex ingest` (and `--sync`), `documents` and `search`: command-line clients of a running service's REST API
//! (the same routes any client uses; nothing here reaches into NATS or the store).

pub mod documents;
pub mod index;
pub mod ingest;
pub mod search;
pub mod sync;

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;
use uuid::Uuid;

use heimdex::settings::Settings;

/// The tenant the CLI uses when none is given: the one of the README's tour.
/// A JSON object given on the command line (`--filter`, `--metadata`); the service checks
/// what is in it.
pub(crate) fn json_object(arg: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(arg) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("expected a JSON object".to_owned()),
        Err(err) => Err(format!("not JSON: {err}")),
    }
}

pub const DEV_ORG: &str = "550e8400-e29b-41d4-a716-446655440000";

/// Where the service is and who is asking.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// Base URL of the API.
    #[arg(long, env = "HEIMDEX_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Bearer token; without one, a 1-hour token for `--org` is signed with `JWT_SECRET`.
    #[arg(long, env = "HEIMDEX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Tenant for the signed token.
    #[arg(long, default_value = DEV_ORG)]
    pub org: Uuid,
    /// Model (default: the service's default, `minilm-l6-v2`).
    #[arg(long)]
    pub model: Option<String>,
}

/// An HTTP client bound to one service and one token.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(connection: &Connection, settings: &Settings) -> anyhow::Result<Self> {
        Self::with_jwt(connection, &settings.api.jwt)
    }

    /// As [`Client::new`], signing a token (when the connection has none) with `jwt`.
    pub fn with_jwt(
        connection: &Connection,
        jwt: &heimdex_api::auth::JwtConfig,
    ) -> anyhow::Result<Self> {
        let token = match &connection.token {
            Some(token) => token.clone(),
            None => heimdex_api::auth::issue_token(
                jwt,
                connection.org,
                "heimdex-cli",
                Duration::from_secs(3600),
            )?,
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: connection.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client presenting `token` as it is (the admin token, say).
    pub fn with_token(url: &str, token: String) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// POSTs JSON; a non-2xx answer becomes an error carrying the problem's detail.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// PUTs `bytes` as `media_type`, with `query` as the query string.
    pub async fn put_bytes(
        &self,
        path: &str,
        query: &[(&str, String)],
        media_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let request = self
            .http
            .put(self.url(path))
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes);
        self.send(request).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path))).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` with the token; the answer's JSON, or its problem as the error.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {} (is `heimdex serve` running?)", self.base))?;
        answer(response).await
    }
}

/// A plain-text table: the header and the rows, each column as wide as its widest cell, two
/// spaces apart.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(w.saturating_sub(cell.chars().count()) + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    out
}

/// Problem details travel as the error's message: `422 validation_error: text is empty`.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct ApiProblem {
    pub status: u16,
    pub code: String,
    pub detail: String,
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    Err(ApiProblem {
        status: status.as_u16(),
        code: body["code"].as_str().unwrap_or("error").to_owned(),
        detail: body["detail"]
            .as_str()
            .unwrap_or(status.canonical_reason().unwrap_or(""))
            .to_owned(),
    }
    .into())
}
