//! Swedish identifiers as validated newtypes: a value of one of these types
//! has passed its rule, so code holding one never re-checks it.
//!
//! Rules and systems from `DOMAIN.md` (Swedish Tax Agency for personnummer and
//! samordningsnummer, HL7 Sweden's base profiles for the system URIs).

use std::fmt;

/// FHIR `Identifier.system` of a personnummer.
pub const PERSONNUMMER_SYSTEM: &str = "http://electronichealth.se/identifier/personnummer";
/// FHIR `Identifier.system` of a samordningsnummer.
pub const SAMORDNINGSNUMMER_SYSTEM: &str = "http://electronichealth.se/identifier/samordningsnummer";
/// The HSA-id system the gateway stores (HL7 Sweden).
pub const HSA_ID_SYSTEM: &str = "urn:oid:1.2.752.29.4.19";
/// Other systems HSA-ids arrive with; normalised to [`HSA_ID_SYSTEM`].
pub const HSA_ID_SYSTEM_ALIASES: &[&str] = &["urn:oid:1.2.752.129.2.1.4.1", "https://hsaid.se"];
/// FHIR `Identifier.system` of an organisationsnummer.
pub const ORGANISATIONSNUMMER_SYSTEM: &str = "urn:oid:2.5.4.97";
/// The gateway's own NamingSystem for SCB kommunkoder.
pub const KOMMUNKOD_SYSTEM: &str = "https://nara-gateway.se/fhir/NamingSystem/kommunkod";

/// Why an identifier was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidIdentifier(pub String);

fn invalid(msg: impl Into<String>) -> InvalidIdentifier {
    InvalidIdentifier(msg.into())
}

/// A patient's national identity: personnummer or samordningsnummer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PatientId {
    Personnummer(String),
    Samordningsnummer(String),
}

impl PatientId {
    /// A personnummer: 12 digits (or `YYYYMMDD-NNNN`), a real date, Luhn check digit.
    pub fn personnummer(text: &str) -> Result<PatientId, InvalidIdentifier> {
        let digits = twelve_digits(text, "personnummer")?;
        check_date(&digits, 0, "personnummer")?;
        check_luhn(&digits, "personnummer")?;
        Ok(PatientId::Personnummer(digits))
    }

    /// A samordningsnummer: as a personnummer, with 60 added to the day (61–91).
    pub fn samordningsnummer(text: &str) -> Result<PatientId, InvalidIdentifier> {
        let digits = twelve_digits(text, "samordningsnummer")?;
        let day: u32 = digits[6..8].parse().unwrap_or(0);
        if !(61..=91).contains(&day) {
            return Err(invalid(format!("a samordningsnummer has a day of 61–91 (birth day + 60), not {day:02}")));
        }
        check_date(&digits, 60, "samordningsnummer")?;
        check_luhn(&digits, "samordningsnummer")?;
        Ok(PatientId::Samordningsnummer(digits))
    }

    /// The 12 digits.
    pub fn value(&self) -> &str {
        match self {
            PatientId::Personnummer(v) | PatientId::Samordningsnummer(v) => v,
        }
    }

    /// The FHIR identifier system.
    pub fn system(&self) -> &'static str {
        match self {
            PatientId::Personnummer(_) => PERSONNUMMER_SYSTEM,
            PatientId::Samordningsnummer(_) => SAMORDNINGSNUMMER_SYSTEM,
        }
    }
}

/// `YYYYMMDDNNNC` or `YYYYMMDD-NNNC` → the 12 digits.
fn twelve_digits(text: &str, what: &str) -> Result<String, InvalidIdentifier> {
    let digits: String = match text.len() {
        12 => text.to_owned(),
        13 if text.as_bytes()[8] == b'-' => format!("{}{}", &text[..8], &text[9..]),
        _ => {
            return Err(invalid(format!("a {what} has 12 digits (YYYYMMDDNNNN) or the form YYYYMMDD-NNNN")));
        }
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("a {what} has only digits (YYYYMMDDNNNN or YYYYMMDD-NNNN)")));
    }
    Ok(digits)
}

fn check_date(digits: &str, day_offset: u32, what: &str) -> Result<(), InvalidIdentifier> {
    let year: i32 = digits[0..4].parse().unwrap_or(0);
    let month: u32 = digits[4..6].parse().unwrap_or(0);
    let day: u32 = digits[6..8].parse::<u32>().unwrap_or(0).saturating_sub(day_offset);
    if chrono::NaiveDate::from_ymd_opt(year, month, day).is_none() || year < 1800 {
        return Err(invalid(format!("the {what} does not start with a valid date of birth")));
    }
    Ok(())
}

/// Luhn (mod 10) over the 9 digits `YYMMDDNNN`, weights 2,1,2,1…, against the last digit.
fn check_luhn(digits: &str, what: &str) -> Result<(), InvalidIdentifier> {
    let b = digits.as_bytes();
    let sum: u32 = b[2..11]
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(d - b'0') * if i % 2 == 0 { 2 } else { 1 };
            v / 10 + v % 10
        })
        .sum();
    let check = (10 - sum % 10) % 10;
    if u32::from(b[11] - b'0') == check {
        Ok(())
    } else {
        Err(invalid(format!("the {what}'s check digit is wrong (Luhn)")))
    }
}

/// An HSA-id: `SE` + 10-digit organisationsnummer + `-` + letters/digits, at most 31 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HsaId(String);

impl HsaId {
    pub fn parse(text: &str) -> Result<HsaId, InvalidIdentifier> {
        let b = text.as_bytes();
        let well_formed = b.len() <= 31
            && b.len() >= 14
            && text.starts_with("SE")
            && b[2..12].iter().all(u8::is_ascii_digit)
            && b[12] == b'-'
            && b[13..].iter().all(u8::is_ascii_alphanumeric);
        if well_formed {
            Ok(HsaId(text.to_owned()))
        } else {
            Err(invalid("an HSA-id is SE + 10-digit organisationsnummer + '-' + letters/digits, at most 31 characters"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The organisation the id belongs to (the 10 digits after `SE`).
    pub fn organisationsnummer(&self) -> &str {
        &self.0[2..12]
    }

    /// Whether `system` is one of the systems HSA-ids are sent with.
    pub fn is_hsa_system(system: &str) -> bool {
        system == HSA_ID_SYSTEM || HSA_ID_SYSTEM_ALIASES.contains(&system)
    }
}

impl fmt::Display for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The organisationsnummer of an HSA-id-shaped text, or the text itself when it
/// is not one (the key organisation binding compares).
pub fn organisation_key(hsa_id: &str) -> &str {
    match HsaId::parse(hsa_id) {
        Ok(_) => &hsa_id[2..12],
        Err(_) => hsa_id,
    }
}

/// An SCB kommunkod: four digits. Whether it names a known municipality is
/// checked against the reference data ([`crate::reference`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kommunkod(String);

impl Kommunkod {
    pub fn parse(text: &str) -> Result<Kommunkod, InvalidIdentifier> {
        if text.len() == 4 && text.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Kommunkod(text.to_owned()))
        } else {
            Err(invalid("a kommunkod has four digits (SCB), e.g. 1281"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_test_personnummer_is_valid_in_both_forms() {
        let a = PatientId::personnummer("191212121212").unwrap();
        let b = PatientId::personnummer("19121212-1212").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.value(), "191212121212");
        assert_eq!(a.system(), PERSONNUMMER_SYSTEM);
    }

    #[test]
    fn personnummer_rules_refuse_what_they_should() {
        for bad in ["191212121213", "19121212121", "1912121212125", "19121212+1212", "191213321212", "19121212121a"] {
            assert!(PatientId::personnummer(bad).is_err(), "{bad} accepted");
        }
        let e = PatientId::personnummer("191212121213").unwrap_err();
        assert!(e.0.contains("Luhn"), "{e}");
    }

    #[test]
    fn samordningsnummer_has_day_plus_sixty() {
        // 1912-12-12 as samordningsnummer: day 72; check digit recomputed by Luhn.
        let digits = "19121272121";
        let check = (0..10).find(|c| PatientId::samordningsnummer(&format!("{digits}{c}")).is_ok()).unwrap();
        let s = PatientId::samordningsnummer(&format!("{digits}{check}")).unwrap();
        assert_eq!(s.system(), SAMORDNINGSNUMMER_SYSTEM);
        assert!(PatientId::samordningsnummer("191212121212").unwrap_err().0.contains("61–91"));
        assert!(PatientId::personnummer(&format!("{digits}{check}")).is_err());
    }

    #[test]
    fn hsa_ids_have_form_and_length() {
        let h = HsaId::parse("SE2120001231-HSL1").unwrap();
        assert_eq!(h.organisationsnummer(), "2120001231");
        for bad in ["SE212000123-HSL1", "SE2120001231HSL1", "SE2120001231-", "se2120001231-X", "SE2120001231-HSL 1"] {
            assert!(HsaId::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(HsaId::parse(&format!("SE2120001231-{}", "A".repeat(18))).is_ok());
        assert!(HsaId::parse(&format!("SE2120001231-{}", "A".repeat(19))).is_err());
        assert_eq!(organisation_key("SE2321000255-0001"), "2321000255");
        assert_eq!(organisation_key("nara-gateway"), "nara-gateway");
        assert!(HsaId::is_hsa_system("https://hsaid.se"));
    }

    #[test]
    fn kommunkod_is_four_digits() {
        assert_eq!(Kommunkod::parse("1281").unwrap().as_str(), "1281");
        assert!(Kommunkod::parse("128").is_err());
        assert!(Kommunkod::parse("12a1").is_err());
    }
}
