//! Go-style durations (`720h`, `6h`, `30m`, `10s`, `1h30m`, `1.5h`, `500ms`), plus `d` for days, as the
//! seed's `niks3 gc --older-than=720h` flags take them.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (examples: 720h, 30d, 6h, 1h30m, 10s)")]
pub struct DurationError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Go-style duration: one or more `<number><unit>` with units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`;
/// numbers may have a fraction. `0` alone is allowed. Negative or overflowing durations are rejected.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_owned(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.starts_with('-') {
        return Err(err("negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err("expected a number"));
        }
        let value: f64 = num.parse().map_err(|_| err("expected a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    // About 292 years: beyond this chrono cannot subtract it from a timestamp anyway.
    if !total.is_finite() || total > 9.2e9 {
        return Err(err("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_durations_and_days() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_duration("720h"), Ok(h(720)));
        assert_eq!(parse_duration("6h"), Ok(h(6)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_mins(30)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("30d"), Ok(h(720)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_mins(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_mins(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2h "), Ok(h(2)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("720", "missing unit"),
            ("-5m", "negative"),
            ("5x", "unknown unit"),
            ("h", "expected a number"),
            ("1..5h", "expected a number"),
            ("5 m", "unknown unit"),
            ("99999999999999d", "too large"),
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert_eq!(e.reason, reason, "{bad:?}");
            assert!(e.to_string().contains("720h"), "the message shows examples: {e}");
        }
    }
}
