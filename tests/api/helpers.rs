//! `spawn_app()`: the real router on port 0 with its own database (a SQLite
//! file, or a PostgreSQL database when `NARA_TEST_POSTGRES_URL` is set), and a
//! small HTTP client that records every FHIR body the gateway emits (for
//! `fhir-validate` in CI, when `NARA_TEST_EMIT_DIR` is set).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use nara_gateway::{app::AppState, config::Config, test_support::TestDb};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;

pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/fhir`
    pub base: String,
    pub client: reqwest::Client,
    /// A region client's access token (all resource scopes), sent unless a request names its own.
    pub token: String,
    /// The running gateway's state, for minting other clients' tokens.
    pub state: AppState,
    /// The app's database (SQLite, or PostgreSQL with `NARA_TEST_POSTGRES_URL`),
    /// removed after the server stopped.
    _db: TestDb,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts a gateway on a fresh database with extra `NARA_*` settings.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let db = TestDb::new().await.expect("a test database");
    let mut env = vec![
        ("NARA_DATABASE__URL".to_string(), db.url.clone()),
        ("NARA_SERVER__LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("NARA_DATABASE__SQLITE_SYNCHRONOUS".to_string(), "normal".to_string()),
        ("NARA_SERVER__TLS__ENABLED".to_string(), "false".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::load(None, env).expect("test config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let state = AppState::open_at(config, addr).await.expect("open state");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nara_gateway::app::serve(state.clone(), listener, async move {
        let _ = rx.await;
    }));
    let mut app = TestApp {
        addr,
        base: format!("http://{addr}/fhir"),
        client: reqwest::Client::new(),
        token: String::new(),
        state,
        _db: db,
        stop: Some(tx),
    };
    app.token = app.token_for("region-skane", None);
    app
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A response, with the body kept as text (to check exact bytes) and as JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `id` of the returned resource.
    pub fn id(&self) -> String {
        self.json["id"].as_str().unwrap_or_else(|| panic!("no id in {}", self.text)).to_string()
    }
    /// Every issue's expression of an OperationOutcome body, flattened.
    pub fn issue_expressions(&self) -> Vec<String> {
        self.json["issue"]
            .as_array()
            .map(|issues| {
                issues
                    .iter()
                    .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn assert_outcome(&self, status: u16, expression: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.json["resourceType"], "OperationOutcome", "body: {}", self.text);
        assert!(
            self.issue_expressions().iter().any(|e| e == expression),
            "expected an issue at {expression}, got {:?}",
            self.issue_expressions()
        );
    }
    pub fn link(&self, rel: &str) -> Option<String> {
        self.json["link"].as_array()?.iter().find(|l| l["relation"] == rel)?["url"].as_str().map(str::to_owned)
    }
}

static EMITTED: AtomicUsize = AtomicUsize::new(0);

/// Saves a FHIR response body for external validation when `NARA_TEST_EMIT_DIR` is set.
fn emit(text: &str, headers: &HeaderMap) {
    let Ok(dir) = std::env::var("NARA_TEST_EMIT_DIR") else { return };
    let json = headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("json"));
    if !json || !text.contains("\"resourceType\"") {
        return;
    }
    let Ok(doc) = serde_json::from_str::<Value>(text) else { return };
    // FHIR resources, and the OperationOutcomes inside ingest receipts.
    let receipts = doc.get("receipts").and_then(Value::as_array).cloned().unwrap_or_else(|| vec![doc.clone()]);
    let mut bodies: Vec<String> = Vec::new();
    if doc.get("resourceType").is_some() {
        bodies.push(text.to_owned());
    }
    for r in &receipts {
        if let Some(outcome) = r.get("outcome").filter(|o| o.get("resourceType").is_some()) {
            bodies.push(outcome.to_string());
        }
    }
    let _ = std::fs::create_dir_all(&dir);
    for body in bodies {
        let n = EMITTED.fetch_add(1, Ordering::Relaxed);
        let _ = std::fs::write(format!("{dir}/{}-{n:05}.json", std::process::id()), body);
    }
}

impl TestApp {
    /// An access token for one of the example clients, as `nara-gateway token issue` makes it.
    pub fn token_for(&self, client: &str, scope: Option<&str>) -> String {
        let auth = self.state.auth.as_ref().expect("authentication is on in tests");
        auth.issue_for(client, scope, nara_gateway::auth::layer::unix_now()).expect("token issued").access_token
    }

    /// Sends a request to a path under the server root (e.g. `/fhir/Patient`).
    pub async fn send(&self, method: Method, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let url = if path.starts_with("http") { path.to_string() } else { format!("http://{}{path}", self.addr) };
        let mut req = self.client.request(method, url);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
            req = req.bearer_auth(&self.token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                req = req.header("content-type", "application/fhir+json");
            }
            req = req.body(b.to_string());
        }
        let r = req.send().await.expect("request sent");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        emit(&text, &headers);
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, text, json }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: &str) -> Resp {
        self.send(Method::POST, path, Some(body), &[]).await
    }
    pub async fn put(&self, path: &str, body: &str) -> Resp {
        self.send(Method::PUT, path, Some(body), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Creates a resource and returns its id, asserting 201.
    pub async fn create(&self, ty: &str, body: &str) -> String {
        let r = self.post(&format!("/fhir/{ty}"), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "create {ty}: {}", r.text);
        r.id()
    }
}

/// A valid Patient with the published test personnummer.
pub fn patient_json(family: &str, pnr: &str) -> String {
    format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"http://electronichealth.se/identifier/personnummer","value":"{pnr}"}}],"name":[{{"family":"{family}","given":["Tolvan"]}}],"gender":"male","birthDate":"1912-12-12"}}"#
    )
}

/// A valid Observation about `Patient/{patient}`.
pub fn observation_json(patient: &str, category: &str, code: &str, when: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{category}"}}]}}],"code":{{"coding":[{{"system":"http://hl7.org/fhir/sid/icf","code":"{code}"}}]}},"subject":{{"reference":"Patient/{patient}"}},"effectiveDateTime":"{when}","valueString":"Klarar sig själv"}}"#
    )
}
