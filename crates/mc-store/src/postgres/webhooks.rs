//! Webhook subscriptions and their delivery queue on PostgreSQL. Claims use
//! `FOR UPDATE SKIP LOCKED`, so replicas sharing the database never attempt the same
//! delivery at once.

use mc_domain::ids::{OrganizationId, WebhookId};
use mc_domain::page::{Page, PageRequest};
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_domain::webhook::{Delivery, Webhook, WebhookUrl};
use sqlx::{Postgres, Row as _, Transaction};

use super::rows::{
    ACTIVITY_COLUMNS, DELIVERY_COLUMNS, WEBHOOK_COLUMNS, activity_from_row, delivery_from_row,
    to_timestamptz as tz, webhook_from_row,
};
use super::{Listing, PostgresStore, count, map_err};
use crate::{DeliveryAttempt, DueDelivery, StoreResult};

/// Queues one delivery per enabled subscription that wants it, for every event with an
/// id in `first..=last` (the events the transaction just recorded).
pub(super) async fn queue_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    first: i64,
    last: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries
           (webhook_id, event_id, event_type, state, attempts, next_attempt_at, created_at)
         SELECT w.id, e.id, e.event_type, 'pending', 0, e.created_at, e.created_at
           FROM activity_events e
           JOIN webhooks w
             ON w.enabled
            AND (w.event_types = '' OR strpos(w.event_types, ',' || e.event_type || ',') > 0)
          WHERE e.id BETWEEN $1 AND $2
         ON CONFLICT ON CONSTRAINT webhook_deliveries_once DO NOTHING",
    )
    .bind(first)
    .bind(last)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

impl PostgresStore {
    pub(super) async fn insert_webhook_row(&self, w: &Webhook) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(w.id.as_uuid())
        .bind(w.organization_id.as_uuid())
        .bind(w.url.as_str())
        .bind(w.event_types.stored())
        .bind(w.secret.expose())
        .bind(w.enabled)
        .bind(tz(w.created_at))
        .bind(tz(w.updated_at))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn webhook_row(&self, id: WebhookId) -> StoreResult<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
        self.fetch_by_id(&sql, id.as_uuid(), webhook_from_row).await
    }

    pub(super) async fn webhook_page(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Webhook>> {
        let listing = Listing {
            table: "webhooks",
            columns: WEBHOOK_COLUMNS,
            filters: vec![("organization_id", Some(org.as_uuid()))],
            order_by: "created_at DESC, id DESC",
        };
        self.fetch_page(listing, page, webhook_from_row).await
    }

    pub(super) async fn update_webhook_row(&self, w: &Webhook) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhooks SET url = $1, event_types = $2, secret = $3, enabled = $4,
               updated_at = $5
             WHERE id = $6",
        )
        .bind(w.url.as_str())
        .bind(w.event_types.stored())
        .bind(w.secret.expose())
        .bind(w.enabled)
        .bind(tz(w.updated_at))
        .bind(w.id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn delete_webhook_row(&self, id: WebhookId) -> StoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(deleted > 0)
    }

    pub(super) async fn delivery_page(
        &self,
        webhook_id: WebhookId,
        page: PageRequest,
    ) -> StoreResult<Page<Delivery>> {
        let listing = Listing {
            table: "webhook_deliveries",
            columns: DELIVERY_COLUMNS,
            filters: vec![("webhook_id", Some(webhook_id.as_uuid()))],
            order_by: "id DESC",
        };
        self.fetch_page(listing, page, delivery_from_row).await
    }

    pub(super) async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT id FROM webhook_deliveries
                  WHERE state = 'pending' AND next_attempt_at <= $2
                    AND (claimed_until IS NULL OR claimed_until <= $2)
                  ORDER BY next_attempt_at, id
                  LIMIT $3
                  FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries d SET claimed_until = $1
               FROM due WHERE d.id = due.id
             RETURNING d.*",
        )
        .bind(tz(lease_until))
        .bind(tz(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let delivery = delivery_from_row(row)?;
            let webhook = sqlx::query("SELECT url, secret FROM webhooks WHERE id = $1")
                .bind(delivery.webhook_id.as_uuid())
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            let event = sqlx::query(&format!(
                "SELECT {ACTIVITY_COLUMNS} FROM activity_events WHERE id = $1"
            ))
            .bind(delivery.event_id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
            due.push(DueDelivery {
                url: WebhookUrl::from_stored(webhook.try_get("url").map_err(map_err)?),
                secret: Secret::new(webhook.try_get::<String, _>("secret").map_err(map_err)?),
                event: activity_from_row(&event)?,
                delivery,
            });
        }
        due.sort_by_key(|d| (d.delivery.next_attempt_at, d.delivery.id));
        Ok(due)
    }

    pub(super) async fn record_attempt(&self, attempt: &DeliveryAttempt) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_deliveries
                SET state = $1, attempts = attempts + 1, last_status_code = $2, last_error = $3,
                    next_attempt_at = $4, last_attempt_at = $5, claimed_until = NULL
              WHERE id = $6",
        )
        .bind(attempt.state.as_str())
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(attempt.next_attempt_at.map(tz))
        .bind(tz(attempt.attempted_at))
        .bind(attempt.delivery_id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn earliest_due(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT min(GREATEST(next_attempt_at, claimed_until))
               FROM webhook_deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(next.map(|t| Timestamp::from_millis(t.timestamp_millis())))
    }

    pub(super) async fn count_pending(&self) -> StoreResult<u64> {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(count(pending))
    }
}
