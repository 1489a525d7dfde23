//! Files as documents: PDF, DOCX and HTML built here with libraries are uploaded (raw body
//! and multipart), extracted by the worker, and every chunk records its page or section. Bad
//! files get a clear answer (413, 415, 422, or a job FAILED `invalid_input` with the reason),
//! and the files bucket keeps exactly the files live versions need (an orphan, named by no
//! event, is collected after the grace period).

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use heimdex_domain::AssetId;
use heimdex_domain::jobs::FileSource;
use heimdex_extract::testing::{docx, para, pdf, save};
use heimdex_tests::{TestApp, eventually};

const WAIT: Duration = Duration::from_secs(60);
const PDF: &str = "application/pdf";
const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

/// Sweeps every second; a file must be 2 s old before a sweep may delete it.
const SWEEP: &[(&str, &str)] = &[
    ("HEIMDEX_FILE_SWEEP_SEC", "1"),
    ("HEIMDEX_FILE_GRACE_SEC", "2"),
];

/// With the mock model and 8-token chunks, each sentence below is its own chunk.
const OPTIONS: &str = "model=mock&max_tokens=8&overlap=0";

fn report_pdf(last_page: &str) -> Vec<u8> {
    save(pdf(&[
        &[&["Alpha opens the quarterly report today."]],
        &[&["Bravo covers revenue on page two."]],
        &[&[last_page]],
    ]))
}

async fn upload(
    app: &TestApp,
    token: &str,
    asset: &str,
    query: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    app.http
        .put(app.url(&format!("/documents/{asset}?{query}")))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn accepted(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body
}

async fn job_ends(app: &TestApp, token: &str, accepted: &Value, status: &str) -> Value {
    let job = app
        .wait_for_job(token, accepted["job_id"].as_str().unwrap(), status, WAIT)
        .await;
    assert_eq!(job["status"], status, "{job}");
    job
}

async fn document(app: &TestApp, token: &str, asset: &str) -> Value {
    let response = app.get(token, &format!("/documents/{asset}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The chunk whose text holds `needle`.
fn chunk_with<'a>(view: &'a Value, needle: &str) -> &'a Value {
    view["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"].as_str().unwrap_or("").contains(needle))
        .unwrap_or_else(|| panic!("no chunk holds {needle:?}: {view}"))
}

/// The problem document of an error answer, checked for its status and code.
async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

/// A multipart body of one file part and some text fields: (content type, body).
fn multipart(
    file_name: &str,
    content_type: &str,
    bytes: &[u8],
    fields: &[(&str, &str)],
) -> (String, Vec<u8>) {
    let boundary = format!("heimdex-{}", Uuid::new_v4().simple());
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\ncontent-type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn object_exists(app: &TestApp, name: &str) -> bool {
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let bucket = js.get_object_store("HEIMDEX_FILES").await.unwrap();
    bucket.info(name).await.is_ok_and(|info| !info.deleted)
}

fn object_of(org: Uuid, asset: &str, accepted: &Value) -> String {
    FileSource::object_name(
        org,
        &AssetId::parse(asset).unwrap(),
        accepted["version"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_is_chunked_by_page_and_replaced_and_its_old_file_is_swept() {
    let app = TestApp::spawn_with(SWEEP).await;
    let org = Uuid::new_v4();
    let token = app.token(org);

    let v1 = accepted(
        upload(
            &app,
            &token,
            "report",
            &format!("{OPTIONS}&name=report.pdf"),
            PDF,
            report_pdf("Charlie closes on page three."),
        )
        .await,
    )
    .await;
    assert!(
        v1["chunks"].as_array().unwrap().is_empty(),
        "a file's chunks come from its job"
    );
    let job = job_ends(&app, &token, &v1, "SUCCEEDED").await;
    assert_eq!(job["result"]["written"], 3, "{job}");

    let view = document(&app, &token, "report").await;
    assert_eq!(chunk_with(&view, "Alpha")["page"], 1, "{view}");
    assert_eq!(chunk_with(&view, "Bravo")["page"], 2, "{view}");
    assert_eq!(chunk_with(&view, "Charlie")["page"], 3, "{view}");
    assert!(
        chunk_with(&view, "Bravo").get("page_end").is_none(),
        "{view}"
    );
    let record = &view["document"];
    assert_eq!(record["source"], "file", "{record}");
    assert_eq!(record["file"]["format"], "pdf", "{record}");
    assert_eq!(record["file"]["name"], "report.pdf", "{record}");
    assert_eq!(record["chunks"], 3, "{record}");
    assert_eq!(record["state"], "indexed", "{record}");

    // Searchable, with the page in the payload.
    let found = app
        .search(
            &token,
            &json!({"query": "revenue", "model": "mock", "mode": "keyword", "limit": 1}),
        )
        .await;
    assert_eq!(found["results"][0]["payload"]["page"], 2, "{found}");

    // The same bytes again: the same job.
    let again = accepted(
        upload(
            &app,
            &token,
            "report",
            &format!("{OPTIONS}&name=report.pdf"),
            PDF,
            report_pdf("Charlie closes on page three."),
        )
        .await,
    )
    .await;
    assert_eq!(again["job_id"], v1["job_id"]);

    // A new version: page three changes, the first two chunks are kept.
    let v2 = accepted(
        upload(
            &app,
            &token,
            "report",
            OPTIONS,
            PDF,
            report_pdf("Delta now ends the report."),
        )
        .await,
    )
    .await;
    let job = job_ends(&app, &token, &v2, "SUCCEEDED").await;
    assert_eq!(
        (
            &job["result"]["kept"],
            &job["result"]["written"],
            &job["result"]["deleted"]
        ),
        (&json!(2), &json!(1), &json!(0)),
        "{job}"
    );
    let view = document(&app, &token, "report").await;
    assert_eq!(chunk_with(&view, "Delta")["page"], 3, "{view}");
    assert!(view.to_string().find("Charlie").is_none(), "{view}");

    // The sweep deletes the replaced version's file and keeps the live one.
    let (old, live) = (object_of(org, "report", &v1), object_of(org, "report", &v2));
    let swept = eventually(Duration::from_secs(20), || async {
        (!object_exists(&app, &old).await).then_some(())
    })
    .await;
    assert!(
        swept.is_some(),
        "the replaced version's file is still stored"
    );
    assert!(object_exists(&app, &live).await);

    // Deleted: its file goes too.
    let response = app.delete(&token, "/documents/report").await;
    assert_eq!(response.status(), 202);
    let deleted: Value = response.json().await.unwrap();
    job_ends(&app, &token, &deleted, "SUCCEEDED").await;
    let swept = eventually(Duration::from_secs(20), || async {
        (!object_exists(&app, &live).await).then_some(())
    })
    .await;
    assert!(swept.is_some(), "a deleted document's file is still stored");

    // A file no event names (its job's publish failed after the upload, say) is collected
    // once it is older than the grace period, and not before.
    let orphan = FileSource::object_name(org, &AssetId::parse("never-sent").unwrap(), "0badc0de");
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let bucket = js.get_object_store("HEIMDEX_FILES").await.unwrap();
    let mut bytes: &[u8] = b"%PDF-1.7 never named by an event";
    bucket.put(orphan.as_str(), &mut bytes).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        object_exists(&app, &orphan).await,
        "a file younger than the grace period stays"
    );
    let swept = eventually(Duration::from_secs(20), || async {
        (!object_exists(&app, &orphan).await).then_some(())
    })
    .await;
    assert!(swept.is_some(), "an orphan file is still stored");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docx_and_html_chunks_carry_their_section() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());

    // DOCX, as a multipart form with metadata.
    let body = [
        para(Some("berschrift1"), "Installation"),
        para(None, "Unpack the archive into a folder."),
        para(Some("berschrift2"), "Upgrading"),
        para(None, "Stop the service before you upgrade."),
    ]
    .concat();
    let (content_type, form) = multipart(
        "guide.docx",
        DOCX,
        &docx(&body),
        &[
            ("model", "mock"),
            ("max_tokens", "8"),
            ("overlap", "0"),
            ("metadata", r#"{"team": "ops"}"#),
        ],
    );
    let guide = accepted(upload(&app, &token, "guide", "", &content_type, form).await).await;
    job_ends(&app, &token, &guide, "SUCCEEDED").await;
    let view = document(&app, &token, "guide").await;
    assert_eq!(
        chunk_with(&view, "Unpack")["section"],
        "Installation",
        "{view}"
    );
    assert_eq!(
        chunk_with(&view, "Stop the")["section"],
        "Upgrading",
        "{view}"
    );
    assert_eq!(
        chunk_with(&view, "Stop the")["metadata"]["team"],
        "ops",
        "{view}"
    );
    assert_eq!(view["document"]["file"]["name"], "guide.docx", "{view}");

    // HTML, as a raw body whose media type has parameters.
    let html = "<html><head><title>t</title><script>var hidden = 1;</script></head><body>\
                <h1>Pricing</h1><p>Plans start at ten euros.</p>\
                <h2>Refunds</h2><p>Refunds take five days.</p></body></html>";
    let page = accepted(
        upload(
            &app,
            &token,
            "page",
            OPTIONS,
            "text/html; charset=utf-8",
            html.as_bytes().to_vec(),
        )
        .await,
    )
    .await;
    job_ends(&app, &token, &page, "SUCCEEDED").await;
    let view = document(&app, &token, "page").await;
    assert_eq!(
        chunk_with(&view, "ten euros")["section"],
        "Pricing",
        "{view}"
    );
    assert_eq!(
        chunk_with(&view, "five days")["section"],
        "Refunds",
        "{view}"
    );
    assert!(!view.to_string().contains("hidden"), "{view}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_get_a_clear_answer() {
    let app = TestApp::spawn().await;
    let token = app.token(Uuid::new_v4());

    // Over 10 MiB: 413.
    let big = vec![b'a'; 10 * 1024 * 1024 + 1];
    let response = upload(&app, &token, "big", OPTIONS, "text/plain", big).await;
    problem(response, 413, "payload_too_large").await;
    // Not a document type: 415.
    let png = b"\x89PNG\r\n".to_vec();
    let response = upload(&app, &token, "png", OPTIONS, "image/png", png).await;
    problem(response, 415, "unsupported_media_type").await;
    // Random bytes named .pdf: 422 with the reason.
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (content_type, form) = multipart("scan.pdf", PDF, &random, &[("model", "mock")]);
    let response = upload(&app, &token, "scan", "", &content_type, form).await;
    let body = problem(response, 422, "validation_error").await;
    assert!(
        body["detail"].as_str().unwrap().contains("not a PDF"),
        "{body}"
    );
    // Invalid UTF-8 as text: 422.
    let response = upload(
        &app,
        &token,
        "txt",
        OPTIONS,
        "text/plain",
        vec![b'o', b'k', 0xff],
    )
    .await;
    problem(response, 422, "validation_error").await;

    // A PDF header on a damaged body: the job fails invalid_input, with the reason, at once.
    let mut damaged = b"%PDF-1.7\n".to_vec();
    damaged.extend(&random);
    let job = accepted(upload(&app, &token, "damaged", OPTIONS, PDF, damaged).await).await;
    let failed = job_ends(&app, &token, &job, "FAILED").await;
    assert_eq!(failed["error"]["code"], "invalid_input", "{failed}");
    assert_eq!(failed["attempts"], 1, "{failed}");
    assert!(
        failed["error"]["message"].as_str().unwrap().contains("pdf"),
        "{failed}"
    );
    // A PDF without text: the same, and the listing says why.
    let blank = save(pdf(&[&[]]));
    let job = accepted(upload(&app, &token, "blank", OPTIONS, PDF, blank).await).await;
    job_ends(&app, &token, &job, "FAILED").await;
    let view = document(&app, &token, "blank").await;
    assert_eq!(view["document"]["state"], "failed", "{view}");
    assert!(
        view["document"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text"),
        "{view}"
    );

    // None of it left anything searchable.
    let found = app
        .search(
            &token,
            &json!({"query": "report", "model": "mock", "mode": "keyword"}),
        )
        .await;
    assert_eq!(found["results"], json!([]), "{found}");
    app.stop().await;
}
