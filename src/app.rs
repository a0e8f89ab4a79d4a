//! Application state, the router, and `serve`: the one entry point used by
//! both the binary and the tests (port 0, real router, never a copy).

use std::{
    future::Future,
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    error::ApiError,
    mapping::{LoadError, MappingSet},
    metrics::Metrics,
    store::Store,
};

/// Shared state of a running gateway: one reference to [`Shared`], so
/// that the clones axum makes for every request (the state of each
/// middleware and handler) each touch one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    /// When this process started (FHIR instant), for the CapabilityStatement date.
    pub started: String,
    /// Token verification and issuing; `None` when `auth.enabled = false` (development only).
    pub auth: Option<crate::auth::Auth>,
    /// The mappings in effect; replaced whole on reload, so a request keeps the set it started with.
    mappings: RwLock<Arc<MappingSet>>,
    /// Turns of batch ingest (`ingest.max_concurrent_batches`).
    pub batch_turns: tokio::sync::Semaphore,
}

impl AppState {
    /// Opens storage (running migrations) and builds the state.
    pub async fn open(config: Config) -> anyhow::Result<AppState> {
        let root = config.public_root();
        AppState::open_with_root(config, root).await
    }

    /// Opens the state for a listener bound to `addr` (port 0 resolved): without
    /// `server.public_base_url`, the token endpoint's URL names that address.
    pub async fn open_at(config: Config, addr: std::net::SocketAddr) -> anyhow::Result<AppState> {
        let root = match config.public_base() {
            Some(b) => b.to_owned(),
            None => format!("{}://{addr}", if config.server.tls.enabled { "https" } else { "http" }),
        };
        AppState::open_with_root(config, root).await
    }

    async fn open_with_root(config: Config, root: String) -> anyhow::Result<AppState> {
        let auth = if config.auth.enabled {
            Some(auth_from_config(&config, format!("{root}/auth/token"))?)
        } else {
            tracing::warn!("authentication is switched off (auth.enabled = false): every request acts as the gateway");
            None
        };
        let mappings = load_mappings(&config).map_err(|errors| {
            anyhow::anyhow!(
                "the mappings have mistakes:\n{}",
                errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
            )
        })?;
        tracing::info!(
            origin = %mappings.origin,
            mappings = %mappings.iter().map(|m| format!("{} {}", m.name, m.version)).collect::<Vec<_>>().join(", "),
            "mappings loaded"
        );
        let store = crate::store::open(&config.database).await?;
        if let Some(e) = store.audit_unavailable() {
            // Every answer needs its audit entry: serving without them would only answer 503s.
            anyhow::bail!("database.url: {e}; only one gateway may serve a SQLite database");
        }
        crate::subscriptions::spawn_worker(&store, config.subscriptions.clone());
        let added = crate::npo::seed(&store, &mappings.reference).await?;
        if added > 0 {
            tracing::info!(organisations = added, "NPÖ registry seeded from the reference data");
        }
        let batch_turns = tokio::sync::Semaphore::new(config.ingest.max_concurrent_batches);
        Ok(AppState(Arc::new(Shared {
            config,
            store,
            metrics: Metrics::default(),
            started: crate::fhir::format::instant(chrono::Utc::now().timestamp_millis()),
            auth,
            mappings: RwLock::new(Arc::new(mappings)),
            batch_turns,
        })))
    }

    /// The mappings in effect now.
    pub fn mappings(&self) -> Arc<MappingSet> {
        match self.mappings.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the mappings again; on any mistake the old set stays in effect and the mistakes are returned.
    pub fn reload_mappings(&self) -> Result<Arc<MappingSet>, Vec<LoadError>> {
        let fresh = Arc::new(load_mappings(&self.config)?);
        match self.mappings.write() {
            Ok(mut m) => *m = fresh.clone(),
            Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
        }
        Ok(fresh)
    }

    /// The server root for absolute URLs (`https://host:port`), from
    /// `server.public_base_url` or the request's `Host`.
    pub fn public_root(&self, headers: &HeaderMap) -> String {
        self.fhir_base(headers).trim_end_matches("/fhir").to_owned()
    }

    /// The FHIR base URL: `server.public_base_url` when set, else from the request's `Host`.
    pub fn fhir_base(&self, headers: &HeaderMap) -> String {
        if let Some(base) = self.config.public_base() {
            return format!("{base}/fhir");
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
            .unwrap_or(&self.config.server.listen);
        let scheme = if self.config.server.tls.enabled { "https" } else { "http" };
        format!("{scheme}://{host}/fhir")
    }
}

/// The token service: `auth.issuer` when set, else `server.public_base_url`,
/// else the fixed `https://nara-gateway.invalid` (RFC 2606 reserved) — never the listen address, so tokens issued
/// by `nara-gateway token issue` verify in the running gateway.
pub fn auth_from_config(config: &Config, token_url: String) -> anyhow::Result<crate::auth::Auth> {
    let mut auth = config.auth.clone();
    if auth.issuer.is_empty() {
        auth.issuer = config.public_base().unwrap_or(DEFAULT_ISSUER).to_owned();
    }
    crate::auth::Auth::from_config(&auth, token_url)
}

/// Loads the mappings `mappings.dir` names (the shipped ones when the default folder is absent).
pub fn load_mappings(config: &Config) -> Result<MappingSet, Vec<LoadError>> {
    MappingSet::load(&config.mappings.dir, config.mappings.may_use_built_in())
}

/// The issuer of access tokens when neither `auth.issuer` nor `server.public_base_url` is set.
pub const DEFAULT_ISSUER: &str = "https://nara-gateway.invalid";

/// The complete router with all middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::fhir::rest::router())
        .merge(crate::ingest::http::router())
        .merge(crate::transfer::http::router())
        .merge(crate::npo::http::router())
        .route("/auth/token", axum::routing::post(crate::auth::layer::token))
        .route("/.well-known/smart-configuration", get(crate::auth::layer::smart_configuration))
        .route("/.well-known/jwks.json", get(crate::auth::layer::jwks))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::layer::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = state.config.server.tls.clone();
    let app = router(state);
    if tls.enabled {
        crate::tls::serve_tls(app, listener, crate::tls::server_config(&tls)?, shutdown).await
    } else {
        crate::tls::serve_plain(app, listener, shutdown).await
    }
}

async fn live() -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

async fn ready(State(st): State<AppState>) -> Response {
    match st.store.ping().await {
        Ok(()) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ready","storage":"ok"}"#)
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: storage unreachable");
            ApiError::Unavailable("storage is not reachable".into()).into_response()
        }
    }
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; the FHIR API is at /fhir".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this endpoint".into())
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    ApiError::Internal("handler panicked".into()).into_response()
}
