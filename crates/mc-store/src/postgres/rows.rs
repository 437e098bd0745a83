//! Row ↔ domain conversion for PostgreSQL. Rows never leave this module: every read is
//! turned into a domain value here, and a row the domain rejects is a `Corrupt` error.

use chrono::{DateTime, Utc};
use mc_domain::activity::ActivityEvent;
use mc_domain::agent::{Agent, AgentName, AgentStatus, HeartbeatConfig, ReportedHealth};
use mc_domain::board::{Board, BoardRules, Slug};
use mc_domain::enrollment::EnrollmentToken;
use mc_domain::gateway::{Gateway, GatewayUrl};
use mc_domain::liveness::Checkin;
use mc_domain::time::Timestamp;
use mc_domain::token::Secret;
use mc_domain::webhook::{Delivery, DeliveryState, EventSelection, Webhook, WebhookUrl};
use sqlx::Row as _;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::map_err;
use crate::{StoreError, StoreResult};

pub(super) const GATEWAY_COLUMNS: &str = "id, organization_id, name, url, token, workspace_root, \
    allow_insecure_tls, disable_device_pairing, created_at, updated_at";

pub(super) const BOARD_COLUMNS: &str = "id, organization_id, name, slug, description, gateway_id, \
    require_approval_for_done, require_review_before_done, comment_required_for_review, \
    block_status_changes_with_pending_approval, only_lead_can_change_status, max_agents, \
    created_at, updated_at";

/// An agent's settings joined with its liveness row (see [`AGENT_FROM`]). JSON columns
/// are read as text so the domain parses them, as on SQLite.
pub(super) const AGENT_COLUMNS: &str = "a.id, a.board_id, a.gateway_id, a.name, \
    a.is_board_lead, a.is_mc_agent, a.gateway_agent_id, a.workspace_path, a.openclaw_session_id, \
    a.heartbeat_interval_seconds, a.heartbeat_missing_tolerance, \
    a.identity_profile::text AS identity_profile, a.identity_template, a.soul_template, \
    a.last_provision_error, a.enrolled_via, a.created_at, \
    GREATEST(a.updated_at, l.updated_at) AS updated_at, l.last_seen_at, l.reported_health, \
    l.published_status, l.own_token_used";

/// The check-in fields of an agent's liveness row (see [`checkin_from_row`]).
pub(super) const CHECKIN_COLUMNS: &str =
    "l.checkin_deadline_at, l.checkin_wakes, l.checkin_gave_up";

/// The join that [`AGENT_COLUMNS`] reads from.
pub(super) const AGENT_FROM: &str = "agents a JOIN agent_liveness l ON l.agent_id = a.id";

/// The order agents are listed in: newest first, ties broken by id (the order of the
/// listing indexes, so a page is read from one of them without a sort).
pub(super) const AGENT_ORDER: &str = "a.created_at DESC, a.id DESC";

pub(super) const ACTIVITY_COLUMNS: &str =
    "id, event_type, message, agent_id, board_id, data::text AS data, created_at";

pub(super) const ENROLLMENT_COLUMNS: &str =
    "id, board_id, expires_at, max_uses, uses, revoked_at, created_at";

fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

/// A domain timestamp as PostgreSQL's `timestamptz` (exact: both hold milliseconds).
pub(super) fn to_timestamptz(ts: Timestamp) -> DateTime<Utc> {
    ts.to_datetime()
}

fn from_timestamptz(value: DateTime<Utc>) -> Timestamp {
    Timestamp::from_millis(value.timestamp_millis())
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(map_err)
}

pub(super) fn id<T: From<Uuid>>(row: &PgRow, column: &str) -> StoreResult<T> {
    get::<Uuid>(row, column).map(T::from)
}

fn opt_id<T: From<Uuid>>(row: &PgRow, column: &str) -> StoreResult<Option<T>> {
    get::<Option<Uuid>>(row, column).map(|v| v.map(T::from))
}

fn ts(row: &PgRow, column: &str) -> StoreResult<Timestamp> {
    get::<DateTime<Utc>>(row, column).map(from_timestamptz)
}

fn opt_ts(row: &PgRow, column: &str) -> StoreResult<Option<Timestamp>> {
    get::<Option<DateTime<Utc>>>(row, column).map(|v| v.map(from_timestamptz))
}

fn u32_col(row: &PgRow, column: &str, table: &'static str) -> StoreResult<u32> {
    u32::try_from(get::<i64>(row, column)?).map_err(|e| corrupt(table, e))
}

fn json_col<T: serde::de::DeserializeOwned>(
    row: &PgRow,
    column: &str,
    table: &'static str,
) -> StoreResult<Option<T>> {
    get::<Option<String>>(row, column)?
        .map(|text| serde_json::from_str(&text).map_err(|e| corrupt(table, e)))
        .transpose()
}

pub(super) fn gateway_from_row(row: &PgRow) -> StoreResult<Gateway> {
    Ok(Gateway {
        id: id(row, "id")?,
        organization_id: id(row, "organization_id")?,
        name: get(row, "name")?,
        url: GatewayUrl::from_stored(get(row, "url")?),
        token: get::<Option<String>>(row, "token")?.map(Secret::new),
        workspace_root: get(row, "workspace_root")?,
        allow_insecure_tls: get(row, "allow_insecure_tls")?,
        disable_device_pairing: get(row, "disable_device_pairing")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn board_from_row(row: &PgRow) -> StoreResult<Board> {
    const T: &str = "boards";
    Ok(Board {
        id: id(row, "id")?,
        organization_id: id(row, "organization_id")?,
        name: get(row, "name")?,
        slug: Slug::from_stored(get(row, "slug")?),
        description: get(row, "description")?,
        gateway_id: id(row, "gateway_id")?,
        rules: BoardRules {
            require_approval_for_done: get(row, "require_approval_for_done")?,
            require_review_before_done: get(row, "require_review_before_done")?,
            comment_required_for_review: get(row, "comment_required_for_review")?,
            block_status_changes_with_pending_approval: get(
                row,
                "block_status_changes_with_pending_approval",
            )?,
            only_lead_can_change_status: get(row, "only_lead_can_change_status")?,
            max_agents: u32_col(row, "max_agents", T)?,
        },
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn agent_from_row(row: &PgRow) -> StoreResult<Agent> {
    const T: &str = "agents";
    let reported = get::<Option<String>>(row, "reported_health")?
        .map(|text| ReportedHealth::from_stored(&text).ok_or_else(|| corrupt(T, text)))
        .transpose()?;
    let published: String = get(row, "published_status")?;
    Ok(Agent {
        id: id(row, "id")?,
        board_id: opt_id(row, "board_id")?,
        gateway_id: id(row, "gateway_id")?,
        name: AgentName::from_stored(get(row, "name")?),
        is_board_lead: get(row, "is_board_lead")?,
        is_mc_agent: get(row, "is_mc_agent")?,
        gateway_agent_id: get(row, "gateway_agent_id")?,
        workspace_path: get(row, "workspace_path")?,
        openclaw_session_id: get(row, "openclaw_session_id")?,
        heartbeat_config: HeartbeatConfig {
            interval_seconds: u32_col(row, "heartbeat_interval_seconds", T)?,
            missing_tolerance: u32_col(row, "heartbeat_missing_tolerance", T)?,
        },
        identity_profile: json_col(row, "identity_profile", T)?,
        identity_template: get(row, "identity_template")?,
        soul_template: get(row, "soul_template")?,
        last_provision_error: get(row, "last_provision_error")?,
        last_seen_at: opt_ts(row, "last_seen_at")?,
        reported_health: reported,
        published_status: AgentStatus::from_stored(&published)
            .ok_or_else(|| corrupt(T, published))?,
        enrolled_via: opt_id(row, "enrolled_via")?,
        own_token_used: get(row, "own_token_used")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn enrollment_from_row(row: &PgRow) -> StoreResult<EnrollmentToken> {
    const T: &str = "enrollment_tokens";
    Ok(EnrollmentToken {
        id: id(row, "id")?,
        board_id: id(row, "board_id")?,
        expires_at: ts(row, "expires_at")?,
        max_uses: get::<Option<i64>>(row, "max_uses")?
            .map(|n| u32::try_from(n).map_err(|e| corrupt(T, e)))
            .transpose()?,
        uses: u32_col(row, "uses", T)?,
        revoked_at: opt_ts(row, "revoked_at")?,
        created_at: ts(row, "created_at")?,
    })
}

pub(super) fn activity_from_row(row: &PgRow) -> StoreResult<ActivityEvent> {
    const T: &str = "activity_events";
    Ok(ActivityEvent {
        id: get(row, "id")?,
        event_type: get(row, "event_type")?,
        message: get(row, "message")?,
        agent_id: opt_id(row, "agent_id")?,
        board_id: opt_id(row, "board_id")?,
        data: json_col(row, "data", T)?,
        created_at: ts(row, "created_at")?,
    })
}

pub(super) const WEBHOOK_COLUMNS: &str =
    "id, organization_id, url, event_types, secret, enabled, created_at, updated_at";

pub(super) const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, state, attempts, \
    last_status_code, last_error, next_attempt_at, created_at, last_attempt_at";

pub(super) fn webhook_from_row(row: &PgRow) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: id(row, "id")?,
        organization_id: id(row, "organization_id")?,
        url: WebhookUrl::from_stored(get(row, "url")?),
        event_types: EventSelection::from_stored(&get::<String>(row, "event_types")?),
        secret: Secret::new(get::<String>(row, "secret")?),
        enabled: get(row, "enabled")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn delivery_from_row(row: &PgRow) -> StoreResult<Delivery> {
    const T: &str = "webhook_deliveries";
    let state: String = get(row, "state")?;
    Ok(Delivery {
        id: get(row, "id")?,
        webhook_id: id(row, "webhook_id")?,
        event_id: get(row, "event_id")?,
        event_type: get(row, "event_type")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| corrupt(T, format!("unknown state {state:?}")))?,
        attempts: u32_col(row, "attempts", T)?,
        last_status_code: get::<Option<i64>>(row, "last_status_code")?
            .map(|code| u16::try_from(code).map_err(|e| corrupt(T, e)))
            .transpose()?,
        last_error: get(row, "last_error")?,
        next_attempt_at: opt_ts(row, "next_attempt_at")?,
        created_at: ts(row, "created_at")?,
        last_attempt_at: opt_ts(row, "last_attempt_at")?,
    })
}

/// The check-in read with [`CHECKIN_COLUMNS`]: given up on, awaited until a deadline, or
/// none.
pub(super) fn checkin_from_row(row: &PgRow) -> StoreResult<Option<Checkin>> {
    if get::<bool>(row, "checkin_gave_up")? {
        return Ok(Some(Checkin::GaveUp));
    }
    let Some(deadline) = opt_ts(row, "checkin_deadline_at")? else {
        return Ok(None);
    };
    Ok(Some(Checkin::Awaiting {
        deadline,
        wakes: u32_col(row, "checkin_wakes", "agent_liveness")?,
    }))
}
