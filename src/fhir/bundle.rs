//! Bundles: writing searchset/history/response Bundles (stored resources are
//! spliced in as text, never re-serialised), and processing batch and
//! transaction Bundles posted to the base.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;

use crate::{
    access::Actor,
    app::AppState,
    error::ApiError,
    fhir::{
        format::{Answer, Payload, Return, Seen, instant},
        interactions::{self, Matched, ReadConditions, Written},
        resource,
    },
    json::Value,
    store::Stored,
};

/// Writes a Bundle as JSON text, entry by entry.
pub struct BundleWriter {
    out: String,
    entries: usize,
}

fn push_str(out: &mut String, s: &str) {
    Value::String(s.to_owned()).write_compact(out);
}

impl BundleWriter {
    pub fn new(kind: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
        let mut out = String::with_capacity(4096);
        out.push_str("{\"resourceType\":\"Bundle\",\"id\":");
        push_str(&mut out, &uuid::Uuid::new_v4().to_string());
        out.push_str(",\"meta\":{\"lastUpdated\":");
        push_str(&mut out, &instant(interactions::now_ms()));
        out.push_str("},\"type\":");
        push_str(&mut out, kind);
        if let Some(t) = total {
            out.push_str(&format!(",\"total\":{t}"));
        }
        if !links.is_empty() {
            out.push_str(",\"link\":[");
            for (i, (rel, url)) in links.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"relation\":");
                push_str(&mut out, rel);
                out.push_str(",\"url\":");
                push_str(&mut out, url);
                out.push('}');
            }
            out.push(']');
        }
        BundleWriter { out, entries: 0 }
    }

    fn open_entry(&mut self) {
        self.out.push_str(if self.entries == 0 { ",\"entry\":[{" } else { ",{" });
        self.entries += 1;
    }

    /// A current resource (search match or include).
    pub fn resource_entry(&mut self, base: &str, r: &Stored, mode: Option<&str>) {
        self.open_entry();
        self.out.push_str("\"fullUrl\":");
        push_str(&mut self.out, &format!("{base}/{}/{}", r.ty, r.id));
        self.out.push_str(",\"resource\":");
        self.out.push_str(&r.body);
        if let Some(m) = mode {
            self.out.push_str(",\"search\":{\"mode\":");
            push_str(&mut self.out, m);
            self.out.push('}');
        }
        self.out.push('}');
    }

    /// A version in a history Bundle.
    pub fn history_entry(&mut self, base: &str, r: &Stored) {
        self.open_entry();
        self.out.push_str("\"fullUrl\":");
        push_str(&mut self.out, &format!("{base}/{}/{}", r.ty, r.id));
        if !r.deleted {
            self.out.push_str(",\"resource\":");
            self.out.push_str(&r.body);
        }
        let url = if r.method == "POST" { r.ty.clone() } else { format!("{}/{}", r.ty, r.id) };
        self.out.push_str(",\"request\":{\"method\":");
        push_str(&mut self.out, r.method);
        self.out.push_str(",\"url\":");
        push_str(&mut self.out, &url);
        let status = match r.method {
            "POST" => "201 Created",
            "DELETE" => "204 No Content",
            _ => "200 OK",
        };
        self.out.push_str("},\"response\":{\"status\":");
        push_str(&mut self.out, status);
        self.out.push_str(",\"etag\":");
        push_str(&mut self.out, &format!("W/\"{}\"", r.version));
        self.out.push_str(",\"lastModified\":");
        push_str(&mut self.out, &instant(r.last_updated_ms));
        self.out.push_str("}}");
    }

    /// An OperationOutcome about the search itself.
    pub fn outcome_entry(&mut self, outcome: &Value) {
        self.open_entry();
        self.out.push_str("\"resource\":");
        outcome.write_compact(&mut self.out);
        self.out.push_str(",\"search\":{\"mode\":\"outcome\"}}");
    }

    /// An entry of a batch/transaction response.
    pub fn response_entry(&mut self, base: &str, answer: &Answer) {
        self.open_entry();
        let mut has_field = false;
        if let Some(loc) = &answer.location
            && let Some(type_id) = loc.split("/_history/").next()
        {
            self.out.push_str("\"fullUrl\":");
            push_str(&mut self.out, &format!("{base}/{type_id}"));
            has_field = true;
        }
        match &answer.payload {
            Payload::None => {}
            Payload::Text(t) if answer.status.is_success() => {
                if has_field {
                    self.out.push(',');
                }
                self.out.push_str("\"resource\":");
                self.out.push_str(t);
                has_field = true;
            }
            Payload::Json(v) if answer.status.is_success() => {
                if has_field {
                    self.out.push(',');
                }
                self.out.push_str("\"resource\":");
                v.write_compact(&mut self.out);
                has_field = true;
            }
            _ => {}
        }
        if has_field {
            self.out.push(',');
        }
        self.out.push_str("\"response\":{\"status\":");
        let reason = answer.status.canonical_reason().unwrap_or("");
        push_str(&mut self.out, format!("{} {reason}", answer.status.as_u16()).trim_end());
        if let Some(loc) = &answer.location {
            self.out.push_str(",\"location\":");
            push_str(&mut self.out, loc);
        }
        if let Some(v) = answer.version {
            self.out.push_str(",\"etag\":");
            push_str(&mut self.out, &format!("W/\"{v}\""));
        }
        if let Some(ms) = answer.last_modified_ms {
            self.out.push_str(",\"lastModified\":");
            push_str(&mut self.out, &instant(ms));
        }
        if !answer.status.is_success()
            && let Payload::Json(outcome) = &answer.payload
        {
            self.out.push_str(",\"outcome\":");
            outcome.write_compact(&mut self.out);
        }
        self.out.push_str("}}");
    }

    pub fn finish(mut self) -> String {
        if self.entries > 0 {
            self.out.push(']');
        }
        self.out.push('}');
        self.out
    }
}

/// One parsed entry of a batch or transaction.
#[derive(Debug)]
enum Op {
    Read { ty: String, id: String, version: Option<String> },
    Search { ty: String, query: String },
    Create { ty: String, body: Value, if_none_exist: Option<String> },
    Update { ty: String, id: String, body: Value, if_match: Option<String> },
    ConditionalUpdate { ty: String, criteria: String, body: Value },
    Delete { ty: String, id: String, if_match: Option<String> },
    ConditionalDelete { ty: String, criteria: String },
}

impl Op {
    /// FHIR's processing order in a transaction: DELETE, POST, PUT, GET.
    fn order(&self) -> u8 {
        match self {
            Op::Delete { .. } | Op::ConditionalDelete { .. } => 0,
            Op::Create { .. } => 1,
            Op::Update { .. } | Op::ConditionalUpdate { .. } => 2,
            Op::Read { .. } | Op::Search { .. } => 3,
        }
    }
}

struct Entry {
    full_url: Option<String>,
    op: Op,
}

/// `POST /fhir` with a batch or transaction Bundle.
pub async fn process(st: &AppState, actor: &Actor, body: Value, ret: Return, base: &str) -> Result<Answer, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::invalid_at("structure", "a Bundle must be a JSON object", "Bundle"));
    };
    let is_batch = obj.get("type").and_then(Value::as_str) == Some("batch");
    // A batch's entries succeed or fail one by one, so their resources are
    // validated with their entry, not as part of the Bundle.
    let mut batch_resources = Vec::new();
    if is_batch && let Some(Value::Array(entries)) = obj.get_mut("entry") {
        batch_resources = entries.iter_mut().map(|e| e.as_object_mut().and_then(|o| o.remove("resource"))).collect();
    }
    let body = Value::Object(obj);
    resource::check(&body, "Bundle", None)?;
    let Value::Object(mut obj) = body else {
        return Err(ApiError::invalid_at("structure", "a Bundle must be a JSON object", "Bundle"));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
    if kind != "batch" && kind != "transaction" {
        return Err(ApiError::invalid_at(
            "invalid",
            format!("a Bundle posted to the base must be of type batch or transaction, not `{kind}`"),
            "Bundle.type",
        ));
    }
    let mut entries = match obj.remove("entry") {
        Some(Value::Array(e)) => e,
        _ => Vec::new(),
    };
    if entries.len() > st.config.fhir.max_bundle_entries {
        return Err(ApiError::PayloadTooLarge(format!(
            "the Bundle has {} entries; at most {} are accepted",
            entries.len(),
            st.config.fhir.max_bundle_entries
        )));
    }
    for (entry, resource) in entries.iter_mut().zip(batch_resources) {
        if let (Some(e), Some(r)) = (entry.as_object_mut(), resource) {
            e.insert("resource", r);
        }
    }
    let parsed: Vec<Result<Entry, ApiError>> =
        entries.into_iter().enumerate().map(|(i, e)| parse_entry(i, e, base)).collect();
    if is_batch {
        return Ok(batch(st, actor, parsed, ret, base).await);
    }
    let mut ok = Vec::with_capacity(parsed.len());
    for p in parsed {
        ok.push(p?);
    }
    transaction(st, actor, ok, ret, base).await
}

fn parse_entry(index: usize, entry: Value, base: &str) -> Result<Entry, ApiError> {
    let at = |field: &str| format!("Bundle.entry[{index}].{field}");
    let Value::Object(mut e) = entry else {
        return Err(ApiError::invalid_at("structure", "entry must be an object", format!("Bundle.entry[{index}]")));
    };
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    let body = e.remove("resource");
    let request = e.get("request").and_then(Value::as_object).ok_or_else(|| {
        ApiError::invalid_at("required", "entry.request is required in batch and transaction Bundles", at("request"))
    })?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let raw_url = request.get("url").and_then(Value::as_str).unwrap_or("");
    let url = raw_url.strip_prefix(base).map(|u| u.trim_start_matches('/')).unwrap_or(raw_url);
    let header = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_owned);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let bad_url = || {
        ApiError::invalid_at(
            "invalid",
            format!("request.url `{raw_url}` does not fit method {method}"),
            at("request.url"),
        )
    };
    let need_body = |body: Option<Value>, ty: &str| -> Result<Value, ApiError> {
        let b = body.ok_or_else(|| {
            ApiError::invalid_at("required", format!("{method} needs entry.resource"), at("resource"))
        })?;
        if b.get("resourceType").and_then(Value::as_str) != Some(ty) {
            return Err(ApiError::invalid_at(
                "invalid",
                format!("entry.resource must be a {ty} for request.url `{raw_url}`"),
                at("resource.resourceType"),
            ));
        }
        Ok(b)
    };
    if let Some(ty) = segments.first()
        && !crate::fhir::is_supported_type(ty)
    {
        return Err(ApiError::invalid_at(
            "not-supported",
            format!("resource type `{ty}` is not supported by this server"),
            at("request.url"),
        ));
    }
    let op = match (method, segments.as_slice(), query) {
        ("GET" | "HEAD", [ty, id], None) => Op::Read { ty: ty.to_string(), id: id.to_string(), version: None },
        ("GET" | "HEAD", [ty, id, "_history", v], None) => {
            Op::Read { ty: ty.to_string(), id: id.to_string(), version: Some(v.to_string()) }
        }
        ("GET" | "HEAD", [ty], q) => Op::Search { ty: ty.to_string(), query: q.unwrap_or("").to_owned() },
        ("POST", [ty], None) => {
            Op::Create { ty: ty.to_string(), body: need_body(body, ty)?, if_none_exist: header("ifNoneExist") }
        }
        ("PUT", [ty, id], None) => Op::Update {
            ty: ty.to_string(),
            id: id.to_string(),
            body: need_body(body, ty)?,
            if_match: header("ifMatch"),
        },
        ("PUT", [ty], Some(q)) => {
            Op::ConditionalUpdate { ty: ty.to_string(), criteria: q.to_owned(), body: need_body(body, ty)? }
        }
        ("DELETE", [ty, id], None) => {
            Op::Delete { ty: ty.to_string(), id: id.to_string(), if_match: header("ifMatch") }
        }
        ("DELETE", [ty], Some(q)) => Op::ConditionalDelete { ty: ty.to_string(), criteria: q.to_owned() },
        ("PATCH", _, _) => {
            return Err(ApiError::invalid_at("not-supported", "PATCH is not supported", at("request.method")));
        }
        _ => return Err(bad_url()),
    };
    Ok(Entry { full_url, op })
}

/// A failed entry's answer inside a batch response.
fn error_answer(e: &ApiError) -> Answer {
    if let ApiError::Internal(detail) = e {
        tracing::error!(error = %detail, "batch entry failed with an internal error");
    }
    Answer::new(e.status(), Payload::Json(e.outcome()))
}

async fn batch(st: &AppState, actor: &Actor, entries: Vec<Result<Entry, ApiError>>, ret: Return, base: &str) -> Answer {
    let mut w = BundleWriter::new("batch-response", None, &[]);
    let mut unaudited = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let answer = match entry {
            Err(e) => error_answer(&e),
            Ok(entry) => match run_single(st, actor, entry.op, ret, base).await {
                Ok(a) => a,
                Err(e) => error_answer(&interactions::entry_error(index, e)),
            },
        };
        w.response_entry(base, &answer);
        if !answer.audited {
            unaudited.extend(answer.seen);
        }
    }
    unaudited_answer(w, unaudited)
}

/// One batch entry, as if it had been its own request.
async fn run_single(st: &AppState, actor: &Actor, op: Op, ret: Return, base: &str) -> Result<Answer, ApiError> {
    if let Op::Create { body, .. } | Op::Update { body, .. } | Op::ConditionalUpdate { body, .. } = &op {
        let refs = resource::bundle_local_references(body);
        if let Some(r) = refs.first() {
            return Err(ApiError::invalid(
                "invalid",
                format!("reference `{r}` points into the Bundle; that needs a transaction, not a batch"),
            ));
        }
    }
    let answer = match op {
        Op::Read { ty, id, version: None } => {
            interactions::read(st, actor, &ty, &id, &ReadConditions::default()).await?
        }
        Op::Read { ty, id, version: Some(v) } => interactions::vread(st, actor, &ty, &id, &v).await?,
        Op::Search { ty, query } => {
            let pairs = crate::fhir::search::parse_query_string(&query);
            interactions::search(st, actor, &ty, &pairs, false, base).await?
        }
        Op::Create { ty, body, if_none_exist } => {
            interactions::create(st, actor, &ty, body, if_none_exist.as_deref(), base).await?.with_return(ret)
        }
        Op::Update { ty, id, body, if_match } => {
            interactions::update(st, actor, &ty, &id, body, if_match.as_deref()).await?.with_return(ret)
        }
        Op::ConditionalUpdate { ty, criteria, body } => {
            interactions::conditional_update(st, actor, &ty, &criteria, body, base).await?.with_return(ret)
        }
        Op::Delete { ty, id, if_match } => interactions::delete(st, actor, &ty, &id, if_match.as_deref()).await?,
        Op::ConditionalDelete { ty, criteria } => {
            interactions::conditional_delete(st, actor, &ty, &criteria, base).await?
        }
    };
    Ok(answer)
}

/// Prefixes an error's message or location with the entry it came from.
fn at_entry(index: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid(_) | ApiError::Unprocessable(_) => interactions::entry_error(index, e),
        ApiError::NotFound(m) => ApiError::NotFound(format!("Bundle.entry[{index}]: {m}")),
        ApiError::PreconditionFailed(m) => ApiError::PreconditionFailed(format!("Bundle.entry[{index}]: {m}")),
        ApiError::Conflict(m) => ApiError::Conflict(format!("Bundle.entry[{index}]: {m}")),
        other => other,
    }
}

/// A transaction: every entry or none. References between entries
/// (`fullUrl` such as `urn:uuid:…`) are resolved to the ids assigned here.
async fn transaction(
    st: &AppState,
    actor: &Actor,
    entries: Vec<Entry>,
    ret: Return,
    base: &str,
) -> Result<Answer, ApiError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].op.order());
    let mut entries: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
    let mut tx = st.store.begin().await?;

    // 1. Decide the target id of every write, resolving conditional criteria.
    let mut targets: HashMap<usize, (String, String, bool)> = HashMap::new(); // index → (type, id, write needed)
    let mut map: HashMap<String, String> = HashMap::new();
    let mut touched: HashSet<(String, String)> = HashSet::new();
    for &i in &order {
        let Some(entry) = entries[i].as_ref() else {
            continue;
        };
        let target = match &entry.op {
            Op::Create { ty, if_none_exist, .. } => {
                let matched = match if_none_exist {
                    Some(c) => interactions::match_criteria(st, actor, tx.as_mut(), ty, c, base)
                        .await
                        .map_err(|e| at_entry(i, e))?,
                    None => Matched::None,
                };
                match matched {
                    Matched::One(id) => Some((ty.clone(), id, false)),
                    Matched::None => Some((ty.clone(), resource::new_id(), true)),
                }
            }
            Op::Update { ty, id, .. } | Op::Delete { ty, id, .. } => Some((ty.clone(), id.clone(), true)),
            Op::ConditionalUpdate { ty, criteria, body } => {
                match interactions::match_criteria(st, actor, tx.as_mut(), ty, criteria, base)
                    .await
                    .map_err(|e| at_entry(i, e))?
                {
                    Matched::One(id) => Some((ty.clone(), id, true)),
                    Matched::None => {
                        Some((ty.clone(), resource::id_of(body).map_or_else(resource::new_id, str::to_owned), true))
                    }
                }
            }
            Op::ConditionalDelete { ty, criteria } => {
                match interactions::match_criteria(st, actor, tx.as_mut(), ty, criteria, base)
                    .await
                    .map_err(|e| at_entry(i, e))?
                {
                    Matched::One(id) => Some((ty.clone(), id, true)),
                    Matched::None => None,
                }
            }
            Op::Read { .. } | Op::Search { .. } => None,
        };
        if let Some((ty, id, write)) = target {
            if write && !touched.insert((ty.clone(), id.clone())) {
                return Err(ApiError::invalid_at(
                    "invalid",
                    format!("{ty}/{id} is changed by more than one entry of this transaction"),
                    format!("Bundle.entry[{i}]"),
                ));
            }
            if let Some(full) = &entry.full_url {
                map.insert(full.clone(), format!("{ty}/{id}"));
            }
            targets.insert(i, (ty, id, write));
        }
    }

    // 2. Resolve references between entries and conditional references.
    for &i in &order {
        let Some(entry) = entries[i].as_mut() else {
            continue;
        };
        let (Op::Create { body, .. } | Op::Update { body, .. } | Op::ConditionalUpdate { body, .. }) = &mut entry.op
        else {
            continue;
        };
        let mut local = map.clone();
        for cond in resource::conditional_references(body) {
            let (ty, criteria) = cond.split_once('?').unwrap_or((&cond, ""));
            match interactions::match_criteria(st, actor, tx.as_mut(), ty, criteria, base)
                .await
                .map_err(|e| at_entry(i, e))?
            {
                Matched::One(id) => {
                    local.insert(cond.clone(), format!("{ty}/{id}"));
                }
                Matched::None => {
                    return Err(ApiError::invalid_at(
                        "not-found",
                        format!("the conditional reference `{cond}` matches no resource"),
                        format!("Bundle.entry[{i}].resource"),
                    ));
                }
            }
        }
        let dangling = resource::rewrite_references(body, &local);
        if let Some(r) = dangling.first() {
            return Err(ApiError::invalid_at(
                "invalid",
                format!("reference `{r}` matches no fullUrl in this transaction"),
                format!("Bundle.entry[{i}].resource"),
            ));
        }
    }

    // 3. Write, in FHIR's processing order. The resources were validated with
    //    the Bundle in `process`; rewriting references kept them valid.
    let mut answers: HashMap<usize, Answer> = HashMap::new();
    for &i in &order {
        let Some(entry) = entries[i].take() else {
            continue;
        };
        let target = targets.get(&i).cloned();
        let answer = match (entry.op, target) {
            (Op::Create { ty, body, .. }, Some((_, id, true))) => {
                let w = interactions::create_in(tx.as_mut(), &st.config, actor, &ty, &id, body)
                    .await
                    .map_err(|e| at_entry(i, e))?;
                written_answer(w, ret)
            }
            (Op::Create { ty, .. }, Some((_, id, false))) => {
                let mut a = Answer::new(StatusCode::OK, Payload::None);
                a.location = Some(format!("{ty}/{id}"));
                a
            }
            (Op::Update { ty, id, body, if_match }, _) => {
                interactions::check_body_id(&body, Some(&id), &ty).map_err(|e| at_entry(i, e))?;
                let if_match = interactions::parse_if_match(if_match.as_deref()).map_err(|e| at_entry(i, e))?;
                let w = interactions::update_in(tx.as_mut(), &st.config, actor, &ty, &id, body, if_match)
                    .await
                    .map_err(|e| at_entry(i, e))?;
                written_answer(w, ret)
            }
            (Op::ConditionalUpdate { ty, body, .. }, Some((_, id, _))) => {
                if let Some(b) = resource::id_of(&body)
                    && b != id
                {
                    return Err(at_entry(
                        i,
                        ApiError::invalid(
                            "invalid",
                            format!("the criteria match {ty}/{id} but the resource's id is `{b}`"),
                        ),
                    ));
                }
                let w = interactions::update_in(tx.as_mut(), &st.config, actor, &ty, &id, body, None)
                    .await
                    .map_err(|e| at_entry(i, e))?;
                written_answer(w, ret)
            }
            (Op::Delete { ty, id, if_match }, _) => {
                let if_match = interactions::parse_if_match(if_match.as_deref()).map_err(|e| at_entry(i, e))?;
                let w = interactions::delete_in(tx.as_mut(), actor, &ty, &id, if_match)
                    .await
                    .map_err(|e| at_entry(i, e))?;
                let mut a = Answer::new(StatusCode::NO_CONTENT, Payload::None);
                a.version = w.map(|w| w.version);
                a
            }
            (Op::ConditionalDelete { .. }, None) => Answer::new(StatusCode::NO_CONTENT, Payload::None),
            (Op::ConditionalDelete { ty, .. }, Some((_, id, _))) => {
                let w =
                    interactions::delete_in(tx.as_mut(), actor, &ty, &id, None).await.map_err(|e| at_entry(i, e))?;
                let mut a = Answer::new(StatusCode::NO_CONTENT, Payload::None);
                a.version = w.map(|w| w.version);
                a
            }
            (op @ (Op::Read { .. } | Op::Search { .. }), _) => {
                // Reads run after the commit so they see this transaction's writes.
                entries[i] = Some(Entry { full_url: None, op });
                continue;
            }
            (Op::Create { .. } | Op::ConditionalUpdate { .. }, None) => {
                return Err(ApiError::Internal(format!("transaction entry {i} lost its target")));
            }
        };
        answers.insert(i, answer);
    }
    let written: Vec<Seen> = answers.values().flat_map(|a| a.seen.iter().cloned()).collect();
    if !written.is_empty() {
        let entry = crate::audit::Entry {
            actor,
            event: crate::audit::Event::Bundle,
            status: StatusCode::OK,
            seen: &written,
            request: Some("transaction"),
            reason: None,
        };
        tx.audit(entry.record()).await?;
    }
    tx.commit().await?;
    for a in answers.values_mut() {
        a.audited = true;
    }

    // 4. Reads, and the bodies of matched conditional creates.
    for &i in &order {
        let Some(entry) = entries[i].take() else {
            if let Some(a) = answers.get_mut(&i)
                && a.status == StatusCode::OK
                && matches!(a.payload, Payload::None)
                && let Some((ty, id, false)) = targets.get(&i)
                && ret == Return::Representation
            {
                *a = interactions::read(st, actor, ty, id, &ReadConditions::default()).await?;
                a.location = a.version.map(|v| format!("{ty}/{id}/_history/{v}"));
            }
            continue;
        };
        let answer = run_single(st, actor, entry.op, ret, base).await.unwrap_or_else(|e| error_answer(&e));
        answers.insert(i, answer);
    }

    let mut w = BundleWriter::new("transaction-response", None, &[]);
    let mut unaudited = Vec::new();
    for i in 0..order.len() {
        let a = answers.remove(&i).unwrap_or_else(|| Answer::new(StatusCode::OK, Payload::None));
        w.response_entry(base, &a);
        if !a.audited {
            unaudited.extend(a.seen);
        }
    }
    Ok(unaudited_answer(w, unaudited))
}

/// A Bundle response whose reads (not yet audited) the caller still has to audit.
fn unaudited_answer(w: BundleWriter, seen: Vec<Seen>) -> Answer {
    let mut a = Answer::new(StatusCode::OK, Payload::Text(w.finish().into()));
    a.audited = seen.is_empty();
    a.seen = seen;
    a
}

fn written_answer(w: Written, ret: Return) -> Answer {
    w.answer().with_return(ret)
}
