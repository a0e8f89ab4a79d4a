#!/usr/bin/env bash
# Regenerates every development certificate and key in this folder.
#
#   ./generate.sh                 everything: CA, server, three SITHS-style client
#                                 certificates, the gateway's token signing key and
#                                 the clients' token-assertion keys with their JWKS
#   ./generate.sh jwks KEY ALG    print the public JWKS (RFC 7517) of a PKCS#8 PEM
#                                 private key, ALG = ES384 or RS384; kid = RFC 7638
#                                 thumbprint. Useful for a real client's key too.
#
# Development only: the private keys are committed, so anything signed by this CA
# must never be trusted outside a developer machine or a test run.
#
# Needs bash, openssl 3 and python3 (standard library only). Safe to run again:
# each run replaces every file it owns and leaves no other state behind.
set -euo pipefail

DAYS=3650

# Prints a JWKS with the public half of private key $1 (PEM) for algorithm $2.
jwks() {
    local key="$1" alg="$2"
    openssl pkey -in "$key" -pubout -outform DER | python3 -c '
import base64, hashlib, json, sys

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def tlv(buf, i):
    """One DER element at buf[i]: (tag, content start, content end)."""
    tag = buf[i]
    n = buf[i + 1]
    i += 2
    if n & 0x80:
        count = n & 0x7F
        n = int.from_bytes(buf[i:i + count], "big")
        i += count
    return tag, i, i + n

def children(buf, start, end):
    out = []
    while start < end:
        tag, s, e = tlv(buf, start)
        out.append((tag, s, e))
        start = e
    return out

def uint(b):
    b = b.lstrip(b"\x00")
    return b or b"\x00"

alg = sys.argv[1]
der = sys.stdin.buffer.read()
_, s, e = tlv(der, 0)                      # SubjectPublicKeyInfo
(_, as_, ae), (btag, bs, be) = children(der, s, e)
oid = der[tlv(der, as_)[1]:tlv(der, as_)[2]]
point = der[bs + 1:be]                     # BIT STRING without the unused-bits byte
EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")
RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")
if oid == EC_PUBLIC_KEY:
    curve = {"ES256": ("P-256", 32), "ES384": ("P-384", 48)}.get(alg)
    if curve is None:
        sys.exit(f"{alg} does not fit an EC key (use ES256 or ES384)")
    crv, size = curve
    if len(point) != 1 + 2 * size or point[0] != 4:
        sys.exit(f"the EC key is not an uncompressed {crv} point")
    members = {"crv": crv, "kty": "EC", "x": b64u(point[1:1 + size]), "y": b64u(point[1 + size:])}
elif oid == RSA_ENCRYPTION:
    if alg not in ("RS256", "RS384", "RS512"):
        sys.exit(f"{alg} does not fit an RSA key (use RS384)")
    _, rs, re_ = tlv(point, 0)
    (_, ns, ne), (_, es, ee) = children(point, rs, re_)
    members = {"e": b64u(uint(point[es:ee])), "kty": "RSA", "n": b64u(uint(point[ns:ne]))}
else:
    sys.exit("unsupported key type (EC P-256/P-384 or RSA only)")
# RFC 7638: required members only, sorted, no whitespace.
canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
kid = b64u(hashlib.sha256(canonical).digest())
jwk = dict(members, kid=kid, alg=alg, use="sig")
print(json.dumps({"keys": [jwk]}, indent=2))
' "$alg"
}

if [[ "${1:-}" == "jwks" ]]; then
    [[ $# -eq 3 ]] || { echo "usage: $0 jwks KEY.pem ES384|RS384" >&2; exit 2; }
    jwks "$2" "$3"
    exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [jwks KEY.pem ALG]" >&2; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A 16-byte random positive serial number (webpki allows at most 20 bytes).
serial() { echo "0x7$(openssl rand -hex 15)"; }

# New PKCS#8 PEM private key: ec_key FILE CURVE / rsa_key FILE BITS
ec_key() { openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:$2" -out "$1" 2>/dev/null; }
rsa_key() { openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:$2" -out "$1" 2>/dev/null; }

# Issues an end-entity certificate signed by the CA:
#   issue NAME SUBJECT EXTENDED_KEY_USAGE SUBJECT_ALT_NAME  (key NAME.key must exist)
issue() {
    local name="$1" subject="$2" eku="$3" san="$4"
    cat >"$work/ext.cnf" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $eku
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    openssl req -new -utf8 -key "$name.key" -subj "$subject" -out "$work/req.csr"
    openssl x509 -req -in "$work/req.csr" -CA ca.pem -CAkey ca.key -set_serial "$(serial)" \
        -days "$DAYS" -sha384 -extfile "$work/ext.cnf" -out "$name.pem" 2>/dev/null
    openssl verify -CAfile ca.pem -purpose "$([[ $eku == serverAuth ]] && echo sslserver || echo sslclient)" \
        "$name.pem" >/dev/null
}

CLIENTS=(lund-ehr region-skane malmo-ehr nara-admin)
rm -f ca.pem ca.key ca.srl server.pem server.key gateway-signing.key
for id in "${CLIENTS[@]}"; do
    rm -f "clients/$id.pem" "clients/$id.key" "clients/$id.jwt.key" "clients/$id.jwks.json"
done
mkdir -p clients

# Development CA (EC P-384, may only sign end-entity certificates).
ec_key ca.key P-384
cat >"$work/ca.cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
openssl req -new -x509 -utf8 -config "$work/ca.cnf" -key ca.key -sha384 -days "$DAYS" -set_serial "$(serial)" \
    -subj "/C=SE/O=nara-gateway development/CN=nara-gateway Development CA (NOT FOR PRODUCTION)" -out ca.pem

# The gateway's TLS server certificate (EC P-256) for localhost and 127.0.0.1.
ec_key server.key P-256
issue server "/C=SE/O=nara-gateway development/CN=localhost" serverAuth "DNS:localhost, IP:127.0.0.1"

# SITHS-style function certificates: serialNumber = the organisation's HSA-id,
# CN = the system's name, O = the organisation (EC P-256, clientAuth only).
client_cert() {
    local id="$1" hsa="$2" org="$3" locality="$4"
    ec_key "clients/$id.key" P-256
    issue "clients/$id" "/C=SE/L=$locality/O=$org/serialNumber=$hsa/CN=$id" clientAuth "DNS:$id.nara.test"
}
client_cert lund-ehr SE2120001231-0001 "Lunds kommun" Lund
client_cert region-skane SE2321000255-0001 "Region Skåne" Kristianstad
client_cert malmo-ehr SE2120000829-0001 "Malmö stad" Malmö
client_cert nara-admin SE2321000255-0001 "Region Skåne" Kristianstad

# The gateway's own access-token signing key (ES384).
ec_key gateway-signing.key P-384

# The clients' token-assertion keys (SMART Backend Services) and their public JWKS.
ec_key clients/lund-ehr.jwt.key P-384
jwks clients/lund-ehr.jwt.key ES384 >clients/lund-ehr.jwks.json
rsa_key clients/region-skane.jwt.key 3072
jwks clients/region-skane.jwt.key RS384 >clients/region-skane.jwks.json
ec_key clients/malmo-ehr.jwt.key P-384
jwks clients/malmo-ehr.jwt.key ES384 >clients/malmo-ehr.jwks.json
ec_key clients/nara-admin.jwt.key P-384
jwks clients/nara-admin.jwt.key ES384 >clients/nara-admin.jwks.json

echo "regenerated development certificates and keys in $(pwd)"
