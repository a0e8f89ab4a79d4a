//! Organisation binding: who is acting, and which stored resources they may
//! see and change. Scopes say *what kind* of access a client has (checked at
//! the HTTP layer); binding says *whose data* — a municipal client sees what
//! its organisation produced or what was addressed to it, region and admin
//! clients see across municipalities.
//!
//! Every stored resource carries the organisations that may see it (see
//! [`crate::store::Stored::access`]); searches by bound actors filter on
//! that set inside the query, so counts and paging stay right.

use std::sync::Arc;

use crate::{
    auth::{Action, ScopeSet},
    error::ApiError,
    store::{self, Filter},
};

/// The acting client as storage, binding and audit need it.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The registered client id (or `nara-gateway` for the gateway's own work).
    pub client_id: String,
    /// HSA-id of the client's organisation.
    pub organization: String,
    /// Kommunkod, for municipal clients.
    pub municipality: Option<String>,
    /// Reads across organisations (region clients, administrators, the gateway itself).
    pub cross_org: bool,
    /// Network address of the request, for the audit trail.
    pub address: Option<String>,
    /// The scopes granted to the client's token; `None` for the gateway itself (everything).
    pub scopes: Option<Arc<ScopeSet>>,
}

/// Resource types that hold no patient data: directory entries every
/// authenticated client may read.
const DIRECTORY_TYPES: &[&str] = &["Organization", "Practitioner", "PractitionerRole"];

/// Whether `ty` is a directory type (readable by every authenticated client).
pub fn is_directory_type(ty: &str) -> bool {
    DIRECTORY_TYPES.contains(&ty)
}

impl Actor {
    /// The gateway itself (CLI import, background work): unrestricted.
    pub fn gateway() -> Actor {
        Actor::gateway_at(None)
    }

    /// The gateway acting for an unauthenticated request (authentication switched off).
    pub fn gateway_at(address: Option<String>) -> Actor {
        Actor {
            client_id: "nara-gateway".into(),
            organization: String::new(),
            municipality: None,
            cross_org: true,
            address,
            scopes: None,
        }
    }

    /// Refuses (403) an action the client's scopes do not allow on `ty`.
    /// The audit log needs `nara/admin`, whatever the resource scopes say.
    pub fn require(&self, ty: &str, action: Action) -> Result<(), ApiError> {
        let Some(scopes) = &self.scopes else { return Ok(()) };
        let allowed = if ty == "AuditEvent" {
            scopes.has_admin() && matches!(action, Action::Read | Action::Search)
        } else {
            scopes.allows(ty, action)
        };
        if allowed {
            Ok(())
        } else {
            let action = format!("{action:?}").to_lowercase();
            Err(ApiError::Forbidden(format!("the access token's scopes do not allow `{action}` on {ty}")))
        }
    }

    /// The organisation reads and writes are bound to, for bound actors: its
    /// organisationsnummer, so that every unit of one care giver (HSA-ids
    /// `SE<orgnr>-…`) is the same organisation.
    pub fn bound_to(&self) -> Option<&str> {
        (!self.cross_org).then(|| self.access_key())
    }

    /// The key of the actor's organisation in access sets (its organisationsnummer).
    pub fn access_key(&self) -> &str {
        crate::identity::organisation_key(&self.organization)
    }

    /// Whether a resource of type `ty` with the stored access set may be read.
    pub fn may_see(&self, ty: &str, access: &str) -> bool {
        match self.bound_to() {
            None => true,
            Some(org) => DIRECTORY_TYPES.contains(&ty) || store::access_contains(access, org),
        }
    }

    /// Whether an existing resource may be changed: bound actors only change
    /// what their organisation may see (directory entries included: they are
    /// shared, so only their producers and cross-organisation clients change them).
    pub fn may_change(&self, access: &str) -> bool {
        match self.bound_to() {
            None => true,
            Some(org) => store::access_contains(access, org),
        }
    }

    /// The access set of a version this actor writes over `previous`: the
    /// earlier organisations stay, the writer's own is added.
    pub fn access_after_write(&self, previous: &str) -> String {
        store::access_with(previous, self.access_key())
    }

    /// The search filter that restricts a bound actor to what it may see;
    /// `None` for cross-organisation actors and directory types.
    pub fn search_filter(&self, ty: &str) -> Option<Filter> {
        let org = self.bound_to()?;
        if DIRECTORY_TYPES.contains(&ty) {
            return None;
        }
        Some(Filter::Any(vec![store::plan::Atom::Token {
            param: store::ACCESS_PARAM,
            query: crate::fhir::search::values::TokenQuery::NoSystemCode(org.to_owned()),
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lund() -> Actor {
        Actor {
            client_id: "lund-ehr".into(),
            organization: "SE2120001231-0001".into(),
            municipality: Some("1281".into()),
            cross_org: false,
            address: None,
            scopes: None,
        }
    }

    #[test]
    fn a_municipal_actor_sees_its_own_and_directory_entries_only() {
        let a = lund();
        assert!(a.may_see("Observation", "2120001231"));
        assert!(a.may_see("Observation", "2321000255 2120001231"));
        assert!(!a.may_see("Observation", "2120000829"));
        assert!(!a.may_see("Observation", ""));
        assert!(a.may_see("Organization", "2120000829"));
        assert!(!a.may_change("2120000829"));
        assert!(a.search_filter("Observation").is_some());
        assert!(a.search_filter("Practitioner").is_none());
    }

    #[test]
    fn cross_organisation_actors_are_not_bound() {
        let mut a = lund();
        a.cross_org = true;
        assert!(a.may_see("Observation", "2120000829"));
        assert!(a.search_filter("Observation").is_none());
    }

    #[test]
    fn writing_adds_the_writer_without_dropping_earlier_organisations() {
        let a = lund();
        assert_eq!(a.access_after_write(""), "2120001231");
        assert_eq!(a.access_after_write("2321000255"), "2321000255 2120001231");
        assert_eq!(a.access_after_write("2120001231"), "2120001231");
        assert_eq!(Actor::gateway().access_after_write("X"), "X");
    }
}
