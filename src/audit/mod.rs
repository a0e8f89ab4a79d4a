//! The PDL audit trail: every access to patient data, every write, ingest
//! and token grant (and every refusal) becomes a FHIR `AuditEvent`, written
//! durably before the response leaves and chained by hash so that changing
//! or removing an earlier entry is detected by [`verify`].
//!
//! Entries live in their own append-only table, not among the resources:
//! they are written far more often than resources, and only administrators
//! read them, through `GET /fhir/AuditEvent` (see [`fhir`]).

pub mod fhir;

use axum::http::StatusCode;

use crate::{
    access::Actor,
    fhir::format::{Seen, instant},
    json::{Object, Value},
    store::{AUDIT_GENESIS, AuditRecord, Store, StoreResult, audit_hash},
};

/// Identifier system of registered client ids.
pub const CLIENT_ID_SYSTEM: &str = "https://nara-gateway.se/fhir/NamingSystem/client-id";
/// Identifier system of HSA-ids.
pub const HSA_ID_SYSTEM: &str = "urn:oid:1.2.752.29.4.19";
/// The gateway's own audit event subtypes (ingest, transfer, token).
pub const SUBTYPE_SYSTEM: &str = "https://nara-gateway.se/fhir/CodeSystem/audit-event-subtype";

/// What happened, as an audit event type and subtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Read,
    Vread,
    Search,
    History,
    Create,
    Update,
    Delete,
    /// A batch or transaction Bundle.
    Bundle,
    /// A municipal record pushed to `/ingest`.
    Ingest,
    /// A transfer state change made by the gateway (e.g. `received`).
    Transfer,
    /// An access token granted or refused at `/auth/token`.
    Token,
    /// A request refused before it reached an interaction (no token, scope, binding).
    Refused,
    /// Reading the audit log itself.
    AuditRead,
}

impl Event {
    /// (type system, type code, type display, subtype system, subtype code, action)
    fn codes(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str, &'static str) {
        const REST: (&str, &str, &str) =
            ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation");
        const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
        let (ts, tc, td) = REST;
        match self {
            Event::Read => (ts, tc, td, INTERACTION, "read", "R"),
            Event::Vread => (ts, tc, td, INTERACTION, "vread", "R"),
            Event::Search => (ts, tc, td, INTERACTION, "search-type", "E"),
            Event::History => (ts, tc, td, INTERACTION, "history-instance", "R"),
            Event::Create => (ts, tc, td, INTERACTION, "create", "C"),
            Event::Update => (ts, tc, td, INTERACTION, "update", "U"),
            Event::Delete => (ts, tc, td, INTERACTION, "delete", "D"),
            Event::Bundle => (ts, tc, td, INTERACTION, "batch", "E"),
            Event::Ingest => (ts, tc, td, SUBTYPE_SYSTEM, "ingest", "C"),
            Event::Transfer => (ts, tc, td, SUBTYPE_SYSTEM, "transfer", "U"),
            Event::Token => (
                "http://dicom.nema.org/resources/ontology/DCM",
                "110114",
                "User Authentication",
                SUBTYPE_SYSTEM,
                "token",
                "E",
            ),
            Event::Refused => (ts, tc, td, SUBTYPE_SYSTEM, "refused", "E"),
            Event::AuditRead => (ts, tc, td, SUBTYPE_SYSTEM, "audit-read", "R"),
        }
    }
}

/// One audit entry being put together.
#[derive(Debug)]
pub struct Entry<'a> {
    pub actor: &'a Actor,
    pub event: Event,
    pub status: StatusCode,
    /// The resources shown or changed.
    pub seen: &'a [Seen],
    /// What was asked, e.g. `GET Observation?patient=…` (kept in the audit log only, never in logs).
    pub request: Option<&'a str>,
    /// Why it failed, for refusals.
    pub reason: Option<&'a str>,
}

impl Entry<'_> {
    /// The AuditEvent and the patients it concerns, ready to store.
    pub fn record(&self) -> AuditRecord {
        let event_id = uuid::Uuid::now_v7().to_string();
        let recorded_ms = crate::fhir::interactions::now_ms();
        let mut patients: Vec<String> = Vec::new();
        for s in self.seen {
            for p in s.patients.split(' ').filter(|p| !p.is_empty()) {
                if !patients.iter().any(|q| q == p) {
                    patients.push(p.to_owned());
                }
            }
        }
        let body = self.event_json(&event_id, recorded_ms, &patients).to_json();
        AuditRecord { event_id, recorded_ms, body, patients }
    }

    fn event_json(&self, id: &str, recorded_ms: i64, patients: &[String]) -> Value {
        let (ts, tc, td, ss, sc, action) = self.event.codes();
        let coding = |system: &str, code: &str, display: Option<&str>| {
            let mut c = Object::new();
            c.insert("system", system.into());
            c.insert("code", code.into());
            if let Some(d) = display {
                c.insert("display", d.into());
            }
            Value::Object(c)
        };
        let identifier = |system: &str, value: &str| {
            let mut i = Object::new();
            i.insert("system", system.into());
            i.insert("value", value.into());
            let mut r = Object::new();
            r.insert("identifier", Value::Object(i));
            Value::Object(r)
        };
        let mut o = Object::new();
        o.insert("resourceType", "AuditEvent".into());
        o.insert("id", id.into());
        let mut meta = Object::new();
        meta.insert("versionId", "1".into());
        meta.insert("lastUpdated", instant(recorded_ms).into());
        o.insert("meta", Value::Object(meta));
        o.insert("type", coding(ts, tc, Some(td)));
        o.insert("subtype", Value::Array(vec![coding(ss, sc, None)]));
        o.insert("action", action.into());
        o.insert("recorded", instant(recorded_ms).into());
        let outcome = match self.status.as_u16() {
            0..400 => "0",
            400..500 => "4",
            _ => "8",
        };
        o.insert("outcome", outcome.into());
        let mut desc = self.status.as_u16().to_string();
        if let Some(r) = self.reason {
            desc.push_str(": ");
            desc.push_str(r);
        }
        o.insert("outcomeDesc", desc.into());

        let mut client = Object::new();
        client.insert("who", identifier(CLIENT_ID_SYSTEM, &self.actor.client_id));
        client.insert("requestor", true.into());
        if let Some(addr) = &self.actor.address {
            let mut n = Object::new();
            n.insert("address", addr.as_str().into());
            n.insert("type", "2".into());
            client.insert("network", Value::Object(n));
        }
        let mut agents = vec![Value::Object(client)];
        if !self.actor.organization.is_empty() {
            let mut org = Object::new();
            let mut who = Object::new();
            who.insert("type", "Organization".into());
            let mut i = Object::new();
            i.insert("system", HSA_ID_SYSTEM.into());
            i.insert("value", self.actor.organization.as_str().into());
            who.insert("identifier", Value::Object(i));
            org.insert("who", Value::Object(who));
            org.insert("requestor", false.into());
            agents.push(Value::Object(org));
        }
        o.insert("agent", Value::Array(agents));

        let mut source = Object::new();
        source.insert("site", "nara-gateway".into());
        let mut observer = Object::new();
        observer.insert("display", "nara-gateway".into());
        source.insert("observer", Value::Object(observer));
        source.insert(
            "type",
            Value::Array(vec![coding(
                "http://terminology.hl7.org/CodeSystem/security-source-type",
                "4",
                Some("Application Server"),
            )]),
        );
        o.insert("source", Value::Object(source));

        let entity_type = |code: &str, display: &str| {
            coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", code, Some(display))
        };
        let mut entities = Vec::new();
        for p in patients {
            let mut e = Object::new();
            let mut what = Object::new();
            what.insert("reference", p.as_str().into());
            e.insert("what", Value::Object(what));
            e.insert("type", entity_type("1", "Person"));
            e.insert("role", coding("http://terminology.hl7.org/CodeSystem/object-role", "1", Some("Patient")));
            entities.push(Value::Object(e));
        }
        for s in self.seen {
            if patients.contains(&s.reference) {
                continue;
            }
            let mut e = Object::new();
            let mut what = Object::new();
            what.insert("reference", s.reference.as_str().into());
            e.insert("what", Value::Object(what));
            e.insert("type", entity_type("2", "System Object"));
            entities.push(Value::Object(e));
        }
        if let Some(q) = self.request {
            use base64::Engine;
            let mut e = Object::new();
            e.insert("type", entity_type("2", "System Object"));
            e.insert("role", coding("http://terminology.hl7.org/CodeSystem/object-role", "24", Some("Query")));
            e.insert("query", base64::engine::general_purpose::STANDARD.encode(q).into());
            entities.push(Value::Object(e));
        }
        if !entities.is_empty() {
            o.insert("entity", Value::Array(entities));
        }
        Value::Object(o)
    }
}

/// Writes one entry durably; returns when it is committed.
pub async fn append(store: &dyn Store, entry: &Entry<'_>) -> StoreResult<()> {
    store.append_audit(vec![entry.record()]).await
}

/// The result of checking the whole chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry links to its predecessor and the head agrees: `entries` checked.
    Intact { entries: u64 },
    /// The chain is broken at `seq`: an entry was changed, removed or inserted.
    Broken { seq: i64, reason: String },
}

/// Recomputes every hash of the audit chain, in order, and compares the end with the recorded head.
pub async fn verify(store: &dyn Store) -> StoreResult<Verdict> {
    // The head first: entries appended while the chain is read (by a gateway
    // serving this database) lie beyond it and are left for the next check.
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut prev = AUDIT_GENESIS.to_owned();
    let mut last_seq = 0;
    let mut count = 0u64;
    'pages: while last_seq < head_seq {
        let rows = store.audit_chain(last_seq, 5000).await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            if r.seq != last_seq + 1 {
                return Ok(Verdict::Broken {
                    seq: last_seq + 1,
                    reason: format!("entry {} is missing (the next entry is {})", last_seq + 1, r.seq),
                });
            }
            if r.prev_hash != prev {
                return Ok(Verdict::Broken {
                    seq: r.seq,
                    reason: "its link to the previous entry does not match that entry's hash".into(),
                });
            }
            if audit_hash(&prev, r.seq, r.recorded_ms, &r.body) != r.hash {
                return Ok(Verdict::Broken { seq: r.seq, reason: "its content does not match its hash".into() });
            }
            prev = r.hash;
            last_seq = r.seq;
            count += 1;
            if last_seq == head_seq {
                break 'pages;
            }
        }
    }
    if head_seq != last_seq || head_hash != prev {
        return Ok(Verdict::Broken {
            seq: head_seq.max(last_seq),
            reason: format!(
                "the recorded head is entry {head_seq} but the chain ends at entry {last_seq}: entries were removed or added"
            ),
        });
    }
    Ok(Verdict::Intact { entries: count })
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;
    use crate::{config::DatabaseConfig, store::sqlite::SqliteStore};

    fn actor() -> Actor {
        Actor {
            client_id: "lund-ehr".into(),
            organization: "SE2120001231-0001".into(),
            municipality: Some("1281".into()),
            cross_org: false,
            address: Some("127.0.0.1".into()),
            scopes: None,
        }
    }

    async fn store_with_entries(n: usize) -> (tempfile::TempDir, String, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/a.db", dir.path().display());
        let store = SqliteStore::open(&DatabaseConfig { url: url.clone(), ..DatabaseConfig::default() }).await.unwrap();
        let a = actor();
        let seen = [Seen { reference: "Observation/o1".into(), patients: "Patient/p1".into() }];
        for _ in 0..n {
            let e = Entry {
                actor: &a,
                event: Event::Read,
                status: StatusCode::OK,
                seen: &seen,
                request: None,
                reason: None,
            };
            append(&store, &e).await.unwrap();
        }
        // Entries reach audit_log from the journal in the background; reading the head waits for them.
        assert_eq!(store.audit_head().await.unwrap().0, n as i64);
        (dir, url, store)
    }

    async fn tamper(url: &str, sql: &str) {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    #[tokio::test]
    async fn an_untouched_chain_verifies_and_names_the_patient() {
        let (_d, _u, store) = store_with_entries(5).await;
        assert_eq!(verify(&store).await.unwrap(), Verdict::Intact { entries: 5 });
        let q = crate::store::AuditQuery { patients: Some(vec!["Patient/p1".into()]), count: 10, ..Default::default() };
        let rows = store.audit_entries(&q).await.unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows[0].body.contains("\"reference\":\"Patient/p1\""));
        assert!(rows[0].body.contains("\"value\":\"lund-ehr\""));
    }

    #[tokio::test]
    async fn a_changed_entry_breaks_the_chain_at_that_entry() {
        let (_d, url, store) = store_with_entries(4).await;
        tamper(&url, r#"UPDATE audit_log SET body = '{"resourceType":"AuditEvent","changed":1}' WHERE seq = 2"#).await;
        assert!(matches!(verify(&store).await.unwrap(), Verdict::Broken { seq: 2, .. }));
    }

    #[tokio::test]
    async fn a_removed_entry_is_detected_in_the_middle_and_at_the_end() {
        let (_d, url, store) = store_with_entries(4).await;
        tamper(&url, "DELETE FROM audit_log WHERE seq = 4").await;
        assert!(matches!(verify(&store).await.unwrap(), Verdict::Broken { .. }));
        tamper(&url, "DELETE FROM audit_log WHERE seq = 2").await;
        assert!(matches!(verify(&store).await.unwrap(), Verdict::Broken { seq: 2, .. }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_form_one_chain() {
        let (_d, _u, store) = store_with_entries(0).await;
        let store = std::sync::Arc::new(store);
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let a = actor();
                    let e = Entry {
                        actor: &a,
                        event: Event::Search,
                        status: StatusCode::OK,
                        seen: &[],
                        request: Some("GET /fhir/Observation"),
                        reason: None,
                    };
                    append(store.as_ref(), &e).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(verify(store.as_ref()).await.unwrap(), Verdict::Intact { entries: 40 });
    }
}
