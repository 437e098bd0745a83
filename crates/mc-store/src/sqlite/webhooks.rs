//! Webhook subscriptions and their delivery queue on SQLite.

use mc_domain::ids::{OrganizationId, WebhookId};
use mc_domain::page::{Page, PageRequest};
use mc_domain::time::Timestamp;
use mc_domain::webhook::{Delivery, DeliveryState, Webhook, WebhookUrl};
use sqlx::{Row as _, Sqlite, Transaction};

use super::rows::{
    ACTIVITY_COLUMNS, DELIVERY_COLUMNS, WEBHOOK_COLUMNS, activity_from_row, delivery_from_row,
    webhook_from_row,
};
use super::{Listing, SqliteStore, count, map_err, ms};
use crate::{DeliveryAttempt, DueDelivery, StoreResult};

/// Queues one delivery per enabled subscription that wants it, for every event with an
/// id in `first..=last` (the events a transaction just recorded).
pub(super) async fn queue_deliveries(
    tx: &mut Transaction<'static, Sqlite>,
    first: i64,
    last: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries
           (webhook_id, event_id, event_type, state, attempts, next_attempt_at, created_at)
         SELECT w.id, e.id, e.event_type, 'pending', 0, e.created_at, e.created_at
           FROM activity_events e
           JOIN webhooks w
             ON w.enabled = 1
            AND (w.event_types = '' OR instr(w.event_types, ',' || e.event_type || ',') > 0)
          WHERE e.id BETWEEN ? AND ?
         ON CONFLICT (webhook_id, event_id) DO NOTHING",
    )
    .bind(first)
    .bind(last)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

impl SqliteStore {
    pub(super) async fn insert_webhook_row(&self, w: &Webhook) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(w.id.to_string())
        .bind(w.organization_id.to_string())
        .bind(w.url.as_str())
        .bind(w.event_types.stored())
        .bind(w.secret.expose())
        .bind(w.enabled)
        .bind(ms(w.created_at))
        .bind(ms(w.updated_at))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn webhook_row(&self, id: WebhookId) -> StoreResult<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?");
        self.fetch_by_id(&sql, id.to_string(), webhook_from_row)
            .await
    }

    pub(super) async fn webhook_page(
        &self,
        org: OrganizationId,
        page: PageRequest,
    ) -> StoreResult<Page<Webhook>> {
        let listing = Listing {
            table: "webhooks",
            columns: WEBHOOK_COLUMNS,
            filters: vec![("organization_id", Some(org.to_string()))],
            order_by: "created_at DESC, id DESC",
        };
        self.fetch_page(listing, page, webhook_from_row).await
    }

    pub(super) async fn update_webhook_row(&self, w: &Webhook) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhooks SET url = ?, event_types = ?, secret = ?, enabled = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(w.url.as_str())
        .bind(w.event_types.stored())
        .bind(w.secret.expose())
        .bind(w.enabled)
        .bind(ms(w.updated_at))
        .bind(w.id.to_string())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn delete_webhook_row(&self, id: WebhookId) -> StoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM webhooks WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writer)
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
            filters: vec![("webhook_id", Some(webhook_id.to_string()))],
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
        let mut tx = self.begin().await?;
        let claimed = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET claimed_until = ?1
              WHERE id IN (SELECT id FROM webhook_deliveries
                            WHERE state = 'pending' AND next_attempt_at <= ?2
                              AND (claimed_until IS NULL OR claimed_until <= ?2)
                            ORDER BY next_attempt_at, id LIMIT ?3)
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(ms(lease_until))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut due = Vec::with_capacity(claimed.len());
        for row in &claimed {
            let delivery = delivery_from_row(row)?;
            let webhook = sqlx::query("SELECT url, secret FROM webhooks WHERE id = ?")
                .bind(delivery.webhook_id.to_string())
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
            let event = sqlx::query(&format!(
                "SELECT {ACTIVITY_COLUMNS} FROM activity_events WHERE id = ?"
            ))
            .bind(delivery.event_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            due.push(DueDelivery {
                url: WebhookUrl::from_stored(webhook.try_get("url").map_err(map_err)?),
                secret: mc_domain::token::Secret::new(
                    webhook.try_get::<String, _>("secret").map_err(map_err)?,
                ),
                event: activity_from_row(&event)?,
                delivery,
            });
        }
        tx.commit().await.map_err(map_err)?;
        due.sort_by_key(|d| (d.delivery.next_attempt_at, d.delivery.id));
        Ok(due)
    }

    pub(super) async fn record_attempt(&self, attempt: &DeliveryAttempt) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_deliveries
                SET state = ?, attempts = attempts + 1, last_status_code = ?, last_error = ?,
                    next_attempt_at = ?, last_attempt_at = ?, claimed_until = NULL
              WHERE id = ?",
        )
        .bind(attempt.state.as_str())
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(attempt.next_attempt_at.map(ms))
        .bind(ms(attempt.attempted_at))
        .bind(attempt.delivery_id)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    pub(super) async fn earliest_due(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(max(next_attempt_at, coalesce(claimed_until, 0)))
               FROM webhook_deliveries WHERE state = ?",
        )
        .bind(DeliveryState::Pending.as_str())
        .fetch_one(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(next.map(Timestamp::from_millis))
    }

    pub(super) async fn count_pending(&self) -> StoreResult<u64> {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
                .fetch_one(&self.reader)
                .await
                .map_err(map_err)?;
        Ok(count(pending))
    }
}
