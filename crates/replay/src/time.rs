//! Times on the command line and in exports: RFC 3339 in UTC with
//! milliseconds, or a Unix time in milliseconds, as the `time` crate reads
//! and writes them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// A `--since`/`--until` argument: RFC 3339 (any offset) or Unix milliseconds.
pub fn parse_arg(text: &str) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large for a Unix time in milliseconds"));
    }
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        format!("{text:?} is neither RFC 3339 (such as 2026-11-29T10:00:00Z) nor Unix milliseconds: {e}")
    })?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{text:?} is out of range"))
}

/// `unix_ms` as RFC 3339 in UTC with milliseconds (`2026-11-29T10:00:00.123Z`).
pub fn rfc3339(unix_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.format(&format).unwrap_or_else(|_| unix_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_or_unix_ms_and_print_with_ms() {
        assert_eq!(parse_arg("1764410400123"), Ok(1_764_410_400_123));
        assert_eq!(parse_arg("2025-11-29T10:00:00.123Z"), Ok(1_764_410_400_123));
        assert_eq!(parse_arg("2025-11-29T11:00:00.123+01:00"), Ok(1_764_410_400_123), "offsets count");
        assert_eq!(rfc3339(1_764_410_400_123), "2025-11-29T10:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        for bad in ["", "yesterday", "2025-11-29", "-5", "99999999999999999999"] {
            assert!(parse_arg(bad).is_err(), "{bad:?}");
        }
    }
}
