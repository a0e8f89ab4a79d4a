//! Application state, the router, and `serve`: the one entry point used by
//! both the binary and the tests (port 0, real router, never a copy).

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::{config::Config, error::ApiError, metrics::Metrics, store::Store};

/// Shared state of a running gateway; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// When this process started (FHIR instant), for the CapabilityStatement date.
    pub started: Arc<str>,
}

impl AppState {
    /// Opens storage (running migrations) and builds the state.
    pub async fn open(config: Config) -> anyhow::Result<AppState> {
        let store = crate::store::open(&config.database).await?;
        Ok(AppState {
            config: Arc::new(config),
            store,
            metrics: Arc::new(Metrics::default()),
            started: crate::fhir::format::instant(chrono::Utc::now().timestamp_millis()).into(),
        })
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

/// The complete router with all middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::fhir::rest::router())
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(interim_actor))
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

async fn interim_actor(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    req.extensions_mut().insert(Arc::new(crate::access::Actor::gateway()));
    next.run(req).await
}
