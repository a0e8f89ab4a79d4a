//! The `[auth]` section of the configuration: the gateway's issuer and
//! signing key, token lifetime, registered machine clients, and an optional
//! external identity provider. [`AuthConfig::validate`] checks what types
//! alone cannot and names the key at fault; keys themselves are read by
//! [`Auth::from_config`](super::Auth::from_config).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::scope::ScopeSet;

/// Longest access-token lifetime the gateway issues, in seconds.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 3600;

/// Tokens, registered clients, the gateway's signing key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require access tokens. `false` lets every request act as the gateway itself: development only.
    pub enabled: bool,
    /// The `iss` (and `aud`) of the gateway's access tokens; empty = the public base URL
    /// (the token endpoint URL without `/auth/token`).
    pub issuer: String,
    /// The gateway's token signing key: an EC P-384 private key, PKCS#8 PEM (tokens are ES384).
    pub signing_key: PathBuf,
    /// Lifetime of issued access tokens in seconds (1 to 3600).
    pub token_lifetime_secs: u64,
    /// Registered machine clients (SMART Backend Services). Built in: the example clients of
    /// `certs-example/` (development only; a configured list replaces them).
    pub clients: Vec<ClientConfig>,
    /// JWKS URL of an external identity provider whose access tokens are accepted too.
    pub jwks_url: Option<String>,
    /// The `iss` the external identity provider's tokens must carry (required with `jwks_url`).
    pub jwks_issuer: Option<String>,
    /// The `aud` the external identity provider's tokens must contain (required with `jwks_url`).
    pub jwks_audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            issuer: String::new(),
            signing_key: PathBuf::from("certs-example/gateway-signing.key"),
            token_lifetime_secs: 300,
            clients: example_clients(),
            jwks_url: None,
            jwks_issuer: None,
            jwks_audience: None,
        }
    }
}

/// The four example clients of `certs-example/` (their private keys are public: development only).
pub fn example_clients() -> Vec<ClientConfig> {
    let client = |id: &str, organization: &str, municipality: Option<&str>, scopes: &[&str], name: &str| ClientConfig {
        id: id.into(),
        organization: organization.into(),
        municipality: municipality.map(str::to_owned),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        jwks: format!("certs-example/clients/{id}.jwks.json"),
        name: Some(name.into()),
    };
    let municipal = ["system/*.rs", "system/Task.cruds", "system/Subscription.cruds", "nara/ingest"];
    vec![
        client("lund-ehr", "SE2120001231-0001", Some("1281"), &municipal, "Lunds kommun (example)"),
        client("malmo-ehr", "SE2120000829-0001", Some("1280"), &municipal, "Malmö stad (example)"),
        client("region-skane", "SE2321000255-0001", None, &["system/*.cruds", "nara/ingest"], "Region Skåne (example)"),
        client(
            "nara-admin",
            "SE2321000255-0001",
            None,
            &["system/*.rs", "nara/admin"],
            "Gateway administrators (example)",
        ),
    ]
}

/// A registered machine client.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Client id: the `iss` and `sub` of its assertions, the `sub` of its access tokens.
    pub id: String,
    /// HSA-id of the client's organisation (e.g. `SE2120001231-0001`).
    pub organization: String,
    /// Kommunkod (four digits) for municipal clients; absent for region clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub municipality: Option<String>,
    /// Scopes the client may be granted (SMART v1/v2 `system/…`, `nara/ingest`, `nara/admin`).
    pub scopes: Vec<String>,
    /// The client's public keys: a path to a JWKS file, or inline JWKS JSON (starting with `{`).
    pub jwks: String,
    /// Human-readable name, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl AuthConfig {
    /// Checks the section; the error starts with the key at fault (`auth.clients[1].scopes[0]: …`).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.issuer.is_empty() || is_http_url(&self.issuer)) {
            return Err("auth.issuer: must be empty (the public base URL) or an absolute http(s) URL".into());
        }
        if self.signing_key.as_os_str().is_empty() {
            return Err("auth.signing_key: must name a PKCS#8 PEM file with an EC P-384 key".into());
        }
        if !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&self.token_lifetime_secs) {
            return Err(format!("auth.token_lifetime_secs: must be between 1 and {MAX_TOKEN_LIFETIME_SECS}"));
        }
        for (i, client) in self.clients.iter().enumerate() {
            client.validate().map_err(|(field, msg)| format!("auth.clients[{i}].{field}: {msg}"))?;
            if let Some(j) = self.clients[..i].iter().position(|c| c.id == client.id) {
                return Err(format!("auth.clients[{i}].id: `{}` is already registered (auth.clients[{j}])", client.id));
            }
        }
        match (&self.jwks_url, &self.jwks_issuer, &self.jwks_audience) {
            (None, None, None) => {}
            (None, _, _) => return Err("auth.jwks_url: must be set when jwks_issuer or jwks_audience is".into()),
            (Some(url), _, _) if !is_http_url(url) => {
                return Err("auth.jwks_url: must be an absolute http(s) URL".into());
            }
            (Some(_), None, _) => return Err("auth.jwks_issuer: required with auth.jwks_url".into()),
            (Some(_), _, None) => return Err("auth.jwks_audience: required with auth.jwks_url".into()),
            (Some(_), Some(iss), Some(aud)) => {
                if iss.is_empty() {
                    return Err("auth.jwks_issuer: must not be empty".into());
                }
                if aud.is_empty() {
                    return Err("auth.jwks_audience: must not be empty".into());
                }
            }
        }
        Ok(())
    }
}

impl ClientConfig {
    /// Checks one client; the error names the field (`scopes[0]`) and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, msg: String| Err((field.to_owned(), msg));
        if !is_client_id(&self.id) {
            return err("id", "1 to 128 characters of letters, digits and `-._:`".into());
        }
        if !is_hsa_id(&self.organization) {
            return err("organization", format!("`{}` is not an HSA-id (like SE2120001231-0001)", self.organization));
        }
        if let Some(code) = &self.municipality
            && !(code.len() == 4 && code.bytes().all(|b| b.is_ascii_digit()))
        {
            return err("municipality", format!("`{code}` is not a kommunkod (four digits, e.g. 1281)"));
        }
        if self.scopes.is_empty() {
            return err("scopes", "a client needs at least one scope".into());
        }
        if let Err((i, e)) = ScopeSet::from_list(&self.scopes) {
            return err(&format!("scopes[{i}]"), e.to_string());
        }
        let jwks = self.jwks.trim_start();
        if jwks.is_empty() {
            return err("jwks", "must be a JWKS file path or inline JWKS JSON".into());
        }
        if jwks.starts_with('{')
            && let Err(e) = serde_json::from_str::<serde_json::Value>(jwks)
        {
            return err("jwks", format!("inline JWKS is not JSON: {e}"));
        }
        Ok(())
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

fn is_client_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

/// `SE` + organisation number (10 digits, or 12 with the `16` prefix) + `-` + 1–31 letters or digits.
fn is_hsa_id(s: &str) -> bool {
    let Some((org, ext)) = s.strip_prefix("SE").and_then(|r| r.split_once('-')) else { return false };
    matches!(org.len(), 10 | 12)
        && org.bytes().all(|b| b.is_ascii_digit())
        && (1..=31).contains(&ext.len())
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> ClientConfig {
        ClientConfig {
            id: id.into(),
            organization: "SE2120001231-0001".into(),
            municipality: Some("1281".into()),
            scopes: vec!["system/Observation.rs".into(), "nara/ingest".into()],
            jwks: "certs-example/clients/lund-ehr.jwks.json".into(),
            name: None,
        }
    }

    #[test]
    fn example_clients_are_built_in_and_valid() {
        let ids: Vec<String> = AuthConfig::default().clients.into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["lund-ehr", "malmo-ehr", "region-skane", "nara-admin"]);
        assert!(AuthConfig::default().clients.iter().all(|c| c.jwks.starts_with("certs-example/")));
    }

    fn with_clients(clients: Vec<ClientConfig>) -> AuthConfig {
        AuthConfig { clients, ..AuthConfig::default() }
    }

    #[test]
    fn defaults_are_valid() {
        let c = AuthConfig::default();
        assert!(c.enabled);
        assert_eq!(c.token_lifetime_secs, 300);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(with_clients(vec![client("lund-ehr"), client("malmo-ehr")]).validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_key() {
        let mut bad = client("b");
        bad.scopes = vec!["system/*.rs".into(), "patient/*.read".into()];
        let e = with_clients(vec![client("a"), bad]).validate().expect_err("patient scope");
        assert!(e.starts_with("auth.clients[1].scopes[1]: "), "{e}");

        let mut bad = client("b");
        bad.organization = "Lund".into();
        let e = with_clients(vec![bad]).validate().expect_err("organisation");
        assert!(e.starts_with("auth.clients[0].organization: "), "{e}");

        let mut bad = client("b");
        bad.municipality = Some("12811".into());
        assert!(with_clients(vec![bad]).validate().expect_err("kommunkod").starts_with("auth.clients[0].municipality"));

        let mut bad = client("b");
        bad.jwks = "{not json".into();
        assert!(with_clients(vec![bad]).validate().expect_err("jwks").starts_with("auth.clients[0].jwks"));

        let e = with_clients(vec![client("a"), client("a")]).validate().expect_err("duplicate");
        assert!(e.starts_with("auth.clients[1].id: `a` is already registered"), "{e}");

        let e = AuthConfig { token_lifetime_secs: 3601, ..AuthConfig::default() }.validate().expect_err("lifetime");
        assert!(e.starts_with("auth.token_lifetime_secs"), "{e}");

        let e = AuthConfig { jwks_url: Some("https://idp.example/jwks".into()), ..AuthConfig::default() }
            .validate()
            .expect_err("issuer missing");
        assert!(e.starts_with("auth.jwks_issuer"), "{e}");
    }

    #[test]
    fn parses_the_documented_toml() {
        let text = r#"
            issuer = "https://nara.example"
            [[clients]]
            id = "lund-ehr"
            organization = "SE2120001231-0001"
            municipality = "1281"
            scopes = ["system/Observation.rs", "system/Task.cruds", "nara/ingest"]
            jwks = "certs-example/clients/lund-ehr.jwks.json"
        "#;
        let c: AuthConfig = toml::from_str(text).expect("parses");
        assert_eq!(c.clients[0].municipality.as_deref(), Some("1281"));
        assert_eq!(c.token_lifetime_secs, 300);
        assert_eq!(c.clients.len(), 1, "a configured list replaces the examples");
        assert_eq!(c.validate(), Ok(()));
        let unknown =
            "[[clients]]\nid = \"a\"\norganization = \"SE2120001231-0001\"\nscopes = []\njwks = \"x\"\nsecret = 1";
        assert!(toml::from_str::<AuthConfig>(unknown).is_err(), "unknown keys are refused");
    }
}
