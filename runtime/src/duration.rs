//! The one duration grammar of every option: `250` (milliseconds), `250ms`, `2s`.
//!
//! Used by `--trigger interval:…`, `gpio:…,debounce=…` and `--on …,pulse=…`, so a value that is
//! accepted in one place is accepted in all of them.

use std::time::Duration;

/// Parse `N` (milliseconds), `Nms` or `Ns` with a non-negative integer `N`; `None` otherwise or
/// on overflow.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let v = s.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else {
        (v, 1)
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(scale).map(Duration::from_millis)
}

/// The grammar, for error messages.
pub const DURATION_HELP: &str = "a duration such as 200, 200ms or 2s";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250"), Some(ms(250)));
        assert_eq!(parse_duration("250ms"), Some(ms(250)));
        assert_eq!(parse_duration(" 2s "), Some(ms(2000)));
        assert_eq!(parse_duration("0"), Some(ms(0)));
        assert_eq!(parse_duration("2 s"), Some(ms(2000)));
        for bad in ["", "ms", "-1", "1.5s", "2m", "abc", "18446744073709551615s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
