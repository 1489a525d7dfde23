//! `heimdex ingest <dir> --sync`, as a user keeps an index equal to a folder: the real binary
//! against a running service. A folder of PDF, DOCX, HTML, Markdown and text files is synced;
//! then one file is edited, one deleted and one added, and the folder synced again. The index
//! must then equal the folder: the store's count, its scroll and the chunk ids the documents
//! name are the same set, unchanged files were not uploaded again (their stored objects are the
//! very ones of the first sync), and a document outside the folder's prefix is untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use uuid::Uuid;

use heimdex_domain::AssetId;
use heimdex_domain::ids;
use heimdex_domain::jobs::FileSource;
use heimdex_event_store::jetstream::FILES_BUCKET;
use heimdex_extract::testing::{docx, para, pdf, save};
use heimdex_tests::TestApp;

use crate::cli::heimdex;

async fn sync(app: &TestApp, org: Uuid, dir: &Path) -> String {
    let dir = dir.to_str().unwrap();
    let options = ["--model", "mock", "--max-tokens", "8", "--overlap", "0"];
    let args: Vec<&str> = ["ingest", dir, "--sync"]
        .into_iter()
        .chain(options)
        .collect();
    let (ok, stdout, stderr) = heimdex(app, org, &args).await;
    assert!(ok, "sync failed:\n{stdout}\n{stderr}");
    stdout
}

/// The documents the second sync leaves as they were: the files it does not change, and one
/// outside the folder.
const UNTOUCHED: &[&str] = &[
    "elsewhere.md",
    "handbook/guides/report.pdf",
    "handbook/notes.txt",
    "handbook/policy.docx",
    "handbook/real/docutils.html",
    "handbook/real/latex.pdf",
    "handbook/real/libreoffice.docx",
    "handbook/real/makeinfo.html",
    "handbook/real/pandoc.docx",
];

/// The listing holds exactly [`UNTOUCHED`] and `more`, every document indexed.
fn assert_listed(documents: &BTreeMap<String, Value>, more: &[&str]) {
    let mut expected: Vec<&str> = UNTOUCHED.iter().chain(more).copied().collect();
    expected.sort_unstable();
    let listed: Vec<&str> = documents.keys().map(String::as_str).collect();
    assert_eq!(listed, expected);
    assert!(
        documents.values().all(|doc| doc["state"] == "indexed"),
        "{documents:?}"
    );
}

/// The org's documents by asset id.
async fn listing(app: &TestApp, token: &str) -> BTreeMap<String, Value> {
    let page: Value = app
        .get(token, "/documents?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    assert!(page["next_cursor"].is_null(), "{page}");
    page["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|doc| (doc["asset_id"].as_str().unwrap().to_owned(), doc.clone()))
        .collect()
}

/// The nuid of each document's stored file: a new upload of the same version stores a new
/// object under the same name, with a new nuid.
async fn objects(
    app: &TestApp,
    org: Uuid,
    documents: &BTreeMap<String, Value>,
) -> BTreeMap<String, String> {
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let files = async_nats::jetstream::new(client)
        .get_object_store(FILES_BUCKET)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for (asset, doc) in documents {
        let asset_id = AssetId::parse(asset.as_str()).unwrap();
        let name = FileSource::object_name(org, &asset_id, doc["version"].as_str().unwrap());
        let info = files.info(&name).await.unwrap();
        out.insert(asset.clone(), info.nuid);
    }
    out
}

/// Every chunk id the listed documents account for, derived from their chunk counts.
fn expected_points(org: Uuid, documents: &BTreeMap<String, Value>) -> BTreeSet<Uuid> {
    documents
        .iter()
        .flat_map(|(asset, doc)| {
            let chunks = doc["chunks"].as_u64().unwrap() as usize;
            assert!(chunks > 0, "{doc}");
            (0..chunks).map(move |i| {
                ids::point_id(
                    org,
                    asset,
                    &format!("chunk-{i}"),
                    doc["model"].as_str().unwrap(),
                    doc["model_ver"].as_str().unwrap(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_makes_the_index_equal_the_folder() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let token = app.token(org);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("handbook");
    std::fs::create_dir_all(dir.join("guides")).unwrap();
    std::fs::write(
        dir.join("intro.md"),
        "# Welcome\n\nThe handbook opens here.\n\n## Teams\n\nEvery team owns its service.",
    )
    .unwrap();
    std::fs::write(
        dir.join("guides/deploy.html"),
        "<html><body><h1>Deploy</h1><p>Ship on Tuesdays only.</p><h2>Rollback</h2>\
         <p>Revert the release tag.</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        dir.join("guides/report.pdf"),
        save(pdf(&[
            &[&["Alpha opens the quarterly report."]],
            &[&["Bravo covers revenue on page two."]],
        ])),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.docx"),
        docx(
            &[
                para(Some("Heading1"), "Leave"),
                para(None, "Holidays are booked in the calendar."),
            ]
            .concat(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("notes.txt"),
        "Plain notes about the office plants.",
    )
    .unwrap();
    // Real-world files (shared/extract/tests/data/README.md): pandoc's and LibreOffice's DOCX,
    // Docutils' and makeinfo's HTML, pdfTeX's PDF of a LaTeX article.
    std::fs::create_dir_all(dir.join("real")).unwrap();
    for (name, bytes) in [
        (
            "pandoc.docx",
            &include_bytes!("../../shared/extract/tests/data/pandoc-handbook.docx")[..],
        ),
        (
            "docutils.html",
            include_bytes!("../../shared/extract/tests/data/docutils-guide.html"),
        ),
        (
            "libreoffice.docx",
            include_bytes!("../../shared/extract/tests/data/libreoffice-handbook.docx"),
        ),
        (
            "latex.pdf",
            include_bytes!("../../shared/extract/tests/data/latex-minutes.pdf"),
        ),
        (
            "makeinfo.html",
            include_bytes!("../../shared/extract/tests/data/makeinfo-libffi-the-basics.html"),
        ),
    ] {
        std::fs::write(dir.join("real").join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(dir.join(".draft.md"), "hidden drafts stay out").unwrap();

    // A document of the same org outside the folder's prefix: no sync may touch it.
    let outside = app
        .http
        .put(app.url("/documents/elsewhere.md?model=mock&max_tokens=8&overlap=0"))
        .bearer_auth(&token)
        .header("content-type", "text/markdown")
        .body("Kept whatever the handbook folder holds.")
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 202);

    let first = sync(&app, org, &dir).await;
    assert!(
        first.contains("sent 10, skipped 0 (unchanged), deleted 0, failed 0"),
        "{first}"
    );
    let before = listing(&app, &token).await;
    assert_listed(
        &before,
        &["handbook/guides/deploy.html", "handbook/intro.md"],
    );
    // The real files' chunks know their sections.
    for (asset, needle, section) in [
        (
            "handbook/real/pandoc.docx",
            "Revert the release tag",
            "Rolling back",
        ),
        ("handbook/real/docutils.html", "narrow a search", "Filters"),
        (
            "handbook/real/libreoffice.docx",
            "Releases ship",
            "Deploying",
        ),
        ("handbook/guides/report.pdf", "Bravo", ""),
        ("handbook/real/latex.pdf", "legacy ingestion", ""),
    ] {
        let path = format!("/documents/{}", asset.replace('/', "%2F"));
        let view: Value = app.get(&token, &path).await.json().await.unwrap();
        let chunk = view["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|chunk| chunk["text"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} in {view}"));
        if section.is_empty() {
            assert_eq!(chunk["page"], 2, "{chunk}");
        } else {
            assert_eq!(chunk["section"], section, "{chunk}");
        }
    }
    let before_objects = objects(&app, org, &before).await;

    // Edit one, delete one, add one.
    std::fs::write(
        dir.join("intro.md"),
        "# Welcome\n\nThe handbook opens here, revised.",
    )
    .unwrap();
    std::fs::remove_file(dir.join("guides/deploy.html")).unwrap();
    std::fs::write(
        dir.join("guides/oncall.md"),
        "# On call\n\nPage the owner first.",
    )
    .unwrap();

    let second = sync(&app, org, &dir).await;
    assert!(
        second.contains("sent 2, skipped 8 (unchanged), deleted 1, failed 0"),
        "{second}"
    );
    let after = listing(&app, &token).await;
    assert_listed(&after, &["handbook/guides/oncall.md", "handbook/intro.md"]);
    assert_ne!(
        after["handbook/intro.md"]["version"],
        before["handbook/intro.md"]["version"]
    );
    let after_objects = objects(&app, org, &after).await;
    for &unchanged in UNTOUCHED {
        assert_eq!(after[unchanged]["job_id"], before[unchanged]["job_id"]);
        assert_eq!(
            after_objects[unchanged], before_objects[unchanged],
            "{unchanged} was uploaded again"
        );
    }

    // The index equals the folder: count = scroll = the chunk ids the documents name.
    let expected = expected_points(org, &after);
    let scrolled: BTreeSet<Uuid> = app
        .store
        .scroll_ids(org, Default::default())
        .await
        .unwrap()
        .into_iter()
        .collect();
    let count = app.store.count(org, Default::default()).await.unwrap();
    assert_eq!(scrolled, expected);
    assert_eq!(count as usize, expected.len());

    // Nothing changed: nothing is sent.
    let third = sync(&app, org, &dir).await;
    assert!(
        third.contains("sent 0, skipped 10 (unchanged), deleted 0, failed 0"),
        "{third}"
    );
    app.stop().await;
}
