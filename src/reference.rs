//! Reference data shipped under `mappings/reference/`: the region and its
//! municipalities (SCB kommunkod, name, delregion where a source names it).

use serde::Deserialize;

/// The shipped `mappings/reference/municipalities.toml`, for builds run without the folder.
pub const SHIPPED_MUNICIPALITIES: &str = include_str!("../mappings/reference/municipalities.toml");

/// The reference data in effect.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub region: Region,
    #[serde(rename = "municipality")]
    pub municipalities: Vec<Municipality>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
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
        Reference::parse(SHIPPED_MUNICIPALITIES).expect("the shipped reference data parses")
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
        assert_eq!(r.municipality("1281").unwrap().delregion.as_deref(), Some("Mellersta"));
        assert_eq!(r.municipality("1214").unwrap().delregion, None);
        let count = |d: &str| r.municipalities.iter().filter(|m| m.delregion.as_deref() == Some(d)).count();
        assert_eq!((count("Malmö"), count("Mellersta"), count("Nordväst")), (1, 8, 8));
    }

    #[test]
    fn mistakes_are_located() {
        let (line, msg) =
            Reference::parse("[region]\nname = \"R\"\n[[municipality]]\nkommunkod = \"12\"\nname = \"X\"\n")
                .unwrap_err();
        assert_eq!(line, 4, "{msg}");
        let (line, _) = Reference::parse("[region]\nname = \"R\"\n[[municipality]]\nkommun = \"1281\"\n").unwrap_err();
        assert!(line >= 3);
    }
}
