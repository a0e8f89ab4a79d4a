//! The NPÖ coverage registry over real HTTP: the seeded table, observed
//! production, an administrator's statement, the CSV form and the page.

use nara_gateway::{access::Actor, ingest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, spawn_app};

async fn public_get(app: &TestApp, path: &str) -> Resp {
    // No token at all: the coverage figures are public.
    let r = app.client.get(format!("http://{}{path}", app.addr)).send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, headers, text, json }
}

/// Pushes a funktionsstatus record for Eslöv through the ingest pipeline, as `nara-gateway import` does.
async fn push_for_eslov(app: &TestApp) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/funktionsstatus-icf.json");
    let mut record: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    record["municipality"] = json!("1285");
    record["recordId"] = json!("eslov-1");
    record["sourceSystem"] = json!("SE2120001000-EHR1");
    record["careGiver"] = json!({"hsaId": "SE2120001000-0001", "name": "Eslövs kommun (fiktiv)"});
    record["careUnit"] = json!({"hsaId": "SE2120001000-HSL1", "name": "Hemsjukvården Eslöv (fiktiv)"});
    let set = app.state.mappings();
    let mapping = set.get("funktionsstatus").unwrap().clone();
    let parsed = nara_gateway::json::parse(record.to_string().as_bytes()).unwrap();
    let prepared =
        ingest::prepare(&set, &mapping, &Actor::gateway(), &parsed).map_err(|r| r.to_json().to_json()).unwrap();
    let receipts = ingest::write_all(&app.state.store, &Actor::gateway(), vec![(0, prepared)], 1, "test").await;
    assert_eq!(receipts[0].1.status, ingest::Status::Created);
}

fn totals<'a>(r: &'a Resp, info_type: &str) -> &'a Value {
    &r.json["totals"][info_type]
}

fn org<'a>(r: &'a Resp, kommunkod: &str) -> &'a Value {
    r.json["organizations"].as_array().unwrap().iter().find(|o| o["kommunkod"] == kommunkod).unwrap()
}

#[tokio::test]
async fn the_seeded_registry_reproduces_the_annual_report_and_moves_with_data_and_statements() {
    let app = spawn_app().await;
    let mellersta = public_get(&app, "/api/npo/coverage?delregion=mellersta").await;
    assert_eq!(mellersta.status, StatusCode::OK, "{}", mellersta.text);
    assert_eq!(mellersta.json["delregion"], "mellersta");
    assert_eq!(mellersta.json["windowDays"], 90);
    for it in ["funktionsstatus-adl", "vardplan"] {
        let t = totals(&mellersta, it);
        assert_eq!(
            (t["municipalities"].as_u64(), t["declaredProducers"].as_u64(), t["declaredConsumers"].as_u64()),
            (Some(8), Some(6), Some(8))
        );
        assert_eq!((t["producerShare"].as_f64(), t["consumerShare"].as_f64()), (Some(0.75), Some(1.0)));
    }
    let lund = org(&mellersta, "1281");
    assert_eq!(lund["infoTypes"]["vardplan"]["declaredProducer"], true);
    assert_eq!(lund["infoTypes"]["vardplan"]["declaredAt"], "2025-11-21");
    let all = public_get(&app, "/api/npo/coverage").await;
    assert_eq!(totals(&all, "vardplan")["municipalities"], 33);
    assert_eq!(all.json["region"]["lanskod"], "12");
    assert_eq!(org(&all, "1283")["infoTypes"]["vardplan"]["declaredProducer"], Value::Null, "unknown stays unknown");

    // Data arrives from Eslöv, which is not a declared producer.
    push_for_eslov(&app).await;
    let r = public_get(&app, "/api/npo/coverage?delregion=mellersta").await;
    let eslov = &org(&r, "1285")["infoTypes"]["funktionsstatus-adl"];
    assert_eq!(eslov["observedRecords"], 1);
    assert_eq!(eslov["flag"], "observed-not-declared");
    assert_eq!(totals(&r, "funktionsstatus-adl")["observedProducers"], 1);

    // An administrator records Eslöv as a producer.
    let admin = format!("Bearer {}", app.token_for("nara-admin", None));
    let statement = json!({"infoType": "funktionsstatus-adl", "declaredProducer": true, "declaredAt": "2026-11-24", "source": "Beslut i socialnämnden (test)"});
    let put = app
        .send(
            Method::PUT,
            "/api/npo/organizations/1285",
            Some(&statement.to_string()),
            &[("authorization", &admin), ("content-type", "application/json")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let history: Vec<&Value> =
        put.json["history"].as_array().unwrap().iter().filter(|h| h["infoType"] == "funktionsstatus-adl").collect();
    assert_eq!(history.len(), 2, "the earlier statement stays: {}", put.text);
    assert_eq!(
        (history[0]["declaredProducer"].as_bool(), history[1]["declaredProducer"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(history[1]["recordedBy"], "nara-admin");
    let r = public_get(&app, "/api/npo/coverage?delregion=mellersta").await;
    assert_eq!(totals(&r, "funktionsstatus-adl")["producerShare"].as_f64(), Some(0.875));
    assert_eq!(totals(&r, "vardplan")["producerShare"].as_f64(), Some(0.75));
    assert_eq!(org(&r, "1285")["infoTypes"]["funktionsstatus-adl"]["flag"], Value::Null);
    assert_eq!(org(&r, "1285")["infoTypes"]["funktionsstatus-adl"]["declaredConsumer"], true, "kept from the seed");
}

#[tokio::test]
async fn only_administrators_change_the_registry_and_mistakes_are_located() {
    let app = spawn_app().await;
    let statement =
        json!({"infoType": "vardplan", "declaredProducer": true, "declaredAt": "2026-11-24", "source": "x"})
            .to_string();
    let lund = format!("Bearer {}", app.token_for("lund-ehr", None));
    let r = app.send(Method::PUT, "/api/npo/organizations/1281", Some(&statement), &[("authorization", &lund)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let admin = format!("Bearer {}", app.token_for("nara-admin", None));
    let cases = [
        (json!({"infoType": "labb", "declaredProducer": true, "declaredAt": "2026-11-24", "source": "x"}), "infoType"),
        (
            json!({"infoType": "vardplan", "declaredProducer": "ja", "declaredAt": "2026-11-24", "source": "x"}),
            "declaredProducer",
        ),
        (json!({"infoType": "vardplan", "declaredProducer": true, "declaredAt": "24/11", "source": "x"}), "declaredAt"),
        (json!({"infoType": "vardplan", "declaredProducer": true, "declaredAt": "2026-11-24"}), "source"),
        (json!({"delregion": "sydost"}), "delregion"),
        (json!({"hsaId": "SE1-X"}), "hsaId"),
        (json!({"kommun": "x"}), "kommun"),
    ];
    for (body, at) in cases {
        let r = app
            .send(Method::PUT, "/api/npo/organizations/1281", Some(&body.to_string()), &[("authorization", &admin)])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{at}: {}", r.text);
        assert_eq!(r.json["issue"][0]["expression"][0], at, "{}", r.text);
    }
    let r = app.send(Method::PUT, "/api/npo/organizations/9999", Some(&statement), &[("authorization", &admin)]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Setting a delregion the sources did not give.
    let r = app
        .send(
            Method::PUT,
            "/api/npo/organizations/1214",
            Some(&json!({"delregion": "nordvast", "hsaId": "SE2120001000-0001"}).to_string()),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["delregion"], "nordvast");
    let nordvast = public_get(&app, "/api/npo/coverage?delregion=nordvast").await;
    assert_eq!(totals(&nordvast, "vardplan")["municipalities"], 9);
    let history = app.send(Method::GET, "/api/npo/organizations/1214", None, &[("authorization", &admin)]).await;
    assert_eq!(history.json["hsaId"], "SE2120001000-0001");
}

#[tokio::test]
async fn csv_and_the_page_carry_the_same_figures_without_a_token() {
    let app = spawn_app().await;
    let csv = public_get(&app, "/api/npo/coverage?delregion=mellersta&format=csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines.len(), 17, "{}", csv.text);
    assert!(lines[0].starts_with("kommunkod,name,delregion,infoType,declaredProducer"));
    assert!(lines.iter().any(|l| l.starts_with("1281,Lund,mellersta,vardplan,true,true,2025-11-21,")), "{}", csv.text);
    for bad in ["window=0", "window=x", "delregion=sydost", "format=xml", "foo=1"] {
        let r = public_get(&app, &format!("/api/npo/coverage?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert!(r.json["issue"][0]["expression"][0].is_string());
    }
    let page = public_get(&app, "/npo?delregion=mellersta").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    for needle in [
        "<html lang=\"sv\">",
        "<svg role=\"img\"",
        "<title id=\"chart-title\">",
        "<desc id=\"chart-desc\">",
        "<caption>",
        "scope=\"col\"",
        "Lund",
        "75,0 %",
    ] {
        assert!(page.text.contains(needle), "page lacks {needle}");
    }
    assert!(!page.text.contains("<script"), "no JavaScript");
    assert!(!page.text.contains("src=\"http"), "no external assets");
}
