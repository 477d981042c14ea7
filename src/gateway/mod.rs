//! The data plane: surfaces → authenticate → authorize → forward → meter.

pub mod admit;
pub mod cache;
pub mod error;
pub mod guard;
pub mod invalidate;
pub mod meter;
pub mod proxy;
pub mod selfservice;
pub mod surface;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::get;

use crate::audit::Audit;
use crate::config::Config;
use crate::providers::Registry;
use crate::store::{AdminKeyRow, Store};
use crate::usage::{UsageSink, prices::Prices};
use crate::{keys, util};

/// Everything a request needs, shared by all handlers.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub keys: cache::KeyCache,
    pub registry: Registry,
    pub prices: Prices,
    pub usage: UsageSink,
    pub audit: Audit,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub counters: Arc<crate::counters::Resilient>,
    /// Identifies this process in invalidation messages.
    pub replica_id: String,
    pub dlp: crate::policy::Dlp,
    pub anomaly: crate::policy::AnomalyDetector,
    pub webhook_client: reqwest::Client,
}

impl App {
    pub async fn new(config: Config) -> Result<Arc<App>> {
        let store = crate::store::open(&config.database).await?;
        let registry = Registry::new(&config)?;
        let prices = Prices::new(&config);
        let spool = config.spool_path();
        // Rows spooled while the database was down on a previous run go in first.
        crate::usage::replay_spool(store.as_ref(), &spool).await;
        let usage = crate::usage::start_writer(store.clone(), config.usage.queue_capacity, spool);
        let audit = Audit::start(store.clone());
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c).ok())
            .collect();
        let dlp = crate::policy::Dlp::new(&config.guardrails.dlp_custom)
            .map_err(|e| anyhow::anyhow!("guardrails.dlp_custom: {e}"))?;
        let anomaly = crate::policy::AnomalyDetector::new(crate::policy::AnomalyConfig {
            factor: config.guardrails.anomaly_factor,
            warmup: config.guardrails.anomaly_warmup,
        });
        let counters = Arc::new(match config.redis.as_deref().filter(|r| !r.is_empty()) {
            Some(url) => crate::counters::Resilient::redis(url, &config.redis_prefix).await?,
            None => crate::counters::Resilient::local(),
        });
        let app = Arc::new(App {
            config,
            store,
            keys: cache::KeyCache::default(),
            registry,
            prices,
            usage,
            audit,
            trusted_proxies,
            counters,
            replica_id: crate::util::new_id("replica"),
            dlp,
            anomaly,
            webhook_client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building the webhook client")?,
        });
        app.reload_keys().await?;
        Ok(app)
    }

    pub async fn reload_keys(&self) -> Result<()> {
        self.keys.reload(self.store.as_ref()).await
    }

    /// Keys, users or teams changed here: reload now and tell the other replicas.
    pub async fn keys_changed(&self) -> Result<()> {
        self.reload_keys().await?;
        invalidate::publish(self).await;
        Ok(())
    }

    /// First start: make `BURSAR_ADMIN_KEY` the first admin credential, or
    /// generate one and print it once. Answers the generated key, if any.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        if !self.store.admin_keys().await?.is_empty() {
            return Ok(None);
        }
        let (secret, generated) = match std::env::var("BURSAR_ADMIN_KEY") {
            Ok(k) if !k.is_empty() => {
                if k.len() < 16 {
                    anyhow::bail!("BURSAR_ADMIN_KEY: must be at least 16 characters");
                }
                (k, false)
            }
            _ => (keys::generate(keys::ADMIN_PREFIX), true),
        };
        let row = AdminKeyRow {
            id: util::new_id("adm"),
            name: "bootstrap".into(),
            prefix: keys::display_prefix(&secret),
            key_hash: keys::hash_hex(&secret),
            created_at: util::now_ms(),
            revoked_at: None,
        };
        if let Err(e) = self.store.insert_admin_key(&row).await {
            // Replicas starting together on a fresh database: another one
            // installed the first admin key a moment ago.
            if !self.store.admin_keys().await?.is_empty() {
                self.reload_keys().await?;
                return Ok(None);
            }
            return Err(e);
        }
        self.audit
            .record(
                "system",
                "admin_key.bootstrap",
                Some(&row.id),
                None,
                serde_json::json!({"prefix": row.prefix, "generated": generated}),
            )
            .await?;
        self.reload_keys().await?;
        Ok(generated.then_some(secret))
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(telemetry::render))
        .nest("/admin/v1", crate::admin::router())
        .nest("/console", crate::console::router(app.clone()))
        .route("/bursar/v1/whoami", get(selfservice::whoami))
        .route(
            "/bursar/v1/keys",
            axum::routing::post(selfservice::mint_child),
        )
        .route(
            "/bursar/v1/report-leak",
            axum::routing::post(selfservice::report_leak),
        )
        .fallback(proxy::handle)
        .layer(axum::middleware::map_response(ensure_request_id))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

/// Every answer carries `x-request-id`: the data plane sets its own (the one
/// in the usage row); every other route gets one here.
async fn ensure_request_id(mut resp: axum::response::Response) -> axum::response::Response {
    if !resp.headers().contains_key("x-request-id")
        && let Ok(v) = axum::http::HeaderValue::from_str(&crate::util::new_id("req"))
    {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Ready when the store and (if configured) Redis answer.
async fn readyz(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    use crate::counters::Counters;
    let store = app.store.ping().await.is_ok();
    let counters = app.counters.healthy().await;
    let status = if store && counters {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            serde_json::json!({"store": store, "counters": counters, "counters_shared": app.config.redis.is_some() && !app.counters.is_degraded()}),
        ),
    )
}

/// Run the gateway until SIGINT/SIGTERM; then finish in-flight requests and
/// flush usage and audit queues.
pub async fn serve(config: Config) -> Result<()> {
    let listen: SocketAddr = config.listen.parse().context("listen")?;
    telemetry::install();
    let app = App::new(config).await?;
    if let Some(secret) = app.bootstrap_admin().await? {
        println!(
            "bursar: generated the first admin key (shown once, only its hash is stored):\n\n    {secret}\n\nexport BURSAR_ADMIN_KEY={secret}"
        );
    }
    tokio::task::spawn_blocking(crate::providers::tokens::warm);
    if let Some(url) = app.config.redis.clone().filter(|r| !r.is_empty()) {
        tokio::spawn(
            app.counters
                .clone()
                .probe_loop(url, app.config.redis_prefix.clone()),
        );
    }
    tokio::spawn(invalidate::listen(app.clone()));
    let refresher = app.clone();
    let every = Duration::from_secs(app.config.cache_refresh_seconds);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            metrics::gauge!("bursar_usage_queue_depth").set(refresher.usage.depth() as f64);
            if let Err(e) = refresher.reload_keys().await {
                tracing::warn!(error = %e, "key cache refresh failed; serving the cached keys");
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        %listen,
        providers = ?app.registry.providers.keys().collect::<Vec<_>>(),
        database = %crate::store::redact(&app.config.database),
        "bursar is serving"
    );
    eprintln!("bursar: listening on http://{listen}");
    // Answers go out as soon as they are written (SSE events above all):
    // without TCP_NODELAY, Nagle's algorithm holds small writes ~40 ms.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        router(app.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("shutting down: flushing usage and audit");
    app.usage.drain().await;
    app.audit.drain().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
