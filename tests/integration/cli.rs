//! `heimdex ingest <dir>` then `heimdex search "<query>"`, as a new user would run them: the
//! real binary against a running service.

use tokio::process::Command;

use heimdex_tests::{JWT_SECRET, TestApp, heimdex_bin};
use uuid::Uuid;

/// Runs the `heimdex` binary with `args` against `app`, as `org`: (success, stdout, stderr).
pub(crate) async fn heimdex(app: &TestApp, org: Uuid, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(heimdex_bin())
        .args(args)
        .args(["--url", &app.base, "--org", &org.to_string()])
        .env("JWT_SECRET", JWT_SECRET)
        .env_remove("HEIMDEX_TOKEN")
        .env_remove("NATS_URL")
        .output()
        .await
        .expect("heimdex runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_folder_then_search_it() {
    let app = TestApp::spawn().await;
    let org = Uuid::new_v4();
    let docs = tempfile::tempdir().unwrap();
    std::fs::create_dir(docs.path().join("space")).unwrap();
    std::fs::write(
        docs.path().join("space/planets.md"),
        "# Planets\n\nJupiter is the largest planet in the solar system. Saturn has bright rings \
         made of ice. Mars is a cold desert world with red dust.",
    )
    .unwrap();
    std::fs::write(
        docs.path().join("bread.txt"),
        "Knead the dough with flour, water and yeast, let it rise, then bake the bread in a hot \
         oven until the crust is brown.",
    )
    .unwrap();
    std::fs::write(docs.path().join("empty.md"), "  \n").unwrap();
    std::fs::write(docs.path().join("image.png"), [0u8, 1, 2]).unwrap();
    let dir = docs.path().to_str().unwrap().to_owned();

    let (ok, stdout, stderr) = heimdex(&app, org, &["ingest", &dir]).await;
    assert!(ok, "ingest failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("ingested 2 file(s) as 2 chunk(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("chunks embedded: 2 · failed: 0 · still pending: 0"),
        "{stdout}"
    );
    assert!(stdout.contains("skipped empty.md: empty"), "{stdout}");

    let (ok, stdout, stderr) = heimdex(&app, org, &["search", "which planet has rings?"]).await;
    assert!(ok, "search failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("#  score"), "{stdout}");
    assert!(lines[1].contains("space/planets.md"), "{stdout}");
    assert!(lines[1].contains("chunk-0"), "{stdout}");

    // Another tenant sees nothing.
    let (ok, stdout, _) =
        heimdex(&app, Uuid::new_v4(), &["search", "which planet has rings?"]).await;
    assert!(ok);
    assert_eq!(stdout.trim(), "no results");
    app.stop().await;
}
