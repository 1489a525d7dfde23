//! Accepting a job: a job is accepted exactly when its `requested` event is stored in JetStream.
//! The event is published with `Nats-Msg-Id = job_key` and `Nats-Expected-Last-Subject-Sequence:
//! 0` on the job's own subject, so a duplicate — concurrent, or years later — is refused by the
//! server and answered with the existing job.

use std::sync::Arc;

use uuid::Uuid;

use heimdex_domain::events::{EventData, JobEvent, Requested, Retried};
use heimdex_domain::ids::{self, Target};
use heimdex_domain::jobs::JobSpec;
use heimdex_event_store::JobLog;
use heimdex_event_store::log::Appended;

use crate::auth::Principal;
use crate::overload::Admission;
use crate::problem::ApiError;

/// The job a request names, and whether this request created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: Uuid,
    pub created: bool,
}

#[derive(Clone)]
pub struct Submitter {
    log: JobLog,
    admission: Arc<Admission>,
}

impl Submitter {
    pub fn new(log: JobLog, admission: Arc<Admission>) -> Self {
        Self { log, admission }
    }

    /// Submits one job, if the org's rate limit and the backlog bound admit it.
    pub async fn submit(
        &self,
        principal: &Principal,
        spec: JobSpec,
    ) -> Result<Submitted, ApiError> {
        self.admission.admit(principal.org_id, 1)?;
        self.publish(principal, spec).await
    }

    /// One `publish` span per job (a producer span, in OpenTelemetry's terms): its context
    /// travels in the event's headers, so the worker's spans continue this trace.
    #[tracing::instrument(
        name = "publish",
        skip_all,
        fields(
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name,
            org_id = %principal.org_id,
            job_type = spec.job_type(),
            job_id,
        )
    )]
    async fn publish(&self, principal: &Principal, spec: JobSpec) -> Result<Submitted, ApiError> {
        let job_type = spec.job_type();
        let job_key = ids::job_key(principal.org_id, job_type, &spec.params());
        let job_id = ids::job_id(&job_key);
        tracing::Span::current().record("job_id", tracing::field::display(job_id));
        let event = JobEvent::new(
            principal.org_id,
            job_id,
            EventData::Requested(Requested {
                job_id,
                job_key,
                user_id: principal.user_id.clone(),
                spec,
            }),
        );
        tracing::Span::current().record("messaging.destination.name", event.subject().as_str());
        let created = match self.log.request(&event).await? {
            Appended::Created => {
                metrics::counter!("heimdex_jobs_accepted_total", "job_type" => job_type)
                    .increment(1);
                true
            }
            Appended::Exists => false,
        };
        Ok(Submitted { job_id, created })
    }

    /// Appends the `retried` event of round `round` of a FAILED job (see [`JobLog::retry`]):
    /// `Ok` means the round's event is stored, by this call or a concurrent one.
    #[tracing::instrument(
        name = "publish",
        skip_all,
        fields(
            otel.kind = "producer",
            messaging.system = "nats",
            org_id = %principal.org_id,
            job_type = "retried",
            %job_id,
            round,
        )
    )]
    pub async fn retry(
        &self,
        principal: &Principal,
        job_id: Uuid,
        round: u32,
        spec: JobSpec,
        last_retried_seq: u64,
    ) -> Result<(), ApiError> {
        let event = JobEvent::new(
            principal.org_id,
            job_id,
            EventData::Retried(Retried {
                round,
                user_id: principal.user_id.clone(),
                spec,
            }),
        );
        Ok(self.log.retry(&event, last_retried_seq).await?)
    }

    /// The generation a write to `targets` gets (see `EmbedParams::generation`): after a
    /// delete of any of them, identical content is a new job.
    pub async fn generation(
        &self,
        principal: &Principal,
        targets: &[Target],
    ) -> Result<u64, ApiError> {
        Ok(self.log.generation(principal.org_id, targets).await?)
    }

    /// Submits a delete of `target`: its tombstone first (so a write requested from now on is
    /// a new job, even with content identical to what it deletes), then the job.
    pub async fn delete(
        &self,
        principal: &Principal,
        target: &Target,
        spec: JobSpec,
    ) -> Result<Submitted, ApiError> {
        self.admission.admit(principal.org_id, 1)?;
        let job_key = ids::job_key(principal.org_id, spec.job_type(), &spec.params());
        self.log
            .mark_deleted(principal.org_id, target, ids::job_id(&job_key))
            .await?;
        self.publish(principal, spec).await
    }

    /// Submits every job concurrently (one publish each, acknowledged together). Admission is
    /// all or nothing: the request costs one rate-limit token per job. Each job stays
    /// idempotent on its own: if any publish fails the call fails, and a retry of the whole
    /// request answers the jobs already stored as duplicates.
    pub async fn submit_many(
        &self,
        principal: &Principal,
        specs: Vec<JobSpec>,
    ) -> Result<Vec<Submitted>, ApiError> {
        self.admission.admit(principal.org_id, specs.len())?;
        futures::future::try_join_all(specs.into_iter().map(|spec| self.publish(principal, spec)))
            .await
    }
}
