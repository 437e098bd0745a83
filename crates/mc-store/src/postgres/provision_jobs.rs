//! The provisioning job queue on PostgreSQL. Claims use `FOR UPDATE SKIP LOCKED`, so
//! replicas sharing the database never run the same job at once.

use chrono::{DateTime, Utc};
use mc_domain::activity::NewActivity;
use mc_domain::ids::{AgentId, BoardId};
use mc_domain::time::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use uuid::Uuid;

use super::rows::to_timestamptz as tz;
use super::{PostgresStore, insert_activities, map_err};
use crate::job_events::{self, StoredSubject};
use crate::{
    NewProvisionJob, ProvisionAction, ProvisionAttempt, ProvisionJob, ProvisionJobState,
    StoreError, StoreResult,
};

const JOB_COLUMNS: &str = "id, agent_id, gateway_id, action, gateway_agent_id, session_key, \
     state, attempts, last_error, next_attempt_at, first_attempt_at, created_at, updated_at";

fn job_from_row(row: &PgRow) -> StoreResult<ProvisionJob> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "provision_jobs",
        reason,
    };
    let text = |name: &str| -> StoreResult<String> { row.try_get(name).map_err(map_err) };
    let time = |name: &str| -> StoreResult<Timestamp> {
        let value: DateTime<Utc> = row.try_get(name).map_err(map_err)?;
        Ok(Timestamp::from_millis(value.timestamp_millis()))
    };
    let action = text("action")?;
    let state = text("state")?;
    Ok(ProvisionJob {
        id: row.try_get("id").map_err(map_err)?,
        agent_id: row.try_get::<Uuid, _>("agent_id").map_err(map_err)?.into(),
        gateway_id: row
            .try_get::<Uuid, _>("gateway_id")
            .map_err(map_err)?
            .into(),
        action: ProvisionAction::from_stored(&action)
            .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
        gateway_agent_id: row.try_get("gateway_agent_id").map_err(map_err)?,
        session_key: row.try_get("session_key").map_err(map_err)?,
        state: ProvisionJobState::from_stored(&state)
            .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts").map_err(map_err)?)
            .unwrap_or(u32::MAX),
        last_error: row.try_get("last_error").map_err(map_err)?,
        next_attempt_at: time("next_attempt_at")?,
        first_attempt_at: row
            .try_get::<Option<DateTime<Utc>>, _>("first_attempt_at")
            .map_err(map_err)?
            .map(|at| Timestamp::from_millis(at.timestamp_millis())),
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
    })
}

/// Queues a job in the caller's transaction; returns its id and its
/// `agent.provision.queued` event, for the caller to record in that transaction.
pub(super) async fn queue_job(
    conn: &mut PgConnection,
    job: &NewProvisionJob,
) -> StoreResult<(i64, NewActivity)> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO provision_jobs
           (agent_id, gateway_id, action, gateway_agent_id, session_key, state, attempts,
            next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)
         RETURNING id",
    )
    .bind(job.agent_id.as_uuid())
    .bind(job.gateway_id.as_uuid())
    .bind(job.action.as_str())
    .bind(&job.gateway_agent_id)
    .bind(&job.session_key)
    .bind(tz(job.requested_at))
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    let subject = stored_subject(conn, job.agent_id).await?;
    Ok((id, job_events::queued(job, id, &subject)))
}

/// The agent's name and board as stored now, for a job's events.
async fn stored_subject(conn: &mut PgConnection, agent_id: AgentId) -> StoreResult<StoredSubject> {
    let row = sqlx::query("SELECT name, board_id FROM agents WHERE id = $1")
        .bind(agent_id.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let name: String = row.try_get("name").map_err(map_err)?;
    let board: Option<Uuid> = row.try_get("board_id").map_err(map_err)?;
    Ok(Some((name, board.map(BoardId::from))))
}

impl PostgresStore {
    pub(super) async fn insert_provision_job(&self, job: &NewProvisionJob) -> StoreResult<i64> {
        let mut tx = self.begin().await?;
        let (id, queued) = queue_job(&mut tx, job).await?;
        insert_activities(&mut tx, &[queued], &self.recorded_here).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(id)
    }

    pub(super) async fn claim_provision_jobs(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<ProvisionJob>> {
        // A job waits for every earlier pending job of the same agent (create before update
        // before delete). Jobs under way (retries) go first: their bound is running.
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT j.id FROM provision_jobs j
                  WHERE j.state = 'pending' AND j.next_attempt_at <= $2
                    AND (j.claimed_until IS NULL OR j.claimed_until <= $2)
                    AND NOT EXISTS (SELECT 1 FROM provision_jobs e
                                     WHERE e.agent_id = j.agent_id
                                       AND e.state = 'pending' AND e.id < j.id)
                  ORDER BY j.first_attempt_at IS NULL, j.next_attempt_at, j.id
                  LIMIT $3
                  FOR UPDATE SKIP LOCKED)
             UPDATE provision_jobs p SET claimed_until = $1
               FROM due WHERE p.id = due.id
             RETURNING p.*",
        )
        .bind(tz(lease_until))
        .bind(tz(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut jobs = rows
            .iter()
            .map(job_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    pub(super) async fn record_provision_outcome(
        &self,
        attempt: &ProvisionAttempt,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE provision_jobs
                SET state = $1, attempts = attempts + 1, last_error = $2,
                    next_attempt_at = coalesce($3, next_attempt_at), claimed_until = NULL,
                    updated_at = $4
              WHERE id = $5
             RETURNING action, attempts",
        )
        .bind(attempt.state.as_str())
        .bind(&attempt.error)
        .bind(attempt.next_attempt_at.map(tz))
        .bind(tz(attempt.attempted_at))
        .bind(attempt.job_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE agents SET last_provision_error = $1 WHERE id = $2")
            .bind(&attempt.error)
            .bind(attempt.agent_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if let Some(placement) = &attempt.placement {
            sqlx::query(
                "UPDATE agents SET gateway_agent_id = $1, workspace_path = $2,
                        openclaw_session_id = $3
                  WHERE id = $4",
            )
            .bind(&placement.gateway_agent_id)
            .bind(&placement.workspace_path)
            .bind(&placement.session_key)
            .bind(attempt.agent_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        if let Some(row) = updated {
            let action: String = row.try_get("action").map_err(map_err)?;
            let action =
                ProvisionAction::from_stored(&action).ok_or_else(|| StoreError::Corrupt {
                    table: "provision_jobs",
                    reason: format!("unknown action {action:?}"),
                })?;
            let attempts = u32::try_from(row.try_get::<i64, _>("attempts").map_err(map_err)?)
                .unwrap_or(u32::MAX);
            let subject = stored_subject(&mut tx, attempt.agent_id).await?;
            let event = job_events::attempted(attempt, action, attempts, &subject);
            insert_activities(&mut tx, &[event], &self.recorded_here).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn earliest_provision_due(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(GREATEST(next_attempt_at, claimed_until))
               FROM provision_jobs WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(next.map(|t| Timestamp::from_millis(t.timestamp_millis())))
    }

    pub(super) async fn provision_jobs_of(
        &self,
        agent_id: AgentId,
    ) -> StoreResult<Vec<ProvisionJob>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM provision_jobs WHERE agent_id = $1 ORDER BY id"
        ))
        .bind(agent_id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(job_from_row).collect()
    }

    pub(super) async fn pending_jobs(&self) -> StoreResult<Vec<ProvisionJob>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM provision_jobs WHERE state = 'pending' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(job_from_row).collect()
    }

    pub(super) async fn write_provision_error(
        &self,
        agent_id: AgentId,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE agents SET last_provision_error = $1 WHERE id = $2")
            .bind(error)
            .bind(agent_id.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn mark_started(&self, id: i64, at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE provision_jobs SET first_attempt_at = coalesce(first_attempt_at, $1)
              WHERE id = $2",
        )
        .bind(tz(at))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
