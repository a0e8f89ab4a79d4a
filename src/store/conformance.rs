//! Store conformance tests: the same behaviour from every backend. They run
//! on SQLite, and on PostgreSQL when `NARA_TEST_POSTGRES_URL` is set (each
//! test in a database of its own, see [`crate::test_support::TestDb`]).

use std::sync::Arc;

use super::{AuditRecord, Filter, HistoryQuery, Notification, SearchPlan, Store, StoreError, open, plan::Atom, sql};
use crate::{
    audit::{Verdict, verify},
    config::DatabaseConfig,
    fhir::search::{extract::IndexValue, values::TokenQuery},
    store::NewVersion,
    test_support::TestDb,
};

async fn store() -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new().await.expect("test database");
    let config = DatabaseConfig { url: db.url.clone(), ..DatabaseConfig::default() };
    let store = open(&config).await.expect("open the store");
    (db, store)
}

fn patient(id: &str, identifier: &str) -> String {
    format!(
        r#"{{"resourceType":"Patient","id":"{id}","identifier":[{{"system":"urn:test","value":"{identifier}"}}],"extension":[{{"url":"urn:x","valueDecimal":12500.00}}]}}"#
    )
}

async fn put(store: &dyn Store, id: &str, version: i64, body: &str) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.put(NewVersion {
        ty: "Patient",
        id,
        version,
        last_updated_ms: 1_700_000_000_000 + version,
        method: if version == 1 { "POST" } else { "PUT" },
        body,
        index: vec![(
            "identifier",
            IndexValue::Token { system: Some("urn:test".into()), code: Some(body.len().to_string()), text: None },
        )],
        access: "",
        patients: "",
    })
    .await?;
    tx.commit().await
}

fn by_identifier(value: &str) -> SearchPlan {
    let mut plan = SearchPlan::new("Patient");
    plan.count = 10;
    plan.filters.push(Filter::Any(vec![Atom::Token {
        param: "identifier",
        query: TokenQuery::SystemCode("urn:test".into(), value.into()),
    }]));
    plan
}

/// The search index of a resource's JSON text, as the gateway writes it.
fn index_of(body: &str) -> Vec<(&'static str, IndexValue)> {
    let resource = crate::json::Value::from(serde_json::from_str::<serde_json::Value>(body).unwrap());
    crate::fhir::search::extract::extract(&resource).into_iter().map(|(p, v)| (p.code, v)).collect()
}

/// Observations matching `atom`, ten to a page.
fn observations_where(atom: Atom) -> SearchPlan {
    let mut plan = SearchPlan::new("Observation");
    plan.count = 10;
    plan.filters.push(Filter::Any(vec![atom]));
    plan
}

#[tokio::test]
async fn the_stored_text_is_read_back_byte_for_byte_in_every_version() {
    let (_db, store) = store().await;
    let v1 = patient("p1", "a");
    let v2 = patient("p1", "ab");
    put(&*store, "p1", 1, &v1).await.unwrap();
    put(&*store, "p1", 2, &v2).await.unwrap();
    let current = store.read("Patient", "p1").await.unwrap().unwrap();
    assert_eq!((current.version, &*current.body), (2, v2.as_str()));
    assert_eq!(&*store.vread("Patient", "p1", 1).await.unwrap().unwrap().body, v1.as_str());
    let history =
        store.history(&HistoryQuery { id: Some("p1".into()), count: 10, ..HistoryQuery::default() }).await.unwrap();
    assert_eq!(history.rows.iter().map(|r| r.version).collect::<Vec<_>>(), vec![2, 1]);
    // The index follows the current version only.
    let found = store.search(&by_identifier(&v2.len().to_string())).await.unwrap();
    assert_eq!(found.rows.len(), 1);
    assert!(store.search(&by_identifier(&v1.len().to_string())).await.unwrap().rows.is_empty());
}

#[tokio::test]
async fn a_duplicate_version_is_a_conflict_and_a_dropped_transaction_leaves_nothing() {
    let (_db, store) = store().await;
    put(&*store, "p1", 1, &patient("p1", "a")).await.unwrap();
    let dup = put(&*store, "p1", 1, &patient("p1", "b")).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    {
        let mut tx = store.begin().await.unwrap();
        let body = patient("p2", "c");
        tx.put(NewVersion::test_patient("p2", &body)).await.unwrap();
        // dropped without commit
    }
    put(&*store, "p3", 1, &patient("p3", "d")).await.unwrap();
    assert!(store.read("Patient", "p2").await.unwrap().is_none());
    assert!(store.read("Patient", "p3").await.unwrap().is_some());
    assert_eq!(store.read("Patient", "p1").await.unwrap().unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_resource_take_turns_and_none_is_lost() {
    let (_db, store) = store().await;
    put(&*store, "p1", 1, &patient("p1", "0")).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    let mut tx = store.begin().await.unwrap();
                    let current = tx.current("Patient", "p1").await.unwrap().unwrap();
                    let body = patient("p1", &i.to_string());
                    let written = tx
                        .put(NewVersion {
                            ty: "Patient",
                            id: "p1",
                            version: current.version + 1,
                            last_updated_ms: 1,
                            method: "PUT",
                            body: &body,
                            index: vec![],
                            access: "",
                            patients: "",
                        })
                        .await;
                    match written {
                        Ok(()) => match tx.commit().await {
                            Ok(()) => return,
                            Err(StoreError::Conflict(_)) => continue,
                            Err(e) => panic!("{e}"),
                        },
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.read("Patient", "p1").await.unwrap().unwrap().version, 17, "one version per update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_find_or_create_by_identifier_creates_once() {
    let (_db, store) = store().await;
    let body = patient("x", "same");
    let code = body.len().to_string();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (store, code, body) = (store.clone(), code.clone(), body.clone());
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                if tx.find_ids(&by_identifier(&code)).await.unwrap().is_empty() {
                    let id = format!("p{i}");
                    tx.put(NewVersion {
                        ty: "Patient",
                        id: &id,
                        version: 1,
                        last_updated_ms: 1,
                        method: "POST",
                        body: &body,
                        index: vec![(
                            "identifier",
                            IndexValue::Token { system: Some("urn:test".into()), code: Some(code), text: None },
                        )],
                        access: "",
                        patients: "",
                    })
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.search(&by_identifier(&code)).await.unwrap().rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_audit_appends_form_one_chain_that_verifies() {
    let (_db, store) = store().await;
    let record = |i: usize| AuditRecord {
        event_id: format!("e{i}"),
        recorded_ms: 1_700_000_000_000,
        body: format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"e{i}\"}}"),
        patients: vec![format!("Patient/p{}", i % 3)],
    };
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store.append_audit(vec![record(i)]).await.unwrap();
                } else {
                    // Inside a write transaction, as writes audit themselves.
                    let mut tx = store.begin().await.unwrap();
                    tx.audit(record(i)).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Every entry reaches the chain's head without anyone reading the log
    // (on PostgreSQL through the background sealer).
    let started = std::time::Instant::now();
    while store.audit_head().await.unwrap().0 < 40 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "entries left unsealed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(verify(&*store).await.unwrap(), Verdict::Intact { entries: 40 });
    let q = super::AuditQuery { patients: Some(vec!["Patient/p1".into()]), count: 100, ..Default::default() };
    assert_eq!(store.audit_entries(&q).await.unwrap().len(), 13);
    // The same once the patient index has caught up (SQLite fills it in the background).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let again = store.audit_entries(&q).await.unwrap();
    assert_eq!(again.len(), 13);
    assert!(again.windows(2).all(|w| w[0].seq > w[1].seq), "newest first, no entry twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_notification_is_claimed_by_one_worker_at_a_time() {
    let (_db, store) = store().await;
    let mut tx = store.begin().await.unwrap();
    for i in 0..30 {
        let n = Notification {
            event_id: format!("n{i}"),
            sub_id: "s".into(),
            resource: "Task/t".into(),
            version: 1,
            created_ms: i,
            attempts: 0,
        };
        tx.add_notification(&n, 0).await.unwrap();
    }
    tx.commit().await.unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                loop {
                    let mut tx = store.begin().await.unwrap();
                    let batch = tx.claim_notifications(1_000, 60_000, 4).await.unwrap();
                    tx.commit().await.unwrap();
                    if batch.is_empty() {
                        return claimed;
                    }
                    claimed.extend(batch.into_iter().map(|n| n.event_id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (30, 30), "every notification claimed exactly once while leased");
}

#[tokio::test]
async fn a_client_assertion_is_claimed_once_until_it_expires() {
    let (_db, store) = store().await;
    assert!(store.claim_assertion("k1", 2_000, 1_000).await.unwrap());
    assert!(!store.claim_assertion("k1", 2_000, 1_500).await.unwrap(), "a replay before expiry");
    assert!(store.claim_assertion("k2", 2_000, 1_500).await.unwrap());
    // Expired entries are forgotten (and pruned).
    assert!(store.claim_assertion("k1", 4_000, 3_000).await.unwrap());
}

#[tokio::test]
async fn a_record_pushed_first_elsewhere_is_a_conflict_and_a_later_push_updates_it() {
    let (_db, store) = store().await;
    let row = |first_ms: i64, last_ms: i64, hash: &str| super::IngestRecord {
        source_system: "SE2120001231-EHR1".into(),
        record_id: "r1".into(),
        mapping: "funktionsstatus".into(),
        content_hash: hash.into(),
        resources: format!("Observation/{first_ms:012x}"),
        municipality: Some("1281".into()),
        info_type: None,
        first_ms,
        last_ms,
    };
    let mut tx = store.begin().await.unwrap();
    tx.put_ingest_record(&row(1_000, 1_000, "a")).await.unwrap();
    tx.commit().await.unwrap();
    // Another first push of the same record (its own first time, its own ids) is refused…
    let mut tx = store.begin().await.unwrap();
    let refused = tx.put_ingest_record(&row(2_000, 2_000, "b")).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    drop(tx);
    // … a later push of it (same first time) updates the row.
    let mut tx = store.begin().await.unwrap();
    tx.put_ingest_record(&row(1_000, 3_000, "c")).await.unwrap();
    let stored = tx.ingest_record("SE2120001231-EHR1", "r1").await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored, row(1_000, 3_000, "c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_append_whose_caller_gave_up_holds_up_no_other() {
    let (_db, store) = store().await;
    let record = |id: &str| AuditRecord {
        event_id: id.into(),
        recorded_ms: 1_700_000_000_000,
        body: format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"{id}\"}}"),
        patients: vec![],
    };
    // A write in progress keeps the appends waiting (on SQLite, for the writer).
    let busy = store.begin().await.unwrap();
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.append_audit(vec![record("given-up")]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let second = {
        let store = store.clone();
        tokio::spawn(async move { store.append_audit(vec![record("waiting")]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // The first caller's client disconnects: its request future is dropped.
    first.abort();
    drop(busy);
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), second).await;
    assert!(matches!(waited, Ok(Ok(Ok(())))), "the second append finished: {waited:?}");
    assert!(matches!(verify(&*store).await.unwrap(), Verdict::Intact { .. }));
    let q = super::AuditQuery { event_id: Some("waiting".into()), count: 1, ..Default::default() };
    assert_eq!(store.audit_entries(&q).await.unwrap().len(), 1);
}

/// Writes version 1 of `ty/id` carrying `identifiers` (system, value) under
/// `param`, visible to `access`.
async fn put_identified(
    store: &dyn Store,
    ty: &str,
    id: &str,
    param: &'static str,
    identifiers: &[(Option<&str>, &str)],
    access: &str,
) {
    let index = identifiers
        .iter()
        .map(|(system, value)| {
            (
                param,
                IndexValue::Token { system: system.map(str::to_owned), code: Some((*value).to_owned()), text: None },
            )
        })
        .collect();
    let body = format!(r#"{{"resourceType":"{ty}","id":"{id}"}}"#);
    let mut tx = store.begin().await.unwrap();
    tx.put(NewVersion {
        ty,
        id,
        version: 1,
        last_updated_ms: 1,
        method: "POST",
        body: &body,
        index,
        access,
        patients: "",
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn resources_are_found_by_identifier_value_under_any_system_oldest_first() {
    let (_db, store) = store().await;
    let store = &*store;
    put_identified(store, "Patient", "older", "identifier", &[(Some("urn:a"), "v1")], "org1").await;
    put_identified(store, "Patient", "newer", "identifier", &[(Some("urn:b"), "v1")], "").await;
    put_identified(store, "Organization", "o", "identifier", &[(Some("urn:a"), "v2")], "").await;
    put_identified(store, "Organization", "o2", "identifier", &[(None, "v3")], "").await;
    put_identified(store, "Patient", "gone", "identifier", &[(Some("urn:a"), "v4")], "").await;
    let mut tx = store.begin().await.unwrap();
    tx.delete("Patient", "gone", 2, 2).await.unwrap();
    tx.commit().await.unwrap();
    put_identified(store, "Observation", "not-an-identifier", "code", &[(Some("urn:a"), "v1")], "").await;
    // Beyond one query's worth of values, the last one is found too.
    let many: Vec<String> = (0..sql::IDENTIFIER_VALUES_PER_QUERY + 10).map(|i| format!("filler-{i}")).collect();
    put_identified(store, "Practitioner", "last", "identifier", &[(Some("urn:c"), many.last().unwrap())], "").await;

    let mut values = vec!["v1", "v2", "v3", "v4", "v5"];
    values.extend(many.iter().map(String::as_str));
    let hits = store.find_by_identifier(&values).await.unwrap();
    let seen: Vec<_> = hits
        .iter()
        .map(|h| (h.ty.as_str(), h.id.as_str(), h.access.as_str(), h.system.as_deref(), h.value.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("Patient", "older", "org1", Some("urn:a"), "v1"),
            ("Patient", "newer", "", Some("urn:b"), "v1"),
            ("Organization", "o", "", Some("urn:a"), "v2"),
            ("Organization", "o2", "", None, "v3"),
            ("Practitioner", "last", "", Some("urn:c"), many.last().unwrap().as_str()),
        ]
    );
    assert!(store.find_by_identifier(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_concepts_text_and_its_codings_display_are_found_by_text_apart_never_across() {
    let (_db, store) = store().await;
    let store = &*store;
    let body = r#"{"resourceType":"Observation","id":"o1","status":"final",
        "code":{"coding":[{"system":"urn:icf","code":"d510","display":"Washing oneself"},
                          {"system":"urn:local","code":"hyg"}],"text":"Personlig hygien"},
        "category":[{"text":"Bedömning"}]}"#;
    let index = index_of(body);
    let mut tx = store.begin().await.unwrap();
    tx.put(NewVersion { ty: "Observation", id: "o1", index, ..NewVersion::test_patient("o1", body) }).await.unwrap();
    tx.commit().await.unwrap();

    let count = |atom| async move { store.search(&observations_where(atom)).await.unwrap().rows.len() };
    let found =
        |param, text| count(Atom::TokenText { param, normalized: crate::fhir::search::values::normalize_string(text) });
    assert_eq!(found("code", "washing").await, 1, "the coding's display");
    assert_eq!(found("code", "hygien").await, 1, "the concept's text, on the first coding's row");
    assert_eq!(found("code", "oneself personlig").await, 0, "not across the two texts");
    assert_eq!(found("code", "oneself\u{1f}personlig").await, 0, "a separator in the query is a space");
    assert_eq!(found("category", "bedomning").await, 1, "a concept with only text");
    assert_eq!(found("code", "dressing").await, 0);
    let query = TokenQuery::SystemCode("urn:local".into(), "hyg".into());
    assert_eq!(count(Atom::Token { param: "code", query }).await, 1, "the second coding");
}

#[tokio::test]
async fn patient_is_answered_from_subject_rows_that_point_to_a_patient_and_from_rows_of_its_own() {
    let (_db, store) = store().await;
    let store = &*store;
    let mut tx = store.begin().await.unwrap();
    let patient = r#"{"resourceType":"Patient","id":"p1"}"#;
    tx.put(NewVersion::test_patient("p1", patient)).await.unwrap();
    let observations = [
        (
            "by-id",
            r#"{"resourceType":"Observation","id":"by-id","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#,
        ),
        (
            "group",
            r#"{"resourceType":"Observation","id":"group","status":"final","code":{"text":"x"},"subject":{"reference":"Group/p1"}}"#,
        ),
        (
            "logical",
            r#"{"resourceType":"Observation","id":"logical","status":"final","code":{"text":"x"},"subject":{"type":"Patient","identifier":{"system":"urn:pnr","value":"191212121212"}}}"#,
        ),
        ("none", r#"{"resourceType":"Observation","id":"none","status":"final","code":{"text":"x"}}"#),
    ];
    for (id, body) in observations {
        let index = index_of(body);
        assert!(index.iter().all(|(p, _)| *p != "patient"), "no rows of its own");
        tx.put(NewVersion { ty: "Observation", id, index, ..NewVersion::test_patient(id, body) }).await.unwrap();
    }
    // A database written before the alias holds `patient` rows of its own.
    let old = r#"{"resourceType":"Observation","id":"old","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
    let row = |param| {
        let target = IndexValue::Reference {
            reference: Some("Patient/p1".into()),
            target_type: Some("Patient".into()),
            target_id: Some("p1".into()),
            identifier: None,
        };
        (param, target)
    };
    let index = vec![row("subject"), row("patient")];
    tx.put(NewVersion { ty: "Observation", id: "old", index, ..NewVersion::test_patient("old", old) }).await.unwrap();
    tx.commit().await.unwrap();

    let ids = |atom| async move {
        let mut ids: Vec<String> =
            store.search(&observations_where(atom)).await.unwrap().rows.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let by_id = |ty: Option<&str>| Atom::Reference { param: "patient", ty: ty.map(Into::into), id: "p1".into() };
    assert_eq!(ids(by_id(None)).await, ["by-id", "old"], "not the Group with the same id");
    assert_eq!(ids(by_id(Some("Patient"))).await, ["by-id", "old"]);
    let pnr = TokenQuery::SystemCode("urn:pnr".into(), "191212121212".into());
    assert_eq!(ids(Atom::ReferenceIdentifier { param: "patient", query: pnr }).await, ["logical"]);
    let missing = |missing| Atom::Missing { param: "patient", table: super::plan::IndexTable::Reference, missing };
    assert_eq!(ids(missing(true)).await, ["group", "none"]);
    assert_eq!(ids(missing(false)).await, ["by-id", "logical", "old"]);
    assert_eq!(ids(Atom::Reference { param: "subject", ty: None, id: "p1".into() }).await, ["by-id", "group", "old"]);

    let mut all = SearchPlan::new("Observation");
    all.count = 10;
    let rows = store.search(&all).await.unwrap().rows;
    let included = store.include(&rows, "patient", None, 10).await.unwrap();
    assert_eq!(included.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["p1"]);
    let patients = store.read("Patient", "p1").await.unwrap().into_iter().collect::<Vec<_>>();
    let mut rev: Vec<_> =
        store.revinclude(&patients, "Observation", "patient", 10).await.unwrap().into_iter().map(|r| r.id).collect();
    rev.sort();
    assert_eq!(rev, ["by-id", "old"]);
}
