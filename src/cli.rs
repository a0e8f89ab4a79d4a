//! The commands of the `nara-gateway` binary. `main.rs` only parses the
//! command line and calls these.

use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{app::AppState, config::Config};

/// Loads the configuration from `file` (or the default) and the process environment.
pub fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    Ok(Config::load(file, std::env::vars())?)
}

/// Sets up logging on stderr (stdout carries only the `listening on` line).
pub fn init_logging(config: &Config) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = if config.log.format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// `nara-gateway serve`: runs until SIGTERM or Ctrl-C, then drains in-flight requests.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let grace = std::time::Duration::from_secs(config.server.shutdown_grace_secs);
    let state = AppState::open(config).await?;
    let scheme = if state.config.server.tls.enabled { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    tracing::info!(%addr, "nara-gateway started; FHIR API at /fhir, health at /health/ready");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::app::serve(state, listener, async move {
        let _ = stop_rx.await;
    }));
    shutdown_signal().await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: finishing in-flight requests");
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    Ok(())
}

/// `nara-gateway migrate`: brings the database schema up to date and exits.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    crate::store::open(&config.database).await?;
    println!("database schema is up to date ({})", redact_url(&config.database.url));
    Ok(())
}

/// `nara-gateway audit verify`: recomputes the audit chain; an error (exit 1) when it is broken.
pub async fn audit_verify(config: Config) -> anyhow::Result<()> {
    let store = crate::store::open(&config.database).await?;
    match crate::audit::verify(store.as_ref()).await? {
        crate::audit::Verdict::Intact { entries } => {
            println!("audit log intact: {entries} entries, every hash links to its predecessor");
            Ok(())
        }
        crate::audit::Verdict::Broken { seq, reason } => {
            anyhow::bail!("audit log BROKEN at entry {seq}: {reason}")
        }
    }
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
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
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact_url("sqlite://data/nara.db"), "sqlite://data/nara.db");
    }
}
