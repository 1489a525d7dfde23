//! The disk under the NATS store fills up. Where the test may mount (root), the store lives on a
//! small tmpfs of its own, a real full disk; elsewhere nats-server gets a small `max_file_store`
//! limit, which JetStream enforces the same way ("insufficient resources"). Publishes must then
//! be refused with 503 or 507, never answered 2xx; after the operator adds space (the tmpfs
//! grown, or the limit raised) and restarts nats-server, everything accepted before completes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::harness::*;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        if std::env::var("HEIMDEX_FAULTS_NO_MOUNT").is_ok() {
            return None;
        }
        let options = format!("size={size}");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|out| out.status.success());
        mounted.then(|| Self(dir.to_owned()))
    }

    fn grow(&self, size: &str) {
        let options = format!("remount,size={size}");
        let out = Command::new("mount")
            .args(["-o", &options])
            .arg(&self.0)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "remount: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_refuses_with_503_or_507_and_loses_nothing() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("nats");
    let tmpfs = Tmpfs::mount(&store, "16m");
    let limit = "max_file_store: 16MB";
    let nats = match &tmpfs {
        Some(_) => start_nats(store.clone(), Vec::new()).await,
        None => start_nats_with(free_port(), store.clone(), Vec::new(), Some(limit)).await,
    };
    let how = if tmpfs.is_some() {
        "16 MiB tmpfs"
    } else {
        "max_file_store 16 MB"
    };
    let mut deployment = Deployment::start_on(dir.path(), &[], nats).await;

    // Submit distinct jobs one after another until the store has refused 100 in a row.
    let (mut i, mut in_a_row, mut first_refusal) = (0usize, 0u32, None);
    let mut refused: std::collections::BTreeMap<u16, u32> = Default::default();
    while in_a_row < 100 {
        assert!(i < 200_000, "the store never filled up");
        let segment = format!("f-{i}");
        let response = deployment
            .client
            .http
            .post(format!("{}/vectors/mock", deployment.base))
            .bearer_auth(&deployment.client.token)
            .json(&serde_json::json!({"asset_id": "full", "segment_id": segment}))
            .send()
            .await
            .expect("the API stays up");
        let status = response.status().as_u16();
        match status {
            202 => {
                in_a_row = 0;
                let body: serde_json::Value = response.json().await.unwrap();
                deployment.ledger.accept(
                    body["job_id"].as_str().unwrap().parse().unwrap(),
                    vec![mock_point(deployment.ledger.org, "full", &segment)],
                );
            }
            503 | 507 => {
                in_a_row += 1;
                first_refusal.get_or_insert(i);
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
                if status == 503 {
                    assert!(response.headers().contains_key("retry-after"));
                }
                *refused.entry(status).or_default() += 1;
            }
            other => panic!(
                "a full store answered {other}: {}",
                response.text().await.unwrap()
            ),
        }
        i += 1;
    }
    let accepted = deployment.ledger.accepted();

    // The operator adds space and restarts nats-server.
    match &tmpfs {
        Some(tmpfs) => tmpfs.grow("512m"),
        None => deployment.nats.config_mut().jetstream = vec!["max_file_store: 1GB".to_owned()],
    }
    deployment.nats.stop().await;
    deployment
        .nats
        .start_again()
        .await
        .expect("nats-server starts again");
    let fault_over = Instant::now();
    // New work is accepted again.
    let after = deployment.client.submit_mock(0, "full", "after").await;
    assert!(after.is_some(), "accepted again once there is space");

    let mut outcome = deployment.finish("full disk", fault_over).await;
    outcome.note(format!(
        "{how}: {accepted} jobs accepted before the first refusal at request {}; then \
         refusals {refused:?}; none answered 2xx while full",
        first_refusal.unwrap_or_default()
    ));
    drop(tmpfs);
    outcome.report_and_assert();
}
