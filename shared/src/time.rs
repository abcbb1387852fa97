//! Instants and spans of time as people read them, the same in the
//! daemon's messages and the CLI's output.

/// RFC 3339 in UTC, e.g. `2026-11-28T17:30:00Z`, from Unix seconds.
pub fn utc(at: i64) -> String {
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A span of milliseconds in the largest units that matter: `13d 4h`,
/// `5h 10m`, `42m`, `9s`; a negative span is `0s`.
pub fn span(ms: i64) -> String {
    let mins = ms.max(0) / 60_000;
    let (days, hours, mins) = (mins / 1440, mins / 60 % 24, mins % 60);
    match (days, hours) {
        (0, 0) if mins == 0 => format!("{}s", ms.max(0) / 1000),
        (0, 0) => format!("{mins}m"),
        (0, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn spans_read_in_the_largest_units_that_matter() {
        assert_eq!(span(9_400), "9s");
        assert_eq!(span(42 * 60_000 + 5_000), "42m");
        assert_eq!(span((5 * 60 + 10) * 60_000), "5h 10m");
        assert_eq!(span((13 * 24 + 4) * 3_600_000), "13d 4h");
        assert_eq!(span(-5), "0s");
    }
}
