//! End-to-end tests of token exchange and verification with real keys:
//! generated per test run, assertions signed with jsonwebtoken, attacks
//! built by hand where a library would refuse to build them.

use std::sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicUsize, Ordering},
};

use aws_lc_rs::{
    encoding::{AsDer, PublicKeyX509Der},
    signature::{KeyPair, RsaKeyPair},
};
use axum::http::StatusCode;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::auth::keys::{pem_decode, pem_encode};

const NOW: u64 = 1_750_000_000;
const TOKEN_URL: &str = "https://nara.example/auth/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Keys generated once for the whole test binary (RSA 3072 generation takes a while).
struct Fixture {
    gateway: GeneratedKeys,
    lund: GeneratedKeys,
    region: GeneratedKeys,
    idp: GeneratedKeys,
    dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let gateway = generate_client_keys(KeyAlg::Es384).expect("gateway key");
        std::fs::write(dir.path().join("gateway.key"), &gateway.private_pkcs8_pem).expect("write");
        let region = generate_client_keys(KeyAlg::Rs384).expect("region key");
        std::fs::write(dir.path().join("region.jwks.json"), &region.jwks_json).expect("write");
        Fixture {
            gateway,
            lund: generate_client_keys(KeyAlg::Es384).expect("lund key"),
            region,
            idp: generate_client_keys(KeyAlg::Rs384).expect("idp key"),
            dir,
        }
    })
}

fn config() -> AuthConfig {
    let f = fixture();
    AuthConfig {
        signing_key: f.dir.path().join("gateway.key"),
        clients: vec![
            ClientConfig {
                id: "lund-ehr".into(),
                organization: "SE2120001231-0001".into(),
                municipality: Some("1281".into()),
                scopes: vec!["system/Observation.rs".into(), "system/Task.cruds".into(), "nara/ingest".into()],
                jwks: f.lund.jwks_json.clone(),
                name: Some("Lund kommun".into()),
            },
            ClientConfig {
                id: "region-skane".into(),
                organization: "SE2321000255-0001".into(),
                municipality: None,
                scopes: vec!["system/*.read".into()],
                jwks: f.dir.path().join("region.jwks.json").display().to_string(),
                name: None,
            },
        ],
        ..AuthConfig::default()
    }
}

fn auth() -> Auth {
    Auth::from_config(&config(), TOKEN_URL.into()).expect("auth loads")
}

fn signer(keys: &GeneratedKeys) -> ClientSigner {
    ClientSigner::from_pem(&keys.private_pkcs8_pem).expect("private key")
}

/// Standard assertion claims for `client`, overridable per test.
fn claims(client: &str) -> Value {
    json!({
        "iss": client, "sub": client, "aud": TOKEN_URL,
        "exp": NOW + 240, "iat": NOW, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().expect("object") {
        if v.is_null() {
            base.as_object_mut().expect("object").remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn lund_assertion(claims: &Value) -> String {
    let f = fixture();
    signer(&f.lund).sign(&f.lund.kid, claims).expect("signs")
}

fn form(assertion: &str, scope: Option<&str>) -> Vec<u8> {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut body = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
        enc(JWT_BEARER),
        enc(assertion)
    );
    if let Some(scope) = scope {
        body.push_str(&format!("&scope={}", scope.replace(' ', "+").replace('/', "%2F")));
    }
    body.into_bytes()
}

/// A compact JWS with any header and claims and the given signature bytes.
fn hand_built(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    format!("{}.{}.{}", part(header), part(claims), URL_SAFE_NO_PAD.encode(signature))
}

/// HS256 over `header.claims` with `secret`, as an attacker holding a public key would build it.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = header["kid"].as_str().map(str::to_owned);
    h.typ = header["typ"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).expect("hs256")
}

fn expect_oauth(result: Result<Grant, OAuthError>, code: OAuthErrorCode) -> OAuthError {
    match result {
        Ok(g) => panic!("expected {code:?}, got a token with scope {}", g.response.scope),
        Err(e) => {
            assert_eq!(e.code(), code, "{e}");
            e
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn auth_is_shareable_across_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Auth>();
    send_sync::<Caller>();
    let auth = auth();
    send(&auth.verify_bearer_async("", NOW));
    send(&auth.refresh_external_keys());
}

// ---------------------------------------------------------------- token endpoint

#[test]
fn es384_municipal_client_gets_a_token_that_verifies() {
    let auth = auth();
    let grant = auth.exchange(&form(&lund_assertion(&claims("lund-ehr")), None), NOW).expect("granted");
    assert_eq!(grant.client_id, "lund-ehr");
    assert_eq!(grant.organization, "SE2120001231-0001");
    assert_eq!(grant.municipality.as_deref(), Some("1281"));
    let response = serde_json::to_value(&grant.response).expect("json");
    assert_eq!(response["token_type"], "bearer");
    assert_eq!(response["expires_in"], 300);
    assert_eq!(response["scope"], "system/Observation.rs system/Task.cruds nara/ingest");
    assert_eq!(response.as_object().map(|o| o.len()), Some(4), "{response}");
    assert!(!format!("{:?}", grant.response).contains(&grant.response.access_token), "Debug hides the token");

    let caller = auth.verify_bearer(&bearer(&grant.response.access_token), NOW + 10).expect("verifies");
    assert_eq!(caller.client_id, "lund-ehr");
    assert_eq!(caller.organization, "SE2120001231-0001");
    assert_eq!(caller.municipality.as_deref(), Some("1281"));
    assert!(!caller.is_region());
    assert!(caller.scopes.allows("Task", Action::Delete));
    assert!(caller.scopes.has_ingest() && !caller.scopes.has_admin());
    assert!(!caller.token_id.is_empty());

    // The token's claims are the documented ones.
    let payload = grant.response.access_token.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    assert_eq!(claims["iss"], "https://nara.example");
    assert_eq!(claims["aud"], "https://nara.example");
    assert_eq!(claims["sub"], "lund-ehr");
    assert_eq!(claims["client_id"], "lund-ehr");
    assert_eq!(claims["org"], "SE2120001231-0001");
    assert_eq!(claims["kommunkod"], "1281");
    assert_eq!(claims["exp"], NOW + 300);
    assert_eq!(claims["iat"], NOW);
    assert_eq!(claims["jti"], caller.token_id.as_str());
}

#[test]
fn rs384_region_client_with_jwks_file_gets_a_token() {
    let f = fixture();
    let auth = auth();
    let assertion = signer(&f.region).sign(&f.region.kid, &claims("region-skane")).expect("signs");
    let grant = auth.exchange(&form(&assertion, Some("system/Observation.read")), NOW).expect("granted");
    assert_eq!(grant.response.scope, "system/Observation.read");
    assert_eq!(grant.municipality, None);
    let caller = auth.verify_bearer(&bearer(&grant.response.access_token), NOW).expect("verifies");
    assert!(caller.is_region());
    assert!(caller.scopes.allows("Observation", Action::Search));
    assert!(!caller.scopes.allows("Patient", Action::Read));
}

#[test]
fn scope_escalation_is_narrowed_to_the_registration() {
    let auth = auth();
    let asked = "system/*.cruds nara/admin nara/ingest";
    let grant = auth.exchange(&form(&lund_assertion(&claims("lund-ehr")), Some(asked)), NOW).expect("granted");
    assert_eq!(grant.response.scope, "system/Observation.rs system/Task.cruds nara/ingest");
    let caller = auth.verify_bearer(&bearer(&grant.response.access_token), NOW).expect("verifies");
    assert!(!caller.scopes.has_admin());
    assert!(!caller.scopes.allows("Observation", Action::Create));
    assert!(!caller.scopes.allows("Patient", Action::Read));

    let grant = auth
        .exchange(&form(&lund_assertion(&claims("lund-ehr")), Some("system/Observation.cruds")), NOW)
        .expect("granted");
    assert_eq!(grant.response.scope, "system/Observation.rs");

    let e = expect_oauth(
        auth.exchange(&form(&lund_assertion(&claims("lund-ehr")), Some("nara/admin")), NOW),
        OAuthErrorCode::InvalidScope,
    );
    assert_eq!(e.client_id(), Some("lund-ehr"));
    expect_oauth(
        auth.exchange(&form(&lund_assertion(&claims("lund-ehr")), Some("patient/*.read")), NOW),
        OAuthErrorCode::InvalidScope,
    );
}

#[test]
fn wrong_grant_type_and_missing_fields_are_refused() {
    let auth = auth();
    let a = lund_assertion(&claims("lund-ehr"));
    let body = String::from_utf8(form(&a, None)).expect("utf8");
    let e = expect_oauth(
        auth.exchange(body.replace("client_credentials", "password").as_bytes(), NOW),
        OAuthErrorCode::UnsupportedGrantType,
    );
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    expect_oauth(
        auth.exchange(body.replace("grant_type=client_credentials&", "").as_bytes(), NOW),
        OAuthErrorCode::InvalidRequest,
    );
    let e = expect_oauth(
        auth.exchange(body.replace("jwt%2Dbearer", "saml2%2Dbearer").as_bytes(), NOW),
        OAuthErrorCode::InvalidClient,
    );
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    expect_oauth(auth.exchange(b"grant_type=client_credentials", NOW), OAuthErrorCode::InvalidRequest);
    expect_oauth(auth.exchange(format!("{body}&scope=a&scope=b").as_bytes(), NOW), OAuthErrorCode::InvalidRequest);
    expect_oauth(auth.exchange(b"\xff\xfe", NOW), OAuthErrorCode::InvalidRequest);
}

#[test]
fn alg_none_assertion_is_refused_before_any_key_use() {
    let auth = auth();
    let f = fixture();
    let none = hand_built(&json!({"alg": "none", "kid": f.lund.kid}), &claims("lund-ehr"), b"");
    let e = expect_oauth(auth.exchange(&form(&none, None), NOW), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("alg none"), "{e}");
    let none = hand_built(&json!({"alg": "None", "kid": f.lund.kid}), &claims("lund-ehr"), b"");
    expect_oauth(auth.exchange(&form(&none, None), NOW), OAuthErrorCode::InvalidClient);
}

#[test]
fn hs256_assertion_keyed_with_the_clients_rsa_public_key_is_refused() {
    let auth = auth();
    let f = fixture();
    let der = pem_decode(&f.region.private_pkcs8_pem, "PRIVATE KEY").expect("pem");
    let pair = RsaKeyPair::from_pkcs8(&der).expect("rsa");
    let spki: PublicKeyX509Der<'static> = pair.public_key().as_der().expect("spki");
    let public_pem = pem_encode("PUBLIC KEY", spki.as_ref());
    let jwks: Value = serde_json::from_str(&f.region.jwks_json).expect("json");
    let n = URL_SAFE_NO_PAD.decode(jwks["keys"][0]["n"].as_str().expect("n")).expect("b64");
    let header = json!({"kid": f.region.kid});
    for secret in [public_pem.as_bytes(), spki.as_ref(), &n, f.region.jwks_json.as_bytes(), f.region.kid.as_bytes()] {
        let forged = hs256(&header, &claims("region-skane"), secret);
        let e = expect_oauth(auth.exchange(&form(&forged, None), NOW), OAuthErrorCode::InvalidClient);
        assert!(e.description().contains("RS384 or ES384"), "{e}");
    }
}

#[test]
fn assertion_time_checks_allow_sixty_seconds_of_skew_and_no_more() {
    let auth = auth();
    let ok = |c: Value| auth.exchange(&form(&lund_assertion(&c), None), NOW);
    let base = claims("lund-ehr");
    assert!(ok(with(base.clone(), json!({"exp": NOW - 59, "jti": "a1"}))).is_ok(), "within skew");
    let e = expect_oauth(ok(with(base.clone(), json!({"exp": NOW - 61, "jti": "a2"}))), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("expired"), "{e}");
    assert!(ok(with(base.clone(), json!({"exp": NOW + 300, "jti": "a3"}))).is_ok(), "five minutes ahead");
    let e = expect_oauth(ok(with(base.clone(), json!({"exp": NOW + 600, "jti": "a4"}))), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("five minutes"), "{e}");
    expect_oauth(ok(with(base.clone(), json!({"exp": null, "jti": "a5"}))), OAuthErrorCode::InvalidClient);
    expect_oauth(ok(with(base.clone(), json!({"exp": "soon", "jti": "a6"}))), OAuthErrorCode::InvalidClient);
    let e = expect_oauth(ok(with(base.clone(), json!({"iat": NOW + 120, "jti": "a7"}))), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("future"), "{e}");
    expect_oauth(ok(with(base.clone(), json!({"nbf": NOW + 120, "jti": "a8"}))), OAuthErrorCode::InvalidClient);
    assert!(ok(with(base, json!({"nbf": NOW + 30, "iat": NOW + 30, "jti": "a9"}))).is_ok(), "within skew");
}

#[test]
fn wrong_audience_is_refused_and_an_array_containing_it_accepted() {
    let auth = auth();
    let ok = |c: Value| auth.exchange(&form(&lund_assertion(&c), None), NOW);
    let base = claims("lund-ehr");
    let e = expect_oauth(
        ok(with(base.clone(), json!({"aud": "https://nara.example/fhir"}))),
        OAuthErrorCode::InvalidClient,
    );
    assert!(e.description().contains("aud"), "{e}");
    expect_oauth(
        ok(with(base.clone(), json!({"aud": "https://nara.example/auth/token/"}))),
        OAuthErrorCode::InvalidClient,
    );
    expect_oauth(ok(with(base.clone(), json!({"aud": ["https://other.example"]}))), OAuthErrorCode::InvalidClient);
    expect_oauth(ok(with(base.clone(), json!({"aud": null}))), OAuthErrorCode::InvalidClient);
    assert!(ok(with(base, json!({"aud": ["https://other.example", TOKEN_URL]}))).is_ok());
}

#[test]
fn a_replayed_jti_is_refused() {
    let auth = auth();
    let assertion = lund_assertion(&claims("lund-ehr"));
    auth.exchange(&form(&assertion, None), NOW).expect("first use");
    let e = expect_oauth(auth.exchange(&form(&assertion, None), NOW + 1), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("already used"), "{e}");
    assert_eq!(e.client_id(), Some("lund-ehr"));
    // Same jti, new assertion: still a replay.
    let c = with(claims("lund-ehr"), json!({"jti": "fixed"}));
    auth.exchange(&form(&lund_assertion(&c), None), NOW).expect("first use");
    expect_oauth(auth.exchange(&form(&lund_assertion(&c), None), NOW), OAuthErrorCode::InvalidClient);
    // Another client may use the same jti.
    let f = fixture();
    let other = signer(&f.region).sign(&f.region.kid, &with(claims("region-skane"), json!({"jti": "fixed"})));
    auth.exchange(&form(&other.expect("signs"), None), NOW).expect("jti is per client");
    // A refused assertion does not use its jti up.
    let c = with(claims("lund-ehr"), json!({"jti": "kept", "aud": "https://wrong"}));
    expect_oauth(auth.exchange(&form(&lund_assertion(&c), None), NOW), OAuthErrorCode::InvalidClient);
    let c = with(c, json!({"aud": TOKEN_URL}));
    auth.exchange(&form(&lund_assertion(&c), None), NOW).expect("jti still fresh");
    // Missing jti.
    let c = with(claims("lund-ehr"), json!({"jti": null}));
    expect_oauth(auth.exchange(&form(&lund_assertion(&c), None), NOW), OAuthErrorCode::InvalidClient);
}

#[test]
fn unknown_client_iss_sub_mismatch_and_foreign_keys_are_refused() {
    let auth = auth();
    let f = fixture();
    let e = expect_oauth(
        auth.exchange(&form(&lund_assertion(&claims("stranger")), None), NOW),
        OAuthErrorCode::InvalidClient,
    );
    assert_eq!(e.client_id(), None);
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);

    let c = with(claims("lund-ehr"), json!({"sub": "region-skane"}));
    let e = expect_oauth(auth.exchange(&form(&lund_assertion(&c), None), NOW), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("iss and sub"), "{e}");

    // Signed by Lund's key but claiming to be the region (with the region's kid or Lund's).
    let forged = signer(&f.lund).sign(&f.region.kid, &claims("region-skane")).expect("signs");
    expect_oauth(auth.exchange(&form(&forged, None), NOW), OAuthErrorCode::InvalidClient);
    let forged = signer(&f.lund).sign(&f.lund.kid, &claims("region-skane")).expect("signs");
    let e = expect_oauth(auth.exchange(&form(&forged, None), NOW), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("kid"), "{e}");
    // A key of the right type that is not registered, under the registered kid.
    let stranger = generate_client_keys(KeyAlg::Es384).expect("keygen");
    let forged = signer(&stranger).sign(&f.lund.kid, &claims("lund-ehr")).expect("signs");
    let e = expect_oauth(auth.exchange(&form(&forged, None), NOW), OAuthErrorCode::InvalidClient);
    assert!(e.description().contains("signature"), "{e}");
    // No kid.
    let mut header = Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = None;
    let der = pem_decode(&f.lund.private_pkcs8_pem, "PRIVATE KEY").expect("pem");
    let no_kid = jsonwebtoken::encode(&header, &claims("lund-ehr"), &EncodingKey::from_ec_der(&der)).expect("signs");
    expect_oauth(auth.exchange(&form(&no_kid, None), NOW), OAuthErrorCode::InvalidClient);
    // Garbage.
    for garbage in ["", "abc", "a.b", "a.b.c.d", "eyJhbGciOiJFUzM4NCJ9.!!!.x"] {
        let r = auth.exchange(&form(garbage, None), NOW);
        assert!(r.is_err(), "{garbage}");
    }
}

#[test]
fn error_descriptions_never_echo_the_assertion() {
    let auth = auth();
    let f = fixture();
    let attempts = [
        lund_assertion(&with(claims("lund-ehr"), json!({"aud": "https://x", "jti": "secret-jti-1"}))),
        lund_assertion(&with(claims("lund-ehr"), json!({"exp": NOW + 9999, "jti": "secret-jti-2"}))),
        signer(&f.region).sign(&f.lund.kid, &with(claims("lund-ehr"), json!({"jti": "secret-jti-3"}))).expect("s"),
        hand_built(&json!({"alg": "none"}), &with(claims("lund-ehr"), json!({"jti": "secret-jti-4"})), b""),
    ];
    for a in &attempts {
        let e = auth.exchange(&form(a, None), NOW).expect_err("refused");
        let text = format!("{e} {}", e.body());
        assert!(!text.contains("secret-jti"), "{text}");
        for part in a.split('.').filter(|p| p.len() > 8) {
            assert!(!text.contains(part), "{text}");
        }
    }
}

#[test]
fn issue_for_narrows_like_the_token_endpoint() {
    let auth = auth();
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    assert_eq!(t.scope, "system/Observation.rs system/Task.cruds nara/ingest");
    let t = auth.issue_for("lund-ehr", Some("system/*.cruds"), NOW).expect("issued");
    assert_eq!(t.scope, "system/Observation.rs system/Task.cruds");
    let caller = auth.verify_bearer(&bearer(&t.access_token), NOW).expect("verifies");
    assert!(!caller.scopes.has_ingest());
    assert_eq!(auth.issue_for("nobody", None, NOW).expect_err("unknown").code(), OAuthErrorCode::InvalidClient);
    assert_eq!(auth.issue_for("lund-ehr", Some("nara/admin"), NOW).expect_err("").code(), OAuthErrorCode::InvalidScope);
}

// ---------------------------------------------------------------- access tokens

#[test]
fn missing_and_garbage_bearer_values_are_refused() {
    let auth = auth();
    assert_eq!(auth.verify_bearer("", NOW), Err(AuthError::Missing));
    assert_eq!(auth.verify_bearer("  ", NOW), Err(AuthError::Missing));
    assert_eq!(AuthError::Missing.www_authenticate(), r#"Bearer realm="nara-gateway""#);
    for garbage in ["Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Bearer abc", "Bearer a.b.c", "Bearer ....", "token"] {
        let e = auth.verify_bearer(garbage, NOW).expect_err(garbage);
        assert!(matches!(e, AuthError::Malformed(_)), "{garbage}: {e:?}");
        assert!(e.www_authenticate().contains(r#"error="invalid_token""#));
    }
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    assert!(auth.verify_bearer(&format!("bearer {}", t.access_token), NOW).is_ok(), "scheme is case-insensitive");
}

#[test]
fn alg_none_and_hmac_access_tokens_are_refused() {
    let auth = auth();
    let f = fixture();
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    let payload = t.access_token.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": f.gateway.kid});
    let none = hand_built(&header, &claims, b"");
    assert!(matches!(auth.verify_bearer(&bearer(&none), NOW), Err(AuthError::BadSignature(_))));
    // The original signature pasted under an alg none header.
    let sig = t.access_token.split('.').nth(2).expect("sig");
    let pasted = format!("{}.{payload}.{sig}", none.split('.').next().expect("header"));
    assert!(matches!(auth.verify_bearer(&bearer(&pasted), NOW), Err(AuthError::BadSignature(_))));

    let jwk = &auth.public_jwks()["keys"][0];
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().expect("x")).expect("b64");
    let jwks_text = auth.public_jwks().to_string();
    let header = json!({"typ": "at+jwt", "kid": f.gateway.kid});
    for secret in [jwks_text.as_bytes(), &x, f.gateway.kid.as_bytes(), f.gateway.jwks_json.as_bytes()] {
        let forged = hs256(&header, &claims, secret);
        let e = auth.verify_bearer(&bearer(&forged), NOW).expect_err("hmac");
        assert!(matches!(e, AuthError::BadSignature(_)), "{e:?}");
    }
}

#[test]
fn tokens_signed_by_anyone_but_the_gateway_are_refused() {
    let auth = auth();
    let f = fixture();
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    let payload = t.access_token.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    let der = pem_decode(&f.lund.private_pkcs8_pem, "PRIVATE KEY").expect("pem");
    // A client signs its own "access token", with its kid or with the gateway's.
    for kid in [f.lund.kid.as_str(), f.gateway.kid.as_str()] {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES384);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.to_owned());
        let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&der)).expect("signs");
        let e = auth.verify_bearer(&bearer(&forged), NOW).expect_err("client-signed");
        assert!(matches!(e, AuthError::BadSignature(_)), "{kid}: {e:?}");
    }
    // A client assertion is no access token.
    let assertion = lund_assertion(&self::claims("lund-ehr"));
    assert!(auth.verify_bearer(&bearer(&assertion), NOW).is_err());
    // Tampered claims.
    let widened = with(claims.clone(), json!({"scope": "system/*.* nara/admin"}));
    let parts: Vec<&str> = t.access_token.split('.').collect();
    let tampered =
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&widened).expect("json")), parts[2]);
    assert!(matches!(auth.verify_bearer(&bearer(&tampered), NOW), Err(AuthError::BadSignature(_))));
    // Another gateway with the same key but another issuer.
    let other = Auth::from_config(&AuthConfig { issuer: "https://other.example".into(), ..config() }, TOKEN_URL.into())
        .expect("auth");
    let foreign = other.issue_for("lund-ehr", None, NOW).expect("issued");
    assert_eq!(
        auth.verify_bearer(&bearer(&foreign.access_token), NOW),
        Err(AuthError::WrongIssuerOrAudience("issuer"))
    );
    // Another gateway with another key.
    let dir = tempfile::tempdir().expect("dir");
    let key = generate_client_keys(KeyAlg::Es384).expect("keygen");
    std::fs::write(dir.path().join("k"), key.private_pkcs8_pem).expect("write");
    let other = Auth::from_config(&AuthConfig { signing_key: dir.path().join("k"), ..config() }, TOKEN_URL.into())
        .expect("auth");
    let foreign = other.issue_for("lund-ehr", None, NOW).expect("issued");
    assert!(matches!(auth.verify_bearer(&bearer(&foreign.access_token), NOW), Err(AuthError::BadSignature(_))));
}

#[test]
fn access_tokens_expire_even_when_cached() {
    let auth = auth();
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    let header = bearer(&t.access_token);
    assert!(auth.verify_bearer(&header, NOW).is_ok());
    assert!(auth.verify_bearer(&header, NOW + 300 + 60).is_ok(), "cached, within skew");
    assert_eq!(auth.verify_bearer(&header, NOW + 300 + 61), Err(AuthError::Expired));
    // And uncached.
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    assert_eq!(auth.verify_bearer(&bearer(&t.access_token), NOW + 1000), Err(AuthError::Expired));
    let t = auth.issue_for("lund-ehr", None, NOW + 1000).expect("issued");
    assert_eq!(auth.verify_bearer(&bearer(&t.access_token), NOW), Err(AuthError::NotYetValid));
}

#[test]
fn tokens_of_a_client_no_longer_registered_are_refused() {
    let t = auth().issue_for("lund-ehr", None, NOW).expect("issued");
    let mut cfg = config();
    cfg.clients.retain(|c| c.id != "lund-ehr");
    let later = Auth::from_config(&cfg, TOKEN_URL.into()).expect("auth");
    assert_eq!(later.verify_bearer(&bearer(&t.access_token), NOW), Err(AuthError::UnknownClient));
    // Registration narrowed after issuing: the token grants no more than the registration now.
    let mut cfg = config();
    cfg.clients[0].scopes = vec!["system/Observation.rs".into()];
    let later = Auth::from_config(&cfg, TOKEN_URL.into()).expect("auth");
    let caller = later.verify_bearer(&bearer(&t.access_token), NOW).expect("verifies");
    assert_eq!(caller.scopes.to_string(), "system/Observation.rs");
}

#[test]
fn public_jwks_and_smart_configuration() {
    let auth = auth();
    let f = fixture();
    let jwks = auth.public_jwks();
    assert_eq!(jwks["keys"][0]["kid"], f.gateway.kid.as_str());
    assert_eq!(jwks["keys"][0]["alg"], "ES384");
    assert!(jwks["keys"][0].get("d").is_none());
    let t = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    let header = jsonwebtoken::decode_header(&t.access_token).expect("header");
    assert_eq!(header.kid.as_deref(), Some(f.gateway.kid.as_str()));
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));

    let smart = smart_configuration(auth.token_endpoint(), auth.issuer());
    assert_eq!(smart["token_endpoint"], TOKEN_URL);
    assert_eq!(smart["jwks_uri"], "https://nara.example/.well-known/jwks.json");
    assert_eq!(smart["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
    assert_eq!(smart["token_endpoint_auth_signing_alg_values_supported"], json!(["RS384", "ES384"]));
    assert_eq!(smart["grant_types_supported"], json!(["client_credentials"]));
    assert!(smart["capabilities"].as_array().expect("array").contains(&json!("client-confidential-asymmetric")));
}

#[test]
fn configuration_errors_name_the_key() {
    let mut cfg = config();
    cfg.clients[1].jwks = "/nonexistent/region.jwks.json".into();
    let e = format!("{:#}", Auth::from_config(&cfg, TOKEN_URL.into()).err().expect("missing file"));
    assert!(e.starts_with("auth.clients[1].jwks"), "{e}");
    let mut cfg = config();
    cfg.clients[0].jwks = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#.into();
    let e = format!("{:#}", Auth::from_config(&cfg, TOKEN_URL.into()).err().expect("hmac key"));
    assert!(e.starts_with("auth.clients[0].jwks") && e.contains("private"), "{e}");
    let cfg = AuthConfig { signing_key: "/nonexistent.key".into(), ..config() };
    let e = format!("{:#}", Auth::from_config(&cfg, TOKEN_URL.into()).err().expect("no key"));
    assert!(e.starts_with("auth.signing_key"), "{e}");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("rsa.key"), &fixture().region.private_pkcs8_pem).expect("write");
    let cfg = AuthConfig { signing_key: dir.path().join("rsa.key"), ..config() };
    let e = format!("{:#}", Auth::from_config(&cfg, TOKEN_URL.into()).err().expect("RSA key"));
    assert!(e.starts_with("auth.signing_key") && e.contains("P-384"), "{e}");
}

#[test]
fn the_shipped_example_keys_work_with_the_built_in_configuration() {
    // Paths are relative to the crate root, where `cargo test` runs.
    let auth = Auth::from_config(&AuthConfig::default(), TOKEN_URL.into()).expect("built-in configuration loads");
    for (id, expected_alg) in [("lund-ehr", "ES384"), ("region-skane", "RS384"), ("malmo-ehr", "ES384")] {
        let pem = std::fs::read_to_string(format!("certs-example/clients/{id}.jwt.key")).expect("example key");
        let jwks: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("certs-example/clients/{id}.jwks.json")).expect("jwks"),
        )
        .expect("json");
        let kid = jwks["keys"][0]["kid"].as_str().expect("kid");
        let signer = ClientSigner::from_pem(&pem).expect("reads");
        assert_eq!(keys::alg_name(signer.alg()), expected_alg);
        let assertion = signer.assertion(kid, id, TOKEN_URL, NOW).expect("signs");
        let grant = auth.exchange(&form(&assertion, None), NOW).expect("granted");
        assert_eq!(grant.client_id, id);
    }
    assert_eq!(auth.public_jwks()["keys"][0]["crv"], "P-384");
}

// ---------------------------------------------------------------- external identity provider

const IDP_ISSUER: &str = "https://idp.example/realms/vard";
const IDP_AUDIENCE: &str = "nara-gateway";

/// Serves whatever JWKS the test put in, and counts the fetches.
struct FakeJwks {
    body: Mutex<String>,
    fetches: AtomicUsize,
}

impl JwksFetcher for FakeJwks {
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, anyhow::Result<String>> {
        Box::pin(async move {
            assert_eq!(url, "https://idp.example/jwks");
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(self.body.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone())
        })
    }
}

fn external_auth(jwks: &str) -> (Auth, Arc<FakeJwks>) {
    let fake = Arc::new(FakeJwks { body: Mutex::new(jwks.to_owned()), fetches: AtomicUsize::new(0) });
    let cfg = AuthConfig {
        jwks_url: Some("https://idp.example/jwks".into()),
        jwks_issuer: Some(IDP_ISSUER.into()),
        jwks_audience: Some(IDP_AUDIENCE.into()),
        ..config()
    };
    let auth = Auth::from_config(&cfg, TOKEN_URL.into()).expect("auth").with_jwks_fetcher(fake.clone());
    (auth, fake)
}

fn idp_claims() -> Value {
    json!({
        "iss": IDP_ISSUER, "aud": ["account", IDP_AUDIENCE], "sub": "svc-1", "azp": "journal-system",
        "exp": NOW + 600, "iat": NOW, "jti": "idp-1",
        "scp": ["openid", "system/Observation.rs", "patient/*.read"], "org": "SE2321000255-0001",
    })
}

fn idp_token(claims: &Value) -> String {
    let f = fixture();
    signer(&f.idp).sign(&f.idp.kid, claims).expect("signs")
}

#[tokio::test]
async fn external_tokens_verify_after_fetching_the_jwks_on_an_unknown_kid() {
    let f = fixture();
    let (auth, fake) = external_auth(&f.idp.jwks_json);
    let token = bearer(&idp_token(&idp_claims()));
    let caller = auth.verify_bearer_async(&token, NOW).await.expect("verifies after fetching");
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(caller.client_id, "journal-system");
    assert_eq!(caller.organization, "SE2321000255-0001");
    assert!(caller.is_region());
    assert_eq!(caller.scopes.to_string(), "system/Observation.rs", "unknown scopes are left out");
    assert_eq!(caller.token_id, "idp-1");
    // Known now: no further fetch, sync path works too.
    let other = bearer(&idp_token(&with(idp_claims(), json!({"jti": "idp-2", "kommunkod": "1281"}))));
    let caller = auth.verify_bearer(&other, NOW).expect("verifies");
    assert_eq!(caller.municipality.as_deref(), Some("1281"));
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    // The gateway's own tokens still verify alongside.
    let own = auth.issue_for("lund-ehr", None, NOW).expect("issued");
    assert!(auth.verify_bearer(&bearer(&own.access_token), NOW).is_ok());
}

#[tokio::test]
async fn external_jwks_refetch_is_rate_limited_to_once_per_30_seconds() {
    let f = fixture();
    let (auth, fake) = external_auth(r#"{"keys": []}"#);
    let token = bearer(&idp_token(&idp_claims()));
    assert_eq!(auth.verify_bearer_async(&token, NOW).await, Err(AuthError::UnknownKey));
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    // The IdP rotates its key in; within 30 s no refetch happens.
    *fake.body.lock().expect("lock") = f.idp.jwks_json.clone();
    assert_eq!(auth.verify_bearer_async(&token, NOW + 29).await, Err(AuthError::UnknownKey));
    assert_eq!(auth.verify_bearer(&token, NOW + 29), Err(AuthError::UnknownKey));
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    assert!(auth.verify_bearer_async(&token, NOW + 30).await.is_ok());
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn sync_verification_refetches_in_the_background() {
    let f = fixture();
    let (auth, fake) = external_auth(&f.idp.jwks_json);
    let token = bearer(&idp_token(&idp_claims()));
    assert_eq!(auth.verify_bearer(&token, NOW), Err(AuthError::UnknownKey));
    for _ in 0..100 {
        if fake.fetches.load(Ordering::SeqCst) == 1 && auth.verify_bearer(&token, NOW).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the background refetch did not make the key known");
}

#[tokio::test]
async fn external_tokens_need_the_right_issuer_audience_org_and_algorithm() {
    let f = fixture();
    let (auth, _) = external_auth(&f.idp.jwks_json);
    assert_eq!(auth.refresh_external_keys().await.expect("fetched"), 1);
    let check = |c: Value| auth.verify_bearer(&bearer(&idp_token(&c)), NOW);
    assert!(check(idp_claims()).is_ok());
    assert_eq!(
        check(with(idp_claims(), json!({"iss": "https://evil.example", "jti": "x1"}))),
        Err(AuthError::WrongIssuerOrAudience("issuer"))
    );
    assert_eq!(
        check(with(idp_claims(), json!({"aud": "account", "jti": "x2"}))),
        Err(AuthError::WrongIssuerOrAudience("audience"))
    );
    assert!(matches!(check(with(idp_claims(), json!({"org": null, "jti": "x3"}))), Err(AuthError::Malformed(_))));
    assert_eq!(check(with(idp_claims(), json!({"exp": NOW - 61, "jti": "x4"}))), Err(AuthError::Expired));
    let scope = check(with(idp_claims(), json!({"scp": null, "scope": "system/*.read nara/admin", "jti": "x5"})));
    assert_eq!(scope.expect("verifies").scopes.to_string(), "system/*.read nara/admin");
    // HS256 with the IdP's public key as secret, under the IdP's kid.
    let forged = hs256(&json!({"kid": f.idp.kid}), &idp_claims(), f.idp.jwks_json.as_bytes());
    assert!(matches!(auth.verify_bearer(&bearer(&forged), NOW), Err(AuthError::BadSignature(_))));
    // ES384 header under the IdP's RSA kid.
    let der = pem_decode(&f.lund.private_pkcs8_pem, "PRIVATE KEY").expect("pem");
    let mut header = Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(f.idp.kid.clone());
    let forged = jsonwebtoken::encode(&header, &idp_claims(), &EncodingKey::from_ec_der(&der)).expect("signs");
    assert!(matches!(auth.verify_bearer(&bearer(&forged), NOW), Err(AuthError::BadSignature(_))));
}

#[tokio::test]
async fn keys_dropped_from_the_external_jwks_stop_verifying() {
    let f = fixture();
    let (auth, fake) = external_auth(&f.idp.jwks_json);
    auth.refresh_external_keys().await.expect("fetched");
    assert!(auth.verify_bearer(&bearer(&idp_token(&idp_claims())), NOW).is_ok());
    *fake.body.lock().expect("lock") = f.lund.jwks_json.clone();
    auth.refresh_external_keys().await.expect("fetched");
    let fresh = with(idp_claims(), json!({"jti": "after-rotation"}));
    assert_eq!(auth.verify_bearer(&bearer(&idp_token(&fresh)), NOW + 1), Err(AuthError::UnknownKey));
}
