//! `/api/v1/webhooks`: outbound webhook subscriptions and their delivery logs. The signing
//! secret is write-only.

use axum::Json;
use axum::extract::{Path, State};
use mc_domain::ValidationErrors;
use mc_domain::ids::WebhookId;
use mc_domain::time::Timestamp;
use mc_domain::webhook::{Delivery, EventSelection, Webhook, WebhookUrl, parse_secret};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::activity::EventTypeName;
use super::{OkResponse, PageOf};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, QueryParams, path_id};
use crate::state::SharedState;

/// A subscription as read (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookRead {
    id: Uuid,
    /// Where deliveries are posted.
    url: String,
    /// The event types delivered; empty means every event.
    #[schema(value_type = Vec<EventTypeName>)]
    event_types: Vec<&'static str>,
    /// Whether new events are delivered.
    enabled: bool,
    /// Always true: a secret is required (it is never returned).
    has_secret: bool,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

impl From<Webhook> for WebhookRead {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id.as_uuid(),
            url: w.url.as_str().to_owned(),
            event_types: w.event_types.names().collect(),
            enabled: w.enabled,
            has_secret: !w.secret.expose().is_empty(),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A subscription to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WebhookCreate {
    /// `http://` or `https://` URL of the receiver.
    url: String,
    /// Event types to deliver, e.g. `["agent.offline", "agent.healthy"]`; absent or empty
    /// means every event.
    #[serde(default)]
    #[schema(value_type = Vec<EventTypeName>)]
    event_types: Vec<String>,
    /// HMAC-SHA256 key for `X-MC-Signature` (at least 16 characters; write-only).
    secret: String,
    /// Default true.
    enabled: Option<bool>,
}

/// Changes to a subscription; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WebhookUpdate {
    url: Option<String>,
    #[schema(value_type = Option<Vec<EventTypeName>>)]
    event_types: Option<Vec<String>>,
    secret: Option<String>,
    enabled: Option<bool>,
}

/// One delivery of one event, as logged.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryRead {
    /// Increasing id; also sent as `X-MC-Delivery`.
    id: i64,
    /// The activity event delivered.
    event_id: i64,
    #[schema(value_type = EventTypeName)]
    event_type: String,
    /// `pending`, `delivered` or `failed` (given up).
    status: &'static str,
    /// Attempts made so far.
    attempts: u32,
    /// The receiver's last HTTP status.
    last_status_code: Option<u16>,
    /// Why the last attempt failed.
    last_error: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    next_attempt_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    last_attempt_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
}

impl From<Delivery> for DeliveryRead {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.state.as_str(),
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            created_at: d.created_at,
        }
    }
}

async fn load_webhook(state: &SharedState, id: WebhookId) -> ApiResult<Webhook> {
    state
        .store
        .webhook(id)
        .await?
        .filter(|w| w.organization_id == state.organization_id)
        .ok_or(ApiError::NotFound("Webhook not found"))
}

/// Subscribes a receiver to events.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = WebhookCreate,
    responses((status = 200, body = WebhookRead), (status = 422, description = "Invalid field")))]
pub async fn create_webhook(
    _: Admin,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<WebhookCreate>,
) -> ApiResult<Json<WebhookRead>> {
    let mut errors = ValidationErrors::default();
    let url = errors.collect(WebhookUrl::parse(&body.url));
    let event_types = errors.collect(EventSelection::parse(&body.event_types));
    let secret = errors.collect(parse_secret(&body.secret));
    errors.into_result()?;
    let (Some(url), Some(event_types), Some(secret)) = (url, event_types, secret) else {
        return Err(ApiError::Internal("validation inconsistency".into()));
    };
    let now = Timestamp::now();
    let webhook = Webhook {
        id: WebhookId::new(),
        organization_id: state.organization_id,
        url,
        event_types,
        secret,
        enabled: body.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    state.store.insert_webhook(&webhook).await?;
    Ok(Json(webhook.into()))
}

/// Lists subscriptions, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    params(("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<WebhookRead>)))]
pub async fn list_webhooks(
    _: Admin,
    State(state): State<SharedState>,
    query: QueryParams,
) -> ApiResult<Json<PageOf<WebhookRead>>> {
    let request = query.page()?;
    let page = state
        .store
        .list_webhooks(state.organization_id, request)
        .await?;
    Ok(Json(PageOf::from_page(page, request, WebhookRead::from)))
}

/// Reads a subscription.
#[utoipa::path(get, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = Uuid, Path)), responses((status = 200, body = WebhookRead), (status = 404)))]
pub async fn get_webhook(
    _: Admin,
    State(state): State<SharedState>,
    Path(webhook_id): Path<String>,
) -> ApiResult<Json<WebhookRead>> {
    let id = path_id(&webhook_id, "webhook_id")?;
    Ok(Json(load_webhook(&state, id).await?.into()))
}

/// Changes a subscription (the new event types apply to events recorded from now on).
#[utoipa::path(patch, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = Uuid, Path)), request_body = WebhookUpdate,
    responses((status = 200, body = WebhookRead), (status = 404), (status = 422)))]
pub async fn update_webhook(
    _: Admin,
    State(state): State<SharedState>,
    Path(webhook_id): Path<String>,
    ApiJson(body): ApiJson<WebhookUpdate>,
) -> ApiResult<Json<WebhookRead>> {
    let id = path_id(&webhook_id, "webhook_id")?;
    let mut webhook = load_webhook(&state, id).await?;
    let mut errors = ValidationErrors::default();
    let url = body
        .url
        .as_deref()
        .and_then(|u| errors.collect(WebhookUrl::parse(u)));
    let event_types = body
        .event_types
        .as_deref()
        .and_then(|t| errors.collect(EventSelection::parse(t)));
    let secret = body
        .secret
        .as_deref()
        .and_then(|s| errors.collect(parse_secret(s)));
    errors.into_result()?;
    webhook.url = url.unwrap_or(webhook.url);
    webhook.event_types = event_types.unwrap_or(webhook.event_types);
    webhook.secret = secret.unwrap_or(webhook.secret);
    webhook.enabled = body.enabled.unwrap_or(webhook.enabled);
    webhook.updated_at = Timestamp::now();
    state.store.update_webhook(&webhook).await?;
    Ok(Json(webhook.into()))
}

/// Deletes a subscription and its delivery log; pending deliveries are dropped.
#[utoipa::path(delete, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = Uuid, Path)), responses((status = 200, body = OkResponse), (status = 404)))]
pub async fn delete_webhook(
    _: Admin,
    State(state): State<SharedState>,
    Path(webhook_id): Path<String>,
) -> ApiResult<Json<OkResponse>> {
    let id = path_id(&webhook_id, "webhook_id")?;
    load_webhook(&state, id).await?;
    if !state.store.delete_webhook(id).await? {
        return Err(ApiError::NotFound("Webhook not found"));
    }
    Ok(Json(OkResponse::ok()))
}

/// A subscription's delivery log, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(("webhook_id" = Uuid, Path), ("limit" = Option<u32>, Query), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = PageOf<DeliveryRead>), (status = 404)))]
pub async fn list_deliveries(
    _: Admin,
    State(state): State<SharedState>,
    Path(webhook_id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<PageOf<DeliveryRead>>> {
    let id = path_id(&webhook_id, "webhook_id")?;
    let request = query.page()?;
    load_webhook(&state, id).await?;
    let page = state.store.list_deliveries(id, request).await?;
    Ok(Json(PageOf::from_page(page, request, DeliveryRead::from)))
}
