//! Format checks for the FHIR R4 primitive types, written by hand after the
//! regular expressions and rules of <http://hl7.org/fhir/R4/datatypes.html>,
//! with real calendar checks for dates.

use crate::json::Value;

/// Strings (and markdown) longer than this are rejected.
pub(super) const MAX_STRING_BYTES: usize = 1024 * 1024;

/// The FHIR R4 primitive types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prim {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

/// Why a JSON value is not a valid primitive.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PrimError {
    /// The JSON type is wrong (string where a boolean belongs, …).
    JsonType { expected: &'static str },
    /// The JSON type is right but the content is not; the text says what is allowed.
    Invalid(&'static str),
}

impl Prim {
    pub(super) fn from_name(name: &str) -> Option<Prim> {
        Some(match name {
            "base64Binary" => Prim::Base64Binary,
            "boolean" => Prim::Boolean,
            "canonical" => Prim::Canonical,
            "code" => Prim::Code,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "decimal" => Prim::Decimal,
            "id" => Prim::Id,
            "instant" => Prim::Instant,
            "integer" => Prim::Integer,
            "markdown" => Prim::Markdown,
            "oid" => Prim::Oid,
            "positiveInt" => Prim::PositiveInt,
            "string" => Prim::String,
            "time" => Prim::Time,
            "unsignedInt" => Prim::UnsignedInt,
            "uri" => Prim::Uri,
            "url" => Prim::Url,
            "uuid" => Prim::Uuid,
            "xhtml" => Prim::Xhtml,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Prim::Base64Binary => "base64Binary",
            Prim::Boolean => "boolean",
            Prim::Canonical => "canonical",
            Prim::Code => "code",
            Prim::Date => "date",
            Prim::DateTime => "dateTime",
            Prim::Decimal => "decimal",
            Prim::Id => "id",
            Prim::Instant => "instant",
            Prim::Integer => "integer",
            Prim::Markdown => "markdown",
            Prim::Oid => "oid",
            Prim::PositiveInt => "positiveInt",
            Prim::String => "string",
            Prim::Time => "time",
            Prim::UnsignedInt => "unsignedInt",
            Prim::Uri => "uri",
            Prim::Url => "url",
            Prim::Uuid => "uuid",
            Prim::Xhtml => "xhtml",
        }
    }

    /// May this type carry extensions in a `_name` sibling? (Not xhtml.)
    pub(super) fn allows_extensions(self) -> bool {
        self != Prim::Xhtml
    }

    /// Checks one JSON value against this type.
    pub(super) fn check(self, v: &Value) -> Result<(), PrimError> {
        match self {
            Prim::Boolean => match v {
                Value::Bool(_) => Ok(()),
                _ => Err(PrimError::JsonType { expected: "a JSON boolean" }),
            },
            Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => {
                let Value::Number(n) = v else {
                    return Err(PrimError::JsonType { expected: "a JSON number" });
                };
                if !n.is_integer() {
                    return Err(PrimError::Invalid("a whole number without fraction or exponent"));
                }
                let Some(i) = n.as_i64().filter(|i| i32::try_from(*i).is_ok()) else {
                    return Err(PrimError::Invalid("a 32-bit integer"));
                };
                match self {
                    Prim::PositiveInt if i < 1 => Err(PrimError::Invalid("an integer ≥ 1")),
                    Prim::UnsignedInt if i < 0 => Err(PrimError::Invalid("an integer ≥ 0")),
                    _ => Ok(()),
                }
            }
            // The parser only accepts JSON number syntax, which is exactly R4's decimal grammar.
            Prim::Decimal => match v {
                Value::Number(_) => Ok(()),
                _ => Err(PrimError::JsonType { expected: "a JSON number" }),
            },
            _ => {
                let Value::String(s) = v else {
                    return Err(PrimError::JsonType { expected: "a JSON string" });
                };
                self.check_text(s)
            }
        }
    }

    fn check_text(self, s: &str) -> Result<(), PrimError> {
        use PrimError::Invalid;
        if s.is_empty() {
            return Err(Invalid("a non-empty string"));
        }
        let ok = match self {
            Prim::String | Prim::Markdown => {
                if s.len() > MAX_STRING_BYTES {
                    return Err(Invalid("at most 1 MiB of text"));
                }
                if s.chars().all(char::is_whitespace) {
                    return Err(Invalid("text that is not only whitespace"));
                }
                true
            }
            Prim::Code => is_code(s),
            Prim::Id => s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            Prim::Uri | Prim::Url | Prim::Canonical => !s.chars().any(char::is_whitespace),
            Prim::Oid => is_oid(s),
            Prim::Uuid => is_uuid(s),
            Prim::Base64Binary => is_base64(s),
            Prim::Instant => is_instant(s),
            Prim::DateTime => is_date_time(s),
            Prim::Date => is_date(s),
            Prim::Time => is_time(s.as_bytes()),
            Prim::Xhtml => is_xhtml_div(s),
            Prim::Boolean | Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt | Prim::Decimal => true,
        };
        if ok { Ok(()) } else { Err(Invalid(self.grammar())) }
    }

    /// What a valid value looks like, for messages.
    fn grammar(self) -> &'static str {
        match self {
            Prim::Code => "non-empty text without leading, trailing or double whitespace",
            Prim::Id => "1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
            Prim::Uri | Prim::Url | Prim::Canonical => "a URI without whitespace",
            Prim::Oid => "urn:oid: followed by a dotted OID such as 1.2.3",
            Prim::Uuid => "urn:uuid: followed by a lowercase UUID",
            Prim::Base64Binary => "base64 with correct padding",
            Prim::Instant => "YYYY-MM-DDThh:mm:ss(.sss) with a zone (Z or ±hh:mm)",
            Prim::DateTime => "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss) with a zone",
            Prim::Date => "YYYY, YYYY-MM or YYYY-MM-DD",
            Prim::Time => "hh:mm:ss(.sss)",
            Prim::Xhtml => "a <div> element with xmlns=\"http://www.w3.org/1999/xhtml\"",
            _ => "valid text",
        }
    }
}

/// `[^\s]+( [^\s]+)*`
fn is_code(s: &str) -> bool {
    !s.starts_with(' ') && !s.ends_with(' ') && !s.contains("  ") && !s.chars().any(|c| c.is_whitespace() && c != ' ')
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    if !matches!(parts.next(), Some("0" | "1" | "2")) {
        return false;
    }
    let mut count = 0;
    for p in parts {
        let b = p.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
        count += 1;
    }
    count > 0
}

/// `urn:uuid:` + 8-4-4-4-12 lowercase hex digits.
fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// base64 as R4 defines it: groups of four characters, whitespace allowed
/// between them (MIME-style line breaks are valid R4), padding correct.
fn is_base64(s: &str) -> bool {
    let b: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return false;
    }
    b[..b.len() - pad].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

fn is_xhtml_div(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("<div") else {
        return false;
    };
    if !rest.starts_with([' ', '\t', '\r', '\n', '>', '/']) {
        return false;
    }
    let tag_end = rest.find('>').unwrap_or(rest.len());
    let tag = &rest[..tag_end];
    (tag.contains("xmlns=\"http://www.w3.org/1999/xhtml\"") || tag.contains("xmlns='http://www.w3.org/1999/xhtml'"))
        && s.trim_end().ends_with('>')
}

/// Reads exactly `n` ASCII digits at `*pos`.
fn digits(b: &[u8], pos: &mut usize, n: usize) -> Option<u32> {
    let chunk = b.get(*pos..*pos + n)?;
    let mut v = 0;
    for &c in chunk {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    *pos += n;
    Some(v)
}

fn expect(b: &[u8], pos: &mut usize, c: u8) -> Option<()> {
    (b.get(*pos) == Some(&c)).then(|| *pos += 1)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a date prefix with at least `min_parts` parts (1 = YYYY, 3 = YYYY-MM-DD);
/// returns the position after it and how many parts were read.
fn date_prefix(b: &[u8], min_parts: u8) -> Option<(usize, u8)> {
    let mut pos = 0;
    let year = digits(b, &mut pos, 4)?;
    if year == 0 {
        return None;
    }
    if pos == b.len() || b[pos] != b'-' {
        return (min_parts <= 1).then_some((pos, 1));
    }
    pos += 1;
    let month = digits(b, &mut pos, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if pos == b.len() || b[pos] != b'-' {
        return (min_parts <= 2).then_some((pos, 2));
    }
    pos += 1;
    let day = digits(b, &mut pos, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some((pos, 3))
}

/// `hh:mm:ss(.fraction)?`; returns the length read.
fn time_prefix(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let h = digits(b, &mut pos, 2)?;
    expect(b, &mut pos, b':')?;
    let m = digits(b, &mut pos, 2)?;
    expect(b, &mut pos, b':')?;
    let s = digits(b, &mut pos, 2)?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        if pos == start {
            return None;
        }
    }
    Some(pos)
}

/// `Z` or `(+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)`, and nothing after it.
fn is_zone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [b'+' | b'-', rest @ ..] => {
            let mut pos = 0;
            let (Some(h), Some(()), Some(m)) =
                (digits(rest, &mut pos, 2), expect(rest, &mut pos, b':'), digits(rest, &mut pos, 2))
            else {
                return false;
            };
            pos == rest.len() && m <= 59 && (h <= 13 || (h == 14 && m == 0))
        }
        _ => false,
    }
}

fn is_time(b: &[u8]) -> bool {
    time_prefix(b) == Some(b.len())
}

fn is_date(s: &str) -> bool {
    date_prefix(s.as_bytes(), 1).is_some_and(|(end, _)| end == s.len())
}

fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let Some((end, parts)) = date_prefix(b, 1) else {
        return false;
    };
    if end == b.len() {
        return true;
    }
    parts == 3 && b[end] == b'T' && time_zone_rest(&b[end + 1..])
}

fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    let Some((end, 3)) = date_prefix(b, 3) else {
        return false;
    };
    b.get(end) == Some(&b'T') && time_zone_rest(&b[end + 1..])
}

fn time_zone_rest(b: &[u8]) -> bool {
    time_prefix(b).is_some_and(|n| is_zone(&b[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn dates_follow_the_calendar() {
        for ok in ["2024", "2024-02", "2024-02-29", "2000-02-29", "0001-01-01", "1999-12-31"] {
            assert_eq!(Prim::Date.check(&s(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-02-30",
            "2024-13",
            "2024-00",
            "2024-04-31",
            "0000",
            "24",
            "2024-1-01",
            "2024-01-01T10:00:00Z",
            "2024-",
        ] {
            assert!(Prim::Date.check(&s(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn date_times_need_seconds_and_zone_when_timed() {
        for ok in [
            "2024",
            "2024-03",
            "2024-03-01",
            "2024-03-01T10:00:00Z",
            "2024-03-01T23:59:60.123+14:00",
            "2024-03-01T00:00:00-05:30",
        ] {
            assert_eq!(Prim::DateTime.check(&s(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "2024-03-01T10:00Z",
            "2024-03-01T10:00:00",
            "2024-03-01T24:00:00Z",
            "2024-03-01T10:00:00+14:30",
            "2024-03-01T10:00:00.Z",
            "2024-03T10:00:00Z",
            "2024-03-01 10:00:00Z",
            "2024-03-01T10:00:00Zx",
        ] {
            assert!(Prim::DateTime.check(&s(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn instants_are_full_timestamps() {
        assert_eq!(Prim::Instant.check(&s("2015-02-07T13:28:17.239+02:00")), Ok(()));
        for bad in ["2015-02-07", "2015-02-07T13:28:17", "2015-02-07T13:28Z", "2015-02-30T13:28:17Z"] {
            assert!(Prim::Instant.check(&s(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_clock_times() {
        assert_eq!(Prim::Time.check(&s("09:30:00")), Ok(()));
        assert_eq!(Prim::Time.check(&s("23:59:59.5")), Ok(()));
        for bad in ["24:00:00", "09:30", "9:30:00", "09:60:00", "09:30:00Z"] {
            assert!(Prim::Time.check(&s(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_keep_their_ranges() {
        let n = |t: &str| Value::Number(crate::json::Number::parse(t).expect("number"));
        assert_eq!(Prim::Integer.check(&n("-2147483648")), Ok(()));
        assert!(Prim::Integer.check(&n("2147483648")).is_err());
        assert!(Prim::Integer.check(&n("1.0")).is_err());
        assert!(Prim::Integer.check(&n("1e2")).is_err());
        assert!(Prim::PositiveInt.check(&n("0")).is_err());
        assert_eq!(Prim::UnsignedInt.check(&n("0")), Ok(()));
        assert!(Prim::UnsignedInt.check(&n("-1")).is_err());
        assert_eq!(Prim::Decimal.check(&n("12.50")), Ok(()));
        assert_eq!(Prim::Decimal.check(&s("12.50")), Err(PrimError::JsonType { expected: "a JSON number" }));
        assert!(Prim::Boolean.check(&s("true")).is_err());
    }

    #[test]
    fn text_types_follow_their_grammars() {
        let cases: &[(Prim, &str, bool)] = &[
            (Prim::Code, "final", true),
            (Prim::Code, "two words", true),
            (Prim::Code, " final", false),
            (Prim::Code, "a  b", false),
            (Prim::Code, "a\tb", false),
            (Prim::Id, "abc-1.2", true),
            (Prim::Id, "abc_1", false),
            (Prim::Id, &"a".repeat(65), false),
            (Prim::Uri, "http://x/y", true),
            (Prim::Uri, "http://x/ y", false),
            (Prim::Oid, "urn:oid:1.2.840.10008", true),
            (Prim::Oid, "urn:oid:1.02", false),
            (Prim::Oid, "urn:oid:3.1", false),
            (Prim::Oid, "urn:oid:1", false),
            (Prim::Uuid, "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", true),
            (Prim::Uuid, "urn:uuid:C757873D-EC9A-4326-A141-556F43239520", false),
            (Prim::Uuid, "c757873d-ec9a-4326-a141-556f43239520", false),
            (Prim::Base64Binary, "aGVsbG8=", true),
            (Prim::Base64Binary, "aGVsbG8", false),
            (Prim::Base64Binary, "aGVs bG8=", true),
            (Prim::Base64Binary, "aGVs\r\nbG8=", true),
            (Prim::Base64Binary, "aGV bG8=", false),
            (Prim::Base64Binary, " ", false),
            (Prim::Base64Binary, "a===", false),
            (Prim::String, " ", false),
            (Prim::String, " x ", true),
            (Prim::Xhtml, "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", true),
            (Prim::Xhtml, "<div>x</div>", false),
            (Prim::Xhtml, "<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>", false),
        ];
        for (p, text, ok) in cases {
            assert_eq!(p.check(&s(text)).is_ok(), *ok, "{p:?} {text:?}");
        }
    }
}
