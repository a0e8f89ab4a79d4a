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
    json::write_string,
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
        let body = self.event_json(&event_id, recorded_ms, &patients);
        AuditRecord { event_id, recorded_ms, body, patients }
    }

    /// The AuditEvent as compact JSON, written straight into text: built as
    /// a tree of values first, it cost an audited read a sixth of its
    /// processor time.
    fn event_json(&self, id: &str, recorded_ms: i64, patients: &[String]) -> String {
        let (ts, tc, td, ss, sc, action) = self.event.codes();
        let at = instant(recorded_ms);
        let mut o = String::with_capacity(1536);
        o.push_str(r#"{"resourceType":"AuditEvent","id":"#);
        write_string(id, &mut o);
        o.push_str(r#","meta":{"versionId":"1","lastUpdated":"#);
        write_string(&at, &mut o);
        o.push_str(r#"},"type":"#);
        coding(&mut o, ts, tc, Some(td));
        o.push_str(r#","subtype":["#);
        coding(&mut o, ss, sc, None);
        o.push_str(r#"],"action":"#);
        write_string(action, &mut o);
        o.push_str(r#","recorded":"#);
        write_string(&at, &mut o);
        o.push_str(match self.status.as_u16() {
            0..400 => r#","outcome":"0""#,
            400..500 => r#","outcome":"4""#,
            _ => r#","outcome":"8""#,
        });
        let mut desc = self.status.as_u16().to_string();
        if let Some(r) = self.reason {
            desc.push_str(": ");
            desc.push_str(r);
        }
        o.push_str(r#","outcomeDesc":"#);
        write_string(&desc, &mut o);

        o.push_str(r#","agent":[{"who":{"identifier":{"system":"#);
        write_string(CLIENT_ID_SYSTEM, &mut o);
        o.push_str(r#","value":"#);
        write_string(&self.actor.client_id, &mut o);
        o.push_str(r#"}},"requestor":true"#);
        if let Some(addr) = &self.actor.address {
            o.push_str(r#","network":{"address":"#);
            write_string(addr, &mut o);
            o.push_str(r#","type":"2"}"#);
        }
        o.push('}');
        if !self.actor.organization.is_empty() {
            o.push_str(r#",{"who":{"type":"Organization","identifier":{"system":"#);
            write_string(HSA_ID_SYSTEM, &mut o);
            o.push_str(r#","value":"#);
            write_string(&self.actor.organization, &mut o);
            o.push_str(r#"}},"requestor":false}"#);
        }
        o.push_str(r#"],"source":{"site":"nara-gateway","observer":{"display":"nara-gateway"},"type":["#);
        coding(&mut o, "http://terminology.hl7.org/CodeSystem/security-source-type", "4", Some("Application Server"));
        o.push_str("]}");

        const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
        const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
        let mut first = true;
        let mut entity = |o: &mut String| {
            o.push_str(if first { r#","entity":[{"# } else { ",{" });
            first = false;
        };
        for p in patients {
            entity(&mut o);
            o.push_str(r#""what":{"reference":"#);
            write_string(p, &mut o);
            o.push_str(r#"},"type":"#);
            coding(&mut o, ENTITY_TYPE, "1", Some("Person"));
            o.push_str(r#","role":"#);
            coding(&mut o, OBJECT_ROLE, "1", Some("Patient"));
            o.push('}');
        }
        for s in self.seen {
            if patients.contains(&s.reference) {
                continue;
            }
            entity(&mut o);
            o.push_str(r#""what":{"reference":"#);
            write_string(&s.reference, &mut o);
            o.push_str(r#"},"type":"#);
            coding(&mut o, ENTITY_TYPE, "2", Some("System Object"));
            o.push('}');
        }
        if let Some(q) = self.request {
            use base64::Engine;
            entity(&mut o);
            o.push_str(r#""type":"#);
            coding(&mut o, ENTITY_TYPE, "2", Some("System Object"));
            o.push_str(r#","role":"#);
            coding(&mut o, OBJECT_ROLE, "24", Some("Query"));
            o.push_str(r#","query":""#);
            base64::engine::general_purpose::STANDARD.encode_string(q, &mut o);
            o.push_str(r#""}"#);
        }
        if !first {
            o.push(']');
        }
        o.push('}');
        o
    }
}

/// Appends a Coding object.
fn coding(o: &mut String, system: &str, code: &str, display: Option<&str>) {
    o.push_str(r#"{"system":"#);
    write_string(system, o);
    o.push_str(r#","code":"#);
    write_string(code, o);
    if let Some(d) = display {
        o.push_str(r#","display":"#);
        write_string(d, o);
    }
    o.push('}');
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

    #[test]
    fn the_audit_event_is_written_in_full_and_escaped() {
        let seen = [
            Seen { reference: "Observation/o1".into(), patients: "Patient/p1".into() },
            Seen { reference: "Patient/p1".into(), patients: "Patient/p1".into() },
            Seen { reference: "Organization/x\"y".into(), patients: "".into() },
        ];
        let a = Actor { municipality: None, ..actor() };
        let e = Entry {
            actor: &a,
            event: Event::Ingest,
            status: StatusCode::FORBIDDEN,
            seen: &seen,
            request: Some("POST /ingest/x?a=1"),
            reason: Some("not yours"),
        };
        let full = e.event_json("ev-1", 1_700_000_000_123, &["Patient/p1".to_string()]);
        assert_eq!(
            full,
            r#"{"resourceType":"AuditEvent","id":"ev-1","meta":{"versionId":"1","lastUpdated":"2023-11-14T22:13:20.123Z"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"RESTful Operation"},"subtype":[{"system":"https://nara-gateway.se/fhir/CodeSystem/audit-event-subtype","code":"ingest"}],"action":"C","recorded":"2023-11-14T22:13:20.123Z","outcome":"4","outcomeDesc":"403: not yours","agent":[{"who":{"identifier":{"system":"https://nara-gateway.se/fhir/NamingSystem/client-id","value":"lund-ehr"}},"requestor":true,"network":{"address":"127.0.0.1","type":"2"}},{"who":{"type":"Organization","identifier":{"system":"urn:oid:1.2.752.29.4.19","value":"SE2120001231-0001"}},"requestor":false}],"source":{"site":"nara-gateway","observer":{"display":"nara-gateway"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]},"entity":[{"what":{"reference":"Patient/p1"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1","display":"Person"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1","display":"Patient"}},{"what":{"reference":"Observation/o1"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"}},{"what":{"reference":"Organization/x\"y"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"}},{"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"24","display":"Query"},"query":"UE9TVCAvaW5nZXN0L3g/YT0x"}]}"#
        );
        let region = Actor { client_id: "region".into(), organization: String::new(), address: None, ..actor() };
        let e = Entry {
            actor: &region,
            event: Event::Read,
            status: StatusCode::OK,
            seen: &[],
            request: None,
            reason: None,
        };
        assert_eq!(
            e.event_json("ev-2", 1_700_000_000_123, &[]),
            r#"{"resourceType":"AuditEvent","id":"ev-2","meta":{"versionId":"1","lastUpdated":"2023-11-14T22:13:20.123Z"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"RESTful Operation"},"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"read"}],"action":"R","recorded":"2023-11-14T22:13:20.123Z","outcome":"0","outcomeDesc":"200","agent":[{"who":{"identifier":{"system":"https://nara-gateway.se/fhir/NamingSystem/client-id","value":"region"}},"requestor":true}],"source":{"site":"nara-gateway","observer":{"display":"nara-gateway"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]}}"#
        );
        for body in [full, e.event_json("ev-2", 0, &[])] {
            serde_json::from_str::<serde_json::Value>(&body).expect("valid JSON");
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
        let conn = rusqlite::Connection::open(url.trim_start_matches("sqlite://")).unwrap();
        conn.execute_batch(sql).unwrap();
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
