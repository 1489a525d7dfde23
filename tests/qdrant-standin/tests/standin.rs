//! The stand-in's own promises, through the real client: Qdrant's answers for collection
//! management, persistence across a restart and across `kill -9` of the binary, and a clear
//! `Unimplemented` for RPCs it does not serve. (The full point semantics are covered by
//! `shared/store/tests/contract.rs`, which runs the remote adapter against it.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use heimdex_qdrant_standin::Standin;
use qdrant_client::qdrant::{
    CountPointsBuilder, CreateCollectionBuilder, Distance, FacetCounts, GetPointsBuilder, PointId,
    PointStruct, UpsertPointsBuilder, Value, VectorParamsBuilder,
};
use qdrant_client::{Qdrant, QdrantError};
use tokio::io::AsyncBufReadExt;

const COLLECTION: &str = "standin_test";

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn client(url: &str) -> Qdrant {
    Qdrant::from_url(url)
        .skip_compatibility_check()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn code(e: QdrantError) -> tonic::Code {
    // `if let`, not `match`: the variant set depends on qdrant-client's features.
    if let QdrantError::ResponseError { status } = e {
        return status.code();
    }
    panic!("not a gRPC status: {e}");
}

fn points(n: u64) -> Vec<PointStruct> {
    (0..n)
        .map(|i| {
            let payload: HashMap<String, Value> = [("i".to_owned(), Value::from(i as i64))].into();
            PointStruct::new(
                uuid::Uuid::from_u128(u128::from(i) + 1).to_string(),
                vec![1.0, i as f32, 0.5],
                payload,
            )
        })
        .collect()
}

async fn create_and_fill(client: &Qdrant, n: u64) {
    client
        .create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(3, Distance::Cosine)),
        )
        .await
        .expect("create");
    client
        .upsert_points(UpsertPointsBuilder::new(COLLECTION, points(n)).wait(true))
        .await
        .expect("upsert");
}

async fn count(client: &Qdrant) -> u64 {
    client
        .count(CountPointsBuilder::new(COLLECTION).exact(true))
        .await
        .expect("count")
        .result
        .expect("result")
        .count
}

#[tokio::test]
async fn collection_management_answers_like_qdrant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = Standin::start(dir.path(), any_port()).await.expect("start");
    let client = client(&standin.url());

    client.health_check().await.expect("health");
    assert!(!client.collection_exists(COLLECTION).await.expect("exists"));
    let err = client
        .collection_info(COLLECTION)
        .await
        .expect_err("missing");
    assert_eq!(code(err), tonic::Code::NotFound);

    create_and_fill(&client, 3).await;
    assert!(client.collection_exists(COLLECTION).await.expect("exists"));
    let err = client
        .create_collection(
            CreateCollectionBuilder::new(COLLECTION)
                .vectors_config(VectorParamsBuilder::new(3, Distance::Cosine)),
        )
        .await
        .expect_err("exists already");
    assert_ne!(code(err), tonic::Code::Unimplemented);
    let listed = client.list_collections().await.expect("list");
    assert_eq!(listed.collections.len(), 1);

    // Wrong dimension: the engine's own check.
    let err = client
        .upsert_points(
            UpsertPointsBuilder::new(
                COLLECTION,
                vec![PointStruct::new(
                    1,
                    vec![1.0, 2.0],
                    HashMap::<String, Value>::new(),
                )],
            )
            .wait(true),
        )
        .await
        .expect_err("wrong dimension");
    assert_eq!(code(err), tonic::Code::InvalidArgument);

    assert!(
        client
            .delete_collection(COLLECTION)
            .await
            .expect("delete")
            .result
    );
    assert!(
        !client
            .delete_collection(COLLECTION)
            .await
            .expect("delete again")
            .result
    );
    assert!(!client.collection_exists(COLLECTION).await.expect("exists"));
    standin.stop().await;
}

#[tokio::test]
async fn unserved_rpcs_are_unimplemented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = Standin::start(dir.path(), any_port()).await.expect("start");
    let client = client(&standin.url());
    create_and_fill(&client, 1).await;
    let err = client
        .facet(FacetCounts {
            collection_name: COLLECTION.to_owned(),
            key: "i".to_owned(),
            ..FacetCounts::default()
        })
        .await
        .expect_err("facet is not served");
    let QdrantError::ResponseError { status } = err else {
        panic!("not a gRPC status");
    };
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("facet"), "{}", status.message());
    standin.stop().await;
}

#[tokio::test]
async fn restart_keeps_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let standin = Standin::start(dir.path(), any_port()).await.expect("start");
    create_and_fill(&client(&standin.url()), 50).await;
    standin.stop().await;

    let standin = Standin::start(dir.path(), any_port())
        .await
        .expect("restart");
    let client = client(&standin.url());
    assert_eq!(count(&client).await, 50);
    let got = client
        .get_points(
            GetPointsBuilder::new(
                COLLECTION,
                vec![PointId::from(uuid::Uuid::from_u128(8).to_string())],
            )
            .with_payload(true),
        )
        .await
        .expect("get");
    assert_eq!(got.result.len(), 1);
    assert_eq!(got.result[0].payload.get("i"), Some(&Value::from(7_i64)));
    drop(standin);
}

/// The binary prints its URL once ready; a `kill -9` right after an acknowledged write loses
/// nothing.
#[tokio::test]
async fn binary_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spawn = || async {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qdrant-standin"))
            .arg("--data")
            .arg(dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn qdrant-standin");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("URL within 30 s")
        .expect("read stdout");
        let url = line.trim().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
        (child, url)
    };

    let (mut child, url) = spawn().await;
    create_and_fill(&client(&url), 20).await;
    child.kill().await.expect("kill -9");

    let (mut child, url) = spawn().await;
    assert_eq!(count(&client(&url)).await, 20);
    child.kill().await.expect("kill");
}
