//! Reference data shipped under `mappings/reference/`: the region and its
//! municipalities (SCB kommunkod, name, delregion where a source names it).

use serde::Deserialize;

/// The shipped `mappings/reference/municipalities.toml`, for builds run without the folder.
pub const SHIPPED_MUNICIPALITIES: &str = include_str!("../mappings/reference/municipalities.toml");
/// The shipped `mappings/reference/npo-declared.toml`.
pub const SHIPPED_NPO_DECLARED: &str = include_str!("../mappings/reference/npo-declared.toml");

/// The reference data in effect.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub region: Region,
    /// Delregion id → its name.
    #[serde(default, rename = "delregion")]
    pub delregions: std::collections::BTreeMap<String, Delregion>,
    #[serde(rename = "municipality")]
    pub municipalities: Vec<Municipality>,
    /// Declared NPÖ statuses to seed the registry with (`npo-declared.toml`).
    #[serde(skip)]
    pub declared: Vec<DeclaredStatus>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    /// SCB länskod, the region's key in the NPÖ registry.
    pub code: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delregion {
    pub name: String,
}

/// One declared NPÖ status of the seed data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredStatus {
    /// Kommunkod, or the region's länskod.
    pub code: String,
    pub info_type: String,
    pub producer: Option<bool>,
    pub consumer: Option<bool>,
    pub date: String,
    pub source: String,
}

/// The NPÖ information types the registry tracks.
pub const NPO_INFO_TYPES: &[&str] = &["funktionsstatus-adl", "vardplan"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredFile {
    defaults: DeclaredDefaults,
    consumers: DeclaredConsumers,
    producers: std::collections::BTreeMap<String, bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredDefaults {
    date: String,
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredConsumers {
    all_municipalities: bool,
    region: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Municipality {
    pub kommunkod: String,
    pub name: String,
    /// `None` where no source names the delregion.
    pub delregion: Option<String>,
}

impl Reference {
    /// Parses `municipalities.toml`; the error is `(line, message)`.
    pub fn parse(text: &str) -> Result<Reference, (usize, String)> {
        let r: Reference = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            (line, e.message().to_owned())
        })?;
        let mut seen = std::collections::HashSet::new();
        for m in &r.municipalities {
            if let Some(d) = &m.delregion
                && !r.delregions.contains_key(d)
            {
                return Err((
                    line_of(text, &m.kommunkod),
                    format!("delregion `{d}` is not one of the [delregion.*] tables"),
                ));
            }
            crate::identity::Kommunkod::parse(&m.kommunkod).map_err(|e| (line_of(text, &m.kommunkod), e.0))?;
            if !seen.insert(&m.kommunkod) {
                return Err((line_of(text, &m.kommunkod), format!("kommunkod {} is listed twice", m.kommunkod)));
            }
        }
        Ok(r)
    }

    /// The reference data compiled into the binary.
    pub fn shipped() -> Reference {
        // Compile-time data, checked by a unit test.
        let mut r = Reference::parse(SHIPPED_MUNICIPALITIES).expect("the shipped reference data parses");
        r.declared = r.parse_declared(SHIPPED_NPO_DECLARED).expect("the shipped NPÖ statuses parse");
        r
    }

    /// Parses `npo-declared.toml` against these municipalities; the error is `(line, message)`.
    pub fn parse_declared(&self, text: &str) -> Result<Vec<DeclaredStatus>, (usize, String)> {
        let f: DeclaredFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            (line, e.message().to_owned())
        })?;
        let mut codes: Vec<&str> = self.municipalities.iter().map(|m| m.kommunkod.as_str()).collect();
        codes.push(&self.region.code);
        let mut out = Vec::new();
        for code in &codes {
            let is_region = *code == self.region.code;
            let consumer = if is_region { f.consumers.region } else { f.consumers.all_municipalities };
            let producer = f.producers.get(*code).copied();
            if !consumer && producer.is_none() {
                continue;
            }
            for info_type in NPO_INFO_TYPES {
                out.push(DeclaredStatus {
                    code: (*code).to_owned(),
                    info_type: (*info_type).to_owned(),
                    producer,
                    consumer: consumer.then_some(true),
                    date: f.defaults.date.clone(),
                    source: f.defaults.source.clone(),
                });
            }
        }
        for code in f.producers.keys() {
            if !codes.contains(&code.as_str()) {
                return Err((line_of(text, code), format!("{code} is neither a municipality nor the region")));
            }
        }
        Ok(out)
    }

    /// The name of a delregion id.
    pub fn delregion_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.delregions.get(id).map_or(id, |d| d.name.as_str())
    }

    pub fn municipality(&self, kommunkod: &str) -> Option<&Municipality> {
        self.municipalities.iter().find(|m| m.kommunkod == kommunkod)
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.find(&format!("\"{needle}\"")).map_or(1, |i| text[..i].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_data_has_the_33_skane_municipalities_and_three_known_delregions() {
        let r = Reference::shipped();
        assert_eq!(r.municipalities.len(), 33);
        assert_eq!(r.municipality("1281").unwrap().name, "Lund");
        assert_eq!(r.municipality("1281").unwrap().delregion.as_deref(), Some("mellersta"));
        assert_eq!(r.municipality("1214").unwrap().delregion, None);
        let count = |d: &str| r.municipalities.iter().filter(|m| m.delregion.as_deref() == Some(d)).count();
        assert_eq!((count("malmo"), count("mellersta"), count("nordvast")), (1, 8, 8));
        assert_eq!(r.delregion_name("nordvast"), "Nordväst");
    }

    #[test]
    fn the_declared_statuses_are_exactly_the_sources() {
        let r = Reference::shipped();
        let producer = |code: &str| {
            r.declared.iter().find(|d| d.code == code && d.info_type == "vardplan").and_then(|d| d.producer)
        };
        assert_eq!(producer("1281"), Some(true));
        assert_eq!(producer("1285"), Some(false));
        assert_eq!(producer("1283"), None, "Helsingborg's producer status is unknown");
        assert_eq!(producer("12"), Some(true));
        // 33 municipalities and the region consume both types.
        assert_eq!(r.declared.len(), 34 * 2);
        assert!(r.declared.iter().all(|d| d.consumer == Some(true) && d.date == "2025-11-21"));
    }

    #[test]
    fn mistakes_are_located() {
        let (line, msg) = Reference::parse(
            "[region]\nname = \"R\"\ncode = \"12\"\n[[municipality]]\nkommunkod = \"128\"\nname = \"X\"\n",
        )
        .unwrap_err();
        assert_eq!(line, 5, "{msg}");
        let (line, _) =
            Reference::parse("[region]\nname = \"R\"\ncode = \"12\"\n[[municipality]]\nkommun = \"1281\"\n")
                .unwrap_err();
        assert!(line >= 3);
    }
}
