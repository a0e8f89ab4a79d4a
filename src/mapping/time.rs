//! Dates and times of the push formats: RFC 3339 with offset, or RIV-TA
//! `YYYYMMDDhhmmss` meaning Swedish local time, converted to FHIR `dateTime`
//! with the offset that was in force (CET `+01:00` or CEST `+02:00`).
//!
//! Swedish summer time, as the EU rule since 1996 and Sweden's rule of
//! 1980–1995 define it: from 01:00 UTC on the last Sunday of March to 01:00
//! UTC on the last Sunday of October (September until 1995); no summer time
//! before 1980. A local time in the spring gap does not exist and is refused;
//! a local time in the repeated autumn hour is read as the first of the two
//! (summer time), as RIV-TA producers write the time they observed first.

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeDelta, Weekday};

/// `YYYY-MM-DD` or `YYYYMMDD` → `YYYY-MM-DD`.
pub fn date(s: &str) -> Result<String, String> {
    let parsed = match s.len() {
        10 => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
        8 if s.bytes().all(|b| b.is_ascii_digit()) => NaiveDate::parse_from_str(s, "%Y%m%d").ok(),
        _ => None,
    };
    match parsed {
        Some(d) if d.year() >= 1800 => Ok(d.format("%Y-%m-%d").to_string()),
        _ => Err("must be a date, YYYY-MM-DD or YYYYMMDD".into()),
    }
}

/// RFC 3339 with offset (kept as written) or RIV-TA `YYYYMMDDhhmmss` (Europe/Stockholm) → FHIR `dateTime`.
pub fn date_time(s: &str) -> Result<String, String> {
    if s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()) {
        let local = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S")
            .map_err(|_| "is not a valid time (YYYYMMDDhhmmss)".to_owned())?;
        let offset = stockholm_offset_hours(local)?;
        return Ok(format!("{}+0{offset}:00", local.format("%Y-%m-%dT%H:%M:%S")));
    }
    // FHIR dateTime needs seconds and an offset when a time is given; RFC 3339 has both.
    let well_formed = s.len() >= 20 && s.as_bytes()[10] == b'T' && chrono::DateTime::parse_from_rfc3339(s).is_ok();
    if well_formed {
        Ok(s.to_owned())
    } else {
        Err("must be a time: RFC 3339 with offset (2025-11-21T10:15:00+01:00) or YYYYMMDDhhmmss".into())
    }
}

fn last_sunday(year: i32, month: u32) -> NaiveDate {
    let first_next =
        if month == 12 { NaiveDate::from_ymd_opt(year + 1, 1, 1) } else { NaiveDate::from_ymd_opt(year, month + 1, 1) }
            .unwrap_or_default();
    let last = first_next.pred_opt().unwrap_or_default();
    let back = last.weekday().num_days_from_sunday();
    last - TimeDelta::days(i64::from(back))
}

/// Whether summer time is in force at `utc`.
fn summer_time_at(utc: NaiveDateTime) -> bool {
    let year = utc.year();
    if year < 1980 {
        return false;
    }
    let end_month = if year <= 1995 { 9 } else { 10 };
    let start = last_sunday(year, 3).and_hms_opt(1, 0, 0).unwrap_or_default();
    let end = last_sunday(year, end_month).and_hms_opt(1, 0, 0).unwrap_or_default();
    debug_assert_eq!(start.weekday(), Weekday::Sun);
    start <= utc && utc < end
}

/// The UTC offset (hours) of a Swedish local time.
fn stockholm_offset_hours(local: NaiveDateTime) -> Result<u8, String> {
    let summer = summer_time_at(local - TimeDelta::hours(2));
    let winter = !summer_time_at(local - TimeDelta::hours(1));
    match (summer, winter) {
        (true, _) => Ok(2),
        (false, true) => Ok(1),
        (false, false) => Err("does not exist in Swedish local time (the hour skipped when summer time starts)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riv_times_get_the_swedish_offset_of_their_date() {
        assert_eq!(date_time("20251121143000").unwrap(), "2025-11-21T14:30:00+01:00");
        assert_eq!(date_time("20250715080000").unwrap(), "2025-07-15T08:00:00+02:00");
        // 2025: summer time from 30 March 02:00 local to 26 October 03:00 local.
        assert_eq!(date_time("20250330015959").unwrap(), "2025-03-30T01:59:59+01:00");
        assert!(date_time("20250330023000").unwrap_err().contains("skipped"));
        assert_eq!(date_time("20250330030000").unwrap(), "2025-03-30T03:00:00+02:00");
        assert_eq!(date_time("20251026023000").unwrap(), "2025-10-26T02:30:00+02:00");
        assert_eq!(date_time("20251026030000").unwrap(), "2025-10-26T03:00:00+01:00");
        // Until 1995 summer time ended in September; none before 1980.
        assert_eq!(date_time("19950930120000").unwrap(), "1995-09-30T12:00:00+01:00");
        assert_eq!(date_time("19960930120000").unwrap(), "1996-09-30T12:00:00+02:00");
        assert_eq!(date_time("19790701120000").unwrap(), "1979-07-01T12:00:00+01:00");
    }

    #[test]
    fn rfc3339_is_kept_and_other_forms_refused() {
        assert_eq!(date_time("2025-11-21T10:15:00+01:00").unwrap(), "2025-11-21T10:15:00+01:00");
        assert_eq!(date_time("2025-11-21T10:15:00.250Z").unwrap(), "2025-11-21T10:15:00.250Z");
        for bad in ["2025-11-21T10:15:00", "2025-11-21 10:15:00+01:00", "20251321143000", "2025-11-21", "yesterday"] {
            assert!(date_time(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn dates_in_both_forms() {
        assert_eq!(date("20260131").unwrap(), "2026-01-31");
        assert_eq!(date("2026-01-31").unwrap(), "2026-01-31");
        assert!(date("2026-02-30").is_err());
        assert!(date("2026131").is_err());
    }
}
