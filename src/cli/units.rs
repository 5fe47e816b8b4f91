//! Sizes and durations as operators write them on a command line.

use std::time::Duration;

/// The number and its one-letter unit, if any.
fn split_unit(s: &str) -> (&str, Option<char>) {
    let t = s.trim();
    match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], Some(c)),
        _ => (t, None),
    }
}

/// `64M`, `1G`, `512K`, `4096` (bytes); binary multiples, as logrotate's
/// `size` takes them.
pub fn size_arg(s: &str) -> Result<u64, String> {
    let (num, unit) = split_unit(s);
    let mult: u64 = match unit.map(|c| c.to_ascii_uppercase()) {
        None => 1,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        Some(_) => return Err(format!("{s:?}: the unit must be K, M, G or T")),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: write a number of bytes, or one with K, M, G or T (64M)")
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `90s`, `30m`, `24h`, `7d`, or plain seconds.
pub fn duration_arg(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_unit(s);
    let mult: u64 = match unit {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some('w') => 7 * 86_400,
        Some(_) => return Err(format!("{s:?}: the unit must be s, m, h, d or w")),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration: write seconds, or a number with s, m, h, d or w (24h)")
    })?;
    match n.checked_mul(mult) {
        Some(0) => Err(format!("{s:?}: a duration must be more than zero")),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{s:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(size_arg("4096"), Ok(4096));
        assert_eq!(size_arg("64M"), Ok(64 << 20));
        assert_eq!(size_arg("1g"), Ok(1 << 30));
        assert_eq!(size_arg("512K"), Ok(512 << 10));
        assert_eq!(size_arg("0"), Ok(0));
        assert!(size_arg("12X").unwrap_err().contains("K, M, G or T"));
        assert!(size_arg("M").unwrap_err().contains("is not a size"));
        assert!(size_arg("99999999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(duration_arg("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration_arg("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(duration_arg("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration_arg("7d"), Ok(Duration::from_secs(604_800)));
        assert!(duration_arg("0s").unwrap_err().contains("more than zero"));
        assert!(duration_arg("5y").unwrap_err().contains("s, m, h, d or w"));
        assert!(duration_arg("-1h").unwrap_err().contains("not a duration"));
    }
}
