//! Document transfers that replace fax: a Task with code `transfer` whose
//! `focus` is a DocumentReference (content in a Binary), `requester` the
//! sending organisation, `owner` the receiving one.
//!
//! ```text
//! requested ──(recipient fetches the content)──▶ received ──▶ completed
//!     │                                              │    └─▶ rejected (statusReason)
//!     ├──(recipient)────────────────────────────────────────▶ completed | rejected
//!     └──(sender, before completion)─────────────────────────▶ cancelled
//! ```
//!
//! Every write of a transfer Task passes [`on_task_written`] inside its
//! transaction: the transfer row beside it (for the first-fetch trigger, the
//! overdue list and duplicate detection) is kept in step, and the recipient's
//! organisation is given access to the Task, its document and its content.

pub mod http;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::{
    access::Actor,
    error::{ApiError, Issue},
    identity::{HsaId, ORGANISATIONSNUMMER_SYSTEM, organisation_key},
    json::Value,
    store::{StoreTx, TransferRow},
};

/// The gateway's CodeSystem for Task types.
pub const TASK_TYPE_SYSTEM: &str = "https://nara-gateway.se/fhir/CodeSystem/task-type";
/// The Task code of a document transfer.
pub const TRANSFER_CODE: &str = "transfer";
/// The `businessStatus` code of a transfer whose content repeats an earlier one.
pub const DUPLICATE_CODE: &str = "duplicate-content";

/// Whether a Task is a document transfer.
pub fn is_transfer(task: &Value) -> bool {
    task.get("code").and_then(|c| c.get("coding")).and_then(Value::as_array).is_some_and(|codings| {
        codings.iter().any(|c| {
            c.get("system").and_then(Value::as_str) == Some(TASK_TYPE_SYSTEM)
                && c.get("code").and_then(Value::as_str) == Some(TRANSFER_CODE)
        })
    })
}

fn status_of(task: &Value) -> &str {
    task.get("status").and_then(Value::as_str).unwrap_or("")
}

/// `Type/id` of a Reference element, if it is a literal reference of that type.
fn reference_id<'a>(v: Option<&'a Value>, ty: &str) -> Option<&'a str> {
    let r = v?.get("reference")?.as_str()?;
    let (t, id) = r.split_once('/')?;
    (t == ty && !id.contains('/')).then_some(id)
}

/// Elements the parties change as the transfer moves on; everything else is fixed at creation.
const MUTABLE: &[&str] =
    &["status", "statusReason", "businessStatus", "note", "output", "lastModified", "meta", "text", "id"];

/// JSON equality where the order of object members does not matter.
fn same_json(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.len() == y.len() && x.iter().all(|(k, v)| same_json(Some(v), y.get(k)))
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(Some(p), Some(q)))
        }
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The organisation (organisationsnummer) of a referenced Organization:
/// from its HSA-id or organisationsnummer identifier.
async fn organisation_of(tx: &mut dyn StoreTx, reference: Option<&Value>, field: &str) -> Result<String, ApiError> {
    let missing = || {
        ApiError::Unprocessable(vec![
            Issue::error("required", format!("a transfer's {field} is a reference to an Organization"))
                .at(format!("Task.{field}")),
        ])
    };
    let id = reference_id(reference, "Organization").ok_or_else(missing)?;
    let body = tx.current_body("Organization", id).await?.ok_or_else(|| {
        ApiError::Unprocessable(vec![
            Issue::error("not-found", format!("Organization/{id} does not exist")).at(format!("Task.{field}")),
        ])
    })?;
    let org = crate::json::parse(body.as_bytes()).map_err(|e| ApiError::Internal(e.message))?;
    for ident in org.get("identifier").and_then(Value::as_array).unwrap_or_default() {
        let system = ident.get("system").and_then(Value::as_str).unwrap_or("");
        let value = ident.get("value").and_then(Value::as_str).unwrap_or("");
        if HsaId::is_hsa_system(system) && HsaId::parse(value).is_ok() {
            return Ok(organisation_key(value).to_owned());
        }
        if system == ORGANISATIONSNUMMER_SYSTEM && value.len() == 10 && value.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(value.to_owned());
        }
    }
    Err(ApiError::Unprocessable(vec![
        Issue::error(
            "required",
            format!("Organization/{id} has no HSA-id or organisationsnummer identifier, so the transfer cannot be bound to it"),
        )
        .at(format!("Task.{field}")),
    ]))
}

/// Checks a change of a transfer Task by `actor`, before it is written.
/// `current` is the stored Task (None on create).
pub async fn check_write(
    tx: &mut dyn StoreTx,
    actor: &Actor,
    current: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    let was = current.is_some_and(is_transfer);
    let is = is_transfer(new);
    if !was && !is {
        return Ok(());
    }
    if current.is_some() && was != is {
        return Err(ApiError::Unprocessable(vec![
            Issue::error("business-rule", "a Task cannot become, or stop being, a transfer").at("Task.code"),
        ]));
    }
    let sender = organisation_of(tx, new.get("requester"), "requester").await?;
    let recipient = organisation_of(tx, new.get("owner"), "owner").await?;
    let Some(current) = current else {
        // Creation: a new transfer starts as requested, sent by the writer's organisation.
        if status_of(new) != "requested" {
            return Err(ApiError::Unprocessable(vec![
                Issue::error("business-rule", "a transfer starts in status `requested`").at("Task.status"),
            ]));
        }
        if actor.scopes.is_some() && actor.access_key() != sender {
            return Err(ApiError::Forbidden(
                "a transfer's requester must be the sending client's own organisation".into(),
            ));
        }
        if reference_id(new.get("focus"), "DocumentReference").is_none() {
            return Err(ApiError::Unprocessable(vec![
                Issue::error("required", "a transfer's focus is a reference to its DocumentReference").at("Task.focus"),
            ]));
        }
        if reference_id(new.get("for"), "Patient").is_none() {
            return Err(ApiError::Unprocessable(vec![
                Issue::error("required", "a transfer is for a Patient").at("Task.for"),
            ]));
        }
        return Ok(());
    };
    // Fixed parts stay as they were.
    let (Value::Object(old), Value::Object(next)) = (current, new) else { return Ok(()) };
    let keys: Vec<&str> = old.keys().chain(next.keys()).collect();
    for key in keys {
        if !MUTABLE.contains(&key) && !same_json(old.get(key), next.get(key)) {
            return Err(ApiError::Unprocessable(vec![
                Issue::error("business-rule", format!("`{key}` of a transfer cannot change once it is sent"))
                    .at(format!("Task.{key}")),
            ]));
        }
    }
    let (from, to) = (status_of(current), status_of(new));
    if from == to {
        return Ok(());
    }
    let role = if actor.scopes.is_none() {
        "gateway"
    } else if actor.access_key() == recipient {
        "recipient"
    } else if actor.access_key() == sender {
        "sender"
    } else {
        "other"
    };
    let allowed = match (from, to) {
        ("requested", "received") => matches!(role, "recipient" | "gateway"),
        ("requested" | "received", "completed" | "rejected") => matches!(role, "recipient" | "gateway"),
        ("requested" | "received", "cancelled") => matches!(role, "sender" | "gateway"),
        _ => {
            return Err(ApiError::Conflict(format!(
                "a transfer in status `{from}` cannot become `{to}` (requested → received → completed | rejected; cancelled by the sender before completion)"
            )));
        }
    };
    if !allowed {
        let who = match to {
            "cancelled" => "only the sender cancels a transfer",
            _ => "only the recipient marks a transfer received, completed or rejected",
        };
        return Err(ApiError::Forbidden(who.into()));
    }
    if to == "rejected" && new.get("statusReason").is_none() {
        return Err(ApiError::Unprocessable(vec![
            Issue::error("required", "a rejected transfer says why in `statusReason`").at("Task.statusReason"),
        ]));
    }
    Ok(())
}

/// Before a transfer Task is written: works out its transfer row and, for a
/// new transfer whose patient, document type, content and parties repeat an
/// earlier one, flags it (`businessStatus` `duplicate-content`, naming the
/// first) instead of letting the same document travel twice unnoticed.
pub async fn before_task_write(
    tx: &mut dyn StoreTx,
    task_id: &str,
    task: &mut Value,
    at_ms: i64,
) -> Result<Option<TransferRow>, ApiError> {
    if !is_transfer(task) {
        return Ok(None);
    }
    let sender_key = organisation_of(tx, task.get("requester"), "requester").await?;
    let recipient_key = organisation_of(tx, task.get("owner"), "owner").await?;
    let document_id = reference_id(task.get("focus"), "DocumentReference").unwrap_or_default().to_owned();
    let patient = reference_id(task.get("for"), "Patient").map(|id| format!("Patient/{id}")).unwrap_or_default();
    let previous = tx.transfer(task_id).await?;
    let (binary_id, doc_type, content_hash) = match &previous {
        Some(p) if p.document_id == document_id => (p.binary_id.clone(), p.doc_type.clone(), p.content_hash.clone()),
        _ => describe_document(tx, &document_id).await?,
    };
    let mut row = TransferRow {
        task_id: task_id.to_owned(),
        document_id,
        binary_id,
        sender_key,
        recipient_key,
        patient,
        doc_type,
        content_hash,
        status: status_of(task).to_owned(),
        created_ms: previous.as_ref().map_or_else(|| sent_at(task, at_ms), |p| p.created_ms),
        updated_ms: at_ms,
        duplicate_of: previous.as_ref().and_then(|p| p.duplicate_of.clone()),
    };
    if previous.is_none() {
        row.duplicate_of = tx.same_transfer(&row).await?;
        if let (Some(first), Some(o)) = (&row.duplicate_of, task.as_object_mut())
            && !o.contains_key("businessStatus")
        {
            let flag = serde_json::json!({
                "coding": [{"system": TASK_TYPE_SYSTEM, "code": DUPLICATE_CODE, "display": "Samma innehåll som en tidigare överföring"}],
                "text": format!("Same patient, document type, content, sender and recipient as Task/{first}")
            });
            o.insert("businessStatus", flag.into());
        }
    }
    Ok(Some(row))
}

/// When a transfer was sent: its `authoredOn` (not in the future), else now.
fn sent_at(task: &Value, now_ms: i64) -> i64 {
    task.get("authoredOn")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(now_ms, |t| t.timestamp_millis().min(now_ms))
}

/// After a transfer Task is written: stores its row and, for a new transfer,
/// lets the recipient's organisation see the document, its content and the patient.
pub async fn after_task_write(tx: &mut dyn StoreTx, row: &TransferRow, created: bool) -> Result<(), ApiError> {
    if created {
        let patient = row.patient.strip_prefix("Patient/");
        for (ty, id) in [
            ("DocumentReference", Some(row.document_id.as_str())),
            ("Binary", row.binary_id.as_deref()),
            ("Patient", patient),
        ] {
            if let Some(id) = id
                && let Some(c) = tx.current(ty, id).await?
                && !crate::store::access_contains(&c.access, &row.recipient_key)
            {
                tx.grant(ty, id, &crate::store::access_with(&c.access, &row.recipient_key)).await?;
            }
        }
    }
    tx.put_transfer(row).await?;
    Ok(())
}

/// The organisations that may see a transfer: its sender and its recipient.
pub fn parties(row: &TransferRow) -> [&str; 2] {
    [&row.sender_key, &row.recipient_key]
}

/// The Binary, document type and content hash of a transfer's DocumentReference.
async fn describe_document(
    tx: &mut dyn StoreTx,
    document_id: &str,
) -> Result<(Option<String>, String, String), ApiError> {
    let Some(text) = tx.current_body("DocumentReference", document_id).await? else {
        return Err(ApiError::Unprocessable(vec![
            Issue::error(
                "not-found",
                format!("DocumentReference/{document_id} does not exist (in a transaction, put it and its Binary before the Task)"),
            )
            .at("Task.focus"),
        ]));
    };
    let doc = crate::json::parse(text.as_bytes()).map_err(|e| ApiError::Internal(e.message))?;
    let coding = doc.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array).and_then(|c| c.first());
    let doc_type = coding
        .map(|c| {
            format!(
                "{}|{}",
                c.get("system").and_then(Value::as_str).unwrap_or(""),
                c.get("code").and_then(Value::as_str).unwrap_or("")
            )
        })
        .unwrap_or_default();
    let url = doc
        .get("content")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("attachment"))
        .and_then(|a| a.get("url"))
        .and_then(Value::as_str);
    let binary_id =
        url.and_then(|u| u.strip_prefix("Binary/")).filter(|id| crate::fhir::is_valid_id(id)).map(str::to_owned);
    let content_hash = match &binary_id {
        Some(id) => match tx.current_body("Binary", id).await? {
            Some(b) => {
                let binary = crate::json::parse(b.as_bytes()).map_err(|e| ApiError::Internal(e.message))?;
                let data = binary.get("data").and_then(Value::as_str).unwrap_or("");
                hex::encode(Sha256::digest(data.as_bytes()))
            }
            None => String::new(),
        },
        None => String::new(),
    };
    Ok((binary_id, doc_type, content_hash))
}

/// The recipient's first fetch of a transfer's content: every `requested`
/// transfer of this Binary addressed to the reader's organisation becomes
/// `received`, in one audited transaction. Returns the Tasks changed.
pub async fn mark_received(st: &crate::app::AppState, actor: &Actor, binary_id: &str) -> Result<Vec<String>, ApiError> {
    let Some(reader) = actor.scopes.as_ref().map(|_| actor.access_key().to_owned()) else { return Ok(Vec::new()) };
    let open: Vec<TransferRow> = st
        .store
        .transfers_for_binary(binary_id)
        .await?
        .into_iter()
        .filter(|t| t.status == "requested" && t.recipient_key == reader)
        .collect();
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = st.store.begin().await?;
    let mut changed = Vec::new();
    let mut seen = Vec::new();
    for t in &open {
        let Some(text) = tx.current_body("Task", &t.task_id).await? else { continue };
        let mut task = crate::json::parse(text.as_bytes()).map_err(|e| ApiError::Internal(e.message))?;
        if status_of(&task) != "requested" {
            continue;
        }
        let Some(current) = tx.current("Task", &t.task_id).await? else { continue };
        if let Some(o) = task.as_object_mut() {
            o.insert("status", "received".into());
            o.insert("lastModified", crate::fhir::format::instant(crate::fhir::interactions::now_ms()).into());
        }
        let written = crate::fhir::interactions::put_with_access(
            tx.as_mut(),
            "Task",
            &t.task_id,
            current.version + 1,
            "PUT",
            task,
            StatusCode::OK,
            &current.access,
        )
        .await?;
        seen.push(written.seen());
        changed.push(format!("Task/{}", t.task_id));
    }
    let entry = crate::audit::Entry {
        actor,
        event: crate::audit::Event::Transfer,
        status: StatusCode::OK,
        seen: &seen,
        request: Some("received: first fetch of the document content by the recipient"),
        reason: None,
    };
    tx.audit(entry.record()).await?;
    tx.commit().await?;
    Ok(changed)
}

/// A transfer Task as it is pushed again by its source: the state the parties
/// gave it (status, reason, notes) is kept.
pub fn keep_state(current: &Value, pushed: &mut Value) {
    if !is_transfer(current) || status_of(current) == "requested" {
        return;
    }
    if let Some(o) = pushed.as_object_mut() {
        for key in ["status", "statusReason", "businessStatus", "note", "output", "lastModified"] {
            match current.get(key) {
                Some(v) => o.insert(key, v.clone()),
                None => {
                    o.remove(key);
                }
            }
        }
    }
}
