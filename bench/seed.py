#!/usr/bin/env python3
"""Seeds a running nara-gateway with a deterministic, realistic data set.

Patients (Luhn-valid personnummer, born 1920-1950) and their Observations
(mostly `survey`, some `vital-signs`; P-ADL assessments with ICF-coded
components and Swedish text; decimals such as 12.50; effectiveDateTime with
+01:00) are POSTed as transaction Bundles of a few hundred entries, the
Observations referring to their Patient by `urn:uuid:`. The same --seed
always gives the same resources (the server assigns the ids).

With --care-records, every patient then also gets what the municipality and
the region send through the ingest API: a SIP care plan (vårdplan, in
NDJSON batches of 100 to /ingest/vardplan/batch, as the municipality: its
token in BENCH_INGEST_TOKEN) and a discharge message from a hospital ward
(/ingest/dokument, as the region: a DocumentReference, its PDF and a
transfer Task). Both find the seeded Patient by personnummer.

Writes an id file for the wrk scripts: one `Patient/ID` or `Observation/ID`
per line.

Python 3.11, standard library only. Set BENCH_TOKEN to send
`Authorization: Bearer $BENCH_TOKEN` with every request.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit

PERSONNUMMER = "http://electronichealth.se/identifier/personnummer"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ICF = "http://hl7.org/fhir/sid/icf"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
# Synthetic local code system for municipal care assessments (not a real registry).
ASSESSMENT = "https://nara-gateway.example/fhir/CodeSystem/bedomning"

GIVEN_F = ["Anna", "Maria", "Karin", "Kerstin", "Ingrid", "Birgitta", "Margareta", "Elsa", "Astrid", "Gunnel"]
GIVEN_M = ["Erik", "Lars", "Karl", "Nils", "Gunnar", "Sven", "Olof", "Bengt", "Åke", "Göran"]
FAMILY = ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson",
          "Svensson", "Gustafsson", "Pettersson", "Lindström", "Åberg", "Sjögren", "Öberg"]

PADL_ITEMS = [
    ("d510", "Tvätta sig"),
    ("d540", "Klä sig"),
    ("d420", "Förflytta sig"),
    ("d530", "Sköta toalettbehov"),
    ("d550", "Äta"),
]
PADL_ANSWERS = [
    "Klarar själv",
    "Klarar själv med hjälpmedel",
    "Behöver viss hjälp",
    "Behöver mycket hjälp",
    "Klarar inte alls",
]
# (LOINC code, display, UCUM unit, low, high, decimals)
VITALS = [
    ("29463-7", "Body weight", "kg", 42.0, 98.0, 2),
    ("8310-5", "Body temperature", "Cel", 35.8, 38.6, 2),
    ("8867-4", "Heart rate", "/min", 48, 110, 0),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 88, 100, 0),
]

# Decimals are written as JSON numbers with their exact digits (12.50 stays
# 12.50): they travel through json.dumps as marked strings, unmarked after.
_DEC_MARK = "\u0000dec:"
_DEC_RE = re.compile(r'"\\u0000dec:(-?[0-9]+(?:\.[0-9]+)?)"')


def dec(value: float, places: int) -> str:
    return f"{_DEC_MARK}{value:.{places}f}"


def to_json(value: object) -> bytes:
    return _DEC_RE.sub(r"\1", json.dumps(value, ensure_ascii=False, separators=(",", ":"))).encode()


def luhn_check_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(digits):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10


def personnummer(born: date, serial: int) -> str:
    """12-digit personnummer YYYYMMDDNNNC; the check digit covers YYMMDDNNN."""
    body = f"{born:%y%m%d}{serial:03d}"
    return f"{born:%Y}{body[2:]}{luhn_check_digit(body)}"


@dataclass
class PatientSeed:
    index: int
    full_url: str
    resource: dict


def make_patients(n: int, seed: int) -> list[PatientSeed]:
    rng = random.Random(f"{seed}:patients")
    first, last = date(1920, 1, 1), date(1950, 12, 31)
    span = (last - first).days
    used: set[str] = set()
    out = []
    for i in range(n):
        while True:
            born = first + timedelta(days=rng.randrange(span + 1))
            # Serials 980-999 look like test numbers; the third digit carries the sex.
            serial = rng.randrange(980, 1000)
            pnr = personnummer(born, serial)
            if pnr not in used:
                used.add(pnr)
                break
        female = serial % 2 == 0
        given = rng.choice(GIVEN_F if female else GIVEN_M)
        resource = {
            "resourceType": "Patient",
            "identifier": [{"system": PERSONNUMMER, "value": pnr}],
            "active": True,
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [given]}],
            "gender": "female" if female else "male",
            "birthDate": born.isoformat(),
        }
        out.append(PatientSeed(i, f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}", resource))
    return out


def observation(rng: random.Random, subject: str) -> dict:
    start = datetime(2023, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    when = start + timedelta(minutes=rng.randrange(2 * 365 * 24 * 60))
    obs: dict = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": subject},
        "effectiveDateTime": when.isoformat(timespec="seconds"),
    }
    roll = rng.random()
    if roll < 0.15:
        code, display, unit, low, high, places = rng.choice(VITALS)
        value = rng.uniform(low, high)
        obs["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}]
        obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}
        obs["valueQuantity"] = {
            "value": dec(value, places) if places else int(round(value)),
            "unit": unit,
            "system": UCUM,
            "code": unit,
        }
        return obs
    obs["category"] = [{"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}]}]
    if roll < 0.60:
        obs["code"] = {"coding": [{"system": ASSESSMENT, "code": "padl", "display": "P-ADL-bedömning"}],
                       "text": "Personlig ADL"}
        items = rng.sample(PADL_ITEMS, rng.randint(3, len(PADL_ITEMS)))
        obs["component"] = [
            {
                "code": {"coding": [{"system": ICF, "code": icf, "display": text}]},
                "valueString": rng.choice(PADL_ANSWERS),
            }
            for icf, text in items
        ]
    elif roll < 0.80:
        obs["code"] = {"coding": [{"system": ASSESSMENT, "code": "mna-sf", "display": "MNA-SF nutritionsbedömning"}]}
        obs["valueQuantity"] = {"value": dec(rng.randrange(0, 57) / 4, 2), "unit": "poäng",
                                "system": UCUM, "code": "{score}"}
        obs["interpretation"] = [{"text": rng.choice(["Normalt nutritionsstatus", "Risk för undernäring",
                                                      "Undernäring"])}]
    else:
        obs["code"] = {"coding": [{"system": ASSESSMENT, "code": "downton", "display": "Downton fallriskindex"}]}
        obs["valueInteger"] = rng.randint(0, 11)
        obs["note"] = [{"text": rng.choice(["Rollator inomhus.", "Yrsel vid uppresning.",
                                            "Har fallit senaste halvåret.", "Inga anmärkningar."])}]
    return obs


def entry(full_url: str, resource: dict) -> dict:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}}


def bearer(token_env: str) -> dict:
    """The Authorization header for the token in environment variable `token_env`, if set."""
    token = os.environ.get(token_env)
    return {"Authorization": f"Bearer {token}"} if token else {}


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        if parts.scheme != "http":
            raise SystemExit(f"--base: only http:// is supported, got {base!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = parts.path.rstrip("/")
        self.headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                        "Prefer": "return=minimal", **bearer("BENCH_TOKEN")}
        self._local = threading.local()

    def post(self, body: bytes, path: str | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        """POSTs to the FHIR base, or to `path` on the same server with `headers` instead."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            conn.request("POST", path or self.path, body=body, headers=headers or self.headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (ConnectionError, http.client.HTTPException, OSError):
            self._local.conn = None
            conn.close()
            raise


def post_chunk(client: Client, chunk_no: int, patients: list[PatientSeed], per_patient: int,
               seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(f"{seed}:chunk:{chunk_no}")
    entries = []
    for p in patients:
        entries.append(entry(p.full_url, p.resource))
        for _ in range(per_patient):
            full_url = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
            entries.append(entry(full_url, observation(rng, p.full_url)))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    status, body = client.post(to_json(bundle))
    if status != 200:
        raise RuntimeError(f"transaction {chunk_no} ({len(entries)} entries): HTTP {status}: "
                           f"{body[:2000].decode(errors='replace')}")
    answer = json.loads(body)
    got = answer.get("entry", [])
    if len(got) != len(entries):
        raise RuntimeError(f"transaction {chunk_no}: sent {len(entries)} entries, response has {len(got)}")
    patient_ids, obs_ids = [], []
    for sent, resp in zip(entries, got):
        r = resp.get("response", {})
        location = r.get("location", "")
        if not str(r.get("status", "")).startswith("201") or "/" not in location:
            raise RuntimeError(f"transaction {chunk_no}: entry {sent['fullUrl']} answered {r}")
        ty, rid = location.split("/")[:2]
        if ty != sent["resource"]["resourceType"]:
            raise RuntimeError(f"transaction {chunk_no}: response order differs: {ty} for "
                               f"{sent['resource']['resourceType']}")
        (patient_ids if ty == "Patient" else obs_ids).append(rid)
    return patient_ids, obs_ids


def pdf(text: str) -> str:
    return base64.b64encode(f"%PDF-1.4\n% {text}\n%%EOF\n".encode()).decode()


def pnr_of(p: PatientSeed) -> str:
    return p.resource["identifier"][0]["value"]


def care_plan_record(p: PatientSeed, seed: int) -> dict:
    """A SIP from Lunds kommun's EHR (the shape of ../shared/testdata/vardplan-sip.json)."""
    rng = random.Random(f"{seed}:sip:{p.index}")
    start = date(2025, 1, 1) + timedelta(days=rng.randrange(300))
    created = f"{start.isoformat()}T{rng.randrange(8, 16):02d}:{rng.randrange(60):02d}:00+01:00"
    return {
        "recordId": f"seed-{seed}-sip-{p.index}", "sourceSystem": "SE2120001231-EHR1", "municipality": "1281",
        "patient": {"personnummer": pnr_of(p)},
        "careUnit": {"hsaId": "SE2120001231-HSL1", "name": "Hemsjukvården Lund (fiktiv)"},
        "careGiver": {"hsaId": "SE2120001231-0001", "name": "Lunds kommun (fiktiv)"},
        "author": {"hsaId": f"SE2120001231-SSK{rng.randrange(1, 20)}", "name": "Sjuksköterska (fiktiv)",
                   "role": "Sjuksköterska", "signedAt": created},
        "type": "SIP", "title": "Samordnad individuell plan", "status": "active", "createdAt": created,
        "period": {"start": start.isoformat(), "end": (start + timedelta(days=90)).isoformat()},
        "approvedForPatient": True,
        "participants": [{"hsaId": "SE2321000255-VC01", "name": "Vårdcentralen Exempel (fiktiv)"},
                         {"hsaId": "SE2120001231-HSL1", "name": "Hemsjukvården Lund (fiktiv)"}],
        "goals": [{"description": rng.choice(["Klara förflyttning säng-rullstol själv",
                                              "Trygg i hemmet utan oplanerade akutbesök",
                                              "Äta själv vid alla måltider"]),
                   "due": (start + timedelta(days=60)).isoformat()}],
        "activities": [{"description": rng.choice(["Förflyttningsträning två gånger per vecka",
                                                   "Läkarbesök i hemmet vid behov inom 2 timmar"]),
                        "performer": {"hsaId": "SE2120001231-FT03", "name": "Fysioterapeut (fiktiv)"}}],
        "content": [{"mediaType": "application/pdf", "title": "SIP signerad", "data": pdf(f"SIP {p.index}")}],
    }


def transfer_record(p: PatientSeed, seed: int) -> dict:
    """A discharge message from a ward to Hemsjukvården Lund (../shared/testdata/dokument-utskrivning.json)."""
    rng = random.Random(f"{seed}:transfer:{p.index}")
    day = date(2025, 1, 1) + timedelta(days=rng.randrange(330))
    return {
        "recordId": f"seed-{seed}-mp-{p.index}", "sourceSystem": "SE2321000255-MP01",
        "from": {"hsaId": "SE2321000255-AVD12", "name": "Sjukhusavdelning 12 (fiktiv)"},
        "to": {"municipality": "1281", "hsaId": "SE2120001231-HSL1", "name": "Hemsjukvården Lund (fiktiv)"},
        "patient": {"personnummer": pnr_of(p)},
        "documentType": "utskrivningsmeddelande", "title": "Utskrivningsmeddelande",
        "createdAt": f"{day.isoformat()}T{rng.randrange(8, 18):02d}:{rng.randrange(60):02d}:00+01:00",
        "content": {"mediaType": "application/pdf", "data": pdf(f"utskrivningsmeddelande {p.index}")},
    }


def ingest_headers(token_env: str, content_type: str) -> dict:
    return {"Content-Type": content_type, "Accept": "application/json", **bearer(token_env)}


def post_care_plans(client: Client, patients: list[PatientSeed], seed: int) -> int:
    body = "\n".join(json.dumps(care_plan_record(p, seed), ensure_ascii=False) for p in patients).encode()
    status, answer = client.post(body, "/ingest/vardplan/batch",
                                 ingest_headers("BENCH_INGEST_TOKEN", "application/x-ndjson"))
    if status != 200 or b'"status":"rejected"' in answer:
        raise RuntimeError(f"vårdplan batch: HTTP {status}: {answer[:2000].decode(errors='replace')}")
    return len(patients)


def post_transfer(client: Client, p: PatientSeed, seed: int) -> int:
    status, answer = client.post(json.dumps(transfer_record(p, seed), ensure_ascii=False).encode(),
                                 "/ingest/dokument", ingest_headers("BENCH_TOKEN", "application/json"))
    if not 200 <= status < 300:
        raise RuntimeError(f"transfer of patient {p.index}: HTTP {status}: {answer[:2000].decode(errors='replace')}")
    return 1


def run_all(workers: int, jobs: list) -> list:
    """Runs `(function, *args)` jobs on `workers` threads; the results in job order, or the
    first failure raised (the jobs not yet started are cancelled)."""
    results: list = [None] * len(jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(*job): n for n, job in enumerate(jobs)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                results[futures[fut]] = fut.result()
        except Exception:
            for f in futures:
                f.cancel()
            raise
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True,
                    help="FHIR base URL, e.g. http://127.0.0.1:8080/fhir (a bare server root gets /fhir)")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--observations-per-patient", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ids-out", default="bench-results/ids.txt", help="id file for the wrk scripts")
    ap.add_argument("--max-observation-ids", type=int, default=5000,
                    help="at most this many Observation ids in --ids-out (a seeded sample)")
    ap.add_argument("--bundle-entries", type=int, default=250, help="target entries per transaction")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--care-records", action="store_true",
                    help="also a SIP care plan and a discharge transfer per patient, through the ingest API")
    args = ap.parse_args()
    if args.patients < 1 or args.observations_per_patient < 0:
        ap.error("--patients must be >= 1 and --observations-per-patient >= 0")

    base = args.base.rstrip("/")
    if not urlsplit(base).path.endswith("/fhir"):
        base += "/fhir"
    client = Client(base)
    patients = make_patients(args.patients, args.seed)
    per_bundle = max(1, args.bundle_entries // (1 + args.observations_per_patient))
    chunks = [patients[i:i + per_bundle] for i in range(0, len(patients), per_bundle)]

    started = time.monotonic()
    try:
        results = run_all(args.workers, [(post_chunk, client, n, chunk, args.observations_per_patient, args.seed)
                                         for n, chunk in enumerate(chunks)])
    except Exception as e:
        print(f"seed: FAILED: {e}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started

    patient_ids = [pid for r in results if r for pid in r[0]]
    obs_ids = [oid for r in results if r for oid in r[1]]
    sample = obs_ids
    if len(obs_ids) > args.max_observation_ids:
        sample = random.Random(f"{args.seed}:sample").sample(obs_ids, args.max_observation_ids)
    out_dir = os.path.dirname(args.ids_out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.ids_out, "w", encoding="utf-8") as f:
        f.writelines(f"Patient/{pid}\n" for pid in patient_ids)
        f.writelines(f"Observation/{oid}\n" for oid in sample)

    total = len(patient_ids) + len(obs_ids)
    print(f"seed: created {len(patient_ids)} Patient and {len(obs_ids)} Observation resources "
          f"({total} total) in {len(chunks)} transactions, {elapsed:.1f} s ({total / elapsed:.0f} resources/s); "
          f"ids in {args.ids_out}")
    if args.care_records:
        started = time.monotonic()
        try:
            plans = run_all(args.workers, [(post_care_plans, client, patients[i:i + 100], args.seed)
                                           for i in range(0, len(patients), 100)])
            transfers = run_all(args.workers, [(post_transfer, client, p, args.seed) for p in patients])
        except Exception as e:
            print(f"seed: FAILED: {e}", file=sys.stderr)
            return 1
        print(f"seed: ingested {sum(plans)} SIP care plans and {sum(transfers)} discharge transfers "
              f"in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
