//! Keys: the gateway's ES384 signing key, clients' and the external identity
//! provider's public JWKS (RFC 7517), RFC 7638 thumbprints, PEM, and key
//! generation for new clients (`nara-gateway client keygen`).
//!
//! A verification key is bound to exactly one algorithm when it is loaded
//! (from its `alg`, or from `kty`/`crv`), and a token is only ever checked
//! with a key whose algorithm is the token's: an RSA public key can never be
//! used as an HMAC secret, and no HMAC or `none` algorithm is accepted at all.

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der},
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        ParsedPublicKey, RsaKeyPair, RsaPublicKeyComponents,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Value, json};

/// Signature algorithms clients may use for their assertions (SMART Backend Services).
pub const CLIENT_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS384, Algorithm::ES384];

/// Signature algorithms accepted from an external identity provider. Never HMAC, never `none`.
pub const EXTERNAL_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Most keys read from one JWKS.
const MAX_JWKS_KEYS: usize = 100;

/// A public key bound to its `kid` and to the one algorithm it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    /// The JWK `kid`.
    pub kid: String,
    /// The algorithms this key verifies (one for registered clients; an RSA key
    /// without `alg` of an identity provider verifies the RSA family).
    pub algs: Vec<Algorithm>,
    /// The key, in jsonwebtoken's form.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("algs", &self.algs).finish_non_exhaustive()
    }
}

/// Reads a client's `jwks` setting: inline JSON when it starts with `{`, else a file path.
pub fn load_client_jwks(source: &str) -> anyhow::Result<Vec<VerifyKey>> {
    let trimmed = source.trim_start();
    let text = if trimmed.starts_with('{') {
        trimmed.to_owned()
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read the JWKS file `{source}`"))?
    };
    parse_client_jwks(&text).map_err(|e| anyhow!(e))
}

/// Parses a registered client's JWKS strictly: every key needs a `kid`, must be an RS384
/// (RSA ≥ 2048 bits) or ES384 (EC P-384) signing key, public only, and `kid`s must be unique.
pub fn parse_client_jwks(text: &str) -> Result<Vec<VerifyKey>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or("the JWKS has no `keys` array")?;
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!("the JWKS has more than {MAX_JWKS_KEYS} keys"));
    }
    let mut out: Vec<VerifyKey> = Vec::with_capacity(keys.len());
    for (i, jwk) in keys.iter().enumerate() {
        let key = parse_jwk(jwk, &CLIENT_ALGORITHMS, WithoutAlg::Smart).map_err(|e| format!("keys[{i}]: {e}"))?;
        if out.iter().any(|k| k.kid == key.kid) {
            return Err(format!("keys[{i}]: the kid `{}` appears twice", key.kid));
        }
        out.push(key);
    }
    Ok(out)
}

/// Parses an external identity provider's JWKS leniently: keys that are not usable signing
/// keys (encryption keys, other curves, missing `kid`) are skipped, not refused.
pub fn parse_external_jwks(text: &str) -> Result<Vec<VerifyKey>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or("the JWKS has no `keys` array")?;
    Ok(keys
        .iter()
        .take(MAX_JWKS_KEYS)
        .filter_map(|jwk| parse_jwk(jwk, &EXTERNAL_ALGORITHMS, WithoutAlg::Family).ok())
        .collect())
}

/// RSA signature algorithms: one public key serves them all, none of them is HMAC.
const RSA_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// Which algorithms a JWK without `alg` verifies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WithoutAlg {
    /// RSA → RS384, EC P-384 → ES384 (registered clients).
    Smart,
    /// RSA → any RSA algorithm, EC → the curve's ECDSA (identity providers often omit `alg`).
    Family,
}

/// One JWK → a verification key for the algorithms out of `allowed` it may verify.
fn parse_jwk(jwk: &Value, allowed: &[Algorithm], without_alg: WithoutAlg) -> Result<VerifyKey, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kid = field("kid").filter(|k| !k.is_empty()).ok_or("every key needs a `kid`")?;
    if kid.len() > 256 {
        return Err("the `kid` is longer than 256 characters".into());
    }
    if let Some(usage) = jwk.get("use")
        && usage.as_str() != Some("sig")
    {
        return Err("`use` must be `sig`".into());
    }
    if ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|p| jwk.get(p).is_some()) {
        return Err("the key holds private key material; register the public key only".into());
    }
    let kty = field("kty").ok_or("every key needs a `kty`")?;
    let alg = match field("alg") {
        Some(name) => Some(
            allowed
                .iter()
                .copied()
                .find(|a| alg_name(*a) == name)
                .ok_or_else(|| format!("alg `{name}` is not accepted (use {})", names(allowed)))?,
        ),
        None => None,
    };
    let (algs, key): (Vec<Algorithm>, DecodingKey) = match kty {
        "RSA" => {
            let algs = match (alg, without_alg) {
                (Some(a), _) if RSA_ALGORITHMS.contains(&a) => vec![a],
                (Some(a), _) => return Err(format!("an RSA key cannot be used with alg {}", alg_name(a))),
                (None, WithoutAlg::Smart) => vec![Algorithm::RS384],
                (None, WithoutAlg::Family) => RSA_ALGORITHMS.to_vec(),
            };
            let n = b64url(field("n").ok_or("an RSA key needs `n`")?).map_err(|_| "`n` is not base64url")?;
            let e = b64url(field("e").ok_or("an RSA key needs `e`")?).map_err(|_| "`e` is not base64url")?;
            let n_bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
            if n_bits < MIN_RSA_BITS {
                return Err(format!("the RSA modulus is shorter than {MIN_RSA_BITS} bits"));
            }
            if e.is_empty() || e.len() > 8 || e.last().is_some_and(|b| b % 2 == 0) {
                return Err("the RSA exponent `e` is not acceptable".into());
            }
            (algs, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let crv = field("crv").ok_or("an EC key needs `crv`")?;
            let (curve_alg, coord_len) = match (alg, crv) {
                (Some(Algorithm::ES384) | None, "P-384") => (Algorithm::ES384, 48),
                (Some(Algorithm::ES256), "P-256") => (Algorithm::ES256, 32),
                (None, "P-256") if without_alg == WithoutAlg::Family => (Algorithm::ES256, 32),
                (Some(a @ (Algorithm::ES256 | Algorithm::ES384)), _) => {
                    let expected = if a == Algorithm::ES256 { "P-256" } else { "P-384" };
                    return Err(format!("an EC key for {} must be on curve {expected}", alg_name(a)));
                }
                (Some(a), _) => return Err(format!("an EC key cannot be used with alg {}", alg_name(a))),
                (None, _) => return Err("an EC key must be on curve P-384 (ES384)".into()),
            };
            let x = b64url(field("x").ok_or("an EC key needs `x`")?).map_err(|_| "`x` is not base64url")?;
            let y = b64url(field("y").ok_or("an EC key needs `y`")?).map_err(|_| "`y` is not base64url")?;
            if x.len() != coord_len || y.len() != coord_len {
                return Err(format!("`x` and `y` must be {coord_len} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * coord_len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let check = if curve_alg == Algorithm::ES384 { &ECDSA_P384_SHA384_FIXED } else { &ECDSA_P256_SHA256_FIXED };
            ParsedPublicKey::new(check, &point).map_err(|_| format!("the point is not on curve {crv}"))?;
            (vec![curve_alg], DecodingKey::from_ec_der(&point))
        }
        other => return Err(format!("kty `{other}` is not a signing key type this gateway accepts (RSA or EC)")),
    };
    let algs: Vec<Algorithm> = algs.into_iter().filter(|a| allowed.contains(a)).collect();
    if algs.is_empty() {
        return Err(format!("the key cannot be used with any accepted alg ({})", names(allowed)));
    }
    Ok(VerifyKey { kid: kid.to_owned(), algs, key })
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter().map(|a| alg_name(*a)).collect::<Vec<_>>().join(", ")
}

/// base64url without padding (trailing `=` tolerated).
pub(crate) fn b64url(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
}

/// The gateway's own ES384 key: signs access tokens, verifies them, published in its JWKS.
pub struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    x: String,
    y: String,
}

impl SigningKey {
    /// Reads an EC P-384 PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> anyhow::Result<SigningKey> {
        let der = pem_decode(pem, "PRIVATE KEY")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der)
            .map_err(|e| anyhow!("not an EC P-384 PKCS#8 private key ({e})"))?;
        let point = pair.public_key().as_ref();
        let (x, y) = ec_coordinates(point, 48)?;
        let kid = thumbprint_ec("P-384", &x, &y);
        Ok(SigningKey {
            encoding: EncodingKey::from_ec_der(&der),
            decoding: DecodingKey::from_ec_der(point),
            kid,
            x,
            y,
        })
    }

    /// The RFC 7638 thumbprint of the public key: the `kid` of every token the gateway signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        json!({"kty": "EC", "crv": "P-384", "x": self.x, "y": self.y, "kid": self.kid, "alg": "ES384", "use": "sig"})
    }
}

/// Splits an uncompressed EC point into base64url x and y.
fn ec_coordinates(point: &[u8], len: usize) -> anyhow::Result<(String, String)> {
    if point.len() != 1 + 2 * len || point[0] != 4 {
        bail!("unexpected EC public key encoding");
    }
    Ok((URL_SAFE_NO_PAD.encode(&point[1..=len]), URL_SAFE_NO_PAD.encode(&point[1 + len..])))
}

/// RFC 7638 thumbprint (SHA-256, base64url) of an EC public key.
pub fn thumbprint_ec(crv: &str, x: &str, y: &str) -> String {
    thumbprint(&format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#))
}

/// RFC 7638 thumbprint (SHA-256, base64url) of an RSA public key.
pub fn thumbprint_rsa(n: &str, e: &str) -> String {
    thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#))
}

fn thumbprint(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()))
}

/// The DER inside the first PEM block labelled `label`.
pub fn pem_decode(pem: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or_else(|| anyhow!("no `{begin}` block"))? + begin.len();
    let stop = pem[start..].find(&end).ok_or_else(|| anyhow!("no `{end}` line"))? + start;
    let body: String = pem[start..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).map_err(|_| anyhow!("the PEM body is not base64"))
}

/// PEM-encodes DER with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Key type for a new client key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-384, RSA 3072.
    Rs384,
}

impl std::str::FromStr for KeyAlg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ES384" => Ok(KeyAlg::Es384),
            "RS384" => Ok(KeyAlg::Rs384),
            _ => Err(format!("`{s}`: the key algorithm must be ES384 or RS384")),
        }
    }
}

/// A new client key pair.
#[derive(Clone)]
pub struct GeneratedKeys {
    /// The private key, PKCS#8 PEM: stays with the client.
    pub private_pkcs8_pem: String,
    /// The public JWKS (one key, with `kid`, `alg` and `use`): registered at the gateway.
    pub jwks_json: String,
    /// The key's `kid`: its RFC 7638 thumbprint.
    pub kid: String,
}

impl std::fmt::Debug for GeneratedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKeys").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Generates a client key pair (ES384 on P-384, or RS384 with RSA 3072) and its public JWKS.
pub fn generate_client_keys(alg: KeyAlg) -> anyhow::Result<GeneratedKeys> {
    let (pkcs8, jwk) = match alg {
        KeyAlg::Es384 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
                .map_err(|_| anyhow!("EC key generation failed"))?;
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| anyhow!("EC key encoding failed"))?.as_ref().to_vec();
            let (x, y) = ec_coordinates(pair.public_key().as_ref(), 48)?;
            let kid = thumbprint_ec("P-384", &x, &y);
            (pkcs8, json!({"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": kid, "alg": "ES384", "use": "sig"}))
        }
        KeyAlg::Rs384 => {
            let pair = RsaKeyPair::generate(KeySize::Rsa3072).map_err(|_| anyhow!("RSA key generation failed"))?;
            let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| anyhow!("RSA key encoding failed"))?;
            let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            let (n, e) = (URL_SAFE_NO_PAD.encode(&public.n), URL_SAFE_NO_PAD.encode(&public.e));
            let kid = thumbprint_rsa(&n, &e);
            (pkcs8.as_ref().to_vec(), json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS384", "use": "sig"}))
        }
    };
    let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
    let jwks_json = serde_json::to_string_pretty(&json!({ "keys": [jwk] }))?;
    Ok(GeneratedKeys { private_pkcs8_pem: pem_encode("PRIVATE KEY", &pkcs8), jwks_json, kid })
}

/// The public JWKS of a PEM public key (`-----BEGIN PUBLIC KEY-----`, X.509
/// SubjectPublicKeyInfo): EC P-384 → ES384, RSA of at least 2048 bits → RS384.
/// Returns the JWKS JSON (one key, `kid` = RFC 7638 thumbprint) and the `kid`.
/// For registering a client from its public key (`nara-gateway client add --key`).
pub fn jwks_from_public_pem(pem: &str) -> anyhow::Result<(String, String)> {
    let spki = pem_decode(pem, "PUBLIC KEY")?;
    let jwk = if let Some(point) = spki_ec_point(&spki)
        && ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).is_ok()
    {
        let (x, y) = ec_coordinates(point, 48)?;
        let kid = thumbprint_ec("P-384", &x, &y);
        json!({"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": kid, "alg": "ES384", "use": "sig"})
    } else {
        let public = aws_lc_rs::rsa::PublicKey::from_der(&spki)
            .map_err(|_| anyhow!("not an EC P-384 or RSA public key (other curves are not accepted)"))?;
        let parts = RsaPublicKeyComponents::<Vec<u8>>::from(&public);
        if parts.n.iter().skip_while(|&&b| b == 0).count() * 8 < MIN_RSA_BITS {
            bail!("the RSA key is shorter than {MIN_RSA_BITS} bits");
        }
        let (n, e) = (URL_SAFE_NO_PAD.encode(&parts.n), URL_SAFE_NO_PAD.encode(&parts.e));
        let kid = thumbprint_rsa(&n, &e);
        json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS384", "use": "sig"})
    };
    let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
    Ok((serde_json::to_string_pretty(&json!({ "keys": [jwk] }))?, kid))
}

/// The uncompressed point of an EC SubjectPublicKeyInfo: SEQUENCE { SEQUENCE algorithm, BIT STRING key }.
fn spki_ec_point(spki: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_element(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_element(body)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, bits, _) = der_element(rest)?;
    match bits.split_first() {
        Some((0, point)) if tag == 0x03 && point.first() == Some(&4) => Some(point),
        _ => None,
    }
}

/// A client's private key, ready to sign assertions.
pub struct ClientSigner {
    alg: Algorithm,
    key: EncodingKey,
}

impl ClientSigner {
    /// Reads a PKCS#8 PEM private key: EC P-384 (ES384) or RSA (RS384).
    pub fn from_pem(pem: &str) -> anyhow::Result<ClientSigner> {
        let der = pem_decode(pem, "PRIVATE KEY")?;
        if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der).is_ok() {
            return Ok(ClientSigner { alg: Algorithm::ES384, key: EncodingKey::from_ec_der(&der) });
        }
        RsaKeyPair::from_pkcs8(&der).map_err(|_| anyhow!("not an EC P-384 or RSA PKCS#8 private key"))?;
        // jsonwebtoken wants the PKCS#1 RSAPrivateKey inside the PKCS#8 wrapper.
        let pkcs1 = pkcs8_private_key(&der).ok_or_else(|| anyhow!("malformed PKCS#8 structure"))?;
        Ok(ClientSigner { alg: Algorithm::RS384, key: EncodingKey::from_rsa_der(pkcs1) })
    }

    /// The algorithm the key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// A SMART Backend Services client assertion: `iss` = `sub` = `client_id`,
    /// `aud` = `token_endpoint`, valid for four minutes from `now`, a random `jti`.
    pub fn assertion(&self, kid: &str, client_id: &str, token_endpoint: &str, now: u64) -> anyhow::Result<String> {
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "exp": now + 240,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        self.sign(kid, &claims)
    }

    /// Signs any claims with this key (header `alg` from the key, `kid` as given).
    pub fn sign(&self, kid: &str, claims: &Value) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (RFC 5208):
/// SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, … }.
fn pkcs8_private_key(der: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_element(body)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, _, rest) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, key, _) = der_element(rest)?;
    (tag == 0x04).then_some(key)
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_es384_keys_round_trip_through_jwks_and_pem() {
        let keys = generate_client_keys(KeyAlg::Es384).expect("keygen");
        assert!(keys.private_pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let parsed = parse_client_jwks(&keys.jwks_json).expect("own JWKS parses");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kid, keys.kid);
        assert_eq!(parsed[0].algs, [Algorithm::ES384]);
        assert!(!keys.jwks_json.contains("\"d\""), "public only");
        let signer = ClientSigner::from_pem(&keys.private_pkcs8_pem).expect("private key reads");
        assert_eq!(signer.alg(), Algorithm::ES384);
        // The gateway's key loader accepts the same format.
        let gw = SigningKey::from_pem(&keys.private_pkcs8_pem).expect("signing key");
        assert_eq!(gw.kid(), keys.kid);
    }

    #[test]
    fn generated_rs384_keys_are_3072_bit_and_sign() {
        let keys = generate_client_keys(KeyAlg::Rs384).expect("keygen");
        let jwks: Value = serde_json::from_str(&keys.jwks_json).expect("json");
        let n = b64url(jwks["keys"][0]["n"].as_str().expect("n")).expect("b64");
        assert_eq!(n.len(), 384);
        assert_eq!(jwks["keys"][0]["alg"], "RS384");
        assert_eq!(jwks["keys"][0]["use"], "sig");
        let signer = ClientSigner::from_pem(&keys.private_pkcs8_pem).expect("private key reads");
        assert_eq!(signer.alg(), Algorithm::RS384);
        let jwt = signer.assertion(&keys.kid, "c", "https://gw/auth/token", 1000).expect("signs");
        let key = &parse_client_jwks(&keys.jwks_json).expect("jwks")[0];
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS384);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(&jwt, &key.key, &v).expect("verifies with the JWKS key");
    }

    #[test]
    fn public_pem_keys_become_the_same_jwks_as_keygen_gives() {
        for alg in [KeyAlg::Es384, KeyAlg::Rs384] {
            let keys = generate_client_keys(alg).expect("keygen");
            let der = pem_decode(&keys.private_pkcs8_pem, "PRIVATE KEY").expect("pem");
            let spki: Vec<u8> = match alg {
                KeyAlg::Es384 => {
                    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der).expect("ec");
                    let spki: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
                        pair.public_key().as_der().expect("spki");
                    spki.as_ref().to_vec()
                }
                KeyAlg::Rs384 => {
                    let pair = RsaKeyPair::from_pkcs8(&der).expect("rsa");
                    let spki: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
                        pair.public_key().as_der().expect("spki");
                    spki.as_ref().to_vec()
                }
            };
            let (jwks, kid) = jwks_from_public_pem(&pem_encode("PUBLIC KEY", &spki)).expect("converts");
            assert_eq!(kid, keys.kid, "{alg:?}");
            assert_eq!(serde_json::from_str::<Value>(&jwks).ok(), serde_json::from_str::<Value>(&keys.jwks_json).ok());
            assert!(parse_client_jwks(&jwks).is_ok());
        }
        assert!(jwks_from_public_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(thumbprint_rsa(n, "AQAB"), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn example_jwks_of_the_repository_parses() {
        let text = r#"{"keys":[{"crv":"P-384","kty":"EC","x":"enQL1uW-WaHVvJkm0ca3PZC5rw1OD9Odj3PIG_DtU_KC8scy7HVbxZwrrqsq7IJ-","y":"8VLCniCoobPJxOwgP30kzWtsmIWQ-qu1leHZy6ngk_0k4eZFeRq1hO_IRgucEUfj","kid":"7TqBMlvGzysepVedhX8c1zpVOehSaUBfl7jK0tIo144","alg":"ES384","use":"sig"}]}"#;
        let keys = parse_client_jwks(text).expect("parses");
        assert_eq!(keys[0].kid, "7TqBMlvGzysepVedhX8c1zpVOehSaUBfl7jK0tIo144");
        assert_eq!(
            thumbprint_ec(
                "P-384",
                "enQL1uW-WaHVvJkm0ca3PZC5rw1OD9Odj3PIG_DtU_KC8scy7HVbxZwrrqsq7IJ-",
                "8VLCniCoobPJxOwgP30kzWtsmIWQ-qu1leHZy6ngk_0k4eZFeRq1hO_IRgucEUfj"
            ),
            keys[0].kid,
            "the shipped kid is the RFC 7638 thumbprint"
        );
    }

    #[test]
    fn client_jwks_refuses_unusable_keys_with_reason() {
        let es = generate_client_keys(KeyAlg::Es384).expect("keygen");
        let jwk: Value = serde_json::from_str::<Value>(&es.jwks_json).expect("json")["keys"][0].clone();
        let with = |patch: Value| {
            let mut k = jwk.clone();
            for (name, value) in patch.as_object().expect("object") {
                if value.is_null() {
                    k.as_object_mut().expect("object").remove(name);
                } else {
                    k[name] = value.clone();
                }
            }
            parse_client_jwks(&json!({ "keys": [k] }).to_string())
        };
        assert!(with(json!({})).is_ok());
        assert!(with(json!({"alg": null})).is_ok(), "EC P-384 without alg is ES384");
        for (patch, expected) in [
            (json!({"kid": null}), "kid"),
            (json!({"alg": "HS256"}), "not accepted"),
            (json!({"alg": "none"}), "not accepted"),
            (json!({"alg": "RS384"}), "EC key cannot"),
            (json!({"crv": "P-256", "alg": null}), "P-384"),
            (json!({"alg": "ES256"}), "not accepted"),
            (json!({"crv": "P-256"}), "curve"),
            (json!({"use": "enc"}), "use"),
            (json!({"d": "AAAA"}), "private"),
            (json!({"kty": "oct", "k": null}), "kty"),
            (json!({"x": "AAAA"}), "48 bytes"),
        ] {
            let err = with(patch.clone()).expect_err(&patch.to_string());
            assert!(err.contains(expected), "{patch}: {err}");
        }
        let dup = json!({"keys": [jwk.clone(), jwk.clone()]}).to_string();
        assert!(parse_client_jwks(&dup).expect_err("duplicate").contains("twice"));
        // A point not on the curve.
        let mut bad = jwk.clone();
        bad["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 48]));
        assert!(parse_client_jwks(&json!({"keys": [bad]}).to_string()).expect_err("off curve").contains("curve"));
    }

    #[test]
    fn rsa_key_without_alg_is_rs384_and_short_moduli_are_refused() {
        let rs = generate_client_keys(KeyAlg::Rs384).expect("keygen");
        let mut jwk: Value = serde_json::from_str::<Value>(&rs.jwks_json).expect("json")["keys"][0].clone();
        jwk.as_object_mut().expect("object").remove("alg");
        let keys = parse_client_jwks(&json!({ "keys": [jwk.clone()] }).to_string()).expect("parses");
        assert_eq!(keys[0].algs, [Algorithm::RS384]);
        jwk["n"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 128]));
        let err = parse_client_jwks(&json!({ "keys": [jwk] }).to_string()).expect_err("1024 bit");
        assert!(err.contains("2048"), "{err}");
    }
}
