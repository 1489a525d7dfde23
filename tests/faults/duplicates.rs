//! Duplicate storms: the same request sent 1,000 times by 50 clients at once. Every client gets
//! the same job; the stream holds one `requested` event; the store one point.

use std::collections::HashSet;
use std::time::Instant;

use futures::StreamExt;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_storms_make_one_job_each() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::start(dir.path(), &[], Vec::new()).await;
    let (storms, copies, clients) = scale((3, 1_000, 50), (20, 1_000, 50));
    // 50 separate clients: 50 connection pools, as 50 callers would have.
    let http: Vec<reqwest::Client> = (0..clients).map(|_| reqwest::Client::new()).collect();

    let started = Instant::now();
    for storm in 0..storms {
        let segment = format!("storm-{storm}");
        let answers: Vec<(u16, String)> = futures::stream::iter(0..copies)
            .map(|i| {
                let (http, deployment, segment) = (&http[i % clients], &deployment, &segment);
                async move {
                    let response = http
                        .post(format!("{}/vectors/mock", deployment.base))
                        .bearer_auth(&deployment.client.token)
                        .json(&serde_json::json!({"asset_id": "storm", "segment_id": segment}))
                        .send()
                        .await
                        .expect("sent");
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    (
                        status,
                        body["job_id"].as_str().unwrap_or_default().to_owned(),
                    )
                }
            })
            .buffer_unordered(clients)
            .collect()
            .await;
        assert!(
            answers.iter().all(|(status, _)| *status == 202),
            "every copy accepted: {:?}",
            answers.iter().find(|(s, _)| *s != 202)
        );
        let jobs: HashSet<&String> = answers.iter().map(|(_, job)| job).collect();
        assert_eq!(jobs.len(), 1, "one job for {copies} copies");
        let job = jobs.into_iter().next().unwrap().parse().unwrap();
        deployment.ledger.accept(
            job,
            vec![mock_point(deployment.ledger.org, "storm", &segment)],
        );
    }
    let storm_time = started.elapsed();
    let mut outcome = deployment.finish("duplicate storm", Instant::now()).await;
    outcome.note(format!(
        "{storms} storms of {copies} identical requests from {clients} clients: {storms} jobs, \
         {storms} requested events, {storms} points; {:.0} requests/s",
        (storms * copies) as f64 / storm_time.as_secs_f64()
    ));
    outcome.report_and_assert();
}
