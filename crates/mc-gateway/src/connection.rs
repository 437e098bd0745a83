//! One long-lived WebSocket per managed gateway.
//!
//! [`GatewayHandle::connect`] spawns a task that owns the socket: it performs the handshake
//! (challenge nonce, signed device proof, token, protocol range 3–4), sends requests,
//! matches responses to callers by id while events interleave, and reconnects with capped
//! exponential backoff and jitter whenever the connection drops, e.g. when the gateway
//! restarts itself after a config change. Requests sent while the socket is down wait for the
//! reconnect up to their own timeout; requests in flight when it drops fail as transient.
//! The task ends when the last handle is dropped.
//!
//! The [`GatewayStatus`] snapshot is kept up to date by the task and read without I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mc_domain::Timestamp;
use mc_domain::token::Secret;
use parking_lot::RwLock;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::{GatewayError, SUPPORTED_PROTOCOLS};
use crate::generation::GatewayGeneration;
use crate::identity::{DeviceIdentity, SignedConnect};
use crate::protocol::{
    CHALLENGE_EVENT, CLIENT_ID, CLIENT_MODE, CLIENT_VERSION, ClientInfo, ConnectAuth,
    ConnectParams, EventFrame, Frame, HelloOk, OPERATOR_SCOPES, ROLE, RequestFrame, platform,
};
use crate::tls;

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// The requests that rewrite the gateway's config file (see
/// [`GatewayHandle::serialize_config_write`]).
const CONFIG_WRITING_METHODS: [&str; 4] = [
    "agents.create",
    "agents.update",
    "agents.delete",
    "config.patch",
];

/// How long after sending it a config write that timed out is still waited for before the
/// next one is sent: the gateway keeps working on a request its caller gave up on.
pub const LATE_CONFIG_WRITE_LIMIT: Duration = Duration::from_secs(120);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Reply = oneshot::Sender<Result<Value, GatewayError>>;

/// How long to wait between reconnect attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// The first delay after a failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Relative jitter applied to every delay, e.g. 0.2 for ±20 %.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl BackoffPolicy {
    /// The delay before attempt `failures` (1 = after the first failure), jittered.
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let base = self.initial.saturating_mul(1_u32 << exponent).min(self.max);
        let factor = if self.jitter > 0.0 {
            rand::rng().random_range((1.0 - self.jitter)..=(1.0 + self.jitter))
        } else {
            1.0
        };
        base.mul_f64(factor)
            .min(self.max.mul_f64(1.0 + self.jitter))
    }
}

/// How to reach one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// The gateway's shared token, sent in the URL query and in `auth.token`.
    pub token: Option<Secret>,
    /// Accept any certificate on `wss://` (self-signed gateways).
    pub allow_insecure_tls: bool,
    /// Default timeout of one request, including waiting for a reconnect.
    pub request_timeout: Duration,
    /// Timeout of opening the socket and of each handshake step.
    pub handshake_timeout: Duration,
    /// Reconnect delays.
    pub backoff: BackoffPolicy,
    /// A silent socket (no frame, not even a pong) is considered dead after this long.
    pub idle_timeout: Duration,
}

impl GatewayConfig {
    /// A configuration with the default timeouts: 30 s per request, 10 s per handshake step.
    pub fn new(url: impl Into<String>, token: Option<Secret>) -> Self {
        Self {
            url: url.into(),
            token,
            allow_insecure_tls: false,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            backoff: BackoffPolicy::default(),
            idle_timeout: Duration::from_secs(75),
        }
    }

    /// The URL as shown to operators: no query string (it may carry the token).
    pub fn display_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) => {
                url.set_query(None);
                url.set_fragment(None);
                let text = url.to_string();
                match text.strip_suffix('/') {
                    Some(trimmed) if url.path() == "/" => trimmed.to_owned(),
                    _ => text,
                }
            }
            Err(_) => self.url.split('?').next().unwrap_or_default().to_owned(),
        }
    }

    /// The URL actually dialled: any query replaced by `?token=<token>` when a token is set.
    fn dial_url(&self) -> Result<String, GatewayError> {
        let mut url = url::Url::parse(&self.url).map_err(|e| GatewayError::Unreachable {
            url: self.display_url(),
            reason: format!("invalid gateway URL ({e})"),
        })?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(GatewayError::Unreachable {
                url: self.display_url(),
                reason: "invalid gateway URL (scheme must be ws or wss)".to_owned(),
            });
        }
        if let Some(token) = &self.token {
            url.set_query(None);
            url.query_pairs_mut().append_pair("token", token.expose());
        }
        Ok(url.to_string())
    }
}

/// What an operator needs to know about one gateway connection, readable without I/O.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayStatus {
    /// Whether the socket is open and the handshake succeeded.
    pub connected: bool,
    /// The protocol negotiated at the last successful handshake.
    pub protocol: Option<u32>,
    /// The generation that protocol implies.
    pub generation: Option<GatewayGeneration>,
    /// The gateway's version, from the last successful handshake.
    pub version: Option<String>,
    /// Whether the gateway has accepted this device (false while pairing is required).
    pub paired: bool,
    /// The last connection problem, in words an operator can act on; cleared on connect.
    pub last_error: Option<String>,
    /// When the gateway was last heard from (any frame).
    pub last_contact_at: Option<Timestamp>,
}

impl GatewayStatus {
    fn initial() -> Self {
        Self {
            connected: false,
            protocol: None,
            generation: None,
            version: None,
            paired: false,
            last_error: None,
            last_contact_at: None,
        }
    }
}

/// State the connection task writes and handles read.
struct Shared {
    status: RwLock<GatewayStatus>,
    /// Counts successful handshakes: it moves when the gateway came back after a restart.
    sessions: watch::Sender<u64>,
    /// Requests hold it shared; a pause for an announced gateway restart holds it
    /// exclusively, so that no request is in flight when the gateway drops its sockets.
    gate: tokio::sync::RwLock<()>,
    /// Held by each call that rewrites the gateway's config file; see
    /// [`GatewayHandle::serialize_config_write`].
    config_writes: tokio::sync::Mutex<()>,
    /// Config writes whose caller stopped waiting before the gateway answered: the method,
    /// how long to wait for the answer at most, and the answer's arrival.
    unanswered_config_writes: parking_lot::Mutex<Vec<(String, Instant, oneshot::Receiver<()>)>>,
    last_error: RwLock<Option<GatewayError>>,
    /// The last frame no request could be matched to because it was unreadable, and when.
    unreadable: RwLock<Option<(Instant, String)>>,
    events: broadcast::Sender<EventFrame>,
}

impl Shared {
    fn record_error(&self, error: &GatewayError) {
        let mut status = self.status.write();
        status.connected = false;
        status.last_error = Some(error.to_string());
        if matches!(error, GatewayError::PairingRequired { .. }) {
            status.paired = false;
        }
        *self.last_error.write() = Some(error.clone());
    }

    /// Keeps a description of an unreadable frame for the status and for timeouts.
    fn record_unreadable(&self, description: String) {
        self.status.write().last_error = Some(description.clone());
        *self.unreadable.write() = Some((Instant::now(), description));
    }

    /// The unreadable frame received since `since`, if any.
    fn unreadable_since(&self, since: Instant) -> Option<String> {
        self.unreadable
            .read()
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, description)| description.clone())
    }

    fn touch(&self) {
        self.status.write().last_contact_at = Some(Timestamp::now());
    }
}

struct Command {
    method: String,
    params: Value,
    reply: Reply,
    /// Fired when the gateway answers; dropped unanswered when the request is never sent
    /// or its session ends first.
    answered: oneshot::Sender<()>,
}

/// A request sent and not yet answered.
struct InFlight {
    method: String,
    reply: Reply,
    answered: oneshot::Sender<()>,
}

impl InFlight {
    /// Whether nobody waits for its answer any more (its caller, or the next config write).
    fn abandoned(&self) -> bool {
        self.reply.is_closed() && self.answered.is_closed()
    }
}

/// Dropped with the last handle; its drop stops the connection task.
struct HandleInner {
    commands: mpsc::UnboundedSender<Command>,
    _stop: watch::Sender<()>,
    /// The batching config writer, started on first use.
    config_writer: std::sync::OnceLock<crate::config_writer::ConfigWriter>,
}

/// A cheap, cloneable handle on one gateway's connection task.
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<HandleInner>,
    shared: Arc<Shared>,
    request_timeout: Duration,
    display_url: Arc<str>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("url", &self.display_url)
            .finish_non_exhaustive()
    }
}

/// A [`GatewayHandle`] that does not keep the connection task alive (held by the
/// handle's own background tasks).
#[derive(Clone)]
pub(crate) struct WeakGatewayHandle {
    inner: std::sync::Weak<HandleInner>,
    shared: Arc<Shared>,
    request_timeout: Duration,
    display_url: Arc<str>,
}

impl WeakGatewayHandle {
    /// The handle, while any other handle is alive.
    pub(crate) fn upgrade(&self) -> Option<GatewayHandle> {
        Some(GatewayHandle {
            inner: self.inner.upgrade()?,
            shared: self.shared.clone(),
            request_timeout: self.request_timeout,
            display_url: self.display_url.clone(),
        })
    }
}

/// Runs `future` until `deadline`; true when it finished in time.
async fn timeout_at_instant<F: std::future::Future>(deadline: Instant, future: F) -> bool {
    tokio::time::timeout_at(deadline, future).await.is_ok()
}

impl GatewayHandle {
    /// Starts the connection task for `config` (must be called inside a tokio runtime).
    /// Returns at once; the task connects in the background and keeps reconnecting.
    pub fn connect(config: GatewayConfig, identity: Arc<DeviceIdentity>) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(());
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            status: RwLock::new(GatewayStatus::initial()),
            sessions: watch::Sender::new(0),
            gate: tokio::sync::RwLock::new(()),
            config_writes: tokio::sync::Mutex::new(()),
            unanswered_config_writes: parking_lot::Mutex::new(Vec::new()),
            last_error: RwLock::new(None),
            unreadable: RwLock::new(None),
            events,
        });
        let handle = Self {
            inner: Arc::new(HandleInner {
                commands,
                _stop: stop,
                config_writer: std::sync::OnceLock::new(),
            }),
            shared: shared.clone(),
            request_timeout: config.request_timeout,
            display_url: config.display_url().into(),
        };
        let task = ConnectionTask {
            display_url: config.display_url(),
            config,
            identity,
            shared,
            commands: command_rx,
            stop: stop_rx,
            pending: VecDeque::new(),
        };
        tokio::spawn(task.run());
        handle
    }

    /// The current status snapshot.
    pub fn status(&self) -> GatewayStatus {
        self.shared.status.read().clone()
    }

    /// The generation negotiated at the last successful handshake.
    pub fn generation(&self) -> Option<GatewayGeneration> {
        self.shared.status.read().generation
    }

    /// The gateway URL without query string.
    pub fn url(&self) -> &str {
        &self.display_url
    }

    /// The default timeout of one request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs `call`, a request that rewrites the gateway's config file (`agents.create`,
    /// `agents.update`, `agents.delete`, `config.patch`), while no other such request of
    /// this client is in flight. OpenClaw reads the config, awaits file work, then writes
    /// the whole file back, without a lock: two of these in flight at once lose one
    /// agent's entry (seen on 2026.4.2 as `unknown agent id` right after a successful
    /// `agents.create`). A config write whose caller timed out is still in flight on the
    /// gateway, so the next one waits for its late answer first (at most until
    /// [`LATE_CONFIG_WRITE_LIMIT`] after it was sent, or until its session ends).
    pub async fn serialize_config_write<T, F>(&self, call: F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let _turn = self.shared.config_writes.lock().await;
        let unanswered = std::mem::take(&mut *self.shared.unanswered_config_writes.lock());
        for (method, until, answered) in unanswered {
            let waited_from = Instant::now();
            let answered = tokio::time::timeout_at(until, answered).await;
            tracing::debug!(
                gateway.url = %self.display_url,
                rpc.method = %method,
                answered = matches!(answered, Ok(Ok(()))),
                waited_ms = u64::try_from(waited_from.elapsed().as_millis()).unwrap_or(u64::MAX),
                "config write waited for an earlier one its caller gave up on"
            );
        }
        call.await
    }

    /// How many handshakes have succeeded so far (it moves on every reconnect).
    pub fn session(&self) -> u64 {
        *self.shared.sessions.borrow()
    }

    /// The batching config writer of this gateway (started on first use).
    pub(crate) fn config_writer(&self) -> &crate::config_writer::ConfigWriter {
        self.inner
            .config_writer
            .get_or_init(|| crate::config_writer::ConfigWriter::start(self.downgrade()))
    }

    /// A handle that does not keep the connection alive.
    fn downgrade(&self) -> WeakGatewayHandle {
        WeakGatewayHandle {
            inner: Arc::downgrade(&self.inner),
            shared: self.shared.clone(),
            request_timeout: self.request_timeout,
            display_url: self.display_url.clone(),
        }
    }

    /// Holds every new request back around a restart the gateway announced for `due`:
    /// from `lead` before it until the gateway has dropped the session that was current
    /// when the restart was announced (`session`) and a new handshake succeeded, or at most
    /// until `bound` after `due`. Requests already in flight finish first. Nothing happens
    /// when the gateway has reconnected since `session` already.
    pub fn pause_for_restart(&self, session: u64, due: Instant, lead: Duration, bound: Duration) {
        let shared = self.shared.clone();
        let url = self.display_url.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due.checked_sub(lead).unwrap_or(due)).await;
            let mut sessions = shared.sessions.subscribe();
            if *sessions.borrow_and_update() != session {
                return;
            }
            let paused_at = Instant::now();
            let _closed = shared.gate.write().await;
            let back = timeout_at_instant(
                due + bound,
                sessions.wait_for(|current| *current != session),
            )
            .await;
            tracing::debug!(
                gateway.url = %url,
                back = back,
                paused_ms = u64::try_from(paused_at.elapsed().as_millis()).unwrap_or(u64::MAX),
                "requests held back across an announced gateway restart"
            );
        });
    }

    /// Events the gateway pushes (ticks, chat, presence), for whoever listens.
    pub fn subscribe_events(&self) -> broadcast::Receiver<EventFrame> {
        self.shared.events.subscribe()
    }

    /// Waits until connected or `within` passes; returns the status either way.
    pub async fn wait_connected(&self, within: Duration) -> GatewayStatus {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if status.connected || Instant::now() >= deadline {
                return status;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `method` with `params` and waits for its result, with the default timeout.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, GatewayError> {
        self.request_with_timeout(method, params, self.request_timeout)
            .await
    }

    /// Sends `method` and waits up to `limit` for its result, including any wait for a
    /// reconnect. A timeout while disconnected reports the connection's last error.
    pub async fn request_with_timeout(
        &self,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value, GatewayError> {
        let sent_at = Instant::now();
        let Ok(_open) = timeout(limit, self.shared.gate.read()).await else {
            return Err(GatewayError::Transient {
                message: format!(
                    "{method} timed out after {} ms waiting for {} to restart",
                    limit.as_millis(),
                    self.display_url
                ),
            });
        };
        let limit = limit.saturating_sub(sent_at.elapsed());
        let (reply, result) = oneshot::channel();
        let (answered, mut answer_arrival) = oneshot::channel();
        let command = Command {
            method: method.to_owned(),
            params,
            reply,
            answered,
        };
        if self.inner.commands.send(command).is_err() {
            return Err(GatewayError::Transient {
                message: format!(
                    "{method}: the connection to {} is shut down",
                    self.display_url
                ),
            });
        }
        let outcome = self.await_reply(method, result, limit, sent_at).await;
        let unanswered = matches!(
            answer_arrival.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        if unanswered && CONFIG_WRITING_METHODS.contains(&method) {
            // Timed out while the gateway may still be writing (a lost session, or an
            // answer, leaves nothing to wait for).
            self.shared.unanswered_config_writes.lock().push((
                method.to_owned(),
                sent_at + LATE_CONFIG_WRITE_LIMIT,
                answer_arrival,
            ));
        }
        tracing::debug!(
            gateway.url = %self.display_url,
            rpc.method = method,
            rpc.ok = outcome.is_ok(),
            duration_ms = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            "gateway rpc"
        );
        outcome
    }

    /// Waits for the reply to a request sent at `sent_at`.
    async fn await_reply(
        &self,
        method: &str,
        result: oneshot::Receiver<Result<Value, GatewayError>>,
        limit: Duration,
        sent_at: Instant,
    ) -> Result<Value, GatewayError> {
        match timeout(limit, result).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(GatewayError::Transient {
                message: format!(
                    "{method}: the connection to {} is shut down",
                    self.display_url
                ),
            }),
            Err(_) => {
                let connected = self.shared.status.read().connected;
                if let Some(error) = self.shared.last_error.read().clone()
                    && !connected
                {
                    return Err(error);
                }
                let meanwhile = self
                    .shared
                    .unreadable_since(sent_at)
                    .map(|garbage| format!("; meanwhile {garbage}"))
                    .unwrap_or_default();
                Err(GatewayError::Transient {
                    message: format!(
                        "{method} timed out after {} ms waiting for {}{meanwhile}",
                        limit.as_millis(),
                        self.display_url
                    ),
                })
            }
        }
    }
}

/// Why a connected session ended.
enum SessionEnd {
    Stopped,
    Lost(GatewayError),
}

struct ConnectionTask {
    config: GatewayConfig,
    display_url: String,
    identity: Arc<DeviceIdentity>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    stop: watch::Receiver<()>,
    pending: VecDeque<Command>,
}

impl ConnectionTask {
    async fn run(mut self) {
        let mut failures = 0_u32;
        loop {
            let attempt = {
                let (config, url, identity) = (
                    self.config.clone(),
                    self.display_url.clone(),
                    self.identity.clone(),
                );
                let connect = async move { connect_and_handshake(&config, &url, &identity).await };
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        _ = self.stop.changed() => return,
                        result = &mut connect => break result,
                        command = self.commands.recv() => match command {
                            Some(command) => self.hold(command),
                            None => return,
                        },
                    }
                }
            };
            match attempt {
                Ok((socket, hello)) => {
                    let began = Instant::now();
                    self.on_connected(&hello);
                    let end = self.serve(socket).await;
                    // A gateway that drops every session right after the handshake must not
                    // be redialled in a tight loop: only a stable session resets the backoff.
                    failures = if began.elapsed() < STABLE_SESSION {
                        failures.saturating_add(1)
                    } else {
                        0
                    };
                    match end {
                        SessionEnd::Stopped => return,
                        SessionEnd::Lost(error) => {
                            tracing::info!(gateway.url = %self.display_url, error = %error, "gateway connection lost");
                            self.shared.record_error(&error);
                        }
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(gateway.url = %self.display_url, error = %error, "gateway connect failed");
                    self.shared.record_error(&error);
                    if error.is_permanent() {
                        for command in self.pending.drain(..) {
                            let _ = command.reply.send(Err(error.clone()));
                        }
                    }
                }
            }
            let delay = if failures == 0 {
                Duration::ZERO
            } else {
                self.config.backoff.delay(failures)
            };
            let wake = sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = self.stop.changed() => return,
                    _ = &mut wake => break,
                    command = self.commands.recv() => match command {
                        Some(command) => self.hold(command),
                        None => return,
                    },
                }
            }
        }
    }

    /// Keeps a request for the next connection, or fails it at once when the last
    /// connection error is one that waiting cannot fix.
    fn hold(&mut self, command: Command) {
        let permanent = self
            .shared
            .last_error
            .read()
            .clone()
            .filter(GatewayError::is_permanent);
        match permanent {
            Some(error) => {
                let _ = command.reply.send(Err(error));
            }
            None => {
                self.pending.retain(|c| !c.reply.is_closed());
                self.pending.push_back(command);
            }
        }
    }

    fn on_connected(&self, hello: &HelloOk) {
        let version = hello.server.as_ref().and_then(|s| s.version.clone());
        tracing::info!(gateway.url = %self.display_url, gateway.protocol = hello.protocol, gateway.version = ?version, "gateway connected");
        {
            let mut status = self.shared.status.write();
            status.connected = true;
            status.protocol = Some(hello.protocol);
            status.generation = GatewayGeneration::from_protocol(hello.protocol);
            status.version = version;
            status.paired = true;
            status.last_error = None;
            status.last_contact_at = Some(Timestamp::now());
        }
        *self.shared.last_error.write() = None;
        self.shared.sessions.send_modify(|n| *n += 1);
    }

    async fn serve(&mut self, socket: Socket) -> SessionEnd {
        let (mut sink, mut stream) = socket.split();
        let mut in_flight: HashMap<String, InFlight> = HashMap::new();
        let mut last_frame = Instant::now();
        let mut keepalive = tokio::time::interval(self.config.idle_timeout / 3);
        keepalive.tick().await;
        let pending: Vec<Command> = self.pending.drain(..).collect();
        let mut end = None;
        for command in pending {
            if let Err(error) =
                send_command(&mut sink, &mut in_flight, command, &self.display_url).await
            {
                end = Some(error);
                break;
            }
        }
        let end = match end {
            Some(error) => SessionEnd::Lost(error),
            None => loop {
                tokio::select! {
                    _ = self.stop.changed() => {
                        let _ = sink.send(Message::Close(None)).await;
                        break SessionEnd::Stopped;
                    }
                    command = self.commands.recv() => match command {
                        Some(command) => {
                            if let Err(error) = send_command(&mut sink, &mut in_flight, command, &self.display_url).await {
                                break SessionEnd::Lost(error);
                            }
                        }
                        None => {
                            let _ = sink.send(Message::Close(None)).await;
                            break SessionEnd::Stopped;
                        }
                    },
                    frame = stream.next() => {
                        last_frame = Instant::now();
                        self.shared.touch();
                        match frame {
                            Some(Ok(Message::Text(text))) => self.dispatch(&text, &mut in_flight),
                            Some(Ok(Message::Close(close))) => break SessionEnd::Lost(closed_by_gateway(&self.display_url, close.as_ref())),
                            Some(Ok(_)) => {}
                            Some(Err(error)) => break SessionEnd::Lost(GatewayError::Transient {
                                message: format!("connection to {} lost ({error})", self.display_url),
                            }),
                            None => break SessionEnd::Lost(GatewayError::Transient {
                                message: format!("connection closed by {}", self.display_url),
                            }),
                        }
                    }
                    _ = keepalive.tick() => {
                        in_flight.retain(|_, request| !request.abandoned());
                        if last_frame.elapsed() > self.config.idle_timeout {
                            break SessionEnd::Lost(GatewayError::Transient {
                                message: format!(
                                    "connection to {} timed out: nothing received for {} s",
                                    self.display_url,
                                    self.config.idle_timeout.as_secs()
                                ),
                            });
                        }
                        if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                            break SessionEnd::Lost(GatewayError::Transient {
                                message: format!("connection to {} closed while sending", self.display_url),
                            });
                        }
                    }
                }
            },
        };
        let reason = match &end {
            SessionEnd::Stopped => "the client is shutting down".to_owned(),
            SessionEnd::Lost(error) => error.to_string(),
        };
        for (_, request) in in_flight {
            let _ = request.reply.send(Err(GatewayError::Transient {
                message: format!("{} interrupted: {reason}", request.method),
            }));
        }
        end
    }

    fn dispatch(&self, text: &str, in_flight: &mut HashMap<String, InFlight>) {
        match serde_json::from_str::<Frame>(text) {
            Ok(Frame::Response(response)) => {
                let Some(InFlight {
                    method,
                    reply,
                    answered,
                }) = in_flight.remove(&response.id)
                else {
                    tracing::debug!(gateway.url = %self.display_url, response.id = %response.id, "response for no waiting request");
                    return;
                };
                let outcome = if response.ok {
                    Ok(response.payload.unwrap_or(Value::Null))
                } else {
                    let shape = response.error.unwrap_or_default_shape();
                    Err(GatewayError::from_gateway(&method, &shape))
                };
                let _ = answered.send(());
                let _ = reply.send(outcome);
            }
            Ok(Frame::Event(event)) => {
                let _ = self.shared.events.send(event);
            }
            Ok(Frame::Request(request)) => {
                tracing::debug!(gateway.url = %self.display_url, method = %request.method, "ignoring a request from the gateway");
            }
            Err(error) => {
                tracing::warn!(gateway.url = %self.display_url, error = %error, "unreadable frame from the gateway");
                let answering = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|value| value.get("id")?.as_str().map(str::to_owned))
                    .and_then(|id| in_flight.remove(&id));
                match answering {
                    Some(request) => {
                        let _ = request.answered.send(());
                        let _ = request.reply.send(Err(GatewayError::Transient {
                            message: format!(
                                "{}: {} answered with a malformed response frame ({error})",
                                request.method, self.display_url
                            ),
                        }));
                    }
                    None => self.shared.record_unreadable(format!(
                        "{} sent an unreadable frame ({error}): {}",
                        self.display_url,
                        excerpt(text)
                    )),
                }
            }
        }
    }
}

/// The start of a frame, for error messages.
fn excerpt(text: &str) -> String {
    const LIMIT: usize = 80;
    let mut short: String = text.chars().take(LIMIT).collect();
    if text.chars().count() > LIMIT {
        short.push('…');
    }
    format!("{short:?}")
}

async fn send_command<S>(
    sink: &mut S,
    in_flight: &mut HashMap<String, InFlight>,
    command: Command,
    display_url: &str,
) -> Result<(), GatewayError>
where
    S: futures::Sink<Message> + Unpin,
{
    if command.reply.is_closed() {
        return Ok(());
    }
    let id = uuid::Uuid::new_v4().to_string();
    let frame = Frame::Request(RequestFrame {
        id: id.clone(),
        method: command.method.clone(),
        params: if command.params.is_null() {
            json!({})
        } else {
            command.params
        },
    });
    let text = serde_json::to_string(&frame).expect("frames serialise");
    if sink.send(Message::text(text)).await.is_err() {
        let error = GatewayError::Transient {
            message: format!("connection to {display_url} closed while sending"),
        };
        let _ = command.reply.send(Err(GatewayError::Transient {
            message: format!("{} interrupted: {error}", command.method),
        }));
        return Err(error);
    }
    in_flight.insert(
        id,
        InFlight {
            method: command.method,
            reply: command.reply,
            answered: command.answered,
        },
    );
    Ok(())
}

fn closed_by_gateway(display_url: &str, close: Option<&CloseFrame>) -> GatewayError {
    let detail = match close {
        Some(frame) => {
            let code = u16::from(frame.code);
            let reason = if frame.reason.is_empty() {
                match code {
                    1012 => "service restart",
                    1001 => "going away",
                    _ => "",
                }
            } else {
                frame.reason.as_str()
            };
            format!(" ({code} {reason})").replace(" )", ")")
        }
        None => String::new(),
    };
    GatewayError::Transient {
        message: format!("connection closed by {display_url}{detail}"),
    }
}

/// Opens the socket and performs the connect handshake.
async fn connect_and_handshake(
    config: &GatewayConfig,
    display_url: &str,
    identity: &DeviceIdentity,
) -> Result<(Socket, HelloOk), GatewayError> {
    let dial = config.dial_url()?;
    let connector = if dial.starts_with("wss://") {
        Connector::Rustls(tls::client_config(config.allow_insecure_tls))
    } else {
        Connector::Plain
    };
    let opened = timeout(
        config.handshake_timeout,
        tokio_tungstenite::connect_async_tls_with_config(dial, None, false, Some(connector)),
    )
    .await;
    let mut socket = match opened {
        Err(_) => {
            return Err(GatewayError::Unreachable {
                url: display_url.to_owned(),
                reason: "connection timed out".to_owned(),
            });
        }
        Ok(Err(error)) => return Err(GatewayError::from_transport(display_url, &error)),
        Ok(Ok((socket, _response))) => socket,
    };
    let nonce = timeout(
        config.handshake_timeout,
        wait_for_challenge(&mut socket, display_url),
    )
    .await
    .map_err(|_| GatewayError::Transient {
        message: format!(
            "{display_url} sent no connect.challenge within {} s (timed out)",
            config.handshake_timeout.as_secs()
        ),
    })??;

    let token = config.token.as_ref().map(Secret::expose).unwrap_or("");
    let signed = SignedConnect {
        client_id: CLIENT_ID,
        client_mode: CLIENT_MODE,
        role: ROLE,
        scopes: &OPERATOR_SCOPES,
        signed_at_ms: Timestamp::now().as_millis(),
        token,
        nonce: &nonce,
    };
    let params = ConnectParams {
        min_protocol: *SUPPORTED_PROTOCOLS.start(),
        max_protocol: *SUPPORTED_PROTOCOLS.end(),
        role: ROLE.to_owned(),
        scopes: OPERATOR_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        client: ClientInfo {
            id: CLIENT_ID.to_owned(),
            version: CLIENT_VERSION.to_owned(),
            platform: platform().to_owned(),
            mode: CLIENT_MODE.to_owned(),
        },
        device: serde_json::to_value(identity.prove(&signed)).expect("proof serialises"),
        auth: config.token.as_ref().map(|t| ConnectAuth {
            token: t.expose().to_owned(),
        }),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let request = Frame::Request(RequestFrame {
        id: id.clone(),
        method: "connect".to_owned(),
        params: serde_json::to_value(params).expect("params serialise"),
    });
    socket
        .send(Message::text(
            serde_json::to_string(&request).expect("frames serialise"),
        ))
        .await
        .map_err(|e| GatewayError::Transient {
            message: format!("connection to {display_url} lost during the handshake ({e})"),
        })?;
    let hello = timeout(
        config.handshake_timeout,
        wait_for_hello(&mut socket, &id, display_url),
    )
    .await
    .map_err(|_| GatewayError::Transient {
        message: format!(
            "{display_url} did not answer connect within {} s (timed out)",
            config.handshake_timeout.as_secs()
        ),
    })??;
    if !SUPPORTED_PROTOCOLS.contains(&hello.protocol) {
        let _ = socket.close(None).await;
        return Err(GatewayError::ProtocolMismatch {
            gateway: Some(hello.protocol),
        });
    }
    Ok((socket, hello))
}

async fn next_text(socket: &mut Socket, display_url: &str) -> Result<String, GatewayError> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(close))) => {
                return Err(closed_by_gateway(display_url, close.as_ref()));
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                return Err(GatewayError::Transient {
                    message: format!(
                        "connection to {display_url} lost during the handshake ({error})"
                    ),
                });
            }
            None => {
                return Err(GatewayError::Transient {
                    message: format!("connection closed by {display_url} during the handshake"),
                });
            }
        }
    }
}

async fn wait_for_challenge(
    socket: &mut Socket,
    display_url: &str,
) -> Result<String, GatewayError> {
    loop {
        let text = next_text(socket, display_url).await?;
        if let Ok(Frame::Event(event)) = serde_json::from_str::<Frame>(&text)
            && event.event == CHALLENGE_EVENT
            && let Some(nonce) = event.payload.get("nonce").and_then(Value::as_str)
            && !nonce.trim().is_empty()
        {
            return Ok(nonce.to_owned());
        }
    }
}

async fn wait_for_hello(
    socket: &mut Socket,
    id: &str,
    display_url: &str,
) -> Result<HelloOk, GatewayError> {
    loop {
        let text = next_text(socket, display_url).await?;
        let Ok(Frame::Response(response)) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        if response.id != id {
            continue;
        }
        if !response.ok {
            let shape = response.error.unwrap_or_default_shape();
            return Err(GatewayError::from_gateway("connect", &shape));
        }
        let payload = response.payload.unwrap_or(Value::Null);
        return serde_json::from_value::<HelloOk>(payload).map_err(|e| GatewayError::Transient {
            message: format!("{display_url} answered connect with an unreadable hello ({e})"),
        });
    }
}

trait DefaultShape {
    fn unwrap_or_default_shape(self) -> crate::error::GatewayErrorShape;
}

impl DefaultShape for Option<crate::error::GatewayErrorShape> {
    fn unwrap_or_default_shape(self) -> crate::error::GatewayErrorShape {
        self.unwrap_or_else(|| crate::error::GatewayErrorShape {
            code: String::new(),
            message: "gateway error".to_owned(),
            details: None,
            retryable: None,
            retry_after_ms: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.2,
        };
        for _ in 0..50 {
            let first = policy.delay(1);
            assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
            let third = policy.delay(3);
            assert!(third >= Duration::from_millis(320) && third <= Duration::from_millis(480));
            assert!(policy.delay(30) <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn token_replaces_the_query_and_is_hidden_from_the_display_url() {
        let config = GatewayConfig::new(
            "ws://127.0.0.1:18789/?old=1",
            Some(Secret::new("s3cret token")),
        );
        assert_eq!(
            config.dial_url().unwrap(),
            "ws://127.0.0.1:18789/?token=s3cret+token"
        );
        assert_eq!(config.display_url(), "ws://127.0.0.1:18789");
        let plain = GatewayConfig::new("ws://127.0.0.1:18789", None);
        assert_eq!(plain.display_url(), "ws://127.0.0.1:18789");
    }

    #[test]
    fn a_url_that_is_not_websocket_is_refused_by_name() {
        let config = GatewayConfig::new("http://127.0.0.1:1", None);
        let error = config.dial_url().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid gateway URL (scheme must be ws or wss) at http://127.0.0.1:1"
        );
    }
}
