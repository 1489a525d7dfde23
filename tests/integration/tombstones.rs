//! The tombstones a worker batch reads in one batched direct get (`JobLog::tombstones`,
//! `last_delete_seqs`): more targets than one request carries, some deleted (some twice, by
//! two jobs), most never; each write's last delete is the `requested` sequence of the last job
//! that deleted one of its targets.

use heimdex_domain::events::EventKind;
use heimdex_domain::ids::Target;
use heimdex_domain::jobs::{DeleteAssetParams, JobSpec};
use heimdex_domain::{AssetId, RequestId};
use heimdex_tests::TestApp;
use uuid::Uuid;

use crate::common::{event_store, publish_requested};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_tombstones_is_read_at_once() {
    let app = TestApp::spawn_without_worker(&[]).await;
    let events = event_store(&app, "tombstone-test").await;
    let log = &events.log;
    let (org, other_org) = (Uuid::new_v4(), Uuid::new_v4());
    // 600 assets: more than two requests' worth of subjects.
    let targets: Vec<Target> = (0..600).map(|i| Target::Asset(format!("a-{i}"))).collect();

    // Asset 7 deleted by one job, asset 300 by two (the second one counts), asset 599 by a
    // job whose `requested` event was never stored; asset 8 deleted in another org.
    let mut requested = std::collections::HashMap::new();
    for (n, (target, org_id)) in [(7, org), (300, org), (300, org), (8, other_org)]
        .into_iter()
        .enumerate()
    {
        let spec = JobSpec::DeleteAsset(DeleteAssetParams {
            asset_id: AssetId::parse(format!("a-{target}")).unwrap(),
            request_id: RequestId::parse(format!("delete-{n}")).unwrap(),
        });
        let job_id = publish_requested(&events.js, org_id, "test", spec).await;
        log.mark_deleted(org_id, &targets[target], job_id)
            .await
            .unwrap();
        let seq = log
            .last(org_id, job_id, EventKind::Requested)
            .await
            .unwrap()
            .unwrap()
            .seq;
        requested.insert((target, org_id), seq);
    }
    log.mark_deleted(org, &targets[599], Uuid::new_v4())
        .await
        .unwrap();

    let stones = log.tombstones(org, &targets).await.unwrap();
    let mut deleted: Vec<&Target> = stones.keys().collect();
    deleted.sort();
    assert_eq!(deleted, [&targets[300], &targets[599], &targets[7]]);

    let writes: Vec<&[Target]> = vec![
        &targets[7..9],
        &targets[299..301],
        &targets[10..20],
        &targets[598..600],
        &targets[..],
    ];
    let last = log.last_delete_seqs(org, &writes).await.unwrap();
    let (seq_7, seq_300) = (requested[&(7, org)], requested[&(300, org)]);
    assert!(seq_300 > seq_7);
    assert_eq!(last, [seq_7, seq_300, 0, 0, seq_300]);
    // The generation sums the tombstones' own sequences.
    let generation = log.generation(org, &targets[7..8]).await.unwrap();
    assert_eq!(generation, stones[&targets[7]].seq);
    assert_eq!(log.generation(org, &targets[8..9]).await.unwrap(), 0);
    app.stop().await;
}
