//! Hostile input at scale: requests generated from the live OpenAPI spec, valid and mutated,
//! from a seeded RNG. The spec is read from the running service, so a route added later is
//! fuzzed without touching this file.
//!
//! What must hold for every request: no 5xx, no dropped connection, every 4xx is an RFC 9457
//! problem document; at the end, no panic anywhere in the service, `/healthz` and `/readyz` are
//! 200, and every job that got a 2xx has reached a terminal status.
//!
//! `HEIMDEX_FUZZ_REQUESTS` (default 1,500) and `HEIMDEX_FUZZ_SEED` (default 4) choose the run; a
//! failure prints the seed and the case number, which reproduce it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use heimdex_tests::{JWT_SECRET, TestApp};

const DEFAULT_REQUESTS: usize = 1_500;
const DEFAULT_SEED: u64 = 4;
/// Requests in flight at once: enough to interleave handlers, few enough for a loaded 2-core box.
const CONCURRENCY: usize = 8;
/// Stands in for a raw JSON fragment (`NaN`, `1e999`, deep nesting) until the body is serialized.
const RAW: &str = "\u{1}raw\u{1}";

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// The spec

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

#[derive(Debug)]
struct Param {
    name: String,
    location: Location,
    required: bool,
    schema: Value,
}

#[derive(Debug)]
struct Operation {
    method: String,
    path: String,
    params: Vec<Param>,
    body: Option<Value>,
    secured: bool,
    /// An operator route (`/admin/*`): it takes the admin token, which the fuzzed service does
    /// not have, so requests stop at authentication (never a 5xx); `rebuild.rs` tests what
    /// they do.
    admin: bool,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Every operation of the spec, in the spec's order.
fn operations(spec: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    let paths = spec["paths"].as_object().expect("spec has paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let params = op["parameters"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|p| Param {
                            name: p["name"].as_str().expect("parameter name").to_owned(),
                            location: match p["in"].as_str() {
                                Some("path") => Location::Path,
                                Some("query") => Location::Query,
                                Some("header") => Location::Header,
                                other => panic!("parameter location {other:?} of {path}"),
                            },
                            required: p["required"].as_bool().unwrap_or(false),
                            schema: p["schema"].clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let body = op["requestBody"]["content"].as_object().map(|content| {
                content
                    .iter()
                    .find(|(ct, _)| ct.starts_with("application/json"))
                    .map(|(_, media)| media["schema"].clone())
                    .expect("a JSON request body")
            });
            out.push(Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                params,
                body,
                secured: op["security"].as_array().is_some_and(|s| !s.is_empty()),
                admin: op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|scheme| scheme.get("AdminAuth").is_some())),
            });
        }
    }
    out
}

/// Follows `$ref`s into `components`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let target = spec
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
            resolve(spec, target)
        }
        None => schema,
    }
}

// ---------------------------------------------------------------------------------------------
// Generated requests

/// One generated request, with what it was meant to probe.
struct Case {
    n: usize,
    operation: String,
    mutation: String,
    method: reqwest::Method,
    /// Path and query, already percent-encoded where needed.
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    /// The org whose valid token the request carries (its jobs are polled at the end).
    org: Option<usize>,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut target = self.target.clone();
        target.truncate(200);
        write!(
            f,
            "case #{} [{} / {}] {} {target}",
            self.n, self.operation, self.mutation, self.method
        )?;
        let names: Vec<_> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, " headers={names:?}")?;
        if let Some(body) = &self.body {
            let shown = String::from_utf8_lossy(&body[..body.len().min(300)]);
            write!(f, " body({} bytes)={shown:?}", body.len())?;
        }
        Ok(())
    }
}

const PHRASES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Telescopes collect light from distant galaxies.",
    "Knead the dough until it is smooth, then let it rise.",
    "Rust's borrow checker prevents data races.",
    "Ünïcödé façade — 漢字 かな 🦀 עברית مرحبا",
];

const IDENT_ALPHABET: &[char] = &[
    'a', 'b', 'c', 'x', 'y', 'z', '0', '1', '9', '-', '_', '.', ' ', ':', '/', 'é', 'ß', '漢', '🦀',
];

/// Strings meant to break things: sizes, control characters, Unicode oddities, injections.
fn hostile_strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "   \t  ".into(),
        "\u{0}".into(),
        "a\u{0}b".into(),
        "line\r\nbreak".into(),
        "\u{1b}[31mred\u{1b}[0m".into(),
        "\u{7f}\u{80}\u{9f}".into(),
        "\u{202e}evil\u{202d}".into(),
        "\u{feff}bom".into(),
        "\u{200d}\u{200b}\u{2060}".into(),
        "e\u{301}\u{301}\u{301}\u{301}\u{301}".into(),
        "\u{fffd}\u{fffe}\u{ffff}".into(),
        "𝕳𝖊𝖎𝖒𝖉𝖊𝖝".into(),
        "../../../../etc/passwd".into(),
        "..%2F..%2Fetc%2Fpasswd".into(),
        "' OR 1=1 --".into(),
        "\"; DROP TABLE jobs; --".into(),
        "heimdex.jobs.*.>".into(),
        "a.b c>d*".into(),
        "${jndi:ldap://x}".into(),
        "<script>alert(1)</script>".into(),
        "%00%0a%ff".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        "a".repeat(256),
        "a".repeat(257),
        "é".repeat(257),
        "x".repeat(4_097),
        "word ".repeat(3_300),
        "y".repeat(16_385),
        "🦀".repeat(17_000),
        "z".repeat(70_000),
    ]
}

/// Raw JSON number-ish literals: some are not JSON at all, some overflow every type.
const NUMBERISH: &[&str] = &[
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e-400",
    "-0",
    "0.0",
    "1.5",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "4294967296",
    "0x10",
    "01",
    "+1",
    ".5",
    "5.",
    "1_000",
    "null",
];

const OTHER_TYPES: &[&str] = &[
    "1",
    "-1",
    "2.5",
    "true",
    "false",
    "null",
    "\"text\"",
    "[]",
    "{}",
    "[1,2]",
    "[\"a\"]",
    "{\"a\":1}",
];

struct Generator<'a> {
    spec: &'a Value,
    rng: ChaCha8Rng,
    tokens: Vec<String>,
    hostile: Vec<String>,
    /// Ids that exist (jobs and points of both orgs), so lookups also hit real data.
    known_ids: Vec<Uuid>,
}

impl Generator<'_> {
    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        items.choose(&mut self.rng).expect("a non-empty list")
    }

    fn identifier(&mut self, max: usize) -> String {
        let len = self.rng.random_range(1..=max.clamp(1, 24));
        let mut s: String = (0..len).map(|_| *self.pick(IDENT_ALPHABET)).collect();
        if s.trim().is_empty() {
            s.push('a');
        }
        s
    }

    /// A value the schema accepts (the service may still refuse it on semantic grounds).
    fn valid(&mut self, schema: &Value, field: &str, depth: usize) -> Value {
        let schema = resolve(self.spec, schema).clone();
        match schema["type"].as_str() {
            Some("string") => {
                if schema["format"] == "uuid" {
                    let id = if !self.known_ids.is_empty() && self.rng.random_bool(0.6) {
                        *self.pick(&self.known_ids.clone())
                    } else {
                        self.uuid()
                    };
                    return Value::String(id.to_string());
                }
                match field {
                    "model" => Value::String((*self.pick(&["mock", "minilm-l6-v2"])).to_owned()),
                    "text" | "query" => Value::String((*self.pick(PHRASES)).to_owned()),
                    // A query parameter that carries a JSON object (the metadata of a raw
                    // file upload).
                    "metadata" => Value::String(
                        json!({"team": self.identifier(8), "n": self.rng.random_range(0..9)})
                            .to_string(),
                    ),
                    _ => {
                        let max = schema["maxLength"].as_u64().unwrap_or(24) as usize;
                        Value::String(self.identifier(max))
                    }
                }
            }
            Some("integer") => {
                let min = schema["minimum"].as_i64().unwrap_or(i64::MIN);
                let max = schema["maximum"].as_i64().unwrap_or(i64::MAX);
                let unsigned = schema["format"]
                    .as_str()
                    .is_some_and(|f| f.starts_with('u'));
                let choices: Vec<i64> = [0, 1, 2, 3, 5, 8, 10, 16, 32, 64, 100, 128, 256]
                    .into_iter()
                    .filter(|v| (min..=max).contains(v) && (!unsigned || *v >= 0))
                    .collect();
                json!(*self.pick(&choices))
            }
            Some("number") => json!(self.rng.random_range(-1.0f32..1.0)),
            Some("boolean") => json!(self.rng.random_bool(0.5)),
            Some("array") => {
                let items = schema["items"].clone();
                // The spec cannot say a vector's dimension; 384 is the default model's.
                let len = if field == "vector" {
                    *self.pick(&[384, 384, 384, 3])
                } else {
                    self.rng.random_range(1..=3)
                };
                Value::Array(
                    (0..len)
                        .map(|_| self.valid(&items, field, depth + 1))
                        .collect(),
                )
            }
            Some("object") | None => {
                let required: BTreeSet<String> = schema["required"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut object = Map::new();
                if let Some(properties) = schema["properties"].as_object() {
                    for (name, prop) in properties {
                        if required.contains(name) || (depth < 3 && self.rng.random_bool(0.5)) {
                            object.insert(name.clone(), self.valid(prop, name, depth + 1));
                        }
                    }
                }
                Value::Object(object)
            }
            Some(other) => panic!("schema type {other} of {field}"),
        }
    }

    /// JSON pointers of every value inside `value` (not the root).
    fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    Self::pointers(v, p, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate().take(4) {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    Self::pointers(v, p, out);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }

    fn any_pointer(&mut self, body: &mut Value, schema: &Value) -> String {
        let mut pointers = Vec::new();
        Self::pointers(body, String::new(), &mut pointers);
        if pointers.is_empty() {
            // An empty object: add one of the schema's properties to aim at.
            let schema = resolve(self.spec, schema).clone();
            let name = schema["properties"]
                .as_object()
                .and_then(|p| p.keys().next().cloned())
                .unwrap_or_else(|| "field".into());
            body[&name] = Value::Null;
            return format!("/{name}");
        }
        self.pick(&pointers).clone()
    }

    /// A mutated body: (what was done, bytes).
    fn mutated_body(&mut self, schema: &Value) -> (String, Vec<u8>) {
        let mut body = self.valid(schema, "", 0);
        let kinds = [
            "missing field",
            "extra field",
            "wrong type",
            "hostile string",
            "number-ish",
            "deep nesting",
            "raw body",
            "duplicate key",
            "lone surrogate",
        ];
        let kind = *self.pick(&kinds);
        let mut raw: Option<String> = None;
        match kind {
            "missing field" => {
                if let Some(object) = body.as_object_mut() {
                    let keys: Vec<String> = object.keys().cloned().collect();
                    if let Some(key) = keys.choose(&mut self.rng) {
                        object.remove(key);
                    }
                }
            }
            "extra field" => {
                let name = (*self.pick(&[
                    "org_id",
                    "__proto__",
                    "constructor",
                    "job_id",
                    "",
                    "\u{0}",
                    "ключ",
                ]))
                .to_owned();
                let value: Value =
                    serde_json::from_str(self.pick::<&str>(OTHER_TYPES)).expect("json");
                if let Some(object) = body.as_object_mut() {
                    object.insert(name, value);
                }
            }
            "wrong type" => {
                let at = self.any_pointer(&mut body, schema);
                let value: Value =
                    serde_json::from_str(self.pick::<&str>(OTHER_TYPES)).expect("json");
                *body.pointer_mut(&at).expect("pointer") = value;
            }
            "hostile string" => {
                let at = self.any_pointer(&mut body, schema);
                let s = self.pick(&self.hostile.clone()).clone();
                *body.pointer_mut(&at).expect("pointer") = Value::String(s);
            }
            "number-ish" => {
                let at = self.any_pointer(&mut body, schema);
                *body.pointer_mut(&at).expect("pointer") = Value::String(RAW.into());
                raw = Some((*self.pick(NUMBERISH)).to_owned());
            }
            "deep nesting" => {
                let depth = *self.pick(&[64usize, 127, 128, 129, 1_000, 20_000]);
                let nested = if self.rng.random_bool(0.5) {
                    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
                } else {
                    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
                };
                if self.rng.random_bool(0.3) {
                    return (format!("{kind} (body, {depth})"), nested.into_bytes());
                }
                let at = self.any_pointer(&mut body, schema);
                *body.pointer_mut(&at).expect("pointer") = Value::String(RAW.into());
                raw = Some(nested);
            }
            "raw body" => {
                let bodies: [&[u8]; 14] = [
                    b"",
                    b"null",
                    b"[]",
                    b"{}",
                    b"\"str\"",
                    b"42",
                    b"{",
                    b"{\"a\":1}}",
                    b"{\"asset_id\":\"a\",}",
                    b"\xff\xfe\xfd",
                    b"\xef\xbb\xbf{}",
                    b"{\"asset_id\":\"\xc3\x28\"}",
                    b"\x00\x00\x00",
                    b"   \n\t  ",
                ];
                let chosen = *self.pick(&bodies);
                return (
                    format!("{kind} {:?}", String::from_utf8_lossy(chosen)),
                    chosen.to_vec(),
                );
            }
            "duplicate key" => {
                let text = body.to_string();
                if let Some(object) = body.as_object()
                    && let Some((key, _)) = object.iter().next()
                {
                    let dup = format!("{{{}:\"other\",", Value::String(key.clone()));
                    return (kind.to_owned(), text.replacen('{', &dup, 1).into_bytes());
                }
            }
            "lone surrogate" => {
                let at = self.any_pointer(&mut body, schema);
                *body.pointer_mut(&at).expect("pointer") = Value::String(RAW.into());
                raw = Some((*self.pick(&["\"\\ud800\"", "\"a\\udfffb\"", "\"\\u0000\""])).into());
            }
            other => unreachable!("{other}"),
        }
        let mut text = body.to_string();
        if let Some(raw) = raw {
            let placeholder = Value::String(RAW.into()).to_string();
            text = text.replacen(&placeholder, &raw, 1);
        }
        (kind.to_owned(), text.into_bytes())
    }

    fn valid_param(&mut self, param: &Param) -> String {
        let value = self.valid(&param.schema, &param.name, 0);
        match value {
            Value::String(s) => s,
            other @ (Value::Null
            | Value::Bool(_)
            | Value::Number(_)
            | Value::Array(_)
            | Value::Object(_)) => other.to_string(),
        }
    }

    fn hostile_param(&mut self, param: &Param) -> String {
        let uuid = self.uuid();
        let mut choices = vec![
            String::new(),
            "not-a-uuid".into(),
            uuid.to_string().to_uppercase(),
            format!("{{{uuid}}}"),
            format!("{uuid}x"),
            uuid.simple().to_string(),
            "00000000-0000-0000-0000-000000000000".into(),
            "1".into(),
            "-1".into(),
            "true".into(),
            "maybe".into(),
            "%00".into(),
            "%0A%0D".into(),
            "%FF%FE".into(),
            "%C3%28".into(),
            "%E2%80%AE".into(),
            "%F0%9F%A6%80".into(),
            "..%2F..%2Fetc%2Fpasswd".into(),
            "*".into(),
            "%3E".into(),
            "a.b".into(),
            "%20".into(),
            "a".repeat(5_000),
        ];
        if param.location == Location::Query {
            choices.push(format!("true&{}=false", param.name));
            choices.push("[]".into());
        }
        self.pick(&choices).clone()
    }

    fn build(&mut self, n: usize, op: &Operation) -> Case {
        let mut kinds = vec!["valid", "valid", "valid", "auth", "header", "method"];
        if op.body.is_some() {
            kinds.extend(["body", "body", "body", "body", "content-type"]);
        } else {
            kinds.push("stray body");
        }
        if !op.params.is_empty() {
            kinds.extend(["param", "param", "param"]);
        }
        let kind = *self.pick(&kinds);
        let mut mutation = kind.to_owned();

        // Parameters: valid, except the one a "param" case aims at.
        let target_param = (kind == "param").then(|| self.rng.random_range(0..op.params.len()));
        let mut path = op.path.clone();
        let mut query = Vec::new();
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, param) in op.params.iter().enumerate() {
            let hostile = target_param == Some(i);
            if !hostile && !param.required && self.rng.random_bool(0.5) {
                continue;
            }
            let value = if hostile {
                let v = self.hostile_param(param);
                mutation = format!("param {} = {:?}", param.name, truncated(&v));
                v
            } else {
                self.valid_param(param)
            };
            match param.location {
                Location::Path => {
                    let encoded = if hostile { value } else { encode_path(&value) };
                    path = path.replace(&format!("{{{}}}", param.name), &encoded);
                }
                Location::Query => query.push(format!("{}={}", param.name, value)),
                Location::Header => headers.push((param.name.clone(), value.into_bytes())),
            }
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }

        let org = op
            .secured
            .then(|| self.rng.random_range(0..self.tokens.len()));
        if let Some(org) = org {
            headers.push((
                "Authorization".into(),
                format!("Bearer {}", self.tokens[org]).into_bytes(),
            ));
        }
        let mut body = None;
        if let Some(schema) = &op.body {
            headers.push(("Content-Type".into(), b"application/json".to_vec()));
            body = Some(if kind == "body" {
                let (what, bytes) = self.mutated_body(schema);
                mutation = format!("body: {what}");
                bytes
            } else {
                self.valid(schema, "", 0).to_string().into_bytes()
            });
        }
        let mut method = reqwest::Method::from_bytes(op.method.as_bytes()).expect("method");
        let mut org = org;

        match kind {
            "auth" => {
                headers.retain(|(name, _)| name != "Authorization");
                org = None;
                let exp = chrono::Utc::now().timestamp() + 600;
                let wrong_key = jsonwebtoken::encode(
                    &jsonwebtoken::Header::default(),
                    &json!({"sub": "x", "org_id": Uuid::nil().to_string(), "exp": exp}),
                    &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-not-the-secret!!"),
                )
                .expect("token");
                let expired = jsonwebtoken::encode(
                    &jsonwebtoken::Header::default(),
                    &json!({"sub": "x", "org_id": Uuid::nil().to_string(), "exp": 1_000}),
                    &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
                )
                .expect("token");
                let valid = self.tokens[0].clone();
                let choices = vec![
                    None,
                    Some("Bearer".to_owned()),
                    Some("Bearer ".to_owned()),
                    Some("Bearer garbage".to_owned()),
                    Some("Basic dXNlcjpwYXNz".to_owned()),
                    Some(format!("Bearer {wrong_key}")),
                    Some(format!("Bearer {expired}")),
                    Some(format!("Bearer {valid} extra")),
                    Some(format!("Bearer {valid}.")),
                    Some(format!("Token {valid}")),
                    Some(format!("Bearer {}", "a".repeat(70_000))),
                    Some(format!("Bearer {}", "eyJ".repeat(3_000))),
                ];
                let chosen = self.pick(&choices).clone();
                mutation = format!("auth {:?}", chosen.as_deref().map(truncated));
                if let Some(value) = chosen {
                    headers.push(("Authorization".into(), value.into_bytes()));
                }
            }
            "header" => {
                let choices: Vec<(&str, Vec<u8>)> = vec![
                    ("traceparent", b"garbage".to_vec()),
                    (
                        "traceparent",
                        b"00-00000000000000000000000000000000-0000000000000000-01".to_vec(),
                    ),
                    ("traceparent", b"ff-".repeat(2_000)),
                    ("tracestate", "k=v,".repeat(4_000).into_bytes()),
                    ("X-Huge", vec![b'h'; 32 * 1024]),
                    ("X-Obs-Text", b"\xff\xfe\x80".to_vec()),
                    ("Accept", b"application/xml".to_vec()),
                    ("Accept-Encoding", b"gzip;q=NaN, br;q=-1".to_vec()),
                    ("Accept-Language", b"\xc3\xa9;q=2".to_vec()),
                    ("Content-Encoding", b"gzip".to_vec()),
                    ("Expect", b"100-continue".to_vec()),
                    ("X-Forwarded-For", b"256.256.256.256, ::zz".to_vec()),
                    ("Authorization", b"Bearer second-token".to_vec()),
                    ("Idempotency-Key", b"\xff".to_vec()),
                    ("Range", b"bytes=-1-".to_vec()),
                ];
                let (name, value) = self.pick(&choices).clone();
                mutation = format!("header {name}");
                headers.push((name.to_owned(), value));
            }
            "content-type" => {
                let choices = [
                    None,
                    Some("text/plain"),
                    Some("application/xml"),
                    Some("application/x-www-form-urlencoded"),
                    Some("multipart/form-data; boundary=x"),
                    Some("application/json; charset=utf-16"),
                    Some("application/jsonx"),
                    Some(""),
                    Some("*/*"),
                    Some("application/problem+json"),
                    Some("APPLICATION/JSON"),
                    Some("application/json; charset=\u{e9}"),
                ];
                let chosen = *self.pick(&choices);
                mutation = format!("content-type {chosen:?}");
                headers.retain(|(name, _)| name != "Content-Type");
                if let Some(ct) = chosen {
                    headers.push(("Content-Type".into(), ct.as_bytes().to_vec()));
                }
            }
            "method" => {
                let others: Vec<&str> = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO"]
                    .into_iter()
                    .filter(|m| *m != op.method)
                    .collect();
                let chosen = *self.pick(&others);
                mutation = format!("method {chosen}");
                method = reqwest::Method::from_bytes(chosen.as_bytes()).expect("method");
                org = None;
            }
            "stray body" => {
                headers.push(("Content-Type".into(), b"application/json".to_vec()));
                body = Some(b"{\"unexpected\": [1, 2, {\"x\": null}]}".to_vec());
            }
            _ => {}
        }
        Case {
            n,
            operation: op.label(),
            mutation,
            method,
            target: path,
            headers,
            body,
            org,
        }
    }
}

fn truncated(s: &str) -> String {
    if s.len() > 40 {
        format!(
            "{}… ({} bytes)",
            s.chars().take(24).collect::<String>(),
            s.len()
        )
    } else {
        s.to_owned()
    }
}

/// Percent-encodes everything outside RFC 3986's unreserved set.
fn encode_path(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Panics anywhere in the process (the service runs in-process): counted by a panic hook.

fn service_panics() -> &'static Mutex<Vec<String>> {
    static PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            // Test assertions live under tests/; anything else that panics is the service.
            if !location.starts_with("tests/")
                && let Some(panics) = PANICS.get()
            {
                panics
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!("{location}: {info}"));
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    })
}

// ---------------------------------------------------------------------------------------------
// The run

struct Outcome {
    status: Option<u16>,
    problem: Result<(), String>,
    jobs: Vec<String>,
}

async fn send(http: &reqwest::Client, base: &str, case: &Case) -> Outcome {
    let mut request = http.request(case.method.clone(), format!("{base}{}", case.target));
    for (name, value) in &case.headers {
        let value = reqwest::header::HeaderValue::from_bytes(value).expect("header value");
        request = request.header(name.as_str(), value);
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            return Outcome {
                status: None,
                problem: Err(format!("transport error: {err:#}")),
                jobs: Vec::new(),
            };
        }
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(err) => {
            return Outcome {
                status: Some(status),
                problem: Err(format!("body read error: {err:#}")),
                jobs: Vec::new(),
            };
        }
    };
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let problem = if (400..500).contains(&status) {
        match &parsed {
            Some(doc)
                if content_type.starts_with("application/problem+json")
                    && doc["status"] == status
                    && doc["type"].is_string()
                    && doc["code"].is_string()
                    && doc["detail"].is_string() =>
            {
                Ok(())
            }
            _ => Err(format!(
                "{status} is not problem+json: content-type {content_type:?}, body {:?}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
        }
    } else {
        Ok(())
    };
    let mut jobs = Vec::new();
    if (200..300).contains(&status)
        && let Some(doc) = &parsed
    {
        jobs = crate::common::job_ids(doc);
    }
    Outcome {
        status: Some(status),
        problem,
        jobs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_from_the_spec_never_get_5xx() {
    let panics = service_panics();
    let requests = env_number("HEIMDEX_FUZZ_REQUESTS", DEFAULT_REQUESTS as u64) as usize;
    let seed = env_number("HEIMDEX_FUZZ_SEED", DEFAULT_SEED);
    let app = TestApp::spawn().await;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let orgs: Vec<Uuid> = (0..2)
        .map(|_| uuid::Builder::from_random_bytes(rng.random()).into_uuid())
        .collect();
    let tokens: Vec<String> = orgs.iter().map(|org| app.token(*org)).collect();

    // A few jobs and points per org, so generated ids sometimes name real (own or foreign) data.
    let mut known_ids = Vec::new();
    for token in &tokens {
        for segment in 0..3 {
            let accepted: Value = app
                .post_mock(token, "fuzz-known", &format!("s-{segment}"))
                .await
                .json()
                .await
                .expect("accepted");
            let job_id = accepted["job_id"].as_str().expect("job_id").to_owned();
            let job = app
                .wait_for_job(token, &job_id, "SUCCEEDED", Duration::from_secs(60))
                .await;
            assert_eq!(job["status"], "SUCCEEDED", "{job}");
            known_ids.push(job_id.parse().expect("uuid"));
            known_ids.push(
                job["result"]["point_ids"][0]
                    .as_str()
                    .expect("point id")
                    .parse()
                    .expect("uuid"),
            );
        }
    }

    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("spec is JSON");
    let ops = operations(&spec);
    assert!(ops.len() >= 10, "the spec lists {} operations", ops.len());

    let mut generator = Generator {
        spec: &spec,
        rng,
        tokens: tokens.clone(),
        hostile: hostile_strings(),
        known_ids,
    };
    let cases: Vec<Case> = (0..requests)
        .map(|n| generator.build(n, &ops[n % ops.len()]))
        .collect();

    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let outcomes: Vec<(usize, Outcome)> = futures::stream::iter(cases.iter())
        .map(|case| {
            let (http, base) = (http.clone(), app.base.clone());
            async move { (case.n, send(&http, &base, case).await) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_operation: BTreeMap<String, BTreeMap<u16, usize>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut accepted: Vec<(usize, String)> = Vec::new();
    for (n, outcome) in &outcomes {
        let case = &cases[*n];
        let key = outcome
            .status
            .map_or_else(|| "no response".to_owned(), |s| s.to_string());
        *by_status.entry(key).or_default() += 1;
        if let Some(status) = outcome.status {
            *by_operation
                .entry(case.operation.clone())
                .or_default()
                .entry(status)
                .or_default() += 1;
            if status >= 500 {
                failures.push(format!("{status} for {case}"));
            }
        }
        if let Err(why) = &outcome.problem {
            failures.push(format!("{why} for {case}"));
        }
        if let Some(org) = case.org {
            accepted.extend(outcome.jobs.iter().map(|id| (org, id.clone())));
        }
    }
    println!(
        "fuzz: seed {seed}, {} requests over {} operations in {:.1} s; by status {by_status:?}",
        cases.len(),
        ops.len(),
        elapsed.as_secs_f64()
    );
    for (op, counts) in &by_operation {
        println!("fuzz:   {op}: {counts:?}");
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} requests failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Every operation got requests its handler accepted as valid (2xx, or 404 for an id that
    // names nothing of the caller's), so the generator is not only exercising the error paths.
    for op in ops.iter().filter(|op| !op.admin) {
        let reached = outcomes.iter().any(|(n, outcome)| {
            let case = &cases[*n];
            case.operation == op.label()
                && case.mutation == "valid"
                && outcome
                    .status
                    .is_some_and(|s| (200..300).contains(&s) || s == 404)
        });
        assert!(reached, "no valid request reached {}", op.label());
    }

    // Nothing a client was told is accepted disappears: every job reaches a terminal status.
    let mut terminal: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Duration::from_secs(180);
    for (org, job_id) in &accepted {
        let job = app
            .wait_for_job(&tokens[*org], job_id, "SUCCEEDED", deadline)
            .await;
        let status = job["status"].as_str().unwrap_or("missing").to_owned();
        assert!(
            status == "SUCCEEDED" || status == "FAILED",
            "job {job_id} never finished: {job}"
        );
        *terminal.entry(status).or_default() += 1;
    }
    println!(
        "fuzz: {} accepted jobs, all terminal: {terminal:?}",
        accepted.len()
    );

    // The service is still whole.
    let healthz = http.get(app.url("/healthz")).send().await.expect("healthz");
    assert_eq!(healthz.status(), 200);
    let ready = http.get(app.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    let panicked = panics
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(panicked.is_empty(), "the service panicked: {panicked:#?}");
    app.stop().await;
}
