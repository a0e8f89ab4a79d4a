//! SMART on FHIR scopes for machine clients: v1 (`system/Observation.read`,
//! `system/*.write`, `system/*.*`) and v2 (`system/Observation.rs`,
//! `system/Task.cruds`) syntax, plus the gateway's own `nara/ingest` and
//! `nara/admin`.
//!
//! A [`ScopeSet`] is kept canonical: one entry per resource type, entries a
//! wildcard already covers dropped, so its [`Display`](fmt::Display) form is
//! stable and comparable. Only `system/` scopes exist here: `patient/` and
//! `user/` scopes belong to user-facing apps and are refused.

use std::{fmt, str::FromStr};

/// An interaction a scope may allow on a resource type (the SMART v2 letters c, r, u, d, s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `c`: create.
    Create,
    /// `r`: read and vread.
    Read,
    /// `u`: update.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search (and history).
    Search,
}

impl Action {
    /// Every action, in SMART v2 letter order.
    pub const ALL: [Action; 5] = [Action::Create, Action::Read, Action::Update, Action::Delete, Action::Search];

    const fn bit(self) -> u8 {
        match self {
            Action::Create => C,
            Action::Read => R,
            Action::Update => U,
            Action::Delete => D,
            Action::Search => S,
        }
    }
}

const C: u8 = 1;
const R: u8 = 2;
const U: u8 = 4;
const D: u8 = 8;
const S: u8 = 16;
const ALL: u8 = C | R | U | D | S;
/// SMART v1 `read` is v2 `rs`; `write` is `cud`.
const V1_READ: u8 = R | S;
const V1_WRITE: u8 = C | U | D;
const LETTERS: [(u8, char); 5] = [(C, 'c'), (R, 'r'), (U, 'u'), (D, 'd'), (S, 's')];

/// Why a scope string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// `patient/…` or `user/…`: scopes of user-facing apps, not of machine clients.
    #[error(
        "`{0}` is not a system scope: machine clients use `system/…` scopes (patient/ and user/ scopes are not supported)"
    )]
    NotSystem(String),
    /// SMART v2 scope parameters (`?category=…`) are not supported.
    #[error("`{0}`: scope parameters (`?…`) are not supported")]
    Parameters(String),
    /// A resource type that is neither `*` nor a FHIR resource type name.
    #[error("`{0}`: the resource type must be `*` or a FHIR resource type such as `Observation`")]
    ResourceType(String),
    /// Permissions that are neither v1 (`read`, `write`, `*`) nor v2 letters.
    #[error(
        "`{0}`: permissions must be `read`, `write` or `*` (SMART v1) or letters of `cruds` in that order (SMART v2)"
    )]
    Permissions(String),
    /// Anything else.
    #[error("`{0}` is not a scope this gateway knows (system/TYPE.PERMISSIONS, nara/ingest or nara/admin)")]
    Unknown(String),
}

/// The syntax a resource scope was written in; kept so a v1 client gets v1 scopes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    V1,
    V2,
}

/// `system/TYPE.PERMISSIONS`: permissions on one resource type or on all (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ResourceScope {
    /// `None` for `*`.
    resource: Option<String>,
    /// Bits of C, R, U, D, S; never zero.
    perms: u8,
    syntax: Syntax,
}

impl ResourceScope {
    fn covers(&self, resource_type: &str) -> bool {
        self.resource.as_deref().is_none_or(|r| r == resource_type)
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = self.resource.as_deref().unwrap_or("*");
        let v1 = match (self.syntax, self.perms) {
            (Syntax::V1, V1_READ) => Some("read"),
            (Syntax::V1, V1_WRITE) => Some("write"),
            (Syntax::V1, ALL) => Some("*"),
            _ => None,
        };
        match v1 {
            Some(word) => write!(f, "system/{resource}.{word}"),
            None => {
                write!(f, "system/{resource}.")?;
                for (bit, letter) in LETTERS {
                    if self.perms & bit != 0 {
                        write!(f, "{letter}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// One parsed scope.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    Resource(ResourceScope),
    Ingest,
    Admin,
}

fn parse_scope(s: &str) -> Result<Scope, ScopeError> {
    match s {
        "nara/ingest" => return Ok(Scope::Ingest),
        "nara/admin" => return Ok(Scope::Admin),
        _ => {}
    }
    if s.starts_with("patient/") || s.starts_with("user/") {
        return Err(ScopeError::NotSystem(s.to_owned()));
    }
    let Some(rest) = s.strip_prefix("system/") else {
        return Err(ScopeError::Unknown(s.to_owned()));
    };
    if rest.contains('?') {
        return Err(ScopeError::Parameters(s.to_owned()));
    }
    let Some((resource, perms)) = rest.split_once('.') else {
        return Err(ScopeError::Unknown(s.to_owned()));
    };
    let resource = match resource {
        "*" => None,
        r if is_resource_type(r) => Some(r.to_owned()),
        _ => return Err(ScopeError::ResourceType(s.to_owned())),
    };
    let (perms, syntax) = match perms {
        "read" => (V1_READ, Syntax::V1),
        "write" => (V1_WRITE, Syntax::V1),
        "*" => (ALL, Syntax::V1),
        letters => (parse_letters(letters).ok_or_else(|| ScopeError::Permissions(s.to_owned()))?, Syntax::V2),
    };
    Ok(Scope::Resource(ResourceScope { resource, perms, syntax }))
}

/// A FHIR resource type name: an upper-case ASCII letter, then letters (at most 64 in all).
fn is_resource_type(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= 64 && bytes.next().is_some_and(|b| b.is_ascii_uppercase()) && bytes.all(|b| b.is_ascii_alphabetic())
}

/// SMART v2 permission letters: a non-empty subset of `cruds`, in that order.
fn parse_letters(letters: &str) -> Option<u8> {
    let mut perms = 0u8;
    let mut next = 0; // index into LETTERS of the next letter allowed
    for ch in letters.chars() {
        let at = LETTERS[next..].iter().position(|&(_, l)| l == ch)? + next;
        perms |= LETTERS[at].0;
        next = at + 1;
    }
    (perms != 0).then_some(perms)
}

/// A canonical set of scopes: what a client is registered for, or what a token grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet {
    /// At most one entry per resource type, the wildcard (if any) first, then by type name;
    /// entries the wildcard covers are dropped.
    resources: Vec<ResourceScope>,
    ingest: bool,
    admin: bool,
}

impl ScopeSet {
    /// Parses a space-separated scope string (as in OAuth's `scope` parameter). Empty → empty set.
    pub fn parse(s: &str) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::default();
        for word in s.split_ascii_whitespace() {
            set.add(parse_scope(word)?);
        }
        set.canonicalize();
        Ok(set)
    }

    /// Parses a list of scopes (as in configuration); the error carries the index of the bad one.
    pub fn from_list<S: AsRef<str>>(scopes: &[S]) -> Result<ScopeSet, (usize, ScopeError)> {
        let mut set = ScopeSet::default();
        for (i, s) in scopes.iter().enumerate() {
            let s = s.as_ref();
            if s.is_empty() || s.contains(char::is_whitespace) {
                return Err((i, ScopeError::Unknown(s.to_owned())));
            }
            set.add(parse_scope(s).map_err(|e| (i, e))?);
        }
        set.canonicalize();
        Ok(set)
    }

    /// Parses leniently: scopes this gateway does not know (`openid`, `profile`, `patient/…`)
    /// are left out instead of refused. For tokens of an external identity provider.
    pub fn parse_lenient<'a>(scopes: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        let mut set = ScopeSet::default();
        for s in scopes {
            if let Ok(scope) = parse_scope(s) {
                set.add(scope);
            }
        }
        set.canonicalize();
        set
    }

    /// Whether any scope allows `action` on resources of type `resource_type`.
    pub fn allows(&self, resource_type: &str, action: Action) -> bool {
        let bit = action.bit();
        self.resources.iter().any(|r| r.perms & bit != 0 && r.covers(resource_type))
    }

    /// `nara/ingest`: may push municipal records.
    pub fn has_ingest(&self) -> bool {
        self.ingest
    }

    /// `nara/admin`: may use the administrative endpoints and read the audit log.
    pub fn has_admin(&self) -> bool {
        self.admin
    }

    /// Whether the set holds no scope at all.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && !self.ingest && !self.admin
    }

    /// What both this set and `other` allow (entries keep this set's v1/v2 syntax).
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        intersect(self, other)
    }

    /// Whether every access this set allows is also allowed by `other`.
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        (!self.ingest || other.ingest)
            && (!self.admin || other.admin)
            && self.resources.iter().all(|mine| {
                let covering = other
                    .resources
                    .iter()
                    .filter(|theirs| theirs.resource.is_none() || theirs.resource == mine.resource)
                    .fold(0u8, |acc, theirs| acc | theirs.perms);
                mine.perms & !covering == 0
            })
    }

    fn add(&mut self, scope: Scope) {
        match scope {
            Scope::Ingest => self.ingest = true,
            Scope::Admin => self.admin = true,
            Scope::Resource(r) => self.resources.push(r),
        }
    }

    /// Merges entries of the same resource type, drops what the wildcard covers, sorts.
    fn canonicalize(&mut self) {
        let mut merged: Vec<ResourceScope> = Vec::with_capacity(self.resources.len());
        for r in self.resources.drain(..) {
            match merged.iter_mut().find(|m| m.resource == r.resource) {
                Some(m) => {
                    m.perms |= r.perms;
                    if r.syntax == Syntax::V2 {
                        m.syntax = Syntax::V2;
                    }
                }
                None => merged.push(r),
            }
        }
        for m in &mut merged {
            if !matches!(m.perms, V1_READ | V1_WRITE | ALL) {
                m.syntax = Syntax::V2;
            }
        }
        let wildcard = merged.iter().find(|m| m.resource.is_none()).map_or(0, |m| m.perms);
        // A type-specific entry the wildcard already covers adds nothing.
        merged.retain(|m| m.resource.is_none() || m.perms & !wildcard != 0);
        merged.sort_by(|a, b| a.resource.cmp(&b.resource));
        self.resources = merged;
    }
}

/// Grants each requested scope only as far as the registered scopes cover it.
///
/// `requested` is the space-separated `scope` parameter; empty (or only
/// whitespace) asks for everything registered. A requested scope the
/// registered ones do not cover at all is left out; one they cover partly
/// is narrowed (`system/Observation.cruds` against `system/*.rs` gives
/// `system/Observation.rs`). The result never allows more than `registered`.
pub fn narrow(requested: &str, registered: &ScopeSet) -> Result<ScopeSet, ScopeError> {
    let requested = ScopeSet::parse(requested)?;
    if requested.is_empty() {
        return Ok(registered.clone());
    }
    Ok(intersect(&requested, registered))
}

/// What both sets allow.
fn intersect(requested: &ScopeSet, registered: &ScopeSet) -> ScopeSet {
    let mut out = ScopeSet {
        resources: Vec::new(),
        ingest: requested.ingest && registered.ingest,
        admin: requested.admin && registered.admin,
    };
    for want in &requested.resources {
        for have in &registered.resources {
            let resource = match (&want.resource, &have.resource) {
                (None, r) | (r, None) => r.clone(),
                (Some(a), Some(b)) if a == b => Some(a.clone()),
                _ => continue,
            };
            let perms = want.perms & have.perms;
            if perms != 0 {
                out.resources.push(ResourceScope { resource, perms, syntax: want.syntax });
            }
        }
    }
    out.canonicalize();
    out
}

impl FromStr for ScopeSet {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeSet::parse(s)
    }
}

impl fmt::Display for ScopeSet {
    /// The canonical space-separated form: resource scopes (wildcard first), then `nara/admin`, `nara/ingest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { f.write_str(" ") };
            first = false;
            r
        };
        for r in &self.resources {
            sep(f)?;
            write!(f, "{r}")?;
        }
        if self.admin {
            sep(f)?;
            f.write_str("nara/admin")?;
        }
        if self.ingest {
            sep(f)?;
            f.write_str("nara/ingest")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn v1_read_is_read_and_search_and_write_is_create_update_delete() {
        let read = set("system/Observation.read");
        assert!(read.allows("Observation", Action::Read));
        assert!(read.allows("Observation", Action::Search));
        assert!(!read.allows("Observation", Action::Create));
        assert!(!read.allows("Patient", Action::Read));
        let write = set("system/*.write");
        for (action, allowed) in [
            (Action::Create, true),
            (Action::Update, true),
            (Action::Delete, true),
            (Action::Read, false),
            (Action::Search, false),
        ] {
            assert_eq!(write.allows("Task", action), allowed, "{action:?}");
        }
        let all = set("system/*.*");
        assert!(Action::ALL.iter().all(|&a| all.allows("Binary", a)));
    }

    #[test]
    fn v2_letters_in_order_any_subset() {
        let s = set("system/Task.cruds system/Observation.rs system/Patient.s system/Goal.cd");
        assert!(s.allows("Task", Action::Delete));
        assert!(s.allows("Observation", Action::Read) && !s.allows("Observation", Action::Update));
        assert!(s.allows("Patient", Action::Search) && !s.allows("Patient", Action::Read));
        assert!(s.allows("Goal", Action::Create) && s.allows("Goal", Action::Delete));
        assert!(!s.allows("Goal", Action::Read));
    }

    #[test]
    fn refuses_patient_user_and_garbage_scopes_with_reason() {
        for (bad, expected) in [
            ("patient/Observation.rs", "not a system scope"),
            ("user/*.read", "not a system scope"),
            ("system/Observation.sr", "cruds"),
            ("system/Observation.rr", "cruds"),
            ("system/Observation.", "cruds"),
            ("system/Observation.x", "cruds"),
            ("system/observation.rs", "resource type"),
            ("system/Obs-1.rs", "resource type"),
            ("system/Observation.rs?category=vital-signs", "parameters"),
            ("system/Observation", "not a scope"),
            ("openid", "not a scope"),
            ("nara/root", "not a scope"),
        ] {
            let err = ScopeSet::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(expected), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: the error names the scope: {err}");
        }
    }

    #[test]
    fn nara_scopes() {
        let s = set("nara/ingest");
        assert!(s.has_ingest() && !s.has_admin());
        assert!(!s.allows("Observation", Action::Read));
        assert!(set("nara/admin").has_admin());
    }

    #[test]
    fn display_is_canonical_and_keeps_v1_syntax() {
        assert_eq!(set("system/*.read").to_string(), "system/*.read");
        assert_eq!(set("system/*.*").to_string(), "system/*.*");
        assert_eq!(
            set("nara/ingest system/Task.cruds  system/Observation.rs").to_string(),
            "system/Observation.rs system/Task.cruds nara/ingest"
        );
        // Merged and subsumed entries.
        assert_eq!(set("system/Observation.r system/Observation.s").to_string(), "system/Observation.rs");
        assert_eq!(set("system/Observation.rs system/*.rs").to_string(), "system/*.rs");
        assert_eq!(set("system/Observation.cruds system/*.rs").to_string(), "system/*.rs system/Observation.cruds");
        assert_eq!(set("nara/admin nara/ingest").to_string(), "nara/admin nara/ingest");
        assert_eq!(set("").to_string(), "");
    }

    #[test]
    fn narrowing_grants_only_what_is_registered() {
        let registered = set("system/*.rs system/Task.cruds nara/ingest");
        assert_eq!(
            narrow("system/Observation.cruds", &registered).map(|s| s.to_string()),
            Ok("system/Observation.rs".into())
        );
        assert_eq!(
            narrow("system/*.cruds", &registered).map(|s| s.to_string()),
            Ok("system/*.rs system/Task.cruds".into())
        );
        assert_eq!(narrow("system/Observation.write", &registered).map(|s| s.to_string()), Ok(String::new()));
        assert_eq!(narrow("nara/admin nara/ingest", &registered).map(|s| s.to_string()), Ok("nara/ingest".into()));
        assert_eq!(narrow("", &registered), Ok(registered.clone()));
        assert_eq!(narrow("   ", &registered), Ok(registered.clone()));
        assert!(narrow("patient/*.rs", &registered).is_err());
        // A wildcard request against type-specific registrations yields those types.
        let typed = set("system/Observation.rs system/Task.cu");
        assert_eq!(narrow("system/*.read", &typed).map(|s| s.to_string()), Ok("system/Observation.read".into()));
        // v1 requests keep v1 syntax where it can express the grant.
        assert_eq!(narrow("system/*.read", &set("system/*.cruds")).map(|s| s.to_string()), Ok("system/*.read".into()));
    }

    #[test]
    fn from_list_names_the_bad_index() {
        let err = ScopeSet::from_list(&["system/*.rs", "patient/*.rs"]).expect_err("patient scope");
        assert_eq!(err.0, 1);
        assert!(ScopeSet::from_list(&["system/*.rs nara/admin"]).is_err(), "one scope per entry");
    }

    #[test]
    fn lenient_parsing_drops_unknown_scopes() {
        let s = ScopeSet::parse_lenient(["openid", "system/Observation.rs", "patient/*.read", "nara/ingest"]);
        assert_eq!(s.to_string(), "system/Observation.rs nara/ingest");
    }

    fn scope_strategy() -> impl Strategy<Value = String> {
        let resource = prop_oneof![
            Just("*".to_owned()),
            Just("Observation".to_owned()),
            Just("Task".to_owned()),
            Just("Patient".to_owned())
        ];
        let perms = prop_oneof![
            Just("read".to_owned()),
            Just("write".to_owned()),
            Just("*".to_owned()),
            (1u8..32).prop_map(|bits| LETTERS.iter().filter(|(b, _)| bits & b != 0).map(|(_, l)| *l).collect()),
        ];
        prop_oneof![
            4 => (resource, perms).prop_map(|(r, p)| format!("system/{r}.{p}")),
            1 => Just("nara/ingest".to_owned()),
            1 => Just("nara/admin".to_owned()),
        ]
    }

    fn scope_string() -> impl Strategy<Value = String> {
        proptest::collection::vec(scope_strategy(), 0..6).prop_map(|v| v.join(" "))
    }

    proptest! {
        #[test]
        fn narrowing_never_grants_more_than_registered(registered in scope_string(), requested in scope_string()) {
            let registered = set(&registered);
            let asked = set(&requested);
            let granted = narrow(&requested, &registered).expect("generated scopes parse");
            prop_assert!(granted.is_subset_of(&registered));
            if !asked.is_empty() {
                prop_assert!(granted.is_subset_of(&asked));
            }
            for ty in ["Observation", "Task", "Patient", "Binary"] {
                for a in Action::ALL {
                    let g = granted.allows(ty, a);
                    prop_assert!(!g || registered.allows(ty, a), "{ty} {a:?}");
                    // Narrowing loses nothing both sides allow.
                    let want = asked.is_empty() || asked.allows(ty, a);
                    prop_assert_eq!(g, want && registered.allows(ty, a), "{} {:?}", ty, a);
                }
            }
            prop_assert_eq!(granted.has_ingest(), registered.has_ingest() && (asked.is_empty() || asked.has_ingest()));
            prop_assert_eq!(granted.has_admin(), registered.has_admin() && (asked.is_empty() || asked.has_admin()));
        }

        #[test]
        fn display_parses_back_to_the_same_set(s in scope_string()) {
            let parsed = set(&s);
            prop_assert_eq!(set(&parsed.to_string()), parsed);
        }
    }
}
