//! The provisioning job runner: claims due jobs, runs their plan against the gateway and
//! records the outcome. Transient failures are retried with capped exponential backoff and
//! jitter until the job's bound has passed; permanent ones end the job at once with the
//! error in `last_provision_error`. A create or update that woke the agent starts its
//! check-in deadline; a delete that ended (done or given up) removes the agent.
//!
//! Jobs run as a pipeline: whenever a job ends, the runner claims the next due one, up to
//! [`MAX_RUNNING`] at once and each gateway's own limit, so one slow job never holds back
//! the jobs claimed with it.

use std::sync::Arc;
use std::time::Duration;

use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_gateway::BackoffPolicy;
use mc_store::{
    AgentPlacement, ProvisionAction, ProvisionAttempt, ProvisionJob, ProvisionJobState, StoreError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::plan::{self, ProvisionError};
use super::slots::Turn;
use super::templates::FileContext;
use super::token::{self, TokenError};
use crate::liveness::LiveAgent;
use crate::metrics::JobOutcome;
use crate::services::agents::deleted_event;
use crate::state::SharedState;

/// Jobs running at once, across all gateways. Each gateway also has its own limit
/// ([`mc_gateway::GatewayGeneration::provisioning_concurrency`]).
const MAX_RUNNING: usize = 32;

/// How often the runner looks again for jobs that are due but wait behind a running job of
/// the same agent.
const BLOCKED_RETRY: Duration = Duration::from_millis(200);

/// The longest the runner sleeps without looking at the queue.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// How long the runner waits after the database failed before it tries again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How long a claimed job is held before another runner may take it over.
const LEASE: Duration = Duration::from_secs(300);

/// Starts the runner; it stops when `stop` turns true.
pub fn start(
    state: SharedState,
    backoff: BackoffPolicy,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let pause = match run_due(&state, backoff, &stop).await {
                Ok(pause) => pause,
                Err(error) => {
                    tracing::warn!(%error, "provisioning: the database failed; retrying");
                    STORE_RETRY
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = state.provisioner.queued.notified() => {}
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
        }
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Runs every job due now, each as soon as a slot is free; returns how long to wait for
/// the next one once nothing runs. Stops claiming once the server stops, and returns when
/// the running jobs have ended.
async fn run_due(
    state: &SharedState,
    backoff: BackoffPolicy,
    stop: &watch::Receiver<bool>,
) -> Result<Duration, StoreError> {
    let mut running = tokio::task::JoinSet::new();
    let outcome = loop {
        if *stop.borrow() || stop.has_changed().is_err() {
            break Ok(Duration::ZERO);
        }
        let free = MAX_RUNNING.saturating_sub(running.len());
        if free == 0 {
            running.join_next().await;
            continue;
        }
        let pause = match due_in(state).await {
            Err(error) => break Err(error),
            Ok(Some(pause)) => pause,
            Ok(None) => {
                let now = Timestamp::now();
                let claimed = state
                    .store
                    .claim_due_provision_jobs(
                        now,
                        now.plus_millis(millis(LEASE)),
                        u32::try_from(free).unwrap_or(u32::MAX),
                    )
                    .await;
                match claimed {
                    Err(error) => break Err(error),
                    // Due, but behind another job of the same agent or claimed elsewhere.
                    Ok(claimed) if claimed.is_empty() => BLOCKED_RETRY,
                    Ok(claimed) => {
                        for job in claimed {
                            running.spawn(run_and_settle(state.clone(), backoff, job));
                        }
                        continue;
                    }
                }
            }
        };
        if running.is_empty() {
            break Ok(pause);
        }
        tokio::select! {
            _ = running.join_next() => {}
            () = tokio::time::sleep(pause) => {}
            () = state.provisioner.queued.notified() => {}
        }
    };
    while running.join_next().await.is_some() {}
    outcome
}

/// How long until the next job is due; `None` when one is due now.
async fn due_in(state: &SharedState) -> Result<Option<Duration>, StoreError> {
    let now = Timestamp::now();
    Ok(match state.store.next_provision_job_due().await? {
        None => Some(MAX_IDLE),
        Some(due) if due > now => {
            let wait = u64::try_from(due.as_millis() - now.as_millis()).unwrap_or(0);
            Some(Duration::from_millis(wait).min(MAX_IDLE))
        }
        Some(_) => None,
    })
}

/// Runs one claimed job and records the outcome. A database failure while recording is
/// logged; the job stays claimed until its lease ends, then runs again.
async fn run_and_settle(state: SharedState, backoff: BackoffPolicy, job: ProvisionJob) {
    let (job, attempt, woken_at) = self::attempt(&state, backoff, job).await;
    if let Err(error) = settle(&state, &job, &attempt, woken_at).await {
        tracing::warn!(job = job.id, %error, "provisioning: recording the outcome failed; the job runs again when its lease ends");
    }
}

/// Records an attempt and what it means for the agent. When the job ended, the agent's
/// in-memory state changes first and is flushed, so that its check-in deadline is durable
/// before the job stops being pending (a crash in between re-runs the job).
async fn settle(
    state: &SharedState,
    job: &ProvisionJob,
    attempt: &ProvisionAttempt,
    woken_at: Option<Timestamp>,
) -> Result<(), StoreError> {
    let live = state.registry.get(job.agent_id);
    if attempt.state == ProvisionJobState::Pending {
        state.store.record_provision_attempt(attempt).await?;
        if let Some(live) = &live {
            reflect_in_registry(state, live, attempt);
        }
        return Ok(());
    }
    if let Some(live) = &live {
        let woken = woken_at.map(|at| {
            (
                at,
                super::after(
                    attempt.attempted_at,
                    state.provisioner.bounds.checkin_timeout,
                ),
            )
        });
        state.registry.job_finished(
            live,
            job.id,
            woken,
            attempt.error.as_deref(),
            attempt.attempted_at,
        );
        reflect_in_registry(state, live, attempt);
        if let Err(error) = state.engine.flush().await {
            tracing::warn!(%error, "provisioning: the check-in deadline is not yet durable");
        }
    }
    state.store.record_provision_attempt(attempt).await?;
    if job.action == ProvisionAction::Delete
        && let Some(live) = live
    {
        remove_deleted(state, &live, job, attempt).await?;
    }
    Ok(())
}

/// Removes an agent whose delete job ended: done, or given up (then the event says the
/// gateway may still have it).
async fn remove_deleted(
    state: &SharedState,
    live: &Arc<LiveAgent>,
    job: &ProvisionJob,
    attempt: &ProvisionAttempt,
) -> Result<(), StoreError> {
    let profile = live.profile();
    let reason = match (&attempt.state, &attempt.error) {
        (ProvisionJobState::Failed, Some(error)) => format!(
            " from Mission Control; it may remain on its gateway because removing it there \
             failed: {error}"
        ),
        _ => String::new(),
    };
    let mut event = deleted_event(&profile, &reason);
    event.data = Some(serde_json::json!({"provision_job": job.id}));
    state.store.delete_agent(live.id(), &event).await?;
    state.registry.remove(live.id());
    Ok(())
}

/// Runs one job and decides what happens next; also returns when the job woke the agent.
async fn attempt(
    state: &SharedState,
    backoff: BackoffPolicy,
    job: ProvisionJob,
) -> (ProvisionJob, ProvisionAttempt, Option<Timestamp>) {
    let started_at = Timestamp::now();
    let handed = state.provisioner.token_of(job.agent_id);
    let mut progress = Progress::default();
    let outcome = run(state, &job, &mut progress).await;
    let attempted_at = Timestamp::now();
    let mut woken_at = None;
    let mut record = ProvisionAttempt {
        job_id: job.id,
        agent_id: job.agent_id,
        attempted_at,
        state: ProvisionJobState::Done,
        error: None,
        next_attempt_at: None,
        placement: None,
    };
    match outcome {
        Ok(done) => {
            woken_at = done.woke.then_some(started_at);
            record.placement = done.placement;
            record.error = done.warning;
            tracing::info!(job = job.id, agent = %job.agent_id, action = job.action.as_str(), "provisioning done");
        }
        Err(error) if error.is_permanent() => {
            tracing::warn!(job = job.id, agent = %job.agent_id, %error, "provisioning failed for good");
            record.state = ProvisionJobState::Failed;
            record.error = Some(format!("{} failed: {error}", job.action.as_str()));
        }
        Err(error) => {
            let delay = backoff.delay(job.attempts + 1);
            let bound = state.provisioner.bounds.job_timeout;
            let next = attempted_at.plus_millis(millis(delay));
            // Counted from the first attempt, so that waiting in the queue behind other jobs
            // costs none of it; a job that never reached its gateway counts from its request.
            let since = progress.first_attempt_at.unwrap_or(job.created_at);
            if next > super::after(since, bound) {
                tracing::warn!(job = job.id, agent = %job.agent_id, %error, "provisioning gave up: its bound has passed");
                record.state = ProvisionJobState::Failed;
                record.error = Some(format!(
                    "{} gave up after {} attempts in {}: {error}",
                    job.action.as_str(),
                    job.attempts + 1,
                    super::checkin::seconds(bound),
                ));
            } else {
                tracing::info!(job = job.id, agent = %job.agent_id, %error, retry_in_ms = delay.as_millis(), "provisioning failed; will retry");
                record.state = ProvisionJobState::Pending;
                record.error = Some(format!("{} failed, retrying: {error}", job.action.as_str()));
                record.next_attempt_at = Some(next);
            }
        }
    }
    if record.state != ProvisionJobState::Pending {
        // A rotation may have handed a newer token meanwhile, for its own job: keep that.
        state
            .provisioner
            .forget_spent_token(job.agent_id, &[handed.as_ref(), progress.written.as_ref()]);
    }
    state.metrics.provision.count(match record.state {
        ProvisionJobState::Done => JobOutcome::Done,
        ProvisionJobState::Pending => JobOutcome::Retrying,
        ProvisionJobState::Failed => JobOutcome::Failed,
    });
    if job.action == ProvisionAction::Delete {
        // The agent row goes away with the job; there is no error to show on it.
        record.error = record
            .error
            .filter(|_| record.state != ProvisionJobState::Done);
    }
    (job, record, woken_at)
}

/// Copies what was recorded onto the agent's in-memory profile.
fn reflect_in_registry(state: &SharedState, live: &Arc<LiveAgent>, attempt: &ProvisionAttempt) {
    let mut agent = (*live.profile()).clone();
    agent.last_provision_error = attempt.error.clone();
    if let Some(placement) = &attempt.placement {
        agent.gateway_agent_id = Some(placement.gateway_agent_id.clone());
        agent.workspace_path = Some(placement.workspace_path.clone());
        agent.openclaw_session_id = Some(placement.session_key.clone());
    }
    state.registry.update_profile(live, agent);
}

/// What a successful job established: the agent's placement (create and update), a
/// warning to show in `last_provision_error` (e.g. the agent could not start) and whether
/// it woke the agent.
#[derive(Debug, Default)]
struct Done {
    placement: Option<AgentPlacement>,
    warning: Option<String>,
    woke: bool,
}

/// The agent a create or update job is for: from memory, else from the database. A job
/// can be claimed before the request that created its agent has put it in memory, or on a
/// replica that has not followed the creation yet; only an agent gone from the database is
/// deleted.
async fn job_agent(
    state: &SharedState,
    id: mc_domain::ids::AgentId,
) -> Result<Option<Arc<LiveAgent>>, ProvisionError> {
    if let Some(live) = state.registry.get(id) {
        return Ok(Some(live));
    }
    let stored = state
        .store
        .stored_agents(&[id])
        .await
        .map_err(|e| ProvisionError::Store(e.to_string()))?;
    Ok(stored.into_iter().next().map(|s| state.registry.upsert(s)))
}

/// What an attempt got to, whatever its outcome.
#[derive(Debug, Default)]
struct Progress {
    /// When the job first reached its gateway (in this attempt or an earlier one).
    first_attempt_at: Option<Timestamp>,
    /// The token the workspace files are written with.
    written: Option<Secret>,
}

/// The job's plan; `progress` records how far it got.
async fn run(
    state: &SharedState,
    job: &ProvisionJob,
    progress: &mut Progress,
) -> Result<Done, ProvisionError> {
    let store_failed = |e: StoreError| ProvisionError::Store(e.to_string());
    let gateway = state
        .store
        .gateway(job.gateway_id)
        .await
        .map_err(store_failed)?;
    let gateway = match gateway {
        Some(g) if g.url.is_managed() => g,
        _ if job.action == ProvisionAction::Delete => return Ok(Done::default()),
        Some(_) => {
            return Err(ProvisionError::GatewayUnavailable(
                "the gateway is unmanaged (no url); Mission Control does not contact it".into(),
            ));
        }
        None => {
            return Err(ProvisionError::GatewayUnavailable(
                "the gateway no longer exists".into(),
            ));
        }
    };
    super::connect_gateway(&state.gateways, &gateway);
    let handle = state
        .gateways
        .get(gateway.id)
        .ok_or_else(|| ProvisionError::GatewayUnavailable("the gateway is not connected".into()))?;
    // A job under way waits for its gateway before jobs not yet started: its bound runs.
    let turn = match job.first_attempt_at {
        Some(_) => Turn::Retry,
        None => Turn::First,
    };
    let slot = state
        .provisioner
        .gateway_slot(gateway.id, handle.generation(), turn)
        .await;
    progress.first_attempt_at = Some(match job.first_attempt_at {
        Some(at) => at,
        None => {
            let now = Timestamp::now();
            state
                .store
                .mark_provision_job_started(job.id, now)
                .await
                .map_err(store_failed)?;
            now
        }
    });
    if job.action == ProvisionAction::Delete {
        let (Some(id), Some(key)) = (&job.gateway_agent_id, &job.session_key) else {
            return Ok(Done::default());
        };
        plan::remove(&handle, id, key).await?;
        drop(slot);
        return Ok(Done::default());
    }
    let Some(live) = job_agent(state, job.agent_id).await? else {
        // Deleted meanwhile: its delete job cleans up.
        return Ok(Done::default());
    };
    let agent = (*live.profile()).clone();
    if agent.gateway_id != gateway.id {
        return Ok(Done::default());
    }
    let placement = plan::placement_of(&agent, &gateway);
    let board_name = match agent.board_id {
        Some(board) => state
            .store
            .board(board)
            .await
            .map_err(store_failed)?
            .map(|b| b.name)
            .unwrap_or_default(),
        None => String::new(),
    };
    let placed = plan::place(&handle, &agent, &placement).await?;
    let token = match state.provisioner.token_of(agent.id) {
        Some(token) => token,
        None => {
            let choice = token::keep_or_mint(
                state,
                &handle,
                placed.generation,
                &live,
                &placement.gateway_agent_id,
            )
            .await
            .map_err(|error| match error {
                TokenError::Read(error) => {
                    ProvisionError::Gateway(plan::vanished(&placement.gateway_agent_id)(error))
                }
                TokenError::Mint(error) => ProvisionError::Store(error.to_string()),
            })?;
            if choice.rotated {
                // The old token is dead: every retry must write this one.
                state.provisioner.hand_token(agent.id, choice.token.clone());
            }
            choice.token
        }
    };
    progress.written = Some(token.clone());
    let context = FileContext::new(
        &agent,
        &placement,
        board_name,
        &state.base_url,
        token.expose(),
        &gateway.workspace_root,
    );
    let warning = plan::finish(
        &handle,
        &state.provisioner.templates,
        &agent,
        &placement,
        placed,
        &context,
        job.action == ProvisionAction::Update,
        &format!("mc-provision-{}", job.id),
        slot,
    )
    .await?;
    Ok(Done {
        placement: Some(placement),
        warning,
        woke: true,
    })
}
