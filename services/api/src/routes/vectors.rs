//! `/vectors`: embedding jobs and stored points.

use std::sync::Arc;

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use heimdex_domain::ids::Target;
use heimdex_domain::jobs::{DeleteAssetParams, DeletePointParams, JobSpec, MockParams};
use heimdex_domain::{AssetId, RequestId, SegmentId};

use crate::AppState;
use crate::auth::BearerAuth;
use crate::problem::{ApiError, ProblemResponse};
use crate::routes::parse_ident;
use crate::strict::{Known, StrictString};

#[derive(Tags)]
enum Tag {
    /// Embedding jobs and stored vectors.
    Vectors,
}

pub struct VectorsApi {
    pub state: Arc<AppState>,
}

/// `POST /vectors/mock` body (the Python service's contract).
#[derive(Object, Debug)]
pub struct MockRequest {
    /// Asset the segment belongs to: 1–256 characters, no control characters.
    pub asset_id: StrictString,
    /// Segment within the asset: 1–256 characters, no control characters.
    pub segment_id: StrictString,
}

/// The job that embeds the segment; a repeated request answers the same job.
#[derive(Object, Debug)]
pub struct JobAccepted {
    pub job_id: Uuid,
    pub asset_id: String,
    pub segment_id: String,
}

#[derive(ApiResponse)]
pub enum SubmitResponse {
    /// Accepted: the job's `requested` event is stored. Poll `GET /jobs/{job_id}`.
    #[oai(status = 202)]
    Accepted(Json<JobAccepted>),
}

/// A stored point, as visible to the caller's organization.
#[derive(Object, Debug)]
pub struct PointView {
    pub point_id: Uuid,
    /// `org_id, asset_id, segment_id, model, model_ver, text` and any chunk metadata.
    pub payload: serde_json::Value,
    /// Present with `?with_vector=true`. Stored normalised (the collection uses cosine distance).
    #[oai(skip_serializing_if_is_none)]
    pub vector: Option<Vec<f32>>,
}

#[derive(ApiResponse)]
pub enum PointResponse {
    #[oai(status = 200)]
    Ok(Json<PointView>),
}

/// A delete job; its result says how many points it removed.
#[derive(Object, Debug)]
pub struct DeleteAccepted {
    pub job_id: Uuid,
    #[oai(skip_serializing_if_is_none)]
    pub point_id: Option<Uuid>,
    #[oai(skip_serializing_if_is_none)]
    pub asset_id: Option<String>,
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Accepted: the delete job's `requested` event is stored. Poll `GET /jobs/{job_id}`; its
    /// `result.deleted` is the number of points removed (0 if there was nothing to delete).
    #[oai(status = 202)]
    Accepted(Json<DeleteAccepted>),
}

/// `DELETE /assets/{asset_id}` and `DELETE /documents/{asset_id}`: one delete job for every
/// point of the asset, after its tombstone.
pub(crate) async fn delete_asset(
    state: &AppState,
    auth: &BearerAuth,
    asset_id: String,
    idempotency_key: Option<String>,
) -> Result<DeleteResponse, ProblemResponse> {
    let parsed: AssetId = parse_ident("asset_id", asset_id.clone())?;
    let target = Target::Asset(parsed.to_string());
    let spec = JobSpec::DeleteAsset(DeleteAssetParams {
        asset_id: parsed,
        request_id: request_id(idempotency_key)?,
    });
    let submitted = state.submitter.delete(&auth.0, &target, spec).await?;
    Ok(DeleteResponse::Accepted(Json(DeleteAccepted {
        job_id: submitted.job_id,
        point_id: None,
        asset_id: Some(asset_id),
    })))
}

/// The delete's `request_id`: the client's `Idempotency-Key`, or a fresh id (every delete is a
/// new job, and deleting twice removes nothing the second time).
fn request_id(key: Option<String>) -> Result<RequestId, ApiError> {
    parse_ident(
        "Idempotency-Key",
        key.unwrap_or_else(|| Uuid::new_v4().to_string()),
    )
}

#[OpenApi(tag = "Tag::Vectors")]
impl VectorsApi {
    /// Create a mock embedding job
    ///
    /// Queues a job that writes the deterministic ChaCha20 mock vector of `(org, asset,
    /// segment)` to the vector store. Idempotent: the same request from the same organization
    /// always names the same job and is accepted once.
    #[oai(path = "/vectors/mock", method = "post")]
    async fn create_mock(
        &self,
        auth: BearerAuth,
        body: Json<Known<MockRequest>>,
    ) -> Result<SubmitResponse, ProblemResponse> {
        let asset_id: AssetId = parse_ident("asset_id", body.0.0.asset_id.0)?;
        let segment_id: SegmentId = parse_ident("segment_id", body.0.0.segment_id.0)?;
        let spec = JobSpec::MockEmbedding(MockParams::new(asset_id.clone(), segment_id.clone()));
        let submitted = self.state.submitter.submit(&auth.0, spec).await?;
        Ok(SubmitResponse::Accepted(Json(JobAccepted {
            job_id: submitted.job_id,
            asset_id: asset_id.into_inner(),
            segment_id: segment_id.into_inner(),
        })))
    }

    /// Delete a point
    ///
    /// Queues a job that deletes the point if it belongs to the caller's organization; a
    /// point of another organization, or one already gone, is left as it is (the job succeeds
    /// with `deleted: 0`). Send an `Idempotency-Key` header to make retries of one request
    /// name one job.
    #[oai(path = "/vectors/:point_id", method = "delete")]
    async fn delete_point(
        &self,
        auth: BearerAuth,
        point_id: Path<Uuid>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> Result<DeleteResponse, ProblemResponse> {
        // A point a model change re-embedded is deleted by the id its job named, which every
        // collection knows it by (the others hold it under that id, or record it as
        // `moved_from`), and which the job's tombstone names.
        // The delete is queued whatever the store's state: a store that cannot answer now
        // leaves the id as sent.
        let named = match self.state.store.get(auth.0.org_id, point_id.0, false).await {
            Ok(Some(point)) => point.payload.moved_from.unwrap_or(point_id.0),
            Ok(None) => point_id.0,
            Err(err) => {
                tracing::warn!(error = %heimdex_telemetry::ErrorChain(&err), "cannot look the point up before its delete; deleting it by the id sent");
                point_id.0
            }
        };
        let spec = JobSpec::DeletePoint(DeletePointParams {
            point_id: named,
            request_id: request_id(idempotency_key.0)?,
        });
        let target = Target::Point(named);
        let submitted = self.state.submitter.delete(&auth.0, &target, spec).await?;
        Ok(DeleteResponse::Accepted(Json(DeleteAccepted {
            job_id: submitted.job_id,
            point_id: Some(point_id.0),
            asset_id: None,
        })))
    }

    /// Delete every point of an asset
    ///
    /// Queues a job that deletes the caller's organization's points of the asset (every
    /// segment, every model). Other organizations' points are never touched. `Idempotency-Key`
    /// as for `DELETE /vectors/{point_id}`.
    #[oai(path = "/assets/:asset_id", method = "delete")]
    async fn delete_asset(
        &self,
        auth: BearerAuth,
        asset_id: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> Result<DeleteResponse, ProblemResponse> {
        delete_asset(&self.state, &auth, asset_id.0, idempotency_key.0).await
    }

    /// Get a stored point
    ///
    /// Returns the point's payload, and its vector with `with_vector=true`. Points of other
    /// organizations are reported as not found.
    #[oai(path = "/vectors/:point_id", method = "get")]
    async fn get_point(
        &self,
        auth: BearerAuth,
        point_id: Path<Uuid>,
        /// Include the stored vector.
        with_vector: Query<Option<bool>>,
    ) -> Result<PointResponse, ProblemResponse> {
        let with_vector = with_vector.0.unwrap_or(false);
        let point = self
            .state
            .store
            .get(auth.0.org_id, point_id.0, with_vector)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("point {} not found", point_id.0)))?;
        let payload = serde_json::to_value(&point.payload).map_err(ApiError::internal)?;
        Ok(PointResponse::Ok(Json(PointView {
            point_id: point.id,
            payload,
            vector: point.vector,
        })))
    }
}
