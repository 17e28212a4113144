//! Tumbling windows over record time or record count.

use std::fmt;
use std::str::FromStr;

use crate::EvalError;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// How records are grouped into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed-length intervals of record time, multiples of the length since the Unix epoch, so
    /// `1d` runs from midnight to midnight UTC and `1h` from the hour (as pandas' `resample` and
    /// Prometheus align them).
    Time {
        /// Length in microseconds.
        micros: i64,
    },
    /// Consecutive runs of this many records in time order (per version and slice); the last
    /// window of a run may be shorter.
    Rows(u64),
}

impl WindowSpec {
    /// The start of the time window holding `ts_us`, or `None` for row windows.
    pub fn time_window_start(&self, ts_us: i64) -> Option<i64> {
        match self {
            WindowSpec::Time { micros } => Some(ts_us.div_euclid(*micros) * micros),
            WindowSpec::Rows(_) => None,
        }
    }
}

impl FromStr for WindowSpec {
    type Err = EvalError;

    /// `15s`, `30m`, `1h`, `1d`, `7d` or `5000rows`.
    fn from_str(text: &str) -> Result<WindowSpec, EvalError> {
        let invalid = || {
            EvalError::Invalid(format!(
                "--window {text}: expected a length like 30s, 15m, 1h, 1d or a row count like 5000rows"
            ))
        };
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (number, unit) = trimmed.split_at(digits);
        let count: i64 = number.parse().map_err(|_| invalid())?;
        if count <= 0 {
            return Err(invalid());
        }
        let seconds = match unit {
            "rows" => return Ok(WindowSpec::Rows(count as u64)),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(invalid()),
        };
        count
            .checked_mul(seconds * MICROS_PER_SECOND)
            .map(|micros| WindowSpec::Time { micros })
            .ok_or_else(invalid)
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Rows(n) => write!(f, "{n}rows"),
            WindowSpec::Time { micros } => {
                let seconds = micros / MICROS_PER_SECOND;
                match seconds {
                    s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
                    s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
                    s if s % 60 == 0 => write!(f, "{}m", s / 60),
                    s => write!(f, "{s}s"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lengths_and_row_counts() {
        assert_eq!(
            "1d".parse::<WindowSpec>().ok(),
            Some(WindowSpec::Time {
                micros: 86_400_000_000
            })
        );
        assert_eq!(
            "5000rows".parse::<WindowSpec>().ok(),
            Some(WindowSpec::Rows(5000))
        );
        for bad in ["", "d", "0h", "3x", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(bad.parse::<WindowSpec>().is_err(), "{bad}");
        }
        assert_eq!(
            "90m".parse::<WindowSpec>().map(|w| w.to_string()).ok(),
            Some("90m".into())
        );
    }

    #[test]
    fn days_run_from_midnight_utc() {
        let day = "1d".parse::<WindowSpec>().ok();
        // 2026-03-01T13:45:00Z and one microsecond before 2026-03-01T00:00:00Z.
        let afternoon = 1_772_372_700_000_000;
        let midnight = 1_772_323_200_000_000;
        assert_eq!(
            day.and_then(|d| d.time_window_start(afternoon)),
            Some(midnight)
        );
        assert_eq!(
            day.and_then(|d| d.time_window_start(midnight - 1)),
            Some(midnight - 86_400_000_000)
        );
    }
}
