//! Time: an injectable clock (so deletion windows, rotation periods and import
//! expiry can be tested without waiting days) and RFC 3339 formatting in UTC.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const DAY: i64 = 86_400;

pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock tests move by hand.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(t: i64) -> Self {
        ManualClock(AtomicI64::new(t))
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-29T18:05:03Z`
pub fn rfc3339(t: i64) -> String {
    let (y, mo, d) = civil_from_days(t.div_euclid(DAY));
    let s = t.rem_euclid(DAY);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// A time relative to `now`, as journalctl takes them: `now`, `today`,
/// `yesterday`, `tomorrow` (midnight UTC), `-1h`, `+30m`, `-2d`, `-1w`, and
/// `2h ago`. `None` for anything else (an absolute time, see `parse_time`).
pub fn parse_relative(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    let midnight = now.div_euclid(DAY) * DAY;
    match s {
        "now" => return Some(now),
        "today" => return Some(midnight),
        "yesterday" => return Some(midnight - DAY),
        "tomorrow" => return Some(midnight + DAY),
        _ => {}
    }
    let (sign, rest) = if let Some(r) = s.strip_prefix('-') {
        (-1, r)
    } else if let Some(r) = s.strip_prefix('+') {
        (1, r)
    } else if let Some(r) = s.strip_suffix(" ago") {
        (-1, r.trim())
    } else {
        return None;
    };
    let split = rest.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = rest[..split].parse().ok()?;
    let unit = match rest[split..].trim() {
        "s" | "sec" | "second" | "seconds" => 1,
        "m" | "min" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => DAY,
        "w" | "week" | "weeks" => 7 * DAY,
        _ => return None,
    };
    now.checked_add(sign * n.checked_mul(unit)?)
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` (fractions and a numeric offset
/// allowed) or a bare number of Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut t = days_from_civil(y, mo, d) * DAY;
    if b.len() == 10 {
        return Some(t);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    t += num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    match rest {
        "Z" | "z" | "" => Some(t),
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest[1..].split_once(':')?;
            // Checked: an offset of absurd hours must not overflow.
            let off = h
                .parse::<i64>()
                .ok()?
                .checked_mul(3600)?
                .checked_add(m.parse::<i64>().ok()?.checked_mul(60)?)?;
            t.checked_sub(off.checked_mul(sign)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_061_903), "2026-11-30T18:05:03Z");
    }

    #[test]
    fn parse_round_trips() {
        for t in [0, 951_782_400, 1_796_061_903, 4_102_444_799] {
            assert_eq!(parse_time(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_time("2000-02-29"), Some(951_782_400));
        assert_eq!(parse_time("2000-02-29T01:00:00+01:00"), Some(951_782_400));
        assert_eq!(parse_time("2000-02-29T00:00:00.123Z"), Some(951_782_400));
        assert_eq!(parse_time("12345"), Some(12345));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2000-13-01"), None);
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 1_764_680_000; // 2025-12-02T12:53:20Z
        let midnight = 1_764_633_600;
        assert_eq!(parse_relative("now", now), Some(now));
        assert_eq!(parse_relative("today", now), Some(midnight));
        assert_eq!(parse_relative("yesterday", now), Some(midnight - DAY));
        assert_eq!(parse_relative("-1h", now), Some(now - 3600));
        assert_eq!(parse_relative("+30m", now), Some(now + 1800));
        assert_eq!(parse_relative("-2d", now), Some(now - 2 * DAY));
        assert_eq!(parse_relative("2h ago", now), Some(now - 7200));
        assert_eq!(parse_relative("90 seconds ago", now), Some(now - 90));
        assert_eq!(parse_relative("-1w", now), Some(now - 7 * DAY));
        assert_eq!(parse_relative("-1y", now), None);
        assert_eq!(parse_relative("2026-01-01", now), None);
        assert_eq!(parse_relative("-99999999999999999w", now), None);
    }
}
