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
    let state = AppState::open_at(config, addr).await?;
    let scheme = if state.config.server.tls.enabled { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    tracing::info!(%addr, "nara-gateway started; FHIR API at /fhir, health at /health/ready");
    print_development_hints(&state, addr);
    tokio::spawn(reload_on_hangup(state.clone()));
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

/// Reloads the mappings on SIGHUP; a set with mistakes is refused and the old one stays.
async fn reload_on_hangup(state: AppState) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; mappings reload only on restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match state.reload_mappings() {
                Ok(set) => tracing::info!(
                    mappings = %set.iter().map(|m| format!("{} {}", m.name, m.version)).collect::<Vec<_>>().join(", "),
                    "mappings reloaded"
                ),
                Err(errors) => {
                    for e in &errors {
                        tracing::error!(mistake = %e, "mapping reload refused; the previous mappings stay in effect");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// `nara-gateway mapping check [DIR]`: loads the mappings and prints every mistake as `file:line: what`.
pub fn mapping_check(config: &Config, dir: Option<&Path>) -> anyhow::Result<()> {
    let set = load_mappings_for_cli(config, dir)?;
    for m in set.iter() {
        println!("ok  {} {}  ({})", m.name, m.version, m.file);
    }
    println!("{} mapping(s) valid ({})", set.iter().count(), set.origin);
    Ok(())
}

fn load_mappings_for_cli(config: &Config, dir: Option<&Path>) -> anyhow::Result<crate::mapping::MappingSet> {
    let result = match dir {
        Some(d) => crate::mapping::MappingSet::load_dir(d),
        None => crate::app::load_mappings(config),
    };
    result.map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} mistake(s) in the mappings", errors.len())
    })
}

/// `nara-gateway mapping test [DIR] [--update]`: runs every mapping's fixtures and shows a diff for each failure.
pub fn mapping_test(config: &Config, dir: Option<&Path>, update: bool) -> anyhow::Result<()> {
    use crate::mapping::fixtures::{Outcome, run};
    let folder = dir.map_or_else(|| config.mappings.dir.clone(), Path::to_path_buf);
    let set = crate::mapping::MappingSet::load_dir(&folder).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} mistake(s) in the mappings", errors.len())
    })?;
    let results = run(&set, &folder, update);
    let mut failed = 0;
    for r in &results {
        match &r.outcome {
            Outcome::Passed => println!("pass    {}/{}", r.mapping, r.case),
            Outcome::Updated => println!("updated {}/{}", r.mapping, r.case),
            Outcome::Failed(diff) => {
                failed += 1;
                println!("FAIL    {}/{}  (- expected, + actual)\n{diff}", r.mapping, r.case);
            }
            Outcome::Broken(why) => {
                failed += 1;
                println!("BROKEN  {}/{}: {why}", r.mapping, r.case);
            }
        }
    }
    println!("{} fixture(s), {failed} failed", results.len());
    if failed > 0 { Err(anyhow::anyhow!("{failed} fixture(s) failed")) } else { Ok(()) }
}

/// `nara-gateway import --mapping NAME FILE…`: pushes JSON or NDJSON files
/// straight into the store as the gateway itself, with progress on stderr and a summary.
pub async fn import(config: Config, mapping: &str, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    use crate::ingest::{Status, prepare, write_all};
    let set = load_mappings_for_cli(&config, None)?;
    let Some(m) = set.get(mapping).cloned() else {
        let known: Vec<&str> = set.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!("no mapping named `{mapping}`; loaded: {}", known.join(", "));
    };
    let store = crate::store::open(&config.database).await?;
    let actor = crate::access::Actor::gateway();
    let mut counts = [0usize; 4];
    let started = std::time::Instant::now();
    let mut done = 0usize;
    for file in files {
        let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let records = crate::ingest::split_records(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                file.display(),
                e.issues().first().map_or(String::new(), |i| i.diagnostics.clone())
            )
        })?;
        let total = records.len();
        for (chunk_no, chunk) in records.chunks(config.ingest.batch_chunk).enumerate() {
            let mut prepared = Vec::new();
            for (i, r) in chunk.iter().enumerate() {
                let index = chunk_no * config.ingest.batch_chunk + i;
                let outcome = match r {
                    Ok(record) => prepare(&set, &m, &actor, record),
                    Err(issue) => Err(crate::ingest::Receipt::rejected_with(issue.clone())),
                };
                match outcome {
                    Ok(p) => prepared.push((index, p)),
                    Err(receipt) => {
                        counts[3] += 1;
                        report_rejection(file, index, &receipt);
                    }
                }
            }
            let request = format!("import {mapping}");
            for (index, receipt) in write_all(&store, &actor, prepared, config.ingest.batch_chunk, &request).await {
                match receipt.status {
                    Status::Created => counts[0] += 1,
                    Status::Updated => counts[1] += 1,
                    Status::Unchanged => counts[2] += 1,
                    Status::Rejected => {
                        counts[3] += 1;
                        report_rejection(file, index, &receipt);
                    }
                }
            }
            done += chunk.len();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
            let filled = (chunk_no + 1) * config.ingest.batch_chunk * 30 / total.max(1);
            eprint!(
                "\r{} [{:<30}] {}/{} records, {:.0}/s",
                file.display(),
                "#".repeat(filled.min(30)),
                (chunk_no * config.ingest.batch_chunk + chunk.len()).min(total),
                total,
                rate
            );
        }
        eprintln!();
    }
    println!(
        "created {}, updated {}, unchanged {}, rejected {} ({} records in {:.1} s)",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        done,
        started.elapsed().as_secs_f64()
    );
    if counts[3] > 0 { Err(anyhow::anyhow!("{} record(s) rejected", counts[3])) } else { Ok(()) }
}

/// `nara-gateway npo report [--delregion X] [--format table|csv|json] [--window DAYS]`.
pub async fn npo_report(config: Config, delregion: Option<&str>, format: &str, window: u32) -> anyhow::Result<()> {
    if !matches!(format, "table" | "csv" | "json") {
        anyhow::bail!("--format is table, csv or json");
    }
    if !(1..=3650).contains(&window) {
        anyhow::bail!("--window is a number of days, 1 to 3650");
    }
    let set = load_mappings_for_cli(&config, None)?;
    if let Some(d) = delregion
        && d != "unknown"
        && !set.reference.delregions.contains_key(d)
    {
        let known: Vec<&str> = set.reference.delregions.keys().map(String::as_str).collect();
        anyhow::bail!("unknown delregion `{d}`; known: {}, unknown", known.join(", "));
    }
    let store = crate::store::open(&config.database).await?;
    crate::npo::seed(&store, &set.reference).await?;
    let report = crate::npo::report(&store, delregion, window).await?;
    match format {
        "csv" => print!("{}", report.to_csv()),
        "json" => println!("{}", report.to_json().to_json_pretty()),
        _ => print!("{}", crate::npo::render::table(&report)),
    }
    Ok(())
}

fn report_rejection(file: &Path, index: usize, receipt: &crate::ingest::Receipt) {
    let issues = receipt.rejection.as_ref().map(|(_, i)| i.as_slice()).unwrap_or_default();
    for i in issues {
        let at = i.expression.as_deref().unwrap_or("");
        eprintln!(
            "\n{}: record {} ({}): {at}: {}",
            file.display(),
            index + 1,
            receipt.record_id.as_deref().unwrap_or("?"),
            i.diagnostics
        );
    }
}

/// Tells a developer running on the example setup how to get going (on
/// stderr: stdout carries only the `listening on` line).
fn print_development_hints(state: &AppState, addr: std::net::SocketAddr) {
    let examples = state.config.auth.clients.iter().any(|c| c.jwks.starts_with("certs-example/"));
    if state.config.auth.enabled && examples {
        eprintln!(
            "development setup: example clients from certs-example/ are registered (replace them in production).\n\
             get a token:  cargo run --release -- token issue --client region-skane\n\
             then:         curl --cacert certs-example/ca.pem -H \"Authorization: Bearer $TOKEN\" https://localhost:{}/fhir/Patient",
            addr.port()
        );
        tracing::warn!("the example clients of certs-example/ are registered; their private keys are public");
    }
}

/// `nara-gateway token issue --client ID [--scope …]`: prints an access token signed with the configured key.
pub fn token_issue(config: &Config, client: &str, scope: Option<&str>) -> anyhow::Result<()> {
    let auth = crate::app::auth_from_config(config, format!("{}/auth/token", config.public_root()))?;
    let now = crate::auth::layer::unix_now();
    let t = auth.issue_for(client, scope, now).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", t.access_token);
    eprintln!("valid {} s, scope: {}", t.expires_in, t.scope);
    Ok(())
}

/// `nara-gateway client keygen --alg ES384|RS384 --out NAME`: a key pair for a new client.
pub fn client_keygen(alg: &str, out: &Path) -> anyhow::Result<()> {
    let alg: crate::auth::KeyAlg = alg.parse().map_err(|e| anyhow::anyhow!("--alg: {e}"))?;
    let keys = crate::auth::generate_client_keys(alg)?;
    let key_path = out.with_extension("key");
    let jwks_path = out.with_extension("jwks.json");
    for p in [&key_path, &jwks_path] {
        if p.exists() {
            anyhow::bail!("{} exists; not overwriting it", p.display());
        }
    }
    std::fs::write(&key_path, keys.private_pkcs8_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(&jwks_path, keys.jwks_json)?;
    println!("private key (keep it with the client): {}", key_path.display());
    println!("public JWKS (register it):             {}", jwks_path.display());
    println!("kid: {}", keys.kid);
    Ok(())
}

/// `nara-gateway client add …`: checks the key and appends an `[[auth.clients]]` entry to `file`.
pub fn client_add(
    file: &Path,
    id: &str,
    organization: &str,
    municipality: Option<&str>,
    scopes: &str,
    key: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(key).with_context(|| format!("--key: cannot read {}", key.display()))?;
    let jwks = if text.trim_start().starts_with('{') {
        text
    } else {
        crate::auth::keys::jwks_from_public_pem(&text).with_context(|| format!("--key: {}", key.display()))?.0
    };
    let scopes: Vec<String> = scopes.split_whitespace().map(str::to_owned).collect();
    let client = crate::auth::ClientConfig {
        id: id.to_owned(),
        organization: organization.to_owned(),
        municipality: municipality.map(str::to_owned),
        scopes,
        jwks: jwks.trim().to_owned(),
        name: None,
    };
    // Validate the new client the way start-up will.
    let check = crate::auth::AuthConfig { clients: vec![client.clone()], ..crate::auth::AuthConfig::default() };
    check.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::auth::keys::parse_client_jwks(&client.jwks).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let mut wrapper = toml::Table::new();
    wrapper.insert("clients".into(), toml::Value::try_from(vec![client])?);
    let mut outer = toml::Table::new();
    outer.insert("auth".into(), toml::Value::Table(wrapper));
    let block = toml::to_string(&outer)?;
    let mut existing = std::fs::read_to_string(file).unwrap_or_default();
    if !existing.is_empty() && !existing.ends_with('\n') {
        existing.push('\n');
    }
    existing.push('\n');
    existing.push_str(&block);
    let parsed: Result<toml::Table, _> = existing.parse();
    parsed.with_context(|| format!("{} would not be valid TOML after adding the client", file.display()))?;
    std::fs::write(file, existing)?;
    println!("registered client `{id}` in {}; restart the gateway to use it", file.display());
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
