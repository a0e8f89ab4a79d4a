//! Crash safety: the real binary, killed with SIGKILL under write load,
//! restarted on the same database file, still has everything it acknowledged.

use std::{process::Stdio, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::Mutex,
};

use crate::helpers::patient_json;

/// A region client's token from `nara-gateway token issue`, as an operator gets one.
pub fn cli_token(client: &str) -> String {
    cli_token_with(client, &[])
}

/// The same, with extra `NARA_*` settings (those the gateway runs with, e.g. its public address).
pub fn cli_token_with(client: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
        .args(["token", "issue", "--client", client])
        .env("NARA_SERVER__TLS__ENABLED", "false")
        .envs(env.iter().copied())
        .output()
        .expect("run token issue");
    assert!(out.status.success(), "token issue failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// A reqwest client that sends `token` on every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// Runs `nara-gateway audit verify` on `db` and asserts the chain is intact.
pub fn assert_audit_verifies(db: &str) {
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
        .args(["audit", "verify"])
        .env("NARA_DATABASE__URL", db)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// Creates a Patient named `family` and returns the answer (201 asserted).
async fn create_patient(client: &reqwest::Client, addr: &str, family: &str) -> reqwest::Response {
    let created = client
        .post(format!("{addr}/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .body(patient_json(family, "191212121212"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created
}

/// Starts the gateway binary on `db` (with extra `NARA_*` settings) and returns it with its address.
pub async fn start(db: &str, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
        .arg("serve")
        .env_remove("MIMALLOC_PURGE_DELAY")
        .env_remove("MALLOC_ARENA_MAX")
        .envs(env.iter().copied())
        .env("NARA_SERVER__LISTEN", "127.0.0.1:0")
        .env("NARA_DATABASE__URL", db)
        .env("NARA_SERVER__TLS__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("gateway printed its address in time")
        .expect("read stdout")
        .expect("a line");
    let addr = line.strip_prefix("listening on ").expect("listening line").to_string();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_and_restart() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    let db = test_db.url.clone();
    let (mut child, addr) = start(&db, &[]).await;
    let client = client_with(&cli_token("region-skane"));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, addr, acknowledged, stop) = (client.clone(), addr.clone(), acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = patient_json(&format!("Writer{w}n{i}"), "191212121212");
                let sent = client
                    .post(format!("{addr}/fhir/Patient"))
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await;
                let Ok(resp) = sent else { break };
                if resp.status() != 201 {
                    continue;
                }
                let location = resp.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned);
                if let Some(loc) = location {
                    acknowledged.lock().await.push(loc);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("the process ended");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() > 20, "the load produced writes ({})", acknowledged.len());

    let (_child, addr2) = start(&db, &[]).await;
    let mut missing = Vec::new();
    for loc in &acknowledged {
        let path = loc.split("/fhir/").nth(1).unwrap();
        let resp = client.get(format!("{addr2}/fhir/{path}")).send().await.unwrap();
        if resp.status() != 200 {
            missing.push(loc.clone());
        }
    }
    assert!(missing.is_empty(), "{} of {} acknowledged creates lost: {missing:?}", missing.len(), acknowledged.len());
}

#[tokio::test]
async fn sigterm_stops_the_gateway_cleanly() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    let db = test_db.url.clone();
    let (mut child, addr) = start(&db, &[]).await;
    let client = client_with(&cli_token("region-skane"));
    let created = create_patient(&client, &addr, "Term").await;
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("stopped in time").unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let (_again, addr2) = start(&db, &[]).await;
    let path = created.headers()["location"].to_str().unwrap().split("/fhir/").nth(1).unwrap().to_string();
    assert_eq!(client.get(format!("{addr2}/fhir/{path}")).send().await.unwrap().status(), 200);
}

/// `serve` restarts itself (same process) with the allocator settings it
/// lacks, and keeps those the operator set.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_served_process_runs_with_the_allocator_settings() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    let (child, addr) = start(&test_db.url, &[("MALLOC_ARENA_MAX", "4")]).await;
    let pid = child.id().expect("running");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(env.contains(&&b"MIMALLOC_PURGE_DELAY=25"[..]), "the missing setting is added");
    assert!(env.contains(&&b"MALLOC_ARENA_MAX=4"[..]), "the operator's own is kept");
    assert!(!env.contains(&&b"MALLOC_ARENA_MAX=1"[..]));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(args[1], b"serve", "same arguments");
    let health = reqwest::get(format!("{addr}/health/ready")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// Every read the gateway answered has its audit entry after a SIGKILL (on
/// SQLite the entries of reads are in the audit journal until imported).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answered_reads_keep_their_audit_entries_across_sigkill() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    let db = test_db.url.clone();
    let (mut child, addr) = start(&db, &[]).await;
    let client = client_with(&cli_token("region-skane"));
    let created = create_patient(&client, &addr, "Läsaren").await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let id = location.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (client, addr, id, answered, stop) =
            (client.clone(), addr.clone(), id.clone(), answered.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(format!("{addr}/fhir/Patient/{id}")).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("the process ended");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    assert!(answered > 100, "the load produced reads ({answered})");

    let (_child, addr2) = start(&db, &[]).await;
    let admin = client_with(&cli_token("nara-admin"));
    let mut url = format!("{addr2}/fhir/AuditEvent?patient=Patient/{id}&_count=1000");
    let mut reads = 0;
    loop {
        let page: serde_json::Value = admin.get(&url).send().await.unwrap().json().await.unwrap();
        let entries = page["entry"].as_array().cloned().unwrap_or_default();
        reads += entries.iter().filter(|e| e["resource"]["subtype"][0]["code"] == "read").count();
        let next = page["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "next")).cloned();
        match next {
            Some(n) if !entries.is_empty() => url = n["url"].as_str().unwrap().to_owned(),
            _ => break,
        }
    }
    assert!(reads >= answered, "{answered} reads answered before the crash, {reads} in the audit log");
    assert_audit_verifies(&db);
}

/// A second gateway on the same SQLite file refuses to start (it could not
/// write audit entries: the first one holds the audit journal).
#[tokio::test]
async fn a_second_gateway_on_the_same_sqlite_file_refuses_to_start() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    if !test_db.url.starts_with("sqlite:") {
        return; // PostgreSQL serves any number of gateways (tests/api/replicas.rs)
    }
    let (_first, addr) = start(&test_db.url, &[]).await;
    let second = Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
        .arg("serve")
        .env("NARA_SERVER__LISTEN", "127.0.0.1:0")
        .env("NARA_DATABASE__URL", &test_db.url)
        .env("NARA_SERVER__TLS__ENABLED", "false")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), second).await.expect("it stops").unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only one gateway may serve a SQLite database"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    // The first one still serves.
    let health = reqwest::get(format!("{addr}/health/ready")).await.unwrap();
    assert_eq!(health.status(), 200);
}
