//! FHIR search: the standard R4 search parameters of our resource types
//! ([`params`], generated), index extraction ([`extract`]), value parsing
//! ([`values`]), and turning a request's query into a [`SearchPlan`].

pub mod extract;
pub mod params;
mod params_table;
pub mod values;

use crate::{
    config::FhirConfig,
    error::{ApiError, Issue},
    store::plan::{Atom, Cursor, Filter, IndexTable, SearchPlan, Sort, SortKey, StringMode},
};
use params::{ParamType, SearchParamDef};

/// How many chain links `a.b.c=…` may have.
const MAX_CHAIN_DEPTH: usize = 3;
/// Most parameters in one search.
const MAX_PARAMS: usize = 64;
/// Most comma-separated values of one parameter.
const MAX_VALUES: usize = 100;
/// Longest value of one parameter, in bytes.
const MAX_VALUE_LEN: usize = 2048;

/// An `_include` or `_revinclude` request.
#[derive(Clone, Debug, PartialEq)]
pub struct IncludeSpec {
    /// The resource type holding the reference.
    pub source: String,
    pub param: &'static str,
    pub target: Option<String>,
}

/// What `_total` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TotalMode {
    #[default]
    Default,
    None,
    Accurate,
}

/// A parsed search request.
#[derive(Debug)]
pub struct ParsedSearch {
    pub plan: SearchPlan,
    pub includes: Vec<IncludeSpec>,
    pub revincludes: Vec<IncludeSpec>,
    pub summary_count: bool,
    pub total: TotalMode,
    /// The parameters applied, in request order, for `self` and `next` links.
    pub applied: Vec<(String, String)>,
    /// Parameters ignored (lenient handling), reported in an OperationOutcome entry.
    pub warnings: Vec<Issue>,
}

fn bad(name: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_at("invalid", msg, name)
}

/// Parses a search query for `ty`. `base` is this server's FHIR base URL, so
/// absolute references to it are treated as local. With `strict`, unknown or
/// unsupported parameters are an error instead of being ignored.
pub fn parse(
    ty: &str,
    query: &[(String, String)],
    cfg: &FhirConfig,
    strict: bool,
    base: &str,
) -> Result<ParsedSearch, ApiError> {
    let mut plan = SearchPlan::new(ty);
    plan.count = cfg.default_count as usize;
    let mut out = ParsedSearch {
        plan,
        includes: Vec::new(),
        revincludes: Vec::new(),
        summary_count: false,
        total: TotalMode::Default,
        applied: Vec::new(),
        warnings: Vec::new(),
    };
    if query.len() > MAX_PARAMS {
        return Err(ApiError::invalid("too-costly", format!("at most {MAX_PARAMS} search parameters per request")));
    }
    for (name, value) in query {
        if value.len() > MAX_VALUE_LEN {
            return Err(bad(name, format!("values longer than {MAX_VALUE_LEN} bytes are not accepted")));
        }
        let applied = apply(&mut out, ty, name, value, cfg, base)?;
        match applied {
            Applied::Yes => out.applied.push((name.clone(), value.clone())),
            Applied::Control => {}
            Applied::Ignored(reason) => {
                if strict {
                    return Err(ApiError::invalid_at("not-supported", reason, name.as_str()));
                }
                out.warnings.push(Issue::warning("not-supported", format!("{reason}; ignored")).at(name.as_str()));
            }
        }
    }
    if out.summary_count {
        out.plan.count = 0;
    }
    // Without entries (`_summary=count`, `_count=0`) the answer is the total.
    if out.plan.count == 0 {
        out.plan.with_total = true;
    }
    if out.total == TotalMode::Accurate {
        out.plan.with_total = true;
    }
    Ok(out)
}

enum Applied {
    /// A filter or result parameter that belongs in the `self` link.
    Yes,
    /// Handled, but not part of the link (`_format`, `_pretty`, the cursor).
    Control,
    Ignored(String),
}

fn apply(
    out: &mut ParsedSearch,
    ty: &str,
    name: &str,
    value: &str,
    cfg: &FhirConfig,
    base: &str,
) -> Result<Applied, ApiError> {
    match name {
        "_format" | "_pretty" => return Ok(Applied::Control),
        "_cursor" => {
            out.plan.after = Some(
                Cursor::decode(value)
                    .ok_or_else(|| bad(name, "the paging position is not valid; follow the Bundle's next link"))?,
            );
            return Ok(Applied::Control);
        }
        "_count" => {
            let n: u32 = value.parse().map_err(|_| bad(name, format!("`{value}` is not a whole number")))?;
            out.plan.count = n.min(cfg.max_count) as usize;
            return Ok(Applied::Yes);
        }
        "_sort" => {
            out.plan.sort = parse_sort(ty, value)?;
            return Ok(Applied::Yes);
        }
        "_total" => {
            out.total = match value {
                "none" => TotalMode::None,
                "accurate" | "estimate" => TotalMode::Accurate,
                _ => return Err(bad(name, "must be none, estimate or accurate")),
            };
            return Ok(Applied::Yes);
        }
        "_summary" => {
            return match value {
                "count" => {
                    out.summary_count = true;
                    Ok(Applied::Yes)
                }
                "false" => Ok(Applied::Yes),
                _ => Ok(Applied::Ignored(format!("_summary={value} is not supported (only count and false)"))),
            };
        }
        "_include" => {
            out.includes.push(parse_include(name, value, Some(ty))?);
            return Ok(Applied::Yes);
        }
        "_revinclude" => {
            out.revincludes.push(parse_include(name, value, None)?);
            return Ok(Applied::Yes);
        }
        _ => {}
    }
    if name.starts_with("_include:") || name.starts_with("_revinclude:") {
        return Ok(Applied::Ignored(format!("`{name}` (iterate) is not supported")));
    }
    match filter_for(ty, name, value, base, 0)? {
        Some(f) => {
            out.plan.filters.push(f);
            Ok(Applied::Yes)
        }
        None => Ok(Applied::Ignored(format!("unknown search parameter `{name}` for {ty}"))),
    }
}

fn parse_include(name: &str, value: &str, must_be: Option<&str>) -> Result<IncludeSpec, ApiError> {
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 || parts.contains(&"*") {
        return Err(bad(name, format!("`{value}` must be SourceType:parameter[:TargetType]")));
    }
    let source = parts[0];
    if !crate::fhir::is_supported_type(source) {
        return Err(bad(name, format!("unknown resource type `{source}`")));
    }
    if let Some(t) = must_be
        && t != source
    {
        return Err(bad(name, format!("`{value}` must start with the searched type {t}")));
    }
    let def = params::lookup(source, parts[1])
        .filter(|d| d.kind == ParamType::Reference)
        .ok_or_else(|| bad(name, format!("`{}` is not a reference search parameter of {source}", parts[1])))?;
    let target = parts.get(2).map(|t| t.to_string());
    if let Some(t) = &target
        && !crate::fhir::is_supported_type(t)
    {
        return Err(bad(name, format!("unknown resource type `{t}`")));
    }
    Ok(IncludeSpec { source: source.to_owned(), param: def.code, target })
}

fn parse_sort(ty: &str, value: &str) -> Result<Vec<Sort>, ApiError> {
    let mut keys = Vec::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let (descending, code) = match part.strip_prefix('-') {
            Some(c) => (true, c),
            None => (false, part),
        };
        let key = match code {
            "_id" => SortKey::Id,
            "_lastUpdated" => SortKey::LastUpdated,
            _ => {
                let def = params::lookup(ty, code)
                    .ok_or_else(|| bad("_sort", format!("unknown search parameter `{code}` for {ty}")))?;
                let table = table_for(def.kind).ok_or_else(|| bad("_sort", format!("cannot sort by `{code}`")))?;
                SortKey::Param { param: def.code, table }
            }
        };
        keys.push(Sort { key, descending });
    }
    if keys.len() > 3 {
        return Err(bad("_sort", "at most three sort keys"));
    }
    Ok(keys)
}

fn table_for(kind: ParamType) -> Option<IndexTable> {
    Some(match kind {
        ParamType::Token => IndexTable::Token,
        ParamType::String => IndexTable::String,
        ParamType::Date => IndexTable::Date,
        ParamType::Reference => IndexTable::Reference,
        ParamType::Number => IndexTable::Number,
        ParamType::Quantity => IndexTable::Quantity,
        ParamType::Uri => IndexTable::Uri,
        ParamType::Composite | ParamType::Special => return None,
    })
}

/// The filter for one `name=value` pair; `None` when `name` is unknown for `ty`.
fn filter_for(ty: &str, name: &str, value: &str, base: &str, depth: usize) -> Result<Option<Filter>, ApiError> {
    // A chain: `subject:Patient.identifier=…` or `subject.name=…`.
    if let Some((head, rest)) = name.split_once('.') {
        return chain(ty, name, head, rest, value, base, depth).map(Some);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if code == "_id" || code == "_lastUpdated" {
        no_modifier(name, modifier)?;
        if values::split_or(value).iter().any(String::is_empty) {
            return Err(bad(name, "empty value"));
        }
        if values::split_or(value).len() > MAX_VALUES {
            return Err(bad(name, format!("at most {MAX_VALUES} comma-separated values")));
        }
    }
    if code == "_id" {
        let atoms = values::split_or(value).iter().map(|v| Atom::Id(values::unescape(v))).collect();
        return Ok(Some(Filter::Any(atoms)));
    }
    if code == "_lastUpdated" {
        let mut atoms = Vec::new();
        for v in values::split_or(value) {
            let (prefix, low, high) = values::parse_date(&v).map_err(|m| bad(name, m))?;
            atoms.push(Atom::LastUpdated { prefix, low, high });
        }
        return Ok(Some(Filter::Any(atoms)));
    }
    let Some(def) = params::lookup(ty, code) else {
        return Ok(None);
    };
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad(name, ":missing takes true or false")),
        };
        let table = table_for(def.kind).ok_or_else(|| bad(name, "not supported"))?;
        return Ok(Some(Filter::Any(vec![Atom::Missing { param: def.code, table, missing }])));
    }
    let parts = values::split_or(value);
    if parts.is_empty() || parts.iter().any(String::is_empty) {
        return Err(bad(name, "empty value"));
    }
    if parts.len() > MAX_VALUES {
        return Err(bad(name, format!("at most {MAX_VALUES} comma-separated values")));
    }
    let mut atoms = Vec::with_capacity(parts.len());
    let mut negate = false;
    for raw in &parts {
        // Tokens handle their own escapes (`\|`); every other type gets the plain value.
        let plain = values::unescape(raw);
        let v = if def.kind == ParamType::Token { raw } else { &plain };
        let atom = match def.kind {
            ParamType::Token => match modifier {
                None => Atom::Token { param: def.code, query: values::parse_token(v).map_err(|m| bad(name, m))? },
                Some("not") => {
                    negate = true;
                    Atom::Token { param: def.code, query: values::parse_token(v).map_err(|m| bad(name, m))? }
                }
                Some("text") => Atom::TokenText { param: def.code, normalized: values::normalize_string(v) },
                Some(m) => return Err(unsupported_modifier(name, m, "token")),
            },
            ParamType::String => {
                let mode = match modifier {
                    None => StringMode::StartsWith,
                    Some("exact") => StringMode::Exact,
                    Some("contains") => StringMode::Contains,
                    Some(m) => return Err(unsupported_modifier(name, m, "string")),
                };
                let value = if mode == StringMode::Exact { v.clone() } else { values::normalize_string(v) };
                Atom::String { param: def.code, mode, value }
            }
            ParamType::Date => {
                no_modifier(name, modifier)?;
                let (prefix, low, high) = values::parse_date(v).map_err(|m| bad(name, m))?;
                Atom::Date { param: def.code, prefix, low, high }
            }
            ParamType::Reference => reference_atom(def, name, modifier, v, base)?,
            ParamType::Number => {
                no_modifier(name, modifier)?;
                let (prefix, value, text) = values::parse_number(v).map_err(|m| bad(name, m))?;
                let (low, high) = precision_range(value, &text);
                Atom::Number { param: def.code, prefix, value, low, high }
            }
            ParamType::Quantity => {
                no_modifier(name, modifier)?;
                let mut it = v.splitn(3, '|');
                let number = it.next().unwrap_or("");
                let system = it.next().filter(|s| !s.is_empty()).map(str::to_owned);
                let code = it.next().filter(|s| !s.is_empty()).map(str::to_owned);
                let (prefix, value, text) = values::parse_number(number).map_err(|m| bad(name, m))?;
                let (low, high) = precision_range(value, &text);
                Atom::Quantity { param: def.code, prefix, value, low, high, system, code }
            }
            ParamType::Uri => {
                let below = match modifier {
                    None => false,
                    Some("below") => true,
                    Some(m) => return Err(unsupported_modifier(name, m, "uri")),
                };
                Atom::Uri { param: def.code, value: v.clone(), below }
            }
            ParamType::Composite | ParamType::Special => {
                return Err(ApiError::invalid_at("not-supported", "parameter type not supported", name));
            }
        };
        atoms.push(atom);
    }
    Ok(Some(if negate { Filter::None(atoms) } else { Filter::Any(atoms) }))
}

fn no_modifier(name: &str, modifier: Option<&str>) -> Result<(), ApiError> {
    match modifier {
        None => Ok(()),
        Some(m) => Err(unsupported_modifier(name, m, "this")),
    }
}

fn unsupported_modifier(name: &str, modifier: &str, kind: &str) -> ApiError {
    ApiError::invalid_at("not-supported", format!("modifier `:{modifier}` is not supported on {kind} parameters"), name)
}

/// The range a number's written precision implies: `100` is [99.5, 100.5).
fn precision_range(value: f64, text: &str) -> (f64, f64) {
    let digits = text.split(['e', 'E']).next().unwrap_or("");
    let decimals = digits.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    (value - half, value + half)
}

fn reference_atom(
    def: &'static SearchParamDef,
    name: &str,
    modifier: Option<&str>,
    v: &str,
    base: &str,
) -> Result<Atom, ApiError> {
    match modifier {
        Some("identifier") => {
            return Ok(Atom::ReferenceIdentifier {
                param: def.code,
                query: values::parse_token(v).map_err(|m| bad(name, m))?,
            });
        }
        Some(t) if crate::fhir::is_supported_type(t) || def.targets.contains(&t) => {
            if !def.targets.is_empty() && !def.targets.contains(&t) {
                return Err(bad(name, format!("{} cannot refer to {t}", def.code)));
            }
            return Ok(Atom::Reference { param: def.code, ty: Some(t.to_owned()), id: v.to_owned() });
        }
        Some(m) => return Err(unsupported_modifier(name, m, "reference")),
        None => {}
    }
    let local = v.strip_prefix(base).and_then(|r| r.strip_prefix('/')).unwrap_or(v);
    if local.contains("://") || local.starts_with("urn:") {
        return Ok(Atom::ReferenceUrl { param: def.code, url: v.to_owned() });
    }
    let segments: Vec<&str> = local.split('/').collect();
    match segments.as_slice() {
        [id] => {
            let ty = match def.targets {
                [only] => Some((*only).to_owned()),
                _ => None,
            };
            Ok(Atom::Reference { param: def.code, ty, id: (*id).to_owned() })
        }
        [ty, id] | [ty, id, "_history", _] => {
            Ok(Atom::Reference { param: def.code, ty: Some((*ty).to_owned()), id: (*id).to_owned() })
        }
        _ => Err(bad(name, format!("`{v}` is not a reference (Type/id, id or an absolute URL)"))),
    }
}

fn chain(
    ty: &str,
    name: &str,
    head: &str,
    rest: &str,
    value: &str,
    base: &str,
    depth: usize,
) -> Result<Filter, ApiError> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(bad(name, format!("chains longer than {MAX_CHAIN_DEPTH} links are not supported")));
    }
    let (code, target) = match head.split_once(':') {
        Some((c, t)) => (c, Some(t)),
        None => (head, None),
    };
    let def = params::lookup(ty, code)
        .filter(|d| d.kind == ParamType::Reference)
        .ok_or_else(|| bad(name, format!("`{code}` is not a reference search parameter of {ty}")))?;
    let target = match (target, def.targets) {
        (Some(t), _) => t.to_owned(),
        (None, [only]) => (*only).to_owned(),
        (None, _) => {
            return Err(bad(
                name,
                format!("`{code}` can refer to several types; name one, e.g. {code}:Patient.{rest}"),
            ));
        }
    };
    if !crate::fhir::is_supported_type(&target) {
        return Err(bad(name, format!("cannot chain into unsupported type `{target}`")));
    }
    let inner = filter_for(&target, rest, value, base, depth + 1)?
        .ok_or_else(|| bad(name, format!("unknown search parameter `{rest}` for {target}")))?;
    Ok(Filter::Any(vec![Atom::Chain { param: def.code, ty: target, filters: vec![inner] }]))
}

/// Parses the criteria of a conditional operation (`If-None-Exist`, `PUT Type?…`): no paging or result parameters.
pub fn parse_conditional(ty: &str, criteria: &str, cfg: &FhirConfig, base: &str) -> Result<SearchPlan, ApiError> {
    // Some clients send `Patient?identifier=…` rather than just the query.
    let criteria = match criteria.split_once('?') {
        Some((prefix, query)) if prefix.is_empty() || prefix.ends_with(ty) => query,
        _ => criteria,
    };
    let pairs = parse_query_string(criteria);
    if pairs.is_empty() {
        return Err(ApiError::PreconditionFailed("conditional operation without search criteria".into()));
    }
    if let Some((n, _)) = pairs.iter().find(|(n, _)| n.starts_with('_') && n != "_id" && n != "_lastUpdated") {
        return Err(bad(n, "result parameters are not allowed in conditional criteria"));
    }
    let parsed = parse(ty, &pairs, cfg, true, base)?;
    let mut plan = parsed.plan;
    plan.count = 2;
    plan.sort.clear();
    Ok(plan)
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, as in forms).
pub fn parse_query_string(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned()
    };
    q.trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Encodes pairs back into a query string for links.
pub fn encode_query(pairs: &[(String, String)]) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b':')
        .remove(b'|')
        .remove(b',');
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, SET),
                percent_encoding::utf8_percent_encode(v, SET)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn cfg() -> FhirConfig {
        FhirConfig::default()
    }

    #[test]
    fn unknown_parameter_is_a_warning_or_an_error_when_strict() {
        let p = parse("Observation", &q(&[("bogus", "1")]), &cfg(), false, "http://x/fhir").unwrap();
        assert_eq!(p.warnings.len(), 1);
        assert!(p.applied.is_empty());
        assert!(parse("Observation", &q(&[("bogus", "1")]), &cfg(), true, "http://x/fhir").is_err());
    }

    #[test]
    fn oversized_searches_are_refused_not_run() {
        let many_ids = vec!["x"; MAX_VALUES + 1].join(",");
        assert!(parse("Patient", &q(&[("_id", &many_ids)]), &cfg(), true, "").is_err());
        let many_codes = vec!["c"; MAX_VALUES + 1].join(",");
        assert!(parse("Observation", &q(&[("code", &many_codes)]), &cfg(), true, "").is_err());
        assert!(parse("Patient", &q(&[("_id", "")]), &cfg(), true, "").is_err());
        assert!(parse("Patient", &q(&[("_id", "a,")]), &cfg(), true, "").is_err());
        let long = "a".repeat(MAX_VALUE_LEN + 1);
        assert!(parse("Patient", &q(&[("name:contains", &long)]), &cfg(), true, "").is_err());
        let params: Vec<(&str, &str)> = vec![("status", "final"); MAX_PARAMS + 1];
        assert!(parse("Observation", &q(&params), &cfg(), true, "").is_err());
    }

    #[test]
    fn count_is_capped_and_summary_count_counts() {
        let p = parse("Patient", &q(&[("_count", "5000")]), &cfg(), true, "").unwrap();
        assert_eq!(p.plan.count, 1000);
        let p = parse("Patient", &q(&[("_summary", "count")]), &cfg(), true, "").unwrap();
        assert_eq!(p.plan.count, 0);
        assert!(p.plan.with_total);
        let p = parse("Patient", &q(&[("_count", "0")]), &cfg(), true, "").unwrap();
        assert!(p.plan.with_total, "_count=0 answers the total");
    }

    #[test]
    fn chain_requires_a_type_when_ambiguous() {
        let ok = parse("Observation", &q(&[("subject:Patient.identifier", "s|v")]), &cfg(), true, "").unwrap();
        assert!(
            matches!(&ok.plan.filters[0], Filter::Any(a) if matches!(&a[0], Atom::Chain { ty, .. } if ty == "Patient"))
        );
        assert!(parse("Observation", &q(&[("subject.identifier", "s|v")]), &cfg(), true, "").is_err());
    }

    #[test]
    fn absolute_local_references_become_local() {
        let p =
            parse("Observation", &q(&[("subject", "http://x/fhir/Patient/1")]), &cfg(), true, "http://x/fhir").unwrap();
        let Filter::Any(atoms) = &p.plan.filters[0] else { panic!() };
        assert!(matches!(&atoms[0], Atom::Reference { ty: Some(t), id, .. } if t == "Patient" && id == "1"));
    }

    #[test]
    fn bad_dates_and_sorts_are_errors_naming_the_parameter() {
        let Err(ApiError::Invalid(i)) = parse("Observation", &q(&[("date", "2024-02-30")]), &cfg(), true, "") else {
            panic!("accepted")
        };
        assert_eq!(i[0].expression.as_deref(), Some("date"));
        assert!(parse("Observation", &q(&[("_sort", "nope")]), &cfg(), true, "").is_err());
    }

    #[test]
    fn conditional_criteria_may_carry_the_type() {
        let a = parse_conditional("Patient", "identifier=x|1", &cfg(), "").unwrap();
        let b = parse_conditional("Patient", "Patient?identifier=x|1", &cfg(), "").unwrap();
        assert_eq!(format!("{:?}", a.filters), format!("{:?}", b.filters));
        assert!(parse_conditional("Patient", "", &cfg(), "").is_err());
    }

    #[test]
    fn query_strings_round_trip() {
        let pairs = parse_query_string("subject%3APatient.identifier=a%7Cb&name=Anna+Maria");
        assert_eq!(pairs, q(&[("subject:Patient.identifier", "a|b"), ("name", "Anna Maria")]));
        assert_eq!(encode_query(&pairs), "subject:Patient.identifier=a|b&name=Anna%20Maria");
    }

    #[test]
    fn precision_of_numbers() {
        assert_eq!(precision_range(100.0, "100"), (99.5, 100.5));
        let (lo, hi) = precision_range(1.5, "1.50");
        assert!((lo - 1.495).abs() < 1e-9 && (hi - 1.505).abs() < 1e-9);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever a client puts in a query, the answer is a plan or a located error, never a panic.
            #[test]
            fn any_query_is_planned_or_refused(
                ty in prop::sample::select(crate::fhir::RESOURCE_TYPES),
                query in "[a-z_:.|,=&%A-Z0-9\\-]{0,80}",
            ) {
                let pairs = parse_query_string(&query);
                let _ = parse(ty, &pairs, &cfg(), false, "http://x/fhir");
                let _ = parse(ty, &pairs, &cfg(), true, "http://x/fhir");
                let _ = parse_conditional(ty, &query, &cfg(), "http://x/fhir");
            }

            #[test]
            fn known_parameters_with_any_value_are_planned_or_refused(
                ty in prop::sample::select(crate::fhir::RESOURCE_TYPES),
                pick in any::<prop::sample::Index>(),
                modifier in prop::option::of(prop::sample::select(&["missing", "not", "text", "exact", "contains", "below", "identifier", "Patient"][..])),
                value in "\\PC{0,40}",
            ) {
                let defs = params::params_for(ty);
                prop_assume!(!defs.is_empty());
                let def = &defs[pick.index(defs.len())];
                let name = match modifier {
                    Some(m) => format!("{}:{m}", def.code),
                    None => def.code.to_string(),
                };
                let _ = parse(ty, &[(name, value)], &cfg(), true, "");
            }
        }
    }
}
