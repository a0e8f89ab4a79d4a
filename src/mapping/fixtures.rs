//! Fixtures: each mapping's examples with their expected FHIR output, run by
//! `nara-gateway mapping test` and by `cargo test`.
//!
//! `mappings/<name>/fixtures/<case>.input.json` is a record;
//! `<case>.expected.json` is what the mapping must make of it, either
//! `{"resources": [{"key", "identity", "resource"}, …]}` or
//! `{"rejected": {"kind": "input"|"mapping", "issues": [{"path", "message"}, …]}}`.

use std::path::{Path, PathBuf};

use crate::json::{Object, Value};

use super::{Identity, MappedRecord, Mapping, MappingSet, Rejected, SourceIssue};

/// The outcome of one fixture.
#[derive(Debug)]
pub struct FixtureResult {
    pub mapping: String,
    pub case: String,
    pub outcome: Outcome,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// A readable diff, expected (`-`) against actual (`+`).
    Failed(String),
    /// The input could not be read or the expected file is missing or unreadable.
    Broken(String),
    /// `--update` wrote the expected file.
    Updated,
}

/// What a mapping makes of a record, as the expected-file JSON.
pub fn render(result: &Result<MappedRecord, Rejected>) -> Value {
    let mut out = Object::new();
    match result {
        Ok(record) => {
            let list = record
                .resources
                .iter()
                .map(|r| {
                    let mut o = Object::new();
                    o.insert("key", r.key.as_str().into());
                    let identity = match &r.identity {
                        Identity::Owned => Value::from("owned"),
                        Identity::Shared { system, value } => {
                            let mut i = Object::new();
                            i.insert("system", system.as_str().into());
                            i.insert("value", value.as_str().into());
                            Value::Object(i)
                        }
                    };
                    o.insert("identity", identity);
                    o.insert("resource", r.body.clone());
                    Value::Object(o)
                })
                .collect();
            out.insert("resources", Value::Array(list));
        }
        Err(rejected) => {
            let (kind, issues) = match rejected {
                Rejected::Input(i) => ("input", i),
                Rejected::Mapping(i) => ("mapping", i),
            };
            let mut r = Object::new();
            r.insert("kind", kind.into());
            r.insert("issues", Value::Array(issues.iter().map(|i| issue_json(i, kind == "mapping")).collect()));
            out.insert("rejected", Value::Object(r));
        }
    }
    Value::Object(out)
}

fn issue_json(i: &SourceIssue, in_mapping: bool) -> Value {
    let mut o = Object::new();
    // Mapping defects name `<folder>/<name>/mapping.toml:LINE`; keep the part below the folder.
    let path = match i.path.rfind("/mapping.toml:").and_then(|end| i.path[..end].rfind('/')) {
        Some(start) if in_mapping => &i.path[start + 1..],
        _ => i.path.as_str(),
    };
    o.insert("path", path.into());
    o.insert("message", i.message.as_str().into());
    Value::Object(o)
}

/// Runs the fixtures of every mapping in `set`, read from `dir/<name>/fixtures/`.
pub fn run(set: &MappingSet, dir: &Path, update: bool) -> Vec<FixtureResult> {
    let mut results = Vec::new();
    for mapping in set.iter() {
        let folder = dir.join(&mapping.name).join("fixtures");
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(".input.json"))
                    .collect()
            })
            .unwrap_or_default();
        inputs.sort();
        if inputs.is_empty() {
            results.push(FixtureResult {
                mapping: mapping.name.clone(),
                case: "(none)".into(),
                outcome: Outcome::Broken(format!("no fixtures in {}", folder.display())),
            });
        }
        for input in inputs {
            let case = input.file_name().map(|n| n.to_string_lossy().replace(".input.json", "")).unwrap_or_default();
            let expected = folder.join(format!("{case}.expected.json"));
            let outcome = run_one(mapping, set, &input, &expected, update);
            results.push(FixtureResult { mapping: mapping.name.clone(), case, outcome });
        }
    }
    results
}

fn run_one(mapping: &Mapping, set: &MappingSet, input: &Path, expected: &Path, update: bool) -> Outcome {
    let record = match std::fs::read(input)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::json::parse(&b).map_err(|e| format!("line {}: {}", e.line, e.message)))
    {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("{}: {e}", input.display())),
    };
    let actual = render(&mapping.apply(&record, &set.reference)).to_json_pretty();
    if update {
        return match std::fs::write(expected, format!("{actual}\n")) {
            Ok(()) => Outcome::Updated,
            Err(e) => Outcome::Broken(format!("{}: {e}", expected.display())),
        };
    }
    let wanted = match std::fs::read(expected)
        .map_err(|e| e.to_string())
        .and_then(|b| crate::json::parse(&b).map_err(|e| format!("line {}: {}", e.line, e.message)))
    {
        Ok(v) => v.to_json_pretty(),
        Err(e) => {
            return Outcome::Broken(format!("{}: {e} (run `mapping test --update` to write it)", expected.display()));
        }
    };
    if wanted == actual { Outcome::Passed } else { Outcome::Failed(diff(&wanted, &actual)) }
}

/// A line diff with three lines of context: `-` expected, `+` actual.
pub fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, (c, _))| *c != ' ').map(|(k, _)| k).collect();
    let mut out = String::new();
    let mut last_shown: Option<usize> = None;
    for (k, (c, line)) in ops.iter().enumerate() {
        let near = changed.iter().any(|&x| x.abs_diff(k) <= 3);
        if !near {
            continue;
        }
        if last_shown.is_some_and(|l| l + 1 < k) || (last_shown.is_none() && k > 0) {
            out.push_str("   ...\n");
        }
        out.push_str(&format!("{c}  {line}\n"));
        last_shown = Some(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_shows_changes_with_context() {
        let d = diff("a\nb\nc\nd\ne\nf\ng\nh\ni\n", "a\nb\nc\nd\nE\nf\ng\nh\ni\n");
        assert!(d.contains("-  e\n+  E\n"), "{d}");
        assert!(d.contains("   b") && !d.contains("   a"), "{d}");
    }
}
