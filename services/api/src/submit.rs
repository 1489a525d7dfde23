//! Accepting a job: a job is accepted exactly when its `requested` event is stored in JetStream.
//! The event is published with `Nats-Msg-Id = job_key` and `Nats-Expected-Last-Subject-Sequence:
//! 0` on the job's own subject, so a duplicate — concurrent, or years later — is refused by the
//! server and answered with the existing job.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use uuid::Uuid;

use crate::auth::Principal;
use heimdex_domain::events::{EventData, JobEvent, Requested, Retried};
use heimdex_domain::ids;
use heimdex_domain::jobs::JobSpec;

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
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    admission: Arc<Admission>,
}

impl Submitter {
    pub fn new(
        client: async_nats::Client,
        js: async_nats::jetstream::Context,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            client,
            js,
            admission,
        }
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
        let job_key = ids::job_key(principal.org_id, spec.job_type(), &spec.params());
        let job_id = ids::job_id(&job_key);
        tracing::Span::current().record("job_id", tracing::field::display(job_id));

        // A disconnected client would buffer the publish until its timeout; answer at once.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(ApiError::nats_unavailable());
        }

        let event = JobEvent::new(
            principal.org_id,
            job_id,
            EventData::Requested(Requested {
                job_id,
                job_key: job_key.clone(),
                user_id: principal.user_id.clone(),
                spec,
            }),
        );
        let subject = event.subject();
        tracing::Span::current().record("messaging.destination.name", subject.as_str());
        let mut headers = HeaderMap::new();
        heimdex_telemetry::inject_context(&mut headers);
        let publish = PublishMessage::build()
            .payload(event.encode().into())
            .headers(headers)
            .message_id(&job_key)
            .expected_last_subject_sequence(0);

        let ack = match self.js.send_publish(subject, publish).await {
            Ok(future) => future.await,
            Err(err) => Err(err),
        };
        match ack {
            Ok(ack) => Ok(Submitted {
                job_id,
                created: !ack.duplicate,
            }),
            // The subject already holds this job's `requested` event: the job exists.
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Submitted {
                job_id,
                created: false,
            }),
            Err(err) => Err(refused(&err)),
        }
    }

    /// Appends the `retried` event of round `round` of a FAILED job. It is stored at most once:
    /// its `Nats-Msg-Id` is `<job_id>:retried:<round>` (every request retrying the same failure
    /// computes the same round) and it expects `last_retried_seq` (0 before the first retry) as
    /// the last sequence on the job's `retried` subject, which holds beyond the duplicate window.
    /// `Ok` means the round's `retried` event is stored, by this call or a concurrent one.
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
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(ApiError::nats_unavailable());
        }
        let event = JobEvent::new(
            principal.org_id,
            job_id,
            EventData::Retried(Retried {
                round,
                user_id: principal.user_id.clone(),
                spec,
            }),
        );
        let mut headers = HeaderMap::new();
        heimdex_telemetry::inject_context(&mut headers);
        let publish = PublishMessage::build()
            .payload(event.encode().into())
            .headers(headers)
            .message_id(&event.id)
            .expected_last_subject_sequence(last_retried_seq);
        let ack = match self.js.send_publish(event.subject(), publish).await {
            Ok(future) => future.await,
            Err(err) => Err(err),
        };
        match ack {
            // A duplicate ack: a concurrent request stored this round's event first.
            Ok(_) => Ok(()),
            // Another retry was stored since `last_retried_seq` was read: this round's, by a
            // concurrent request retrying the same failure.
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(()),
            Err(err) => Err(refused(&err)),
        }
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

/// Why a publish that was not stored failed, for the client: NATS unavailable (503) or the
/// event store full (507). Nothing was accepted either way.
fn refused(err: &PublishError) -> ApiError {
    match err.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => {
            tracing::warn!(%err, "publish not acknowledged");
            ApiError::nats_unavailable()
        }
        PublishErrorKind::StreamNotFound => {
            tracing::error!(%err, "job stream missing");
            ApiError::nats_unavailable()
        }
        PublishErrorKind::Other if is_storage_full(&err.to_string()) => {
            tracing::error!(%err, "event store full");
            ApiError::StorageFull
        }
        PublishErrorKind::WrongLastSequence
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::Other => {
            tracing::error!(%err, "publish refused");
            ApiError::nats_unavailable()
        }
    }
}

/// JetStream reports a full store as "insufficient resources" (10023) or as a stream over its
/// byte/message limits with `discard: new` ("maximum bytes/messages exceeded").
fn is_storage_full(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("insufficient resources")
        || message.contains("maximum bytes exceeded")
        || message.contains("maximum messages exceeded")
        || message.contains("no space left")
}
