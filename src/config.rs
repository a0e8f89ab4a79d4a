//! Layered configuration: built-in defaults, then the TOML file, then
//! `NARA_*` environment variables (`__` between levels), validated at load so
//! that a mistake stops start-up with the key and the reason.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

/// The whole configuration. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener and public addressing.
    pub server: ServerConfig,
    /// Where resources are stored.
    pub database: DatabaseConfig,
    /// FHIR API behaviour.
    pub fhir: FhirConfig,
    /// Log output.
    pub log: LogConfig,
    /// Tokens, registered clients, the gateway's signing key.
    pub auth: crate::auth::AuthConfig,
    /// Mapping definitions for the municipal push.
    pub mappings: MappingsConfig,
    /// The municipal push endpoints.
    pub ingest: IngestConfig,
    /// Rest-hook Subscription delivery.
    pub subscriptions: SubscriptionsConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// Base of the retry schedule in ms: a failed notification is retried after
    /// 1, 5, 30, 120 and 600 times it, then every 600 times it (±20 % jitter).
    pub retry_base_ms: u64,
    /// Seconds of failures in a row after which a Subscription's status becomes `error`.
    pub error_after_secs: u64,
    /// Timeout of one delivery, seconds.
    pub timeout_secs: u64,
    /// How often the worker looks for due notifications, ms.
    pub poll_ms: u64,
    /// Accept http:// endpoints anywhere (otherwise https only).
    pub allow_http: bool,
    /// Accept http:// endpoints on loopback addresses (a receiver on the same host).
    pub allow_loopback_http: bool,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            retry_base_ms: 1000,
            error_after_secs: 3600,
            timeout_secs: 10,
            poll_ms: 200,
            allow_http: false,
            allow_loopback_http: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingsConfig {
    /// Folder of mapping definitions (`<name>/mapping.toml`) and `reference/`.
    /// When it is the default `mappings` and does not exist, the shipped
    /// mappings compiled into the binary are used.
    pub dir: std::path::PathBuf,
}

impl Default for MappingsConfig {
    fn default() -> Self {
        MappingsConfig { dir: DEFAULT_MAPPINGS_DIR.into() }
    }
}

/// The default `mappings.dir`.
pub const DEFAULT_MAPPINGS_DIR: &str = "mappings";

impl MappingsConfig {
    /// Whether a missing folder may fall back to the shipped mappings.
    pub fn may_use_built_in(&self) -> bool {
        self.dir == Path::new(DEFAULT_MAPPINGS_DIR)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest accepted body of `POST /ingest/{mapping}/batch`, in bytes.
    pub max_batch_bytes: usize,
    /// Records of one batch written in one database transaction.
    pub batch_chunk: usize,
    /// Batch requests mapped and written at the same time; others wait their
    /// turn. Writes queue for the database anyway, so more only costs memory.
    pub max_concurrent_batches: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { max_batch_bytes: 64 * 1024 * 1024, batch_chunk: 250, max_concurrent_batches: 2 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `address:port` to listen on; port 0 picks a free port (printed at start).
    pub listen: String,
    /// Absolute base URL used in FHIR links (`fullUrl`, paging); when empty,
    /// links are built from the request's `Host` header.
    pub public_base_url: String,
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// TLS and mutual TLS for the listener.
    pub tls: crate::tls::TlsSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            public_base_url: String::new(),
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_secs: 30,
            tls: crate::tls::TlsSettings::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (the file and its folder are created) or `postgres://…`.
    pub url: String,
    /// Connections in the read pool.
    pub max_connections: u32,
    /// SQLite durability: `full` syncs the write-ahead log at every commit
    /// (survives power loss); `normal` survives process crashes only.
    pub sqlite_synchronous: String,
    /// Megabytes of resource text kept in memory for reads by id (0: no cache).
    pub cache_mb: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/nara.db".into(),
            max_connections: 4,
            sqlite_synchronous: "full".into(),
            cache_mb: 16,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// Page size when a search gives no `_count`.
    pub default_count: u32,
    /// Largest page size; a larger `_count` is capped to it.
    pub max_count: u32,
    /// Most resources `_include` and `_revinclude` add to one page.
    pub max_include: u32,
    /// Most entries in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
}

impl Default for FhirConfig {
    fn default() -> Self {
        FhirConfig { default_count: 50, max_count: 1000, max_include: 1000, max_bundle_entries: 10_000 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human readable) or `json` (one object per line).
    pub format: String,
    /// Filter in `tracing` syntax, e.g. `info` or `nara_gateway=debug,info`;
    /// the `RUST_LOG` variable wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

/// A configuration problem, naming the key (or file) and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.into(), message: message.into() }
}

impl Config {
    /// Loads the configuration: defaults, then `file` (or `nara-gateway.toml`
    /// when present and no file is named), then the `NARA_*` variables in `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).map_err(|e| key_error("", e.to_string()))?;
        let default_file = Path::new("nara-gateway.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
            let file_table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax { path: shown, message: e.to_string() })?;
            merge(&mut table, file_table);
        }
        // `NARA_TEST_*` variables belong to the test suite, not to the gateway.
        let overrides: BTreeMap<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("NARA_") && !k.starts_with("NARA_TEST_")).collect();
        for (name, raw) in overrides {
            let path: Vec<String> = name["NARA_".len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_from_env(&mut table, &path, &raw)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            key_error(if key == "." { "" } else { &key }, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| key_error("server.listen", format!("`{}` is not an address:port", self.server.listen)))?;
        let base = &self.server.public_base_url;
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return Err(key_error("server.public_base_url", "must be an absolute http:// or https:// URL"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(key_error("server.max_body_bytes", "must be at least 1024"));
        }
        self.server.tls.validate().map_err(|e| key_error(e.key, e.message))?;
        self.auth.validate().map_err(|e| match e.split_once(": ") {
            Some((key, message)) => key_error(key, message),
            None => key_error("auth", e),
        })?;
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(key_error("database.url", "must start with sqlite:// or postgres://"));
        }
        if self.database.max_connections == 0 {
            return Err(key_error("database.max_connections", "must be at least 1"));
        }
        if !matches!(self.database.sqlite_synchronous.as_str(), "full" | "normal") {
            return Err(key_error("database.sqlite_synchronous", "must be `full` or `normal`"));
        }
        if self.fhir.default_count == 0 || self.fhir.default_count > self.fhir.max_count {
            return Err(key_error("fhir.default_count", "must be between 1 and fhir.max_count"));
        }
        if self.fhir.max_bundle_entries == 0 {
            return Err(key_error("fhir.max_bundle_entries", "must be at least 1"));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(key_error("log.format", "must be `text` or `json`"));
        }
        if self.ingest.max_batch_bytes < 1024 {
            return Err(key_error("ingest.max_batch_bytes", "must be at least 1024"));
        }
        if self.subscriptions.retry_base_ms == 0 || self.subscriptions.retry_base_ms > 3_600_000 {
            return Err(key_error("subscriptions.retry_base_ms", "must be between 1 and 3600000"));
        }
        if !(1..=300).contains(&self.subscriptions.timeout_secs) {
            return Err(key_error("subscriptions.timeout_secs", "must be between 1 and 300"));
        }
        if !(10..=60_000).contains(&self.subscriptions.poll_ms) {
            return Err(key_error("subscriptions.poll_ms", "must be between 10 and 60000"));
        }
        if self.ingest.max_concurrent_batches == 0 {
            return Err(key_error("ingest.max_concurrent_batches", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.ingest.batch_chunk) {
            return Err(key_error("ingest.batch_chunk", "must be between 1 and 10000"));
        }
        Ok(())
    }

    /// The server root for absolute URLs when no request is at hand (the token
    /// endpoint's audience): `server.public_base_url`, else the listen address.
    pub fn public_root(&self) -> String {
        match self.public_base() {
            Some(b) => b.to_owned(),
            None => {
                let scheme = if self.server.tls.enabled { "https" } else { "http" };
                format!("{scheme}://{}", self.server.listen)
            }
        }
    }

    /// The base URL for FHIR links, without trailing slash, when configured.
    pub fn public_base(&self) -> Option<&str> {
        let b = self.server.public_base_url.trim_end_matches('/');
        (!b.is_empty()).then_some(b)
    }
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Sets one `NARA_A__B` override, typed like the value it replaces.
fn set_from_env(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), ConfigError> {
    let key = path.join(".");
    let (last, parents) = path.split_last().ok_or_else(|| key_error(&key, "empty variable name"))?;
    let mut at = table;
    for p in parents {
        let entry = at.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(key_error(&key, format!("`{p}` is not a table"))),
        };
    }
    let value = match at.get(last) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| key_error(&key, format!("`{raw}` is not an integer")))?)
        }
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            raw.trim().parse().map_err(|_| key_error(&key, format!("`{raw}` is not true or false")))?,
        ),
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| key_error(&key, format!("`{raw}` is not a number")))?)
        }
        Some(toml::Value::Array(_)) => {
            let doc: toml::Table = format!("v = {raw}")
                .parse()
                .map_err(|_| key_error(&key, "expects a TOML array, e.g. [\"a\", \"b\"]"))?;
            doc.get("v").cloned().unwrap_or(toml::Value::Array(Vec::new()))
        }
        _ => toml::Value::String(raw.to_owned()),
    };
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\n[fhir]\nmax_count = 500\n").unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("NARA_SERVER__LISTEN", "127.0.0.1:0"),
                ("NARA_FHIR__DEFAULT_COUNT", "20"),
                ("OTHER", "x"),
                ("NARA_TEST_EMIT_DIR", "/tmp/x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:0");
        assert_eq!(c.fhir.max_count, 500);
        assert_eq!(c.fhir.default_count, 20);
        assert_eq!(c.database.url, "sqlite://data/nara.db");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::load(None, env(&[("NARA_SERVER__LISEN", "x")])).unwrap_err().to_string();
        assert!(err.contains("server") && err.contains("lisen"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_named() {
        let err = Config::load(None, env(&[("NARA_FHIR__MAX_COUNT", "many")])).unwrap_err().to_string();
        assert!(err.contains("fhir.max_count"), "{err}");
        let err = Config::load(None, env(&[("NARA_SERVER__LISTEN", "nowhere")])).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
        let err = Config::load(None, env(&[("NARA_DATABASE__URL", "mysql://x")])).unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn file_type_error_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[database]\nmax_connections = \"eight\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("database.max_connections"), "{err}");
    }
}
