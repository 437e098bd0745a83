//! A protocol-faithful fake OpenClaw gateway, in process, on `127.0.0.1:0`.
//!
//! It speaks protocol 3 (like openclaw 2026.4.2) or 4 (like 2026.9.6): it sends the
//! `connect.challenge` nonce, validates the connect params as strictly as the real schema
//! (closed client id/mode lists, unknown keys refused), verifies the device id and Ed25519
//! signature over the v2 payload, the nonce, the clock skew and the token, can demand
//! pairing, and keeps an in-memory config (with hash), agents, workspace files and sessions.
//! Each generation's differences are reproduced: the config schema, mandatory `baseHash`
//! and refused TOOLS.md/HEARTBEAT.md on v4, restart after `config.patch` on v3, main-session
//! delete refusal on v4. Tests can restart it, drop connections, delay or hang methods,
//! make a config write land late over later ones (as OpenClaw's unlocked read-modify-write
//! does under load), and read every call it received.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::error::GatewayErrorShape;
use crate::generation::GatewayGeneration;
use crate::identity::{SignedConnect, device_id_of};
use crate::protocol::{CHALLENGE_EVENT, EventFrame, Frame, ResponseFrame};

const CLIENT_IDS: &[&str] = &[
    "webchat-ui",
    "openclaw-control-ui",
    "openclaw-tui",
    "webchat",
    "cli",
    "gateway-client",
    "openclaw-macos",
    "openclaw-ios",
    "openclaw-android",
    "node-host",
    "test",
    "fingerprint",
    "openclaw-probe",
];
const CLIENT_MODES: &[&str] = &["webchat", "cli", "ui", "backend", "node", "probe", "test"];
const MAX_SIGNATURE_SKEW_MS: i64 = 120_000;

/// How the fake gateway behaves.
#[derive(Debug, Clone)]
pub struct FakeGatewayOptions {
    /// Protocol 3 or 4 behaviour.
    pub generation: GatewayGeneration,
    /// The protocol it insists on; defaults to the generation's. Set 5 to test a mismatch.
    pub protocol: Option<u32>,
    /// The shared token it requires, if any.
    pub token: Option<String>,
    /// Refuse every device with `NOT_PAIRED` until [`FakeGateway::approve_pairing`].
    pub pairing_required: bool,
    /// Serve `wss://` with a self-signed certificate.
    pub tls: bool,
    /// On v3, how long after a `config.patch` the gateway restarts, and for how long it is
    /// down (the real one: about 2 s, then a few seconds). `None` disables the restart.
    pub restart_after_config_patch: Option<(Duration, Duration)>,
    /// Send an unrelated event before every response, as busy gateways do.
    pub interleave_events: bool,
    /// How long a freshly created agent stays invisible to every call but `agents.create`
    /// (the real gateways refresh their runtime config asynchronously after the write, so
    /// an `agents.update` right after the create can answer "agent not found").
    pub new_agent_lag: Duration,
    /// At most this many `config.patch` calls per window, as the real gateways limit config
    /// writes per device (3 per 60 s on 2026.4.2, 30 on 2026.9.6); over it they answer
    /// `UNAVAILABLE` "rate limit exceeded for config.patch; retry after Ns". `None`: no limit.
    pub config_write_limit: Option<(usize, Duration)>,
}

impl FakeGatewayOptions {
    /// Defaults for `generation`: token `fake-token`, no pairing, plain `ws://`, v3 restarts
    /// 200 ms after a config patch for 300 ms, events interleaved.
    pub fn new(generation: GatewayGeneration) -> Self {
        Self {
            generation,
            protocol: None,
            token: Some("fake-token".to_owned()),
            pairing_required: false,
            tls: false,
            restart_after_config_patch: (generation == GatewayGeneration::V3)
                .then_some((Duration::from_millis(200), Duration::from_millis(300))),
            interleave_events: true,
            new_agent_lag: Duration::ZERO,
            config_write_limit: None,
        }
    }
}

/// One request the fake received (after a successful handshake).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    /// The method.
    pub method: String,
    /// Its params.
    pub params: Value,
}

#[derive(Debug, Clone, Default)]
struct FakeAgent {
    workspace: String,
    files: BTreeMap<String, String>,
    /// Until then the gateway's runtime config does not list it yet.
    visible_from: Option<Instant>,
}

impl FakeAgent {
    fn visible(&self) -> bool {
        self.visible_from.is_none_or(|at| Instant::now() >= at)
    }
}

/// The agent `id` as the gateway's runtime config sees it.
fn visible_agent<'a>(
    agents: &'a mut BTreeMap<String, FakeAgent>,
    id: &str,
) -> Result<&'a mut FakeAgent, GatewayErrorShape> {
    agents
        .get_mut(id)
        .filter(|agent| agent.visible())
        .ok_or_else(|| agent_not_found(id))
}

struct State {
    options: FakeGatewayOptions,
    calls: Vec<RecordedCall>,
    config: Value,
    agents: BTreeMap<String, FakeAgent>,
    sessions: BTreeMap<String, Value>,
    pairing_request_id: String,
    hung: HashSet<String>,
    garbled: HashMap<String, Garbage>,
    delayed: HashMap<String, Duration>,
    /// Methods whose next call writes its config change only after a lag.
    lagged: HashMap<String, Duration>,
    /// Lagging config writes that have not landed yet.
    unlanded: usize,
    handshakes: usize,
    last_query: Option<String>,
    drop_after_handshake: bool,
    unavailable_handshakes: usize,
    /// When the current config-write window opened, and the writes counted in it.
    config_writes: Option<(Instant, usize)>,
}

impl State {
    fn protocol(&self) -> u32 {
        self.options
            .protocol
            .unwrap_or(self.options.generation.protocol())
    }

    fn version(&self) -> &'static str {
        match self.options.generation {
            GatewayGeneration::V3 => "2026.4.2",
            GatewayGeneration::V4 => "2026.9.6",
        }
    }

    fn config_hash(&self) -> String {
        let digest = Sha256::digest(self.config.to_string().as_bytes());
        format!("sha256:{}", hex::encode(digest))
    }
}

struct Inner {
    state: Mutex<State>,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    run: Mutex<Option<ServerRun>>,
}

struct ServerRun {
    accept: JoinHandle<()>,
    kill: watch::Sender<Option<Kill>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kill {
    /// Close with 1012 (service restart), as a restarting gateway does.
    Restart,
    /// Drop the TCP connection without a close frame.
    Abort,
}

/// What a garbling fake sends instead of a response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Text that is not JSON at all (an HTML error page).
    NotJson,
    /// JSON naming the request's id, but not a valid response frame.
    MalformedResponse,
}

impl Garbage {
    fn text(self, request_id: &str) -> String {
        match self {
            Self::NotJson => "<html><body>502 Bad Gateway</body></html>".to_owned(),
            Self::MalformedResponse => {
                json!({"type": "res", "id": request_id, "ok": "perhaps"}).to_string()
            }
        }
    }
}

/// A running fake gateway; stops when dropped.
pub struct FakeGateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGateway")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        if let Some(run) = self.inner.run.lock().take() {
            let _ = run.kill.send(Some(Kill::Abort));
            run.accept.abort();
        }
    }
}

impl FakeGateway {
    /// Starts listening on `127.0.0.1:0`.
    pub async fn start(options: FakeGatewayOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let tls = options.tls.then(self_signed_acceptor);
        let config = match options.generation {
            GatewayGeneration::V3 => json!({
                "gateway": {"mode": "local", "auth": {"mode": "token", "token": "__OPENCLAW_REDACTED__"}},
                "agents": {"defaults": {"workspace": "/tmp/openclaw-workspace"}, "list": []},
                "meta": {"lastTouchedVersion": "2026.4.2"},
            }),
            GatewayGeneration::V4 => json!({
                "gateway": {"mode": "local", "auth": {"mode": "token", "token": "__OPENCLAW_REDACTED__"}},
                "agents": {"defaults": {"workspace": "/tmp/openclaw-workspace"}, "entries": {}},
                "meta": {"lastTouchedVersion": "2026.9.6"},
            }),
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                options,
                calls: Vec::new(),
                config,
                agents: BTreeMap::new(),
                sessions: BTreeMap::new(),
                pairing_request_id: uuid::Uuid::new_v4().to_string(),
                hung: HashSet::new(),
                garbled: HashMap::new(),
                delayed: HashMap::new(),
                lagged: HashMap::new(),
                unlanded: 0,
                handshakes: 0,
                last_query: None,
                drop_after_handshake: false,
                unavailable_handshakes: 0,
                config_writes: None,
            }),
            addr,
            tls,
            run: Mutex::new(None),
        });
        Inner::serve(&inner, listener);
        Self { inner }
    }

    /// `ws://127.0.0.1:<port>` (or `wss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}", self.inner.addr)
    }

    /// The token it requires.
    pub fn token(&self) -> Option<String> {
        self.inner.state.lock().options.token.clone()
    }

    /// Every request received after a handshake, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.inner.state.lock().calls.clone()
    }

    /// The params of every call to `method`.
    pub fn calls_to(&self, method: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .map(|c| c.params)
            .collect()
    }

    /// How many handshakes succeeded.
    pub fn handshakes(&self) -> usize {
        self.inner.state.lock().handshakes
    }

    /// The query string of the last WebSocket upgrade request.
    pub fn last_query(&self) -> Option<String> {
        self.inner.state.lock().last_query.clone()
    }

    /// The current config.
    pub fn config(&self) -> Value {
        self.inner.state.lock().config.clone()
    }

    /// The ids of the agents it holds.
    pub fn agent_ids(&self) -> Vec<String> {
        self.inner.state.lock().agents.keys().cloned().collect()
    }

    /// A workspace file's content.
    pub fn file(&self, agent_id: &str, name: &str) -> Option<String> {
        let state = self.inner.state.lock();
        state.agents.get(agent_id)?.files.get(name).cloned()
    }

    /// Replaces a workspace file's content (or, with `None`, deletes it) as the agent or
    /// someone on the gateway host would; false when the agent does not exist.
    pub fn set_file(&self, agent_id: &str, name: &str, content: Option<&str>) -> bool {
        let mut state = self.inner.state.lock();
        let Some(agent) = state.agents.get_mut(agent_id) else {
            return false;
        };
        match content {
            Some(text) => agent.files.insert(name.to_owned(), text.to_owned()),
            None => agent.files.remove(name),
        };
        true
    }

    /// Removes an agent with its files, as someone on the gateway host could; false when
    /// it did not exist.
    pub fn remove_agent(&self, agent_id: &str) -> bool {
        self.inner.state.lock().agents.remove(agent_id).is_some()
    }

    /// The pending pairing request id (what `openclaw devices list` would show).
    pub fn pairing_request_id(&self) -> String {
        self.inner.state.lock().pairing_request_id.clone()
    }

    /// Demands pairing (`true`) or approves it (`false`).
    pub fn set_pairing_required(&self, required: bool) {
        self.inner.state.lock().options.pairing_required = required;
    }

    /// Approves the pending pairing request.
    pub fn approve_pairing(&self) {
        self.set_pairing_required(false);
    }

    /// Changes the token it requires.
    pub fn set_token(&self, token: Option<&str>) {
        self.inner.state.lock().options.token = token.map(str::to_owned);
    }

    /// Closes every connection right after a successful handshake (a flapping gateway).
    pub fn set_drop_after_handshake(&self, drop: bool) {
        self.inner.state.lock().drop_after_handshake = drop;
    }

    /// Answers the next `count` connects with `UNAVAILABLE` (a v4 gateway still starting
    /// its sidecars).
    pub fn refuse_handshakes_while_starting(&self, count: usize) {
        self.inner.state.lock().unavailable_handshakes = count;
    }

    /// Never answers `method` from now on.
    pub fn hang(&self, method: &str) {
        self.inner.state.lock().hung.insert(method.to_owned());
    }

    /// Answers `method` with `garbage` instead of a response frame from now on.
    pub fn garble(&self, method: &str, garbage: Garbage) {
        self.inner
            .state
            .lock()
            .garbled
            .insert(method.to_owned(), garbage);
    }

    /// Answers every method properly again.
    pub fn stop_garbling(&self) {
        self.inner.state.lock().garbled.clear();
    }

    /// Answers `method` only after `delay` (other requests are answered meanwhile).
    pub fn delay(&self, method: &str, delay: Duration) {
        self.inner
            .state
            .lock()
            .delayed
            .insert(method.to_owned(), delay);
    }

    /// Makes the next call to `method` (one that rewrites the config: `agents.create`,
    /// `agents.update`, `agents.delete`) behave like OpenClaw under load: it reads the config
    /// when it arrives, and writes the whole of it back, and answers, only `lag` later. An
    /// agent another call added meanwhile is lost (its workspace files stay).
    pub fn lag_next_config_write(&self, method: &str, lag: Duration) {
        self.inner
            .state
            .lock()
            .lagged
            .insert(method.to_owned(), lag);
    }

    /// How many config writes slowed down by [`FakeGateway::lag_next_config_write`] have not
    /// landed yet.
    pub fn unlanded_config_writes(&self) -> usize {
        self.inner.state.lock().unlanded
    }

    /// Restarts like a real gateway after a config change: every connection is closed with
    /// 1012 (service restart), the port refuses connections for `down_for`, then it listens
    /// again on the same port with its state intact.
    pub async fn restart(&self, down_for: Duration) {
        Inner::restart(&self.inner, down_for).await;
    }

    /// Drops every connection without a close frame; keeps listening.
    pub fn drop_connections(&self) {
        // Swap in a fresh kill switch so connections made afterwards survive.
        let mut run = self.inner.run.lock();
        if let Some(run) = run.as_mut() {
            let (kill, _) = watch::channel(None);
            let old = std::mem::replace(&mut run.kill, kill);
            let _ = old.send(Some(Kill::Abort));
        }
    }

    /// Stops listening and closes every connection (until [`FakeGateway::restart`]).
    pub fn stop(&self) {
        if let Some(run) = self.inner.run.lock().take() {
            let _ = run.kill.send(Some(Kill::Abort));
            run.accept.abort();
        }
    }
}

impl Inner {
    fn serve(this: &Arc<Self>, listener: TcpListener) {
        let (kill, _) = watch::channel(None);
        let accept_inner = this.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let inner = accept_inner.clone();
                let Some(kill_rx) = inner.run.lock().as_ref().map(|r| r.kill.subscribe()) else {
                    return;
                };
                tokio::spawn(async move {
                    match inner.tls.clone() {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                Inner::serve_socket(inner, tls, kill_rx).await;
                            }
                        }
                        None => Inner::serve_socket(inner, tcp, kill_rx).await,
                    }
                });
            }
        });
        *this.run.lock() = Some(ServerRun { accept, kill });
    }

    async fn restart(this: &Arc<Self>, down_for: Duration) {
        let run = this.run.lock().take();
        if let Some(run) = run {
            let _ = run.kill.send(Some(Kill::Restart));
            run.accept.abort();
            let _ = run.accept.await;
        }
        tokio::time::sleep(down_for).await;
        let listener = loop {
            match TcpListener::bind(this.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Inner::serve(this, listener);
    }

    async fn serve_socket<S>(this: Arc<Self>, stream: S, mut kill: watch::Receiver<Option<Kill>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let query_slot = Arc::new(Mutex::new(None));
        let query_writer = query_slot.clone();
        #[expect(
            clippy::result_large_err,
            reason = "the signature is tungstenite's handshake callback"
        )]
        let callback = move |request: &Request, response: Response| {
            *query_writer.lock() = request.uri().query().map(str::to_owned);
            Ok(response)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        this.state.lock().last_query = query_slot.lock().take();
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(write_frames(sink, out_rx));
        let connection = Inner::converse(this.clone(), stream, out.clone());
        tokio::pin!(connection);
        tokio::select! {
            _ = &mut connection => {}
            restart = async { kill.wait_for(Option::is_some).await.is_ok_and(|how| *how == Some(Kill::Restart)) } => {
                if restart {
                    let _ = out.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Restart,
                        reason: "service restart".into(),
                    })));
                } else {
                    writer.abort();
                    return;
                }
            }
        }
        // Let queued frames (an error reply and its close) reach the client before closing.
        drop(out);
        let mut writer = writer;
        if tokio::time::timeout(Duration::from_millis(500), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }

    async fn converse<S>(
        this: Arc<Self>,
        mut stream: futures::stream::SplitStream<WebSocketStream<S>>,
        out: mpsc::UnboundedSender<Message>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let nonce = uuid::Uuid::new_v4().to_string();
        send_frame(
            &out,
            &Frame::Event(EventFrame {
                event: CHALLENGE_EVENT.to_owned(),
                payload: json!({"nonce": nonce, "ts": mc_domain::Timestamp::now().as_millis()}),
                seq: None,
            }),
        );
        let mut authenticated = false;
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else {
                if matches!(message, Message::Close(_)) {
                    return;
                }
                continue;
            };
            let Ok(Frame::Request(request)) = serde_json::from_str::<Frame>(&text) else {
                continue;
            };
            if !authenticated {
                if request.method != "connect" {
                    reply_error(
                        &out,
                        &request.id,
                        "INVALID_REQUEST",
                        "invalid handshake: first request must be connect",
                        None,
                    );
                    close(&out, CloseCode::Policy, "invalid handshake");
                    return;
                }
                match this.check_connect(&request.params, &nonce) {
                    Ok(hello) => {
                        authenticated = true;
                        reply_ok(&out, &request.id, hello);
                        if this.state.lock().drop_after_handshake {
                            close(&out, CloseCode::Away, "going away");
                            return;
                        }
                    }
                    Err((shape, close_code)) => {
                        let (code, message, details) = (shape.code, shape.message, shape.details);
                        reply_error(&out, &request.id, &code, &message, details);
                        close(&out, close_code, &message);
                        return;
                    }
                }
                continue;
            }
            let (outcome, delay, interleave, restart, landing) = {
                let mut state = this.state.lock();
                state.calls.push(RecordedCall {
                    method: request.method.clone(),
                    params: request.params.clone(),
                });
                if state.hung.contains(&request.method) {
                    continue;
                }
                if let Some(garbage) = state.garbled.get(&request.method) {
                    let _ = out.send(Message::text(garbage.text(&request.id)));
                    continue;
                }
                let lag = state.lagged.remove(&request.method);
                let read = lag.map(|_| (state.agents.clone(), state.config.clone()));
                let outcome = handle_method(&mut state, &request.method, &request.params);
                // The change computed from what was read lands only after the lag, over
                // whatever was written meanwhile.
                let landing = read.map(|(agents, config)| {
                    state.unlanded += 1;
                    (
                        std::mem::replace(&mut state.agents, agents),
                        std::mem::replace(&mut state.config, config),
                    )
                });
                let restart = (request.method == "config.patch"
                    && outcome.is_ok()
                    && state.options.generation.restarts_after_config_patch())
                .then_some(state.options.restart_after_config_patch)
                .flatten();
                let delay = lag.or_else(|| state.delayed.get(&request.method).copied());
                (
                    outcome,
                    delay,
                    state.options.interleave_events,
                    restart,
                    landing,
                )
            };
            if interleave {
                send_frame(
                    &out,
                    &Frame::Event(EventFrame {
                        event: "tick".to_owned(),
                        payload: json!({"ts": mc_domain::Timestamp::now().as_millis()}),
                        seq: None,
                    }),
                );
            }
            let respond = {
                let out = out.clone();
                let id = request.id.clone();
                move || match outcome {
                    Ok(payload) => reply_ok(&out, &id, payload),
                    Err(shape) => {
                        reply_error(&out, &id, &shape.code, &shape.message, shape.details)
                    }
                }
            };
            match delay {
                Some(delay) => {
                    let inner = this.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some((mut agents, config)) = landing {
                            let mut state = inner.state.lock();
                            // Only the config is written: workspace files stay as they are.
                            for (id, agent) in &mut agents {
                                if let Some(current) = state.agents.get(id) {
                                    agent.files.clone_from(&current.files);
                                }
                            }
                            state.agents = agents;
                            state.config = config;
                            state.unlanded -= 1;
                        }
                        respond();
                    });
                }
                None => respond(),
            }
            if let Some((after, down_for)) = restart {
                let inner = this.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    Inner::restart(&inner, down_for).await;
                });
            }
        }
    }

    /// Validates connect params like the real gateway; returns hello-ok or the error and
    /// the close code to send after it.
    fn check_connect(
        &self,
        params: &Value,
        nonce: &str,
    ) -> Result<Value, (GatewayErrorShape, CloseCode)> {
        let mut state = self.state.lock();
        let invalid =
            |message: String| (shape("INVALID_REQUEST", &message, None), CloseCode::Policy);
        check_keys(
            params,
            &[
                "minProtocol",
                "maxProtocol",
                "role",
                "scopes",
                "client",
                "device",
                "auth",
                "caps",
                "commands",
                "permissions",
                "locale",
                "userAgent",
                "pathEnv",
            ],
            "connect",
        )
        .map_err(|s| (s, CloseCode::Policy))?;
        let protocol = state.protocol();
        let min = params["minProtocol"].as_u64().unwrap_or(0);
        let max = params["maxProtocol"].as_u64().unwrap_or(0);
        if !(min..=max).contains(&u64::from(protocol)) {
            return Err((
                shape(
                    "INVALID_REQUEST",
                    "protocol mismatch",
                    Some(
                        json!({"code": "PROTOCOL_MISMATCH", "clientMinProtocol": min, "clientMaxProtocol": max, "expectedProtocol": protocol}),
                    ),
                ),
                CloseCode::Protocol,
            ));
        }
        let client_id = params
            .pointer("/client/id")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !CLIENT_IDS.contains(&client_id) {
            return Err(invalid(
                "invalid connect params: at /client/id: must be equal to one of the allowed values"
                    .into(),
            ));
        }
        let client_mode = params
            .pointer("/client/mode")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !CLIENT_MODES.contains(&client_mode) {
            return Err(invalid("invalid connect params: at /client/mode: must be equal to one of the allowed values".into()));
        }
        let presented = params.pointer("/auth/token").and_then(Value::as_str);
        if let Some(expected) = &state.options.token {
            match presented {
                None => {
                    return Err((
                        shape(
                            "INVALID_REQUEST",
                            "unauthorized: gateway token missing (provide gateway auth token)",
                            Some(
                                json!({"code": "AUTH_TOKEN_MISSING", "authReason": "token_missing"}),
                            ),
                        ),
                        CloseCode::Policy,
                    ));
                }
                Some(token) if token != expected => {
                    return Err((
                        shape(
                            "INVALID_REQUEST",
                            "unauthorized: gateway token mismatch (provide gateway auth token)",
                            Some(
                                json!({"code": "AUTH_TOKEN_MISMATCH", "authReason": "token_mismatch", "canRetryWithDeviceToken": true, "recommendedNextStep": "retry_with_device_token"}),
                            ),
                        ),
                        CloseCode::Policy,
                    ));
                }
                Some(_) => {}
            }
        }
        let device = &params["device"];
        let device_error = |message: &str, code: &str| {
            (
                shape("INVALID_REQUEST", message, Some(json!({"code": code}))),
                CloseCode::Policy,
            )
        };
        if !device.is_object() {
            return Err(device_error(
                "device identity required",
                "DEVICE_AUTH_REQUIRED",
            ));
        }
        check_keys(
            device,
            &["id", "publicKey", "signature", "signedAt", "nonce"],
            "connect",
        )
        .map_err(|s| (s, CloseCode::Policy))?;
        let public_key = device["publicKey"]
            .as_str()
            .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                device_error(
                    "device public key invalid",
                    "DEVICE_AUTH_PUBLIC_KEY_INVALID",
                )
            })?;
        let device_id = device_id_of(&public_key);
        if device["id"].as_str() != Some(device_id.as_str()) {
            return Err(device_error(
                "device identity mismatch",
                "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            ));
        }
        let Some(sent_nonce) = device["nonce"].as_str().filter(|n| !n.is_empty()) else {
            return Err(device_error(
                "device nonce required",
                "DEVICE_AUTH_NONCE_REQUIRED",
            ));
        };
        if sent_nonce != nonce {
            return Err(device_error(
                "device nonce mismatch",
                "DEVICE_AUTH_NONCE_MISMATCH",
            ));
        }
        let Some(signed_at) = device["signedAt"].as_i64().filter(|t| *t >= 0) else {
            return Err(invalid(
                "invalid connect params: at /device/signedAt: must be integer".into(),
            ));
        };
        if (mc_domain::Timestamp::now().as_millis() - signed_at).abs() > MAX_SIGNATURE_SKEW_MS {
            return Err(device_error(
                "device signature expired",
                "DEVICE_AUTH_SIGNATURE_EXPIRED",
            ));
        }
        let scopes: Vec<&str> = params["scopes"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let payload = SignedConnect {
            client_id,
            client_mode,
            role: params["role"].as_str().unwrap_or(""),
            scopes: &scopes,
            signed_at_ms: signed_at,
            token: presented.unwrap_or(""),
            nonce: sent_nonce,
        }
        .payload(&device_id);
        let signature = device["signature"]
            .as_str()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b));
        if signature.is_none_or(|sig| public_key.verify(payload.as_bytes(), &sig).is_err()) {
            return Err(device_error(
                "device signature invalid",
                "DEVICE_AUTH_SIGNATURE_INVALID",
            ));
        }
        if state.options.pairing_required {
            return Err((
                shape(
                    "NOT_PAIRED",
                    "pairing required",
                    Some(
                        json!({"code": "PAIRING_REQUIRED", "requestId": state.pairing_request_id, "reason": "not-paired"}),
                    ),
                ),
                CloseCode::Policy,
            ));
        }
        if state.unavailable_handshakes > 0 {
            state.unavailable_handshakes -= 1;
            let mut refusal = shape(
                "UNAVAILABLE",
                "gateway starting; retry shortly",
                Some(json!({"reason": "startup-sidecars"})),
            );
            refusal.retryable = Some(true);
            refusal.retry_after_ms = Some(50);
            return Err((refusal, CloseCode::Again));
        }
        state.handshakes += 1;
        let auth = match state.options.generation {
            GatewayGeneration::V3 => json!({
                "deviceToken": uuid::Uuid::new_v4().to_string(),
                "role": "operator",
                "scopes": ["operator.admin", "operator.approvals", "operator.pairing", "operator.read", "operator.write"],
                "issuedAtMs": mc_domain::Timestamp::now().as_millis(),
            }),
            GatewayGeneration::V4 => {
                json!({"method": "token", "role": "operator", "scopes": scopes})
            }
        };
        Ok(json!({
            "type": "hello-ok",
            "protocol": protocol,
            "server": {"version": state.version(), "connId": uuid::Uuid::new_v4().to_string()},
            "features": {"methods": METHODS, "events": ["tick", "chat", "presence"]},
            "snapshot": {},
            "auth": auth,
            "policy": {"maxPayload": 26_214_400, "maxBufferedBytes": 52_428_800, "tickIntervalMs": 30_000},
        }))
    }
}

const METHODS: &[&str] = &[
    "health",
    "config.get",
    "config.patch",
    "agents.create",
    "agents.update",
    "agents.delete",
    "agents.files.list",
    "agents.files.get",
    "agents.files.set",
    "sessions.patch",
    "sessions.reset",
    "sessions.delete",
    "chat.send",
];

async fn write_frames<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut frames: mpsc::UnboundedReceiver<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(message) = frames.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

fn send_frame(out: &mpsc::UnboundedSender<Message>, frame: &Frame) {
    let _ = out.send(Message::text(
        serde_json::to_string(frame).expect("frame serialises"),
    ));
}

fn reply_ok(out: &mpsc::UnboundedSender<Message>, id: &str, payload: Value) {
    send_frame(
        out,
        &Frame::Response(ResponseFrame {
            id: id.to_owned(),
            ok: true,
            payload: Some(payload),
            error: None,
        }),
    );
}

fn reply_error(
    out: &mpsc::UnboundedSender<Message>,
    id: &str,
    code: &str,
    message: &str,
    details: Option<Value>,
) {
    send_frame(
        out,
        &Frame::Response(ResponseFrame {
            id: id.to_owned(),
            ok: false,
            payload: None,
            error: Some(shape(code, message, details)),
        }),
    );
}

fn close(out: &mpsc::UnboundedSender<Message>, code: CloseCode, reason: &str) {
    let reason: String = reason.chars().take(100).collect();
    let _ = out.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })));
}

fn shape(code: &str, message: &str, details: Option<Value>) -> GatewayErrorShape {
    GatewayErrorShape {
        code: code.to_owned(),
        message: message.to_owned(),
        details,
        retryable: None,
        retry_after_ms: None,
    }
}

fn invalid(message: impl Into<String>) -> GatewayErrorShape {
    shape("INVALID_REQUEST", &message.into(), None)
}

/// Refuses params with keys outside `allowed` (the gateway's `additionalProperties:false`).
fn check_keys(params: &Value, allowed: &[&str], method: &str) -> Result<(), GatewayErrorShape> {
    let Some(object) = params.as_object() else {
        return Err(invalid(format!("invalid {method} params: must be object")));
    };
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(invalid(format!(
            "invalid {method} params: at root: unexpected property \"{key}\""
        ))),
        None => Ok(()),
    }
}

fn required_str<'a>(
    params: &'a Value,
    key: &str,
    method: &str,
) -> Result<&'a str, GatewayErrorShape> {
    params[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(format!(
                "invalid {method} params: must have required property '{key}'"
            ))
        })
}

fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

/// RFC 7386 merge patch: objects merge, `null` deletes, everything else (arrays) replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn agent_not_found(id: &str) -> GatewayErrorShape {
    invalid(format!("agent \"{id}\" not found"))
}

fn handle_method(
    state: &mut State,
    method: &str,
    params: &Value,
) -> Result<Value, GatewayErrorShape> {
    let generation = state.options.generation;
    match method {
        "health" => {
            check_keys(params, &["probe"], method)?;
            Ok(json!({
                "ok": true,
                "ts": mc_domain::Timestamp::now().as_millis(),
                "durationMs": 1,
                "defaultAgentId": "main",
                "agents": state.agents.keys().map(|id| json!({"agentId": id, "isDefault": false})).collect::<Vec<_>>(),
            }))
        }
        "config.get" => {
            check_keys(params, &[], method)?;
            Ok(json!({
                "path": "/fake/.openclaw/openclaw.json",
                "exists": true,
                "valid": true,
                "hash": state.config_hash(),
                "config": state.config,
            }))
        }
        "config.patch" => {
            if let Some((limit, window)) = state.options.config_write_limit {
                let now = Instant::now();
                let (opened, count) = match state.config_writes {
                    Some((opened, count)) if now < opened + window => (opened, count),
                    _ => (now, 0),
                };
                if count >= limit {
                    let retry_after = opened + window - now;
                    return Err(shape(
                        "UNAVAILABLE",
                        &format!(
                            "rate limit exceeded for config.patch; retry after {}s",
                            retry_after.as_secs_f64().ceil()
                        ),
                        Some(json!({"method": "config.patch"})),
                    ));
                }
                state.config_writes = Some((opened, count + 1));
            }
            check_keys(
                params,
                &["raw", "baseHash", "sessionKey", "note", "restartDelayMs"],
                method,
            )?;
            let raw = required_str(params, "raw", method)?;
            let patch: Value = serde_json::from_str(raw).map_err(|e| {
                invalid(format!(
                    "invalid config.patch params: raw is not JSON ({e})"
                ))
            })?;
            match params["baseHash"].as_str() {
                None if generation.requires_base_hash() => {
                    return Err(invalid(
                        "config base hash required; re-run config.get and retry",
                    ));
                }
                Some(hash) if hash != state.config_hash() => {
                    return Err(invalid(
                        "config changed since last load; re-run config.get and retry",
                    ));
                }
                _ => {}
            }
            let (refused_agents_key, refused_visibility_key) = match generation {
                GatewayGeneration::V3 => ("entries", "heartbeatVisibility"),
                GatewayGeneration::V4 => ("list", "heartbeat"),
            };
            let mut problems = Vec::new();
            if patch
                .pointer(&format!("/agents/{refused_agents_key}"))
                .is_some()
            {
                problems.push(format!(
                    "agents: Unrecognized key: \"{refused_agents_key}\""
                ));
            }
            if patch
                .pointer(&format!("/channels/defaults/{refused_visibility_key}"))
                .is_some()
            {
                problems.push(format!(
                    "channels.defaults: Unrecognized key: \"{refused_visibility_key}\""
                ));
            }
            if !problems.is_empty() {
                return Err(invalid(format!("invalid config: {}", problems.join("; "))));
            }
            merge_patch(&mut state.config, &patch);
            let restart = match state.options.restart_after_config_patch {
                // Announces the restart it will really do, as the real one does.
                Some((after, _)) if generation.restarts_after_config_patch() => {
                    json!({"ok": true, "signal": "SIGUSR1", "delayMs": after.as_millis(), "reason": "config.patch"})
                }
                _ => Value::Null,
            };
            Ok(
                json!({"ok": true, "path": "/fake/.openclaw/openclaw.json", "config": state.config, "restart": restart, "requiresRestart": generation.restarts_after_config_patch()}),
            )
        }
        "agents.create" => {
            check_keys(params, &["name", "workspace", "emoji", "avatar"], method)?;
            let name = required_str(params, "name", method)?;
            let workspace = required_str(params, "workspace", method)?;
            let id = slugify(name);
            if state.agents.contains_key(&id) {
                return Err(invalid(format!("agent \"{id}\" already exists")));
            }
            let mut files = BTreeMap::new();
            for file in generation.workspace_files() {
                if file != "MEMORY.md" {
                    files.insert(file.to_owned(), format!("# {file}\n"));
                }
            }
            state.agents.insert(
                id.clone(),
                FakeAgent {
                    workspace: workspace.to_owned(),
                    files,
                    visible_from: Some(Instant::now() + state.options.new_agent_lag),
                },
            );
            let entry = json!({"id": id, "name": name, "workspace": workspace, "agentDir": format!("/fake/.openclaw/agents/{id}")});
            match generation {
                GatewayGeneration::V3 => {
                    if let Some(list) = state
                        .config
                        .pointer_mut("/agents/list")
                        .and_then(Value::as_array_mut)
                    {
                        list.push(entry);
                    }
                }
                GatewayGeneration::V4 => {
                    if let Some(entries) = state
                        .config
                        .pointer_mut("/agents/entries")
                        .and_then(Value::as_object_mut)
                    {
                        entries.insert(id.clone(), json!({"name": name, "workspace": workspace}));
                    }
                }
            }
            Ok(json!({"ok": true, "agentId": id, "name": name, "workspace": workspace}))
        }
        "agents.update" => {
            check_keys(
                params,
                &["agentId", "name", "workspace", "model", "avatar"],
                method,
            )?;
            let id = required_str(params, "agentId", method)?;
            let agent = visible_agent(&mut state.agents, id)?;
            if let Some(workspace) = params["workspace"].as_str() {
                agent.workspace = workspace.to_owned();
            }
            Ok(json!({"ok": true, "agentId": id}))
        }
        "agents.delete" => {
            check_keys(params, &["agentId", "deleteFiles"], method)?;
            let id = required_str(params, "agentId", method)?;
            state.agents.remove(id).ok_or_else(|| agent_not_found(id))?;
            if let Some(list) = state
                .config
                .pointer_mut("/agents/list")
                .and_then(Value::as_array_mut)
            {
                list.retain(|e| e["id"].as_str() != Some(id));
            }
            if let Some(entries) = state
                .config
                .pointer_mut("/agents/entries")
                .and_then(Value::as_object_mut)
            {
                entries.remove(id);
            }
            Ok(json!({"ok": true, "agentId": id, "removedBindings": 0}))
        }
        "agents.files.list" => {
            check_keys(params, &["agentId"], method)?;
            let id = required_str(params, "agentId", method)?;
            let agent = visible_agent(&mut state.agents, id)?;
            let files: Vec<Value> = generation
                .workspace_files()
                .into_iter()
                .map(|name| match agent.files.get(name) {
                    Some(content) => json!({"name": name, "path": format!("{}/{name}", agent.workspace), "missing": false, "size": content.len()}),
                    None => json!({"name": name, "path": format!("{}/{name}", agent.workspace), "missing": true}),
                })
                .collect();
            Ok(json!({"agentId": id, "workspace": agent.workspace, "files": files}))
        }
        "agents.files.get" | "agents.files.set" => {
            let setting = method == "agents.files.set";
            let allowed: &[&str] = if setting {
                &["agentId", "name", "content"]
            } else {
                &["agentId", "name"]
            };
            check_keys(params, allowed, method)?;
            let id = required_str(params, "agentId", method)?;
            let name = required_str(params, "name", method)?;
            if !generation.accepts_workspace_file(name) {
                return Err(invalid(format!("unsupported file \"{name}\"")));
            }
            let agent = visible_agent(&mut state.agents, id)?;
            let path = format!("{}/{name}", agent.workspace);
            if setting {
                let content = params["content"].as_str().ok_or_else(|| {
                    invalid(
                        "invalid agents.files.set params: must have required property 'content'",
                    )
                })?;
                agent.files.insert(name.to_owned(), content.to_owned());
            }
            let file = match agent.files.get(name) {
                Some(content) => {
                    json!({"name": name, "path": path, "missing": false, "size": content.len(), "content": content})
                }
                None => json!({"name": name, "path": path, "missing": true}),
            };
            let mut payload = json!({"agentId": id, "workspace": agent.workspace, "file": file});
            if setting {
                payload["ok"] = true.into();
            }
            Ok(payload)
        }
        "sessions.patch" | "sessions.reset" => {
            let allowed: &[&str] = if method == "sessions.patch" {
                &["key", "label", "model", "thinkingLevel"]
            } else {
                &["key", "reason"]
            };
            check_keys(params, allowed, method)?;
            let key = required_str(params, "key", method)?.to_owned();
            let entry = state
                .sessions
                .entry(key.clone())
                .or_insert_with(|| json!({"sessionId": uuid::Uuid::new_v4().to_string()}));
            if method == "sessions.reset" {
                entry["sessionId"] = uuid::Uuid::new_v4().to_string().into();
            }
            if let Some(label) = params["label"].as_str() {
                entry["label"] = label.into();
            }
            entry["updatedAt"] = mc_domain::Timestamp::now().as_millis().into();
            Ok(json!({"ok": true, "key": key, "entry": entry.clone()}))
        }
        "sessions.delete" => {
            check_keys(params, &["key", "deleteTranscript"], method)?;
            let key = required_str(params, "key", method)?;
            if generation.refuses_main_session_delete() && key.ends_with(":main") {
                return Err(invalid(format!("Cannot delete the main session ({key})")));
            }
            let deleted = state.sessions.remove(key).is_some();
            Ok(json!({"ok": true, "key": key, "deleted": deleted, "archived": []}))
        }
        "chat.send" => {
            check_keys(
                params,
                &[
                    "sessionKey",
                    "message",
                    "deliver",
                    "idempotencyKey",
                    "thinking",
                    "attachments",
                    "timeoutMs",
                ],
                method,
            )?;
            required_str(params, "sessionKey", method)?;
            required_str(params, "idempotencyKey", method)?;
            params["message"].as_str().ok_or_else(|| {
                invalid("invalid chat.send params: must have required property 'message'")
            })?;
            Ok(json!({"runId": uuid::Uuid::new_v4().to_string(), "status": "started"}))
        }
        other => Err(invalid(format!("unknown method: {other}"))),
    }
}

fn self_signed_acceptor() -> tokio_rustls::TlsAcceptor {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("valid self-signed certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_merges_objects_replaces_arrays_and_deletes_nulls() {
        let mut target = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        merge_patch(&mut target, &json!({"a": {"c": [3], "e": true}, "d": null}));
        assert_eq!(target, json!({"a": {"b": 1, "c": [3], "e": true}}));
    }

    #[test]
    fn slugify_matches_the_gateway_agent_id_rule() {
        assert_eq!(slugify("Lead Agent"), "lead-agent");
        assert_eq!(slugify("mc-0192"), "mc-0192");
        assert_eq!(slugify("  --Hi!! there--"), "hi-there");
    }
}
