//! The provisioning job queue on SQLite.

use mc_domain::activity::NewActivity;
use mc_domain::ids::{AgentId, BoardId};
use mc_domain::time::Timestamp;
use sqlx::Row as _;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;

use super::rows::parse_id;
use super::{SqliteStore, map_err, ms};
use crate::job_events::{self, StoredSubject};
use crate::{
    NewProvisionJob, ProvisionAction, ProvisionAttempt, ProvisionJob, ProvisionJobState,
    StoreError, StoreResult,
};

const JOB_COLUMNS: &str = "id, agent_id, gateway_id, action, gateway_agent_id, session_key, \
     state, attempts, last_error, next_attempt_at, first_attempt_at, created_at, updated_at";

fn job_from_row(row: &SqliteRow) -> StoreResult<ProvisionJob> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: "provision_jobs",
        reason,
    };
    let text = |name: &str| -> StoreResult<String> { row.try_get(name).map_err(map_err) };
    let action = text("action")?;
    let state = text("state")?;
    Ok(ProvisionJob {
        id: row.try_get("id").map_err(map_err)?,
        agent_id: parse_id(&text("agent_id")?, "provision_jobs")?,
        gateway_id: parse_id(&text("gateway_id")?, "provision_jobs")?,
        action: ProvisionAction::from_stored(&action)
            .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
        gateway_agent_id: row.try_get("gateway_agent_id").map_err(map_err)?,
        session_key: row.try_get("session_key").map_err(map_err)?,
        state: ProvisionJobState::from_stored(&state)
            .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts").map_err(map_err)?)
            .unwrap_or(u32::MAX),
        last_error: row.try_get("last_error").map_err(map_err)?,
        next_attempt_at: Timestamp::from_millis(row.try_get("next_attempt_at").map_err(map_err)?),
        first_attempt_at: row
            .try_get::<Option<i64>, _>("first_attempt_at")
            .map_err(map_err)?
            .map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(map_err)?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(map_err)?),
    })
}

/// Queues a job in the caller's transaction; returns its id and its
/// `agent.provision.queued` event, for the caller to record in that transaction.
pub(super) async fn queue_job(
    conn: &mut SqliteConnection,
    job: &NewProvisionJob,
) -> StoreResult<(i64, NewActivity)> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO provision_jobs
           (agent_id, gateway_id, action, gateway_agent_id, session_key, state, attempts,
            next_attempt_at, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)
         RETURNING id",
    )
    .bind(job.agent_id.to_string())
    .bind(job.gateway_id.to_string())
    .bind(job.action.as_str())
    .bind(&job.gateway_agent_id)
    .bind(&job.session_key)
    .bind(ms(job.requested_at))
    .bind(ms(job.requested_at))
    .bind(ms(job.requested_at))
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    let subject = stored_subject(conn, job.agent_id).await?;
    Ok((id, job_events::queued(job, id, &subject)))
}

/// The agent's name and board as stored now, for a job's events.
async fn stored_subject(
    conn: &mut SqliteConnection,
    agent_id: AgentId,
) -> StoreResult<StoredSubject> {
    let row = sqlx::query("SELECT name, board_id FROM agents WHERE id = ?")
        .bind(agent_id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let name: String = row.try_get("name").map_err(map_err)?;
    let board: Option<String> = row.try_get("board_id").map_err(map_err)?;
    let board = board
        .map(|b| parse_id::<BoardId>(&b, "agents"))
        .transpose()?;
    Ok(Some((name, board)))
}

impl SqliteStore {
    pub(super) async fn insert_provision_job(&self, job: &NewProvisionJob) -> StoreResult<i64> {
        let mut rtx = self.begin_recording().await?;
        let (id, queued) = queue_job(&mut rtx.tx, job).await?;
        rtx.record([&queued]).await?;
        rtx.commit().await?;
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
        let rows = sqlx::query(&format!(
            "UPDATE provision_jobs SET claimed_until = ?1
              WHERE id IN (SELECT j.id FROM provision_jobs j
                            WHERE j.state = 'pending' AND j.next_attempt_at <= ?2
                              AND (j.claimed_until IS NULL OR j.claimed_until <= ?2)
                              AND NOT EXISTS (SELECT 1 FROM provision_jobs e
                                               WHERE e.agent_id = j.agent_id
                                                 AND e.state = 'pending' AND e.id < j.id)
                            ORDER BY j.first_attempt_at IS NULL, j.next_attempt_at, j.id
                            LIMIT ?3)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(ms(lease_until))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
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
        let mut rtx = self.begin_recording().await?;
        let updated = sqlx::query(
            "UPDATE provision_jobs
                SET state = ?, attempts = attempts + 1, last_error = ?,
                    next_attempt_at = coalesce(?, next_attempt_at), claimed_until = NULL,
                    updated_at = ?
              WHERE id = ?
             RETURNING action, attempts",
        )
        .bind(attempt.state.as_str())
        .bind(&attempt.error)
        .bind(attempt.next_attempt_at.map(ms))
        .bind(ms(attempt.attempted_at))
        .bind(attempt.job_id)
        .fetch_optional(&mut *rtx.tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE agents SET last_provision_error = ? WHERE id = ?")
            .bind(&attempt.error)
            .bind(attempt.agent_id.to_string())
            .execute(&mut *rtx.tx)
            .await
            .map_err(map_err)?;
        if let Some(placement) = &attempt.placement {
            sqlx::query(
                "UPDATE agents SET gateway_agent_id = ?, workspace_path = ?,
                        openclaw_session_id = ?
                  WHERE id = ?",
            )
            .bind(&placement.gateway_agent_id)
            .bind(&placement.workspace_path)
            .bind(&placement.session_key)
            .bind(attempt.agent_id.to_string())
            .execute(&mut *rtx.tx)
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
            let subject = stored_subject(&mut rtx.tx, attempt.agent_id).await?;
            let event = job_events::attempted(attempt, action, attempts, &subject);
            rtx.record([&event]).await?;
        }
        rtx.commit().await?;
        Ok(())
    }

    pub(super) async fn earliest_provision_due(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(max(next_attempt_at, coalesce(claimed_until, 0)))
               FROM provision_jobs WHERE state = 'pending'",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(next.map(Timestamp::from_millis))
    }

    pub(super) async fn provision_jobs_of(
        &self,
        agent_id: AgentId,
    ) -> StoreResult<Vec<ProvisionJob>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM provision_jobs WHERE agent_id = ? ORDER BY id"
        ))
        .bind(agent_id.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(job_from_row).collect()
    }

    pub(super) async fn pending_jobs(&self) -> StoreResult<Vec<ProvisionJob>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM provision_jobs WHERE state = 'pending' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(job_from_row).collect()
    }

    pub(super) async fn write_provision_error(
        &self,
        agent_id: AgentId,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE agents SET last_provision_error = ? WHERE id = ?")
            .bind(error)
            .bind(agent_id.to_string())
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn mark_started(&self, id: i64, at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE provision_jobs SET first_attempt_at = coalesce(first_attempt_at, ?)
              WHERE id = ?",
        )
        .bind(ms(at))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
