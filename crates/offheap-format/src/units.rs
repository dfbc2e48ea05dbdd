//! Byte counts and rates for people, one way everywhere: IEC units (KiB,
//! MiB, GiB: powers of 1024), three significant digits, exact below 1 KiB.
//! The verdict's sentence, the tables under it, the status line, the notes
//! and the reports all say the same figure the same way.

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `1536` -> `"1.50 KiB"`, `12_345_678` -> `"11.8 MiB"`; exact below 1 KiB.
pub fn bytes(v: u64) -> String {
    bytes_f(v as f64)
}

/// Like [`bytes`] for a float that may be negative (`"-4.00 MiB"`).
pub fn bytes_f(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a < 1024.0 {
        return format!("{sign}{} B", a.round() as u64);
    }
    let mut x = a;
    let mut i = 0;
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    // 1023.96 KiB would print as "1024 KiB": one unit up instead.
    if x >= 1023.5 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if x >= 100.0 {
        format!("{sign}{x:.0} {}", UNITS[i])
    } else if x >= 10.0 {
        format!("{sign}{x:.1} {}", UNITS[i])
    } else {
        format!("{sign}{x:.2} {}", UNITS[i])
    }
}

/// A signed rate in bytes per second: `"+1.20 MiB/s"`, `"-512 B/s"`, `"0 B/s"`.
pub fn rate(v: f64) -> String {
    if !v.is_finite() {
        "?/s".into()
    } else if v > 0.0 {
        format!("+{}/s", bytes_f(v))
    } else if v < 0.0 {
        format!("{}/s", bytes_f(v))
    } else {
        "0 B/s".into()
    }
}

/// A bound or a size limit: `"4 GiB"`, `"64 MiB"`, `"1.5 KiB"` (no trailing
/// zeros, as such values are usually round).
pub fn bound(b: u64) -> String {
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 || x.fract() == 0.0 {
        format!("{x:.0} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_to_say_a_size() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(12_345_678), "11.8 MiB");
        assert_eq!(bytes(1_048_575), "1.00 MiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
        assert_eq!(bytes_f(-4.0 * 1048576.0), "-4.00 MiB");
        assert_eq!(bytes_f(f64::NAN), "?");
        assert_eq!(rate(1.2 * 1048576.0), "+1.20 MiB/s");
        assert_eq!(rate(-512.0), "-512 B/s");
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(rate(f64::NAN), "?/s");
        assert_eq!(bound(4 << 30), "4 GiB");
        assert_eq!(bound(1536), "1.5 KiB");
        assert_eq!(bound(100), "100 B");
    }
}
