//! Byte quantities: limits as written by people and orchestrators, and the
//! human units used by the CLI.

use std::fmt;

/// A limit value of `pins.max` / `pins.high`: a byte count, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Bytes(u64),
    Max,
}

impl fmt::Display for Limit {
    /// The canonical rendering: bytes, or `max`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Bytes(b) => write!(f, "{b}"),
            Limit::Max => f.write_str("max"),
        }
    }
}

/// Why a limit text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("empty value (write a byte count such as 17179869184, a size such as 16G, or max)")]
    Empty,
    #[error("{0:?} is not a byte count, a size such as 16G, or max")]
    Garbage(String),
    #[error("{0:?} is negative; limits are byte counts of zero or more")]
    Negative(String),
    #[error("{0:?} has an unknown unit suffix (use K, M, G, T, P, E or KiB … EiB)")]
    UnknownUnit(String),
    #[error("{0:?} does not fit in 64 bits of bytes")]
    Overflow(String),
}

/// Parse a limit as written to `pins.max`/`pins.high`.
///
/// Accepts the kernel's own format (a decimal byte count, or `max`) with
/// surrounding whitespace, and human sizes with binary multipliers: `16G`,
/// `16GiB`, `16Gi` (as Kubernetes writes quantities), `512m`, `1.5G`
/// (rounded down to a whole byte).
pub fn parse_limit(text: &str) -> Result<Limit, LimitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(LimitError::Empty);
    }
    if t == "max" {
        return Ok(Limit::Max);
    }
    if t.starts_with('-') {
        return Err(LimitError::Negative(t.to_string()));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    // Digits before any point and after it: `.`, `.5G` and `1.` are not
    // sizes (a typo must never read as 0 bytes).
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match number.split_once('.') {
        Some((whole, frac)) => digits(whole) && digits(frac),
        None => digits(number),
    };
    if !well_formed {
        return Err(LimitError::Garbage(t.to_string()));
    }
    let shift = unit_shift(unit.trim()).ok_or_else(|| {
        if unit.chars().all(|c| c.is_ascii_alphabetic() || c == ' ') {
            LimitError::UnknownUnit(t.to_string())
        } else {
            LimitError::Garbage(t.to_string())
        }
    })?;
    let bytes = scale(number, shift).ok_or_else(|| LimitError::Overflow(t.to_string()))?;
    Ok(Limit::Bytes(bytes))
}

/// The power-of-two shift of a unit suffix; `None` if unknown.
fn unit_shift(unit: &str) -> Option<u32> {
    let lower = unit.to_ascii_lowercase();
    let stem = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b').filter(|s| !s.is_empty()))
        .or_else(|| lower.strip_suffix('i').filter(|s| !s.is_empty()))
        .unwrap_or(&lower);
    match stem {
        "" => Some(0),
        "k" => Some(10),
        "m" => Some(20),
        "g" => Some(30),
        "t" => Some(40),
        "p" => Some(50),
        "e" => Some(60),
        _ => None,
    }
}

/// `number * 2^shift` computed exactly in integers; `None` on overflow.
fn scale(number: &str, shift: u32) -> Option<u64> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut bytes = whole.checked_shl(shift)?;
    if whole != 0 && bytes >> shift != whole {
        return None;
    }
    if !frac.is_empty() {
        // Fractions are exact up to 18 digits; finer digits cannot change a
        // byte count below 2^60 * 10^-18.
        let digits = &frac[..frac.len().min(18)];
        let numerator: u128 = digits.parse().ok()?;
        let denominator = 10u128.pow(digits.len() as u32);
        bytes = bytes.checked_add((numerator << shift) / denominator)?;
    }
    u64::try_from(bytes).ok()
}

/// Bytes in binary units for people: `64.0 MiB`, `512 B`.
pub fn format_human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_format_and_max() {
        assert_eq!(parse_limit("17179869184\n"), Ok(Limit::Bytes(17179869184)));
        assert_eq!(parse_limit("  max \n"), Ok(Limit::Max));
        assert_eq!(parse_limit("0"), Ok(Limit::Bytes(0)));
        assert_eq!(Limit::Bytes(42).to_string(), "42");
        assert_eq!(Limit::Max.to_string(), "max");
    }

    #[test]
    fn human_sizes_are_binary() {
        assert_eq!(parse_limit("16G"), Ok(Limit::Bytes(16 << 30)));
        assert_eq!(parse_limit("16GiB"), Ok(Limit::Bytes(16 << 30)));
        assert_eq!(parse_limit("16Gi"), Ok(Limit::Bytes(16 << 30)));
        assert_eq!(parse_limit("512Mi"), Ok(Limit::Bytes(512 << 20)));
        assert_eq!(parse_limit("16gb"), Ok(Limit::Bytes(16 << 30)));
        assert_eq!(parse_limit("512m"), Ok(Limit::Bytes(512 << 20)));
        assert_eq!(parse_limit("80M"), Ok(Limit::Bytes(83886080)));
        assert_eq!(parse_limit("1.5G"), Ok(Limit::Bytes(3 << 29)));
        assert_eq!(parse_limit("4K"), Ok(Limit::Bytes(4096)));
        assert_eq!(parse_limit("15E"), Ok(Limit::Bytes(15 << 60)));
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(parse_limit(""), Err(LimitError::Empty));
        assert_eq!(parse_limit("-1"), Err(LimitError::Negative("-1".into())));
        assert_eq!(parse_limit("lots"), Err(LimitError::Garbage("lots".into())));
        assert_eq!(parse_limit("1..5G"), Err(LimitError::Garbage("1..5G".into())));
        for typo in [".", ".G", ".5", ".5G", "1.", "1.G"] {
            assert_eq!(parse_limit(typo), Err(LimitError::Garbage(typo.into())), "{typo} is no size");
        }
        assert_eq!(parse_limit("16Q"), Err(LimitError::UnknownUnit("16Q".into())));
        assert_eq!(parse_limit("16 G x"), Err(LimitError::UnknownUnit("16 G x".into())));
        assert_eq!(parse_limit("16G;rm"), Err(LimitError::Garbage("16G;rm".into())));
        assert_eq!(parse_limit("18446744073709551616"), Err(LimitError::Overflow("18446744073709551616".into())));
        assert_eq!(parse_limit("16E"), Err(LimitError::Overflow("16E".into())));
        assert!(parse_limit("99999999999999999999999999999999999999999").is_err());
    }

    #[test]
    fn human_rendering() {
        assert_eq!(format_human(0), "0 B");
        assert_eq!(format_human(67108864), "64.0 MiB");
        assert_eq!(format_human(33554432), "32.0 MiB");
        assert_eq!(format_human(1536), "1.5 KiB");
        assert_eq!(format_human(u64::MAX), "16.0 EiB");
    }
}
