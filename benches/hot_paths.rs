//! Micro-benchmarks of the hot paths (criterion): mapping a PADL record,
//! FHIR validation, search-parameter extraction, access-token verification.
//!
//! `cargo bench --bench hot_paths` (from the repository root: it reads
//! `mappings/`, `../shared/testdata/` and `certs-example/`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nara_gateway::{
    auth::{Auth, AuthConfig},
    fhir::{search::extract, validate},
    json::{self, Value},
    mapping::MappingSet,
};

/// The allocator the gateway binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn testdata(name: &str) -> Value {
    let text = std::fs::read(format!("../shared/testdata/{name}")).expect("../shared/testdata is beside the project");
    json::parse(&text).expect("testdata parses")
}

fn mapping(c: &mut Criterion) {
    let set = MappingSet::load_dir(std::path::Path::new("mappings")).expect("shipped mappings load");
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(1));
    for (name, file) in [("funktionsstatus", "funktionsstatus-padl.json"), ("vardplan", "vardplan-sip.json")] {
        let m = set.get(name).expect("mapping").clone();
        let record = testdata(file);
        let text = record.to_json();
        group.bench_function(format!("{name}: check + map one record"), |b| {
            b.iter(|| m.apply(black_box(&record), &set.reference).expect("maps"))
        });
        group.bench_function(format!("{name}: parse + check + map one record"), |b| {
            b.iter(|| {
                let v = json::parse(black_box(text.as_bytes())).expect("parses");
                m.apply(&v, &set.reference).expect("maps")
            })
        });
    }
    group.finish();
}

fn observation() -> Value {
    let set = MappingSet::load_dir(std::path::Path::new("mappings")).expect("shipped mappings load");
    let record =
        set.get("funktionsstatus").expect("mapping").apply(&testdata("funktionsstatus-padl.json"), &set.reference);
    let obs = record.expect("maps").resources.into_iter().find(|r| r.resource_type == "Observation").expect("one");
    let text = obs.body.to_json().replace("urn:nara:key:", "Patient/x-");
    json::parse(text.as_bytes()).expect("parses")
}

fn fhir(c: &mut Criterion) {
    let obs = observation();
    let mut group = c.benchmark_group("fhir");
    group.throughput(Throughput::Elements(1));
    group.bench_function("validate a PADL Observation", |b| b.iter(|| validate::validate(black_box(&obs))));
    group.bench_function("extract search parameters of a PADL Observation", |b| {
        b.iter(|| extract::extract(black_box(&obs)))
    });
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let auth = Auth::from_config(&AuthConfig::default(), "https://nara.example/auth/token".into()).expect("auth");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let token = format!("Bearer {}", auth.issue_for("lund-ehr", None, now).expect("issued").access_token);
    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify a cached access token", |b| b.iter(|| auth.verify_bearer(black_box(&token), now)));
    group.sample_size(20);
    group.bench_function("verify a new access token (ES384)", |b| {
        b.iter_batched(
            || format!("Bearer {}", auth.issue_for("lund-ehr", None, now).expect("issued").access_token),
            |t| auth.verify_bearer(&t, now),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, mapping, fhir, tokens);
criterion_main!(benches);
