//! The coverage report as a server-rendered HTML page (Swedish, no
//! JavaScript, no external assets) with an SVG chart, and as a text table.

use std::fmt::Write;

use crate::reference::Reference;

use super::{Report, Totals};

/// One group of the chart: delregion id, its name, and its totals per information type.
pub type ChartGroup = (String, String, Vec<(&'static str, Totals)>);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn info_type_sv(it: &str) -> &'static str {
    match it {
        "funktionsstatus-adl" => "Funktionsstatus & ADL",
        "vardplan" => "Vårdplan",
        _ => "Okänd informationstyp",
    }
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "Ja",
        Some(false) => "Nej",
        None => "Okänt",
    }
}

fn percent(x: f64) -> String {
    format!("{:.1} %", x * 100.0).replace('.', ",")
}

/// The page: a chart of producer and consumer shares per delregion, then the
/// table of `report` (one delregion or all of Skåne).
pub fn page(report: &Report, per_delregion: &[ChartGroup], reference: &Reference) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let scope = report.delregion.as_deref().map_or("Hela Skåne".to_owned(), |d| {
        if d == "unknown" {
            "Kommuner utan känd delregion".to_owned()
        } else {
            format!("Delregion {}", reference.delregion_name(d))
        }
    });
    let generated = crate::fhir::format::instant(report.generated_ms);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="sv">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>NPÖ-täckning: {scope}</title>
<style>
body {{ font-family: system-ui, sans-serif; color: #1a1a1a; background: #ffffff; margin: 0; line-height: 1.45; }}
main {{ max-width: 72rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }}
h1 {{ font-size: 1.6rem; margin-bottom: 0.2rem; }}
nav ul {{ list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; }}
a {{ color: #0b4f8a; }}
a[aria-current="page"] {{ font-weight: 700; color: #1a1a1a; }}
table {{ border-collapse: collapse; width: 100%; margin: 0.5rem 0 1.5rem; font-size: 0.95rem; }}
caption {{ text-align: left; font-weight: 600; padding: 0.3rem 0; }}
th, td {{ border: 1px solid #8a8a8a; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }}
thead th {{ background: #e8eef5; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.flag {{ color: #8a1c1c; font-weight: 600; }}
figure {{ margin: 1rem 0 2rem; }}
.legend span {{ display: inline-block; width: 0.9rem; height: 0.9rem; vertical-align: middle; margin: 0 0.3rem 0 1rem; }}
</style>
</head>
<body>
<main>
<h1>NPÖ: Funktionsstatus &amp; ADL och Vårdplan</h1>
<p>Vilka kommuner som är anmälda producenter och konsumenter i Nationell patientöversikt (NPÖ), och vad gatewayen faktiskt tagit emot de senaste {window} dagarna. {scope_esc}. Sammanställt {generated}.</p>
<nav aria-label="Delregioner"><ul>
"#,
        window = report.window_days,
        scope_esc = esc(&scope),
    );
    let current = report.delregion.as_deref();
    let mut links: Vec<(Option<String>, String)> = vec![(None, "Hela Skåne".into())];
    for (id, d) in &reference.delregions {
        links.push((Some(id.clone()), d.name.clone()));
    }
    links.push((Some("unknown".into()), "Okänd delregion".into()));
    for (id, name) in &links {
        let href = id.as_ref().map_or("/npo".to_owned(), |d| format!("/npo?delregion={d}"));
        let here = if id.as_deref() == current { r#" aria-current="page""# } else { "" };
        let _ = writeln!(h, r#"<li><a href="{href}"{here}>{}</a></li>"#, esc(name));
    }
    h.push_str("</ul></nav>\n");
    chart(&mut h, per_delregion);
    // Totals of this scope.
    let _ = write!(
        h,
        "<table>\n<caption>Summering: {}</caption>\n<thead><tr><th scope=\"col\">Informationstyp</th><th scope=\"col\">Kommuner</th><th scope=\"col\">Anmälda producenter</th><th scope=\"col\">Andel producenter</th><th scope=\"col\">Anmälda konsumenter</th><th scope=\"col\">Andel konsumenter</th><th scope=\"col\">Kommuner med mottagna poster</th></tr></thead>\n<tbody>\n",
        esc(&scope)
    );
    for (it, t) in &report.totals {
        let _ = writeln!(
            h,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(info_type_sv(it)),
            t.municipalities,
            t.declared_producers,
            percent(t.producer_share()),
            t.declared_consumers,
            percent(t.consumer_share()),
            t.observed_producers
        );
    }
    h.push_str("</tbody>\n</table>\n");
    let _ = write!(
        h,
        "<table>\n<caption>Kommuner: {}</caption>\n<thead><tr><th scope=\"col\">Kommun</th><th scope=\"col\">Kommunkod</th><th scope=\"col\">Delregion</th><th scope=\"col\">Informationstyp</th><th scope=\"col\">Producent (anmäld)</th><th scope=\"col\">Konsument (anmäld)</th><th scope=\"col\">Anmält</th><th scope=\"col\">Mottagna poster</th><th scope=\"col\">Senast mottagen</th><th scope=\"col\">Avvikelse</th></tr></thead>\n<tbody>\n",
        esc(&scope)
    );
    for r in report.rows.iter().chain(&report.region_rows) {
        let delregion = r.delregion.as_deref().map_or("Okänd", |d| reference.delregion_name(d));
        let _ = writeln!(
            h,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&r.code),
            esc(delregion),
            esc(info_type_sv(r.info_type)),
            yes_no(r.declared.producer),
            yes_no(r.declared.consumer),
            esc(r.declared.declared_at.as_deref().unwrap_or("–")),
            r.observed_records,
            r.last_observed_ms.map_or("–".to_owned(), crate::fhir::format::instant),
            r.flag.map_or(String::new(), |f| format!("<span class=\"flag\">{}</span>", esc(f.swedish()))),
        );
    }
    h.push_str("</tbody>\n</table>\n");
    let sources: std::collections::BTreeSet<&str> =
        report.rows.iter().filter_map(|r| r.declared.source.as_deref()).collect();
    h.push_str("<h2>Källor</h2>\n<ul>\n");
    for s in sources {
        let _ = writeln!(h, "<li>{}</li>", esc(s));
    }
    h.push_str(
        "</ul>\n<p>Samma uppgifter som JSON: <a href=\"/api/npo/coverage\">/api/npo/coverage</a>, som CSV: <a href=\"/api/npo/coverage?format=csv\">/api/npo/coverage?format=csv</a>.</p>\n</main>\n</body>\n</html>\n",
    );
    h
}

/// Horizontal bars: producer and consumer share per delregion and information type.
fn chart(h: &mut String, per_delregion: &[ChartGroup]) {
    const PRODUCER: &str = "#1f4e79";
    const CONSUMER: &str = "#9c4a00";
    let row_h = 22;
    let group_h = row_h * 4 + 18;
    let height = 40 + group_h * per_delregion.len() as i32;
    let (label_w, bar_w) = (260, 420);
    let mut desc = String::new();
    for (_, name, totals) in per_delregion {
        for (it, t) in totals {
            let _ = write!(
                desc,
                "{name}, {}: producenter {} ({} av {}, okänt för {}), konsumenter {} ({} av {}). ",
                info_type_sv(it),
                percent(t.producer_share()),
                t.declared_producers,
                t.municipalities,
                t.producer_unknown,
                percent(t.consumer_share()),
                t.declared_consumers,
                t.municipalities
            );
        }
    }
    let _ = write!(
        h,
        "<h2 id=\"chart-heading\">Andel anmälda producenter och konsumenter per delregion</h2>\n<figure>\n<svg role=\"img\" aria-labelledby=\"chart-title chart-desc\" width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"system-ui, sans-serif\" font-size=\"13\">\n<title id=\"chart-title\">Andel kommuner anmälda som producenter och konsumenter i NPÖ, per delregion</title>\n<desc id=\"chart-desc\">{}</desc>\n",
        esc(&desc),
        w = label_w + bar_w + 70,
    );
    let mut y = 20;
    for (_, name, totals) in per_delregion {
        let _ = writeln!(h, "<text x=\"0\" y=\"{}\" font-weight=\"700\" fill=\"#1a1a1a\">{}</text>", y + 12, esc(name));
        y += 18;
        for (it, t) in totals {
            for (what, value, color) in
                [("producenter", t.producer_share(), PRODUCER), ("konsumenter", t.consumer_share(), CONSUMER)]
            {
                let width = (value * f64::from(bar_w)).round() as i32;
                let unknown = if what == "producenter" && t.producer_unknown > 0 {
                    format!(" (okänt för {} av {})", t.producer_unknown, t.municipalities)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    h,
                    "<text x=\"8\" y=\"{}\" fill=\"#1a1a1a\">{} – {what}</text><rect x=\"{label_w}\" y=\"{}\" width=\"{width}\" height=\"{}\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" fill=\"#1a1a1a\">{}{unknown}</text>",
                    y + 14,
                    esc(info_type_sv(it)),
                    y + 3,
                    row_h - 6,
                    label_w + width + 6,
                    y + 14,
                    percent(value)
                );
                y += row_h;
            }
        }
    }
    let _ = write!(
        h,
        "</svg>\n<figcaption class=\"legend\"><span style=\"background:{PRODUCER}\"></span>Andel anmälda producenter<span style=\"background:{CONSUMER}\"></span>Andel anmälda konsumenter. Samma siffror finns i tabellerna nedan.</figcaption>\n</figure>\n"
    );
}

/// A plain-text table for the terminal.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<5} {:<10} {:<20} {:<9} {:<9} {:<11} {:>8}  avvikelse",
        "kommun", "kod", "delregion", "informationstyp", "producent", "konsument", "anmält", "mottagna"
    );
    let b = |v: Option<bool>| yes_no(v).to_lowercase();
    for r in report.rows.iter().chain(&report.region_rows) {
        let _ = writeln!(
            out,
            "{:<14} {:<5} {:<10} {:<20} {:<9} {:<9} {:<11} {:>8}  {}",
            r.name,
            r.code,
            r.delregion.as_deref().unwrap_or("okänd"),
            r.info_type,
            b(r.declared.producer),
            b(r.declared.consumer),
            r.declared.declared_at.as_deref().unwrap_or("-"),
            r.observed_records,
            r.flag.map_or("", |f| f.as_str())
        );
    }
    for (it, t) in &report.totals {
        let _ = writeln!(
            out,
            "{it}: {} kommuner, {} producenter ({}), {} konsumenter ({}), {} med mottagna poster",
            t.municipalities,
            t.declared_producers,
            percent(t.producer_share()),
            t.declared_consumers,
            percent(t.consumer_share()),
            t.observed_producers
        );
    }
    out
}
