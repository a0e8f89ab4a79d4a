//! Parsers for FHIR search values (dates with prefixes, numbers, tokens,
//! escaped lists) and the helpers shared with index extraction: the date
//! arithmetic (epoch milliseconds, UTC) and string normalisation.
//!
//! Dates and times without a zone are read as UTC. (FHIR leaves the zone of
//! such values to the server; the gateway's is UTC.)

/// A search prefix (`eq` when none is written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    fn from_code(code: &str) -> Option<Prefix> {
        Some(match code {
            "eq" => Prefix::Eq,
            "ne" => Prefix::Ne,
            "gt" => Prefix::Gt,
            "lt" => Prefix::Lt,
            "ge" => Prefix::Ge,
            "le" => Prefix::Le,
            "sa" => Prefix::Sa,
            "eb" => Prefix::Eb,
            "ap" => Prefix::Ap,
            _ => return None,
        })
    }
}

/// Splits a leading two-letter prefix off a date or number value.
fn split_prefix(s: &str) -> Result<(Prefix, &str), String> {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1].is_ascii_alphabetic() {
        let code = &s[..2];
        let prefix = Prefix::from_code(code)
            .ok_or_else(|| format!("unknown prefix '{code}' (expected eq, ne, gt, lt, ge, le, sa, eb or ap)"))?;
        return Ok((prefix, &s[2..]));
    }
    if b.first().is_some_and(u8::is_ascii_alphabetic) {
        return Err(format!("'{s}' does not start with a valid prefix or value"));
    }
    Ok((Prefix::Eq, s))
}

/// Parses a date search value: optional two-letter prefix, then YYYY,
/// YYYY-MM, YYYY-MM-DD, or a dateTime with optional seconds/fraction and
/// optional zone (no zone = UTC). Returns the prefix and the inclusive
/// millisecond range the value covers.
pub fn parse_date(s: &str) -> Result<(Prefix, i64, i64), String> {
    let (prefix, rest) = split_prefix(s)?;
    let (low, high) = parse_date_time(rest)?;
    Ok((prefix, low, high))
}

/// The inclusive range, in ms since the Unix epoch, of a FHIR date,
/// dateTime or instant (partial dates cover their whole period; a time
/// without zone is UTC). `None` when it is not a valid date.
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    parse_date_time(s).ok()
}

const MS_PER_DAY: i64 = 86_400_000;

fn parse_date_time(s: &str) -> Result<(i64, i64), String> {
    let mut c = Cursor { s: s.as_bytes(), pos: 0 };
    let bad = |what: &str| format!("invalid date '{s}': {what}");
    if s.is_empty() {
        return Err("empty date value".into());
    }
    let year = c.digits(4).ok_or_else(|| bad("expected a four-digit year"))?;
    if year == 0 {
        return Err(bad("year 0000 does not exist"));
    }
    if c.done() {
        let low = days_from_civil(year, 1, 1) * MS_PER_DAY;
        return Ok((low, days_from_civil(year + 1, 1, 1) * MS_PER_DAY - 1));
    }
    c.expect(b'-').ok_or_else(|| bad("expected '-' after the year"))?;
    let month = c.digits(2).filter(|m| (1..=12).contains(m)).ok_or_else(|| bad("month must be 01-12"))?;
    if c.done() {
        let low = days_from_civil(year, month, 1) * MS_PER_DAY;
        let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        return Ok((low, days_from_civil(ny, nm, 1) * MS_PER_DAY - 1));
    }
    c.expect(b'-').ok_or_else(|| bad("expected '-' after the month"))?;
    let day = c.digits(2).ok_or_else(|| bad("expected a two-digit day"))?;
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad(&format!("{year:04}-{month:02} has no day {day:02}")));
    }
    let day_start = days_from_civil(year, month, day) * MS_PER_DAY;
    if c.done() {
        return Ok((day_start, day_start + MS_PER_DAY - 1));
    }
    c.expect(b'T').ok_or_else(|| bad("expected 'T' before the time"))?;
    let hour = c.digits(2).filter(|h| *h < 24).ok_or_else(|| bad("hour must be 00-23"))?;
    c.expect(b':').ok_or_else(|| bad("expected ':' after the hour"))?;
    let minute = c.digits(2).filter(|m| *m < 60).ok_or_else(|| bad("minute must be 00-59"))?;
    let mut start = day_start + (hour * 60 + minute) * 60_000;
    let mut width = 60_000; // precision of the value, in ms
    if c.expect(b':').is_some() {
        // 60 is allowed by FHIR for a leap second; it is read as :59.
        let second = c.digits(2).filter(|s| *s <= 60).ok_or_else(|| bad("second must be 00-59"))?;
        start += second.min(59) * 1000;
        width = 1000;
        if c.expect(b'.').is_some() {
            let (ms, digits) = c.fraction().ok_or_else(|| bad("expected digits after '.'"))?;
            start += ms;
            width = match digits {
                1 => 100,
                2 => 10,
                _ => 1,
            };
        }
    }
    let offset_min = if c.done() || c.expect(b'Z').is_some() {
        0 // no zone (read as UTC) or Z
    } else {
        let sign = match c.next() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad("expected a zone (Z or +hh:mm)")),
        };
        let zh = c.digits(2).filter(|h| *h <= 14).ok_or_else(|| bad("zone hour must be 00-14"))?;
        c.expect(b':').ok_or_else(|| bad("expected ':' in the zone"))?;
        let zm = c.digits(2).filter(|m| *m < 60).ok_or_else(|| bad("zone minute must be 00-59"))?;
        sign * (zh * 60 + zm)
    };
    if !c.done() {
        return Err(bad("unexpected text after the value"));
    }
    let low = start - offset_min * 60_000;
    Ok((low, low + width - 1))
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.pos == self.s.len()
    }
    fn next(&mut self) -> Option<u8> {
        let b = *self.s.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn expect(&mut self, want: u8) -> Option<()> {
        (self.s.get(self.pos) == Some(&want)).then(|| self.pos += 1)
    }
    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let chunk = self.s.get(self.pos..self.pos + n)?;
        if !chunk.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(chunk.iter().fold(0, |acc, b| acc * 10 + i64::from(b - b'0')))
    }
    /// A decimal fraction: its value in whole ms (digits past the third are
    /// dropped) and how many digits were written.
    fn fraction(&mut self) -> Option<(i64, usize)> {
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let digits = &self.s[start..self.pos];
        if digits.is_empty() {
            return None;
        }
        let ms = (0..3).fold(0, |acc, i| acc * 10 + digits.get(i).map_or(0, |b| i64::from(b - b'0')));
        Some((ms, digits.len()))
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats ms since the Unix epoch as a FHIR instant, `YYYY-MM-DDThh:mm:ss.sssZ`.
pub fn format_instant(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, frac) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
}

/// A token search value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenQuery {
    /// `code`: the code in any system (or none).
    Code(String),
    /// `system|code`.
    SystemCode(String, String),
    /// `|code`: the code with no system.
    NoSystemCode(String),
    /// `system|`: any code in the system.
    System(String),
}

/// Parses a token search value (one of an OR list), undoing FHIR search
/// escaping (`\|`, `\,`, `\$`, `\\`).
pub fn parse_token(s: &str) -> Result<TokenQuery, String> {
    let parts = split_escaped(s, '|');
    let parts: Vec<String> = parts.iter().map(|p| unescape_strict(p)).collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [code] if code.is_empty() => Err("empty token value".into()),
        [code] => Ok(TokenQuery::Code(code.clone())),
        [system, code] => match (system.is_empty(), code.is_empty()) {
            (true, true) => Err("token value '|' has neither system nor code".into()),
            (true, false) => Ok(TokenQuery::NoSystemCode(code.clone())),
            (false, true) => Ok(TokenQuery::System(system.clone())),
            (false, false) => Ok(TokenQuery::SystemCode(system.clone(), code.clone())),
        },
        _ => Err(format!("token value '{s}' has more than one unescaped '|' (escape it as \\|)")),
    }
}

/// Splits a parameter value on unescaped commas (OR semantics). Escapes are
/// kept in the parts, so `\|` still means a literal pipe to [`parse_token`];
/// use [`unescape`] on values that are not parsed further.
pub fn split_or(s: &str) -> Vec<String> {
    split_escaped(s, ',')
}

/// Splits `s` on `sep` where it is not escaped by a backslash; escapes stay in the parts.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        let cur = parts.last_mut().expect("never empty");
        if ch == '\\' {
            cur.push(ch);
            if let Some(next) = chars.next() {
                cur.push(next);
            }
        } else if ch == sep {
            parts.push(String::new());
        } else {
            cur.push(ch);
        }
    }
    parts
}

/// Undoes FHIR search escaping (`\|`, `\,`, `\$`, `\\`); any other
/// backslash is kept as written.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, chars.peek()) {
            ('\\', Some(&n @ ('|' | ',' | '$' | '\\'))) => {
                out.push(n);
                chars.next();
            }
            _ => out.push(ch),
        }
    }
    out
}

fn unescape_strict(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' && !matches!(chars.next(), Some('|' | ',' | '$' | '\\')) {
            return Err(format!("invalid escape in '{s}' (only \\| \\, \\$ \\\\ are allowed)"));
        }
    }
    Ok(unescape(s))
}

/// Parses a number search value: optional prefix, then a decimal
/// (`-12.50`, `1e3`). Returns the prefix, the value and its text as written
/// (the text carries the precision the search implies).
pub fn parse_number(s: &str) -> Result<(Prefix, f64, String), String> {
    let (prefix, text) = split_prefix(s)?;
    if !is_decimal(text) {
        return Err(format!("'{text}' is not a number"));
    }
    let value: f64 = text.parse().map_err(|_| format!("'{text}' is not a number"))?;
    if !value.is_finite() {
        return Err(format!("'{text}' is out of range"));
    }
    Ok((prefix, value, text.to_owned()))
}

/// `-?digits(.digits)?([eE][+-]?digits)?`
fn is_decimal(s: &str) -> bool {
    let b = s.strip_prefix('-').unwrap_or(s).as_bytes();
    let int = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if int == 0 {
        return false;
    }
    let mut i = int;
    if b.get(i) == Some(&b'.') {
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return false;
        }
        i += 1 + frac;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}

/// Normalises a string for matching: lowercased, accents and other
/// diacritics removed (`å`→`a`, `ö`→`o`, `ß`→`ss`, `æ`→`ae`; Latin-1
/// Supplement and Latin Extended-A, plus combining marks), whitespace and
/// control characters collapsed to single spaces and trimmed (so a query's
/// value never holds [`super::extract::TEXT_SEPARATOR`]). Used for index values and query
/// values alike.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for ch in s.chars() {
        if ch.is_whitespace() || ch.is_control() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        if ch.is_ascii() {
            out.push(ch.to_ascii_lowercase());
            continue;
        }
        for lc in ch.to_lowercase() {
            if ('\u{300}'..='\u{36f}').contains(&lc) {
                continue; // combining diacritical mark
            }
            match fold(lc) {
                Some(plain) => out.push_str(plain),
                None => out.push(lc),
            }
        }
    }
    out
}

/// The unaccented form of a lowercase Latin-1 Supplement / Latin Extended-A letter.
fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĳ' => "ij",
        'ĵ' => "j",
        'ķ' | 'ĸ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'ŉ' | 'ŋ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'ſ' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        // Independent of the parser: only whole-second UTC instants.
        let (y, rest) = text.split_at(4);
        let p = |s: &str| s.parse::<i64>().unwrap();
        let (mo, d, h, mi, s) = (p(&rest[1..3]), p(&rest[4..6]), p(&rest[7..9]), p(&rest[10..12]), p(&rest[13..15]));
        ((days_from_civil(p(y), mo, d) * 24 + h) * 60 + mi) * 60_000 + s * 1000
    }

    #[test]
    fn epoch_day_arithmetic_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for d in [-800_000, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn year_month_and_day_cover_their_whole_period() {
        assert_eq!(date_range("2024"), Some((ms("2024-01-01T00:00:00"), ms("2025-01-01T00:00:00") - 1)));
        assert_eq!(date_range("2024-02"), Some((ms("2024-02-01T00:00:00"), ms("2024-02-29T23:59:59") + 999)));
        assert_eq!(date_range("2023-02"), Some((ms("2023-02-01T00:00:00"), ms("2023-02-28T23:59:59") + 999)));
        assert_eq!(date_range("2023-12"), Some((ms("2023-12-01T00:00:00"), ms("2024-01-01T00:00:00") - 1)));
        assert_eq!(date_range("2024-04-30"), Some((ms("2024-04-30T00:00:00"), ms("2024-05-01T00:00:00") - 1)));
    }

    #[test]
    fn leap_days_follow_the_gregorian_rules() {
        assert!(date_range("2024-02-29").is_some());
        assert!(date_range("2000-02-29").is_some());
        assert!(date_range("1900-02-29").is_none());
        assert!(date_range("2023-02-29").is_none());
        assert_eq!(format_instant(date_range("2000-02-29").unwrap().0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn rejects_invalid_dates_with_a_message_naming_the_problem() {
        let err = parse_date("2024-02-30").unwrap_err();
        assert!(err.contains("has no day 30"), "{err}");
        assert!(parse_date("2024-13").unwrap_err().contains("month"));
        assert!(parse_date("2024-04-31").is_err());
        assert!(parse_date("2024-01-01T24:00:00Z").unwrap_err().contains("hour"));
        assert!(parse_date("2024-01-01T10:61Z").unwrap_err().contains("minute"));
        assert!(parse_date("2024-01-01T10:00:00+15:00").unwrap_err().contains("zone"));
        assert!(parse_date("24-01-01").is_err());
        assert!(parse_date("0000").is_err());
        assert!(parse_date("2024-1-1").is_err());
        assert!(parse_date("2024-01-01T10:00:00.Z").is_err());
        assert!(parse_date("2024-01-01 10:00").is_err());
        assert!(parse_date("2024-01-01T10:00:00Zjunk").is_err());
        assert!(parse_date("").is_err());
        assert!(parse_date("ge").is_err());
    }

    #[test]
    fn every_prefix_is_recognised_and_unknown_ones_are_rejected() {
        for (text, prefix) in [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ] {
            assert_eq!(parse_date(&format!("{text}2024")).unwrap().0, prefix);
            assert_eq!(parse_number(&format!("{text}5")).unwrap().0, prefix);
        }
        assert_eq!(parse_date("2024").unwrap().0, Prefix::Eq);
        let err = parse_date("xx2024").unwrap_err();
        assert!(err.contains("unknown prefix 'xx'"), "{err}");
        assert!(parse_date("GE2024").is_err());
        assert!(parse_date("g2024").is_err());
    }

    #[test]
    fn zones_shift_to_utc_and_no_zone_means_utc() {
        let (_, z_lo, _) = parse_date("2024-03-01T10:00:00Z").unwrap();
        let (_, plus_lo, _) = parse_date("2024-03-01T10:00:00+01:00").unwrap();
        let (_, minus_lo, _) = parse_date("2024-03-01T10:00:00-05:30").unwrap();
        let (_, none_lo, _) = parse_date("2024-03-01T10:00:00").unwrap();
        assert_eq!(plus_lo, z_lo - 3_600_000);
        assert_eq!(minus_lo, z_lo + 5 * 3_600_000 + 30 * 60_000);
        assert_eq!(none_lo, z_lo);
        // A zone can move the instant to another day.
        assert_eq!(format_instant(parse_date("2024-01-01T00:30:00+01:00").unwrap().2), "2023-12-31T23:30:00.999Z");
    }

    #[test]
    fn time_precision_sets_the_width_of_the_range() {
        let base = ms("2024-03-01T10:15:00");
        assert_eq!(parse_date("2024-03-01T10:15Z").unwrap(), (Prefix::Eq, base, base + 59_999));
        assert_eq!(parse_date("2024-03-01T10:15:07Z").unwrap(), (Prefix::Eq, base + 7000, base + 7999));
        assert_eq!(parse_date("2024-03-01T10:15:07.5Z").unwrap(), (Prefix::Eq, base + 7500, base + 7599));
        assert_eq!(parse_date("2024-03-01T10:15:07.25Z").unwrap(), (Prefix::Eq, base + 7250, base + 7259));
        assert_eq!(parse_date("2024-03-01T10:15:07.123Z").unwrap(), (Prefix::Eq, base + 7123, base + 7123));
        assert_eq!(parse_date("2024-03-01T10:15:07.123456Z").unwrap(), (Prefix::Eq, base + 7123, base + 7123));
    }

    #[test]
    fn formats_instants_including_before_1970() {
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_instant(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_instant(ms("2024-02-29T12:34:56") + 7), "2024-02-29T12:34:56.007Z");
        let (lo, hi) = date_range("1912-06-23T04:05:06.789Z").unwrap();
        assert_eq!((format_instant(lo), lo), (String::from("1912-06-23T04:05:06.789Z"), hi));
    }

    #[test]
    fn token_forms_and_escapes() {
        assert_eq!(parse_token("abc").unwrap(), TokenQuery::Code("abc".into()));
        assert_eq!(
            parse_token("http://loinc.org|1234-5").unwrap(),
            TokenQuery::SystemCode("http://loinc.org".into(), "1234-5".into())
        );
        assert_eq!(parse_token("|x").unwrap(), TokenQuery::NoSystemCode("x".into()));
        assert_eq!(parse_token("urn:oid:1.2|").unwrap(), TokenQuery::System("urn:oid:1.2".into()));
        assert_eq!(parse_token(r"a\|b").unwrap(), TokenQuery::Code("a|b".into()));
        assert_eq!(parse_token(r"s|a\,b\$c\\d").unwrap(), TokenQuery::SystemCode("s".into(), r"a,b$c\d".into()));
        assert!(parse_token("").is_err());
        assert!(parse_token("|").is_err());
        assert!(parse_token("a|b|c").unwrap_err().contains("more than one"));
        assert!(parse_token(r"a\xb").unwrap_err().contains("invalid escape"));
    }

    #[test]
    fn splits_or_lists_on_unescaped_commas_only() {
        assert_eq!(split_or("a,b"), ["a", "b"]);
        assert_eq!(split_or(r"a\,b,c"), [r"a\,b", "c"]);
        assert_eq!(split_or(r"a\\,b"), [r"a\\", "b"]);
        assert_eq!(split_or("a,"), ["a", ""]);
        assert_eq!(split_or(""), [""]);
        assert_eq!(unescape(r"a\,b\\c\d"), r"a,b\c\d");
        let parts: Vec<_> = split_or(r"s|a\,b,t|c").iter().map(|p| parse_token(p).unwrap()).collect();
        assert_eq!(parts[0], TokenQuery::SystemCode("s".into(), "a,b".into()));
    }

    #[test]
    fn parses_numbers_keeping_their_text() {
        assert_eq!(parse_number("12.50").unwrap(), (Prefix::Eq, 12.5, "12.50".into()));
        assert_eq!(parse_number("gt-1e3").unwrap(), (Prefix::Gt, -1000.0, "-1e3".into()));
        for bad in ["", "1.", ".5", "1e", "abc", "1,5", "+1", "1e999", "lt"] {
            assert!(parse_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalises_swedish_letters_case_and_whitespace() {
        assert_eq!(normalize_string("Tolvansson"), "tolvansson");
        assert_eq!(normalize_string("Åsa  Öberg\tÄngström"), "asa oberg angstrom");
        assert_eq!(normalize_string("  Müller-Lüdenscheidt "), "muller-ludenscheidt");
        assert_eq!(normalize_string("Straße Æbeltoft Łódź Œuvre Þór"), "strasse aebeltoft lodz oeuvre thor");
        assert_eq!(normalize_string("Ele\u{301}onore"), "eleonore"); // decomposed é
        assert_eq!(normalize_string("İSTANBUL"), "istanbul");
        assert_eq!(normalize_string("Σοφία"), "σοφία");
        assert_eq!(normalize_string(""), "");
        assert_eq!(normalize_string("a\u{1f}b\u{0}\u{7f}c"), "a b c"); // control characters are spaces
    }
}
