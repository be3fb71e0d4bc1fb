//! gochat's `createTime`: `YYYY-MM-DD HH:MM:SS` in UTC, computed from milliseconds
//! since the Unix epoch. Pure arithmetic (Howard Hinnant's days-to-civil), so it
//! never fails and needs no time-zone database.

/// Formats `ms` (milliseconds since the Unix epoch) as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn create_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::create_time;

    #[test]
    fn formats_known_instants() {
        assert_eq!(create_time(0), "1970-01-01 00:00:00");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(create_time(1_709_210_096_000), "2024-02-29 12:34:56");
        assert_eq!(create_time(1_798_761_599_999), "2026-12-31 23:59:59");
    }
}
