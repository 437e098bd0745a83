//! Row ↔ domain conversion for SQLite. Rows never leave this module: every read is
//! turned into a domain value here, and a row the domain rejects is a `Corrupt` error.

use std::str::FromStr;

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
use sqlx::sqlite::SqliteRow;

use super::map_err;
use crate::{StoreError, StoreResult};

pub(super) const GATEWAY_COLUMNS: &str = "id, organization_id, name, url, token, workspace_root, \
    allow_insecure_tls, disable_device_pairing, created_at, updated_at";

pub(super) const BOARD_COLUMNS: &str = "id, organization_id, name, slug, description, gateway_id, \
    require_approval_for_done, require_review_before_done, comment_required_for_review, \
    block_status_changes_with_pending_approval, only_lead_can_change_status, max_agents, \
    created_at, updated_at";

/// The columns an agent is inserted with (its liveness row is separate).
pub(super) const AGENT_INSERT_COLUMNS: &str = "id, board_id, gateway_id, name, name_key, \
    is_board_lead, is_mc_agent, gateway_agent_id, workspace_path, openclaw_session_id, \
    heartbeat_interval_seconds, heartbeat_missing_tolerance, identity_profile, identity_template, \
    soul_template, last_provision_error, enrolled_via, created_at, updated_at, token_digest";

/// An agent's settings joined with its liveness row (see [`AGENT_FROM`]).
pub(super) const AGENT_COLUMNS: &str = "a.id, a.board_id, a.gateway_id, a.name, \
    a.is_board_lead, a.is_mc_agent, a.gateway_agent_id, a.workspace_path, a.openclaw_session_id, \
    a.heartbeat_interval_seconds, a.heartbeat_missing_tolerance, a.identity_profile, \
    a.identity_template, a.soul_template, a.last_provision_error, a.enrolled_via, a.created_at, \
    max(a.updated_at, l.updated_at) AS updated_at, l.last_seen_at, l.reported_health, \
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
    "id, event_type, message, agent_id, board_id, data, created_at";

pub(super) const ENROLLMENT_COLUMNS: &str =
    "id, board_id, expires_at, max_uses, uses, revoked_at, created_at";

fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

pub(super) fn parse_id<T: FromStr>(text: &str, table: &'static str) -> StoreResult<T>
where
    T::Err: ToString,
{
    T::from_str(text).map_err(|e| corrupt(table, e))
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(map_err)
}

pub(super) fn id<T: FromStr>(row: &SqliteRow, column: &str, table: &'static str) -> StoreResult<T>
where
    T::Err: ToString,
{
    parse_id(&get::<String>(row, column)?, table)
}

fn opt_id<T: FromStr>(row: &SqliteRow, column: &str, table: &'static str) -> StoreResult<Option<T>>
where
    T::Err: ToString,
{
    get::<Option<String>>(row, column)?
        .map(|text| parse_id(&text, table))
        .transpose()
}

fn ts(row: &SqliteRow, column: &str) -> StoreResult<Timestamp> {
    get::<i64>(row, column).map(Timestamp::from_millis)
}

fn opt_ts(row: &SqliteRow, column: &str) -> StoreResult<Option<Timestamp>> {
    get::<Option<i64>>(row, column).map(|v| v.map(Timestamp::from_millis))
}

fn u32_col(row: &SqliteRow, column: &str, table: &'static str) -> StoreResult<u32> {
    u32::try_from(get::<i64>(row, column)?).map_err(|e| corrupt(table, e))
}

pub(super) fn gateway_from_row(row: &SqliteRow) -> StoreResult<Gateway> {
    const T: &str = "gateways";
    Ok(Gateway {
        id: id(row, "id", T)?,
        organization_id: id(row, "organization_id", T)?,
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

pub(super) fn board_from_row(row: &SqliteRow) -> StoreResult<Board> {
    const T: &str = "boards";
    Ok(Board {
        id: id(row, "id", T)?,
        organization_id: id(row, "organization_id", T)?,
        name: get(row, "name")?,
        slug: Slug::from_stored(get(row, "slug")?),
        description: get(row, "description")?,
        gateway_id: id(row, "gateway_id", T)?,
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

pub(super) fn profile_json(agent: &Agent) -> Option<String> {
    agent
        .identity_profile
        .as_ref()
        .map(|p| serde_json::to_string(p).unwrap_or_default())
}

pub(super) fn agent_from_row(row: &SqliteRow) -> StoreResult<Agent> {
    const T: &str = "agents";
    let profile = get::<Option<String>>(row, "identity_profile")?
        .map(|text| serde_json::from_str(&text).map_err(|e| corrupt(T, e)))
        .transpose()?;
    let reported = get::<Option<String>>(row, "reported_health")?
        .map(|text| ReportedHealth::from_stored(&text).ok_or_else(|| corrupt(T, text)))
        .transpose()?;
    let published: String = get(row, "published_status")?;
    Ok(Agent {
        id: id(row, "id", T)?,
        board_id: opt_id(row, "board_id", T)?,
        gateway_id: id(row, "gateway_id", T)?,
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
        identity_profile: profile,
        identity_template: get(row, "identity_template")?,
        soul_template: get(row, "soul_template")?,
        last_provision_error: get(row, "last_provision_error")?,
        last_seen_at: opt_ts(row, "last_seen_at")?,
        reported_health: reported,
        published_status: AgentStatus::from_stored(&published)
            .ok_or_else(|| corrupt(T, published))?,
        enrolled_via: opt_id(row, "enrolled_via", T)?,
        own_token_used: get(row, "own_token_used")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn enrollment_from_row(row: &SqliteRow) -> StoreResult<EnrollmentToken> {
    const T: &str = "enrollment_tokens";
    Ok(EnrollmentToken {
        id: id(row, "id", T)?,
        board_id: id(row, "board_id", T)?,
        expires_at: ts(row, "expires_at")?,
        max_uses: get::<Option<i64>>(row, "max_uses")?
            .map(|n| u32::try_from(n).map_err(|e| corrupt(T, e)))
            .transpose()?,
        uses: u32_col(row, "uses", T)?,
        revoked_at: opt_ts(row, "revoked_at")?,
        created_at: ts(row, "created_at")?,
    })
}

pub(super) fn activity_from_row(row: &SqliteRow) -> StoreResult<ActivityEvent> {
    const T: &str = "activity_events";
    Ok(ActivityEvent {
        id: get(row, "id")?,
        event_type: get(row, "event_type")?,
        message: get(row, "message")?,
        agent_id: opt_id(row, "agent_id", T)?,
        board_id: opt_id(row, "board_id", T)?,
        data: get::<Option<String>>(row, "data")?
            .map(|text| serde_json::from_str(&text).map_err(|e| corrupt(T, e)))
            .transpose()?,
        created_at: ts(row, "created_at")?,
    })
}

pub(super) const WEBHOOK_COLUMNS: &str =
    "id, organization_id, url, event_types, secret, enabled, created_at, updated_at";

pub(super) const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, state, attempts, \
    last_status_code, last_error, next_attempt_at, created_at, last_attempt_at";

pub(super) fn webhook_from_row(row: &SqliteRow) -> StoreResult<Webhook> {
    const T: &str = "webhooks";
    Ok(Webhook {
        id: id(row, "id", T)?,
        organization_id: id(row, "organization_id", T)?,
        url: WebhookUrl::from_stored(get(row, "url")?),
        event_types: EventSelection::from_stored(&get::<String>(row, "event_types")?),
        secret: Secret::new(get::<String>(row, "secret")?),
        enabled: get(row, "enabled")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn delivery_from_row(row: &SqliteRow) -> StoreResult<Delivery> {
    const T: &str = "webhook_deliveries";
    let state: String = get(row, "state")?;
    Ok(Delivery {
        id: get(row, "id")?,
        webhook_id: id(row, "webhook_id", T)?,
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
pub(super) fn checkin_from_row(row: &SqliteRow) -> StoreResult<Option<Checkin>> {
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
