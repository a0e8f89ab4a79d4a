//! The NPÖ coverage registry: which municipalities declare that they produce
//! and consume *Funktionsstatus & ADL* and *Vårdplan* in NPÖ, what the
//! gateway observes them actually sending, and where the two disagree.
//!
//! Declared statuses are statements with a date, a source and who recorded
//! them; the current status is the latest statement. The registry is seeded
//! from `mappings/reference/` on first start (organisations not yet in it);
//! administrators' statements are kept over restarts.

pub mod http;
pub mod render;

use std::collections::BTreeMap;

use crate::{
    json::{Number, Object, Value},
    reference::{NPO_INFO_TYPES, Reference},
    store::{NpoOrganization, NpoStatement, Observed, Store, StoreResult},
};

/// Default observation window in days.
pub const DEFAULT_WINDOW_DAYS: u32 = 90;

/// Adds the reference data's organisations that the registry does not hold
/// yet, with their declared statuses. Returns how many were added.
pub async fn seed(store: &std::sync::Arc<dyn Store>, reference: &Reference) -> StoreResult<usize> {
    // Replicas starting together seed one after the other; the later ones find it done.
    let mut tx = store.begin().await?;
    tx.lock("npo-seed").await?;
    let present: Vec<String> = store.npo_organizations().await?.into_iter().map(|o| o.code).collect();
    let now = crate::fhir::interactions::now_ms();
    let mut orgs: Vec<NpoOrganization> = reference
        .municipalities
        .iter()
        .map(|m| NpoOrganization {
            code: m.kommunkod.clone(),
            name: m.name.clone(),
            delregion: m.delregion.clone(),
            hsa_id: None,
            organisationsnummer: None,
            is_region: false,
            updated_ms: now,
            updated_by: "reference data".into(),
        })
        .collect();
    orgs.push(NpoOrganization {
        code: reference.region.code.clone(),
        name: reference.region.name.clone(),
        delregion: None,
        hsa_id: None,
        organisationsnummer: None,
        is_region: true,
        updated_ms: now,
        updated_by: "reference data".into(),
    });
    let missing: Vec<&NpoOrganization> = orgs.iter().filter(|o| !present.contains(&o.code)).collect();
    if missing.is_empty() {
        return Ok(0);
    }
    for o in &missing {
        tx.npo_put_organization(o).await?;
        for d in reference.declared.iter().filter(|d| d.code == o.code) {
            tx.npo_add_statement(&NpoStatement {
                seq: 0,
                code: d.code.clone(),
                info_type: d.info_type.clone(),
                producer: d.producer,
                consumer: d.consumer,
                declared_at: d.date.clone(),
                source: d.source.clone(),
                recorded_by: "reference data".into(),
                recorded_ms: now,
            })
            .await?;
        }
    }
    tx.commit().await?;
    Ok(missing.len())
}

/// The current declared status of one organisation and information type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub producer: Option<bool>,
    pub consumer: Option<bool>,
    /// Date and source of the latest statement.
    pub declared_at: Option<String>,
    pub source: Option<String>,
}

/// Folds statements (in recording order) into the current status per (code, info type).
pub fn current(statements: &[NpoStatement]) -> BTreeMap<(String, String), Declared> {
    let mut out: BTreeMap<(String, String), Declared> = BTreeMap::new();
    for s in statements {
        let d = out.entry((s.code.clone(), s.info_type.clone())).or_default();
        if s.producer.is_some() {
            d.producer = s.producer;
        }
        if s.consumer.is_some() {
            d.consumer = s.consumer;
        }
        d.declared_at = Some(s.declared_at.clone());
        d.source = Some(s.source.clone());
    }
    out
}

/// Where declared and observed disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// Records arrive but the municipality is not declared a producer: ready to become one.
    ObservedNotDeclared,
    /// Declared a producer, but nothing arrived in the window.
    DeclaredNotObserved,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::ObservedNotDeclared => "observed-not-declared",
            Flag::DeclaredNotObserved => "declared-not-observed",
        }
    }

    /// In Swedish, for the page.
    pub fn swedish(self) -> &'static str {
        match self {
            Flag::ObservedNotDeclared => "data skickas men kommunen är inte anmäld som producent",
            Flag::DeclaredNotObserved => "anmäld som producent men inget mottaget",
        }
    }
}

/// One row: an organisation and information type.
#[derive(Clone, Debug)]
pub struct Row {
    pub code: String,
    pub name: String,
    pub delregion: Option<String>,
    pub info_type: &'static str,
    pub declared: Declared,
    pub observed_records: u64,
    pub last_observed_ms: Option<i64>,
    pub flag: Option<Flag>,
}

/// Totals of one information type over the municipalities of a report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub municipalities: usize,
    pub declared_producers: usize,
    pub declared_consumers: usize,
    pub observed_producers: usize,
    pub observed_not_declared: usize,
    pub declared_not_observed: usize,
    /// Municipalities no statement says anything about as producers.
    pub producer_unknown: usize,
}

impl Totals {
    pub fn producer_share(&self) -> f64 {
        share(self.declared_producers, self.municipalities)
    }
    pub fn consumer_share(&self) -> f64 {
        share(self.declared_consumers, self.municipalities)
    }
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { ((n as f64 / of as f64) * 10_000.0).round() / 10_000.0 }
}

/// A coverage report: the municipalities of a delregion (or all), and the region.
#[derive(Clone, Debug)]
pub struct Report {
    pub generated_ms: i64,
    pub window_days: u32,
    pub delregion: Option<String>,
    /// Municipality rows, by kommunkod then information type.
    pub rows: Vec<Row>,
    /// The region's rows (only in a report over all delregions).
    pub region_rows: Vec<Row>,
    pub totals: Vec<(&'static str, Totals)>,
}

/// Builds a report from the registry and the observed production.
pub fn build(
    orgs: &[NpoOrganization],
    statements: &[NpoStatement],
    observed: &[Observed],
    delregion: Option<&str>,
    window_days: u32,
    now_ms: i64,
) -> Report {
    let current = current(statements);
    let mut rows = Vec::new();
    let mut region_rows = Vec::new();
    for o in orgs {
        let in_scope = match delregion {
            None => true,
            Some("unknown") => o.delregion.is_none() && !o.is_region,
            Some(d) => o.delregion.as_deref() == Some(d),
        };
        if !in_scope {
            continue;
        }
        for info_type in NPO_INFO_TYPES {
            let declared = current.get(&(o.code.clone(), (*info_type).to_owned())).cloned().unwrap_or_default();
            let seen = observed.iter().find(|x| x.municipality == o.code && x.info_type == *info_type);
            let observed_records = seen.map_or(0, |x| x.records);
            let flag = match (declared.producer == Some(true), observed_records > 0) {
                (false, true) => Some(Flag::ObservedNotDeclared),
                (true, false) if !o.is_region => Some(Flag::DeclaredNotObserved),
                _ => None,
            };
            let row = Row {
                code: o.code.clone(),
                name: o.name.clone(),
                delregion: o.delregion.clone(),
                info_type,
                declared,
                observed_records,
                last_observed_ms: seen.map(|x| x.last_ms),
                flag,
            };
            if o.is_region { region_rows.push(row) } else { rows.push(row) }
        }
    }
    let totals = NPO_INFO_TYPES
        .iter()
        .map(|it| {
            let of: Vec<&Row> = rows.iter().filter(|r| r.info_type == *it).collect();
            let t = Totals {
                municipalities: of.len(),
                declared_producers: of.iter().filter(|r| r.declared.producer == Some(true)).count(),
                declared_consumers: of.iter().filter(|r| r.declared.consumer == Some(true)).count(),
                observed_producers: of.iter().filter(|r| r.observed_records > 0).count(),
                observed_not_declared: of.iter().filter(|r| r.flag == Some(Flag::ObservedNotDeclared)).count(),
                declared_not_observed: of.iter().filter(|r| r.flag == Some(Flag::DeclaredNotObserved)).count(),
                producer_unknown: of.iter().filter(|r| r.declared.producer.is_none()).count(),
            };
            (*it, t)
        })
        .collect();
    Report { generated_ms: now_ms, window_days, delregion: delregion.map(str::to_owned), rows, region_rows, totals }
}

/// Reads the registry and the observed production and builds a report.
pub async fn report(
    store: &std::sync::Arc<dyn Store>,
    delregion: Option<&str>,
    window_days: u32,
) -> StoreResult<Report> {
    let now = crate::fhir::interactions::now_ms();
    let since = now - i64::from(window_days) * 86_400_000;
    let orgs = store.npo_organizations().await?;
    let statements = store.npo_statements(None).await?;
    let observed = store.observed(since).await?;
    Ok(build(&orgs, &statements, &observed, delregion, window_days, now))
}

fn opt_bool(b: Option<bool>) -> Value {
    b.map_or(Value::Null, Value::Bool)
}

fn opt_str(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

fn number(x: f64) -> Value {
    Number::parse(&format!("{x}")).map_or(Value::Null, Value::Number)
}

fn info_types_json(rows: &[&Row]) -> Value {
    let mut it = Object::new();
    for r in rows {
        let mut o = Object::new();
        o.insert("declaredProducer", opt_bool(r.declared.producer));
        o.insert("declaredConsumer", opt_bool(r.declared.consumer));
        o.insert("declaredAt", opt_str(r.declared.declared_at.as_deref()));
        o.insert("source", opt_str(r.declared.source.as_deref()));
        o.insert("observedRecords", Value::from(r.observed_records as i64));
        o.insert("lastObserved", r.last_observed_ms.map_or(Value::Null, |ms| crate::fhir::format::instant(ms).into()));
        o.insert("flag", r.flag.map_or(Value::Null, |f| f.as_str().into()));
        it.insert(r.info_type, Value::Object(o));
    }
    Value::Object(it)
}

fn organizations_json(rows: &[Row]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let code = &rows[i].code;
        let group: Vec<&Row> = rows[i..].iter().take_while(|r| &r.code == code).collect();
        let mut o = Object::new();
        o.insert("kommunkod", code.as_str().into());
        o.insert("name", group[0].name.as_str().into());
        o.insert("delregion", opt_str(group[0].delregion.as_deref()));
        o.insert("infoTypes", info_types_json(&group));
        i += group.len();
        out.push(Value::Object(o));
    }
    out
}

impl Report {
    /// The report in SPEC's JSON shape.
    pub fn to_json(&self) -> Value {
        let mut o = Object::new();
        o.insert("generatedAt", crate::fhir::format::instant(self.generated_ms).into());
        o.insert("windowDays", Value::from(i64::from(self.window_days)));
        o.insert("delregion", opt_str(self.delregion.as_deref()));
        o.insert("organizations", Value::Array(organizations_json(&self.rows)));
        if !self.region_rows.is_empty() {
            let mut r = organizations_json(&self.region_rows);
            if let Some(Value::Object(region)) = r.first_mut() {
                let code = region.remove("kommunkod").unwrap_or(Value::Null);
                region.insert_front("lanskod", code);
            }
            o.insert("region", r.into_iter().next().unwrap_or(Value::Null));
        }
        let mut totals = Object::new();
        for (it, t) in &self.totals {
            let mut x = Object::new();
            x.insert("municipalities", Value::from(t.municipalities as i64));
            x.insert("declaredProducers", Value::from(t.declared_producers as i64));
            x.insert("declaredConsumers", Value::from(t.declared_consumers as i64));
            x.insert("observedProducers", Value::from(t.observed_producers as i64));
            x.insert("producerShare", number(t.producer_share()));
            x.insert("consumerShare", number(t.consumer_share()));
            x.insert("observedNotDeclared", Value::from(t.observed_not_declared as i64));
            x.insert("declaredNotObserved", Value::from(t.declared_not_observed as i64));
            x.insert("producerUnknown", Value::from(t.producer_unknown as i64));
            totals.insert(*it, Value::Object(x));
        }
        o.insert("totals", Value::Object(totals));
        Value::Object(o)
    }

    /// One CSV row per municipality and information type (RFC 4180).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "kommunkod,name,delregion,infoType,declaredProducer,declaredConsumer,declaredAt,source,observedRecords,lastObserved,flag\r\n",
        );
        let b = |v: Option<bool>| v.map_or(String::new(), |b| b.to_string());
        for r in self.rows.iter().chain(&self.region_rows) {
            let fields = [
                r.code.clone(),
                r.name.clone(),
                r.delregion.clone().unwrap_or_default(),
                r.info_type.to_owned(),
                b(r.declared.producer),
                b(r.declared.consumer),
                r.declared.declared_at.clone().unwrap_or_default(),
                r.declared.source.clone().unwrap_or_default(),
                r.observed_records.to_string(),
                r.last_observed_ms.map(crate::fhir::format::instant).unwrap_or_default(),
                r.flag.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> (Vec<NpoOrganization>, Vec<NpoStatement>) {
        let r = Reference::shipped();
        let mut orgs: Vec<NpoOrganization> = r
            .municipalities
            .iter()
            .map(|m| NpoOrganization {
                code: m.kommunkod.clone(),
                name: m.name.clone(),
                delregion: m.delregion.clone(),
                hsa_id: None,
                organisationsnummer: None,
                is_region: false,
                updated_ms: 0,
                updated_by: "t".into(),
            })
            .collect();
        orgs.push(NpoOrganization {
            code: "12".into(),
            name: "Region Skåne".into(),
            is_region: true,
            ..orgs[0].clone()
        });
        let statements = r
            .declared
            .iter()
            .enumerate()
            .map(|(i, d)| NpoStatement {
                seq: i as i64 + 1,
                code: d.code.clone(),
                info_type: d.info_type.clone(),
                producer: d.producer,
                consumer: d.consumer,
                declared_at: d.date.clone(),
                source: d.source.clone(),
                recorded_by: "t".into(),
                recorded_ms: 0,
            })
            .collect();
        (orgs, statements)
    }

    #[test]
    fn mellersta_reproduces_the_annual_report() {
        let (orgs, statements) = seeded();
        let r = build(&orgs, &statements, &[], Some("mellersta"), 90, 0);
        for (_, t) in &r.totals {
            assert_eq!((t.municipalities, t.declared_producers, t.declared_consumers), (8, 6, 8));
            assert_eq!((t.producer_share(), t.consumer_share()), (0.75, 1.0));
            assert_eq!(t.declared_not_observed, 6);
        }
        assert!(r.region_rows.is_empty());
        let all = build(&orgs, &statements, &[], None, 90, 0);
        assert_eq!(all.totals[0].1.municipalities, 33);
        assert_eq!(all.region_rows.len(), 2);
    }

    #[test]
    fn observed_production_and_new_statements_move_the_figures() {
        let (orgs, mut statements) = seeded();
        let observed = vec![Observed {
            municipality: "1285".into(),
            info_type: "funktionsstatus-adl".into(),
            records: 3,
            last_ms: 5,
        }];
        let r = build(&orgs, &statements, &observed, Some("mellersta"), 90, 0);
        let eslov = r.rows.iter().find(|x| x.code == "1285" && x.info_type == "funktionsstatus-adl").unwrap();
        assert_eq!((eslov.observed_records, eslov.flag), (3, Some(Flag::ObservedNotDeclared)));
        statements.push(NpoStatement {
            seq: 1000,
            code: "1285".into(),
            info_type: "funktionsstatus-adl".into(),
            producer: Some(true),
            consumer: None,
            declared_at: "2026-11-24".into(),
            source: "beslut".into(),
            recorded_by: "nara-admin".into(),
            recorded_ms: 1,
        });
        let r = build(&orgs, &statements, &observed, Some("mellersta"), 90, 0);
        let t = &r.totals.iter().find(|(it, _)| *it == "funktionsstatus-adl").unwrap().1;
        assert_eq!(t.producer_share(), 0.875);
        assert_eq!(t.consumer_share(), 1.0, "the consumer status is kept from the earlier statement");
        let json = r.to_json();
        assert_eq!(
            json.get("totals").unwrap().get("vardplan").unwrap().get("producerShare").unwrap().to_json(),
            "0.75"
        );
        assert!(r.to_csv().lines().count() == 17, "a header and 8 x 2 rows");
    }
}
