//! Building and running the server: open the store, load agents into memory, start the
//! liveness engine, serve on a given listener until the shutdown signal, then drain
//! requests and flush pending writes.

use std::future::Future;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use mc_domain::time::Timestamp;
use mc_domain::token::{Secret, generate_admin_token};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::liveness::{Engine, Registry};
use crate::state::{AppState, SharedState};

/// Shortest accepted admin token.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 50;

/// The kernel send buffer of each connection. It bounds what a client that stops reading
/// holds on the server: its event stream stalls, falls behind the feed (which keeps a
/// bounded backlog per subscriber) and is cut off with a reason as soon as the client reads
/// again. Ample for any API response or page; without it Linux grows the buffer to
/// megabytes, and a stalled event stream would hold thousands of events in the kernel.
pub const CONNECTION_SEND_BUFFER_BYTES: usize = 128 * 1024;

/// Applies [`CONNECTION_SEND_BUFFER_BYTES`] to an accepted connection.
fn limit_send_buffer(stream: &mut tokio::net::TcpStream) {
    if let Err(error) =
        socket2::SockRef::from(&*stream).set_send_buffer_size(CONNECTION_SEND_BUFFER_BYTES)
    {
        tracing::debug!(%error, "cannot limit a connection's send buffer");
    }
}

/// A built server, ready to serve.
pub struct Server {
    state: SharedState,
    config: ServerConfig,
}

/// Reads `<data_dir>/admin-token`, or creates it (mode 0600) with a fresh token.
fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<Secret> {
    let path = data_dir.join("admin-token");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(Secret::new(text.trim()));
    }
    let token = generate_admin_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{}\n", token.expose()).as_bytes())?;
    tracing::info!(path = %path.display(), "generated the admin token; it is stored in this file");
    Ok(token)
}

/// Opens a connection to every managed gateway.
async fn connect_managed_gateways(state: &AppState) -> anyhow::Result<()> {
    let mut page = mc_domain::page::PageRequest::default();
    loop {
        let gateways = state
            .store
            .list_gateways(state.organization_id, page)
            .await?;
        for gateway in &gateways.items {
            crate::provision::connect_gateway(&state.gateways, gateway);
        }
        page.offset += u64::from(page.limit);
        if gateways.items.is_empty() || page.offset >= gateways.total {
            return Ok(());
        }
    }
}

impl Server {
    /// Opens the database (migrating it), loads every agent and resolves the admin token.
    pub async fn build(config: ServerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let admin_token = match &config.admin_token {
            Some(token) => token.clone(),
            None => load_or_create_admin_token(&config.data_dir)?,
        };
        anyhow::ensure!(
            admin_token.expose().chars().count() >= MIN_ADMIN_TOKEN_CHARS,
            "the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters"
        );
        let url = config.effective_database_url();
        let store = mc_store::open(&url, config.database_url.is_none())
            .await
            .context("opening the database")?;
        let organization_id = store
            .ensure_default_organization(Timestamp::now())
            .await
            .context("creating the default organisation")?;
        // Replicas sharing the database: the follower reads the log from here, so events
        // committed between the load and its subscription to the feed are not missed.
        let loaded_after = match store.is_shared() {
            true => Some(
                store
                    .latest_activity_id()
                    .await
                    .context("reading the newest event id")?,
            ),
            false => None,
        };
        let agents = store.all_agents().await.context("loading agents")?;
        let jobs = store
            .unfinished_provision_jobs()
            .await
            .context("loading provisioning jobs")?
            .into_iter()
            .map(|job| (job.agent_id, job.id, crate::provision::job_kind(job.action)))
            .collect();
        let registry = Arc::new(Registry::load(agents, jobs, Timestamp::now()));
        tracing::info!(agents = registry.len(), "agents loaded");
        let identity = mc_gateway::DeviceIdentity::load_or_create(&config.data_dir)
            .context("loading the gateway device identity")?;
        let gateways = Arc::new(mc_gateway::GatewayPool::new(
            Arc::new(identity),
            config.gateway_connection.clone(),
        ));
        let templates =
            crate::provision::templates::Templates::load(config.templates_dir.as_deref())
                .context("loading the workspace templates")?;
        if !templates.overridden().is_empty() {
            tracing::info!(overridden = ?templates.overridden(), "workspace templates overridden");
        }
        let engine = Engine::new(Arc::clone(&registry), Arc::clone(&store));
        if let Some(id) = loaded_after {
            engine.follow_after(id);
        }
        let state = Arc::new(AppState {
            store,
            registry,
            engine,
            admin_token,
            organization_id,
            base_url: config.base_url.clone().unwrap_or_default(),
            shutdown: watch::channel(false).0,
            stream_keep_alive: config.stream_keep_alive,
            metrics: Arc::default(),
            gateways,
            provisioner: Arc::new(crate::provision::Provisioner::new(
                templates,
                config.lifecycle,
            )),
        });
        Ok(Self { state, config })
    }

    /// The admin token in effect.
    pub fn admin_token(&self) -> &Secret {
        &self.state.admin_token
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight requests and
    /// flushes pending liveness writes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let address = listener.local_addr()?;
        let mut state = self.state;
        if state.base_url.is_empty()
            && let Some(inner) = Arc::get_mut(&mut state)
        {
            inner.base_url = format!("http://{address}");
        }
        let tasks = state.engine.start(
            self.config.write_behind_interval,
            self.config.liveness_tick,
            self.config.liveness_log_fold_interval,
        );
        let deliveries = crate::webhooks::start(
            Arc::clone(&state.store),
            self.config.webhook_delivery,
            Arc::clone(&state.metrics),
            state.shutdown.subscribe(),
        );
        connect_managed_gateways(&state)
            .await
            .context("loading gateways")?;
        let provisioning = crate::provision::runner::start(
            Arc::clone(&state),
            self.config.provision_backoff,
            state.shutdown.subscribe(),
        );
        let checkins = crate::provision::checkin::start(
            Arc::clone(&state),
            self.config.liveness_tick,
            state.shutdown.subscribe(),
        );
        let app = crate::api::router(Arc::clone(&state), self.config.max_body_bytes);
        tracing::info!("listening on http://{address}");
        // Event streams never end by themselves: tell them to, so the drain can finish.
        let stopping = Arc::clone(&state);
        let shutdown = async move {
            shutdown.await;
            stopping.shutdown.send_replace(true);
        };
        let listener = axum::serve::ListenerExt::tap_io(listener, limit_send_buffer);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        tasks.stop().await;
        let _ = deliveries.await;
        let _ = provisioning.await;
        let _ = checkins.await;
        let flushed = state.engine.flush().await;
        served.context("serving HTTP")?;
        flushed.context("flushing pending heartbeat writes at shutdown")?;
        // Everything is durable already; folding now only spares the next start a replay.
        state.engine.fold_log().await;
        tracing::info!("stopped; pending writes flushed");
        Ok(())
    }
}
