//! Go-compatible formatting of numbers and strings for texts Prometheus users see.
//!
//! Owns: `%g`, `%f` and `%q` as Go's `fmt`/`strconv` print them, so annotations, error
//! messages and labels (histogram_quantiles' quantile label) read byte for byte as in
//! Prometheus, and `strconv.FormatFloat`'s 'f', 'e' and 'g' written straight into a
//! byte buffer (no allocation), which the HTTP API's JSON and `/federate` text use too.
//! Calls nothing else.

use std::fmt::Write as _;
use std::io::Write as _;

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` (also `fmt`'s `%g`): shortest digits that
/// round-trip, exponent form when the exponent is < -4 or >= 6 (e.g. `1e+06`).
pub fn go_g(f: f64) -> String {
    let mut out = Vec::with_capacity(24);
    append_go_float(&mut out, f, GoFloat::G);
    // Only ASCII is ever written.
    String::from_utf8(out).unwrap_or_default()
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest round-trip digits, never an
/// exponent (`1e21` is `1000000000000000000000`), as `count_values` labels its output.
pub fn go_f(f: f64) -> String {
    let mut out = Vec::with_capacity(24);
    append_go_float(&mut out, f, GoFloat::F);
    // Only ASCII is ever written.
    String::from_utf8(out).unwrap_or_default()
}

/// Go's `strconv.FormatFloat` formats with precision -1 (shortest round-trip digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoFloat {
    /// `'f'`: no exponent (`1e21` is `1000000000000000000000`).
    F,
    /// `'e'`: `d.ddde±XX` with at least two exponent digits.
    E,
    /// `'g'`: `'e'` when the decimal exponent is below -4 or at least 6 (Go decides on
    /// precision 6 when asked for the shortest digits), `'f'` otherwise.
    G,
}

/// Appends `f` as Go's `strconv.FormatFloat(f, fmt, -1, 64)` would: shortest digits that
/// round-trip, `+Inf`, `-Inf`, `NaN` for the specials.
pub fn append_go_float(out: &mut Vec<u8>, f: f64, format: GoFloat) {
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    if format == GoFloat::F {
        // Rust's `Display` is shortest round-trip without exponent, exactly Go's 'f', -1.
        let _ = write!(out, "{f}");
        return;
    }
    let mut exp_form = StackStr::default();
    // `{:e}` is shortest round-trip with an exponent: `1.5e-7`, `1e21`.
    let _ = write!(exp_form, "{f:e}");
    let (mantissa, exponent) = exp_form.as_str().split_once('e').unwrap_or(("0", "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if format == GoFloat::G && (-4..6).contains(&exponent) {
        let _ = write!(out, "{f}");
        return;
    }
    out.extend_from_slice(mantissa.as_bytes());
    let sign = if exponent < 0 { '-' } else { '+' };
    let _ = write!(out, "e{sign}{:02}", exponent.unsigned_abs());
}

/// Go's `%f` (six decimals), as used by Prometheus's error messages.
pub fn go_f6(f: f64) -> String {
    match special(f) {
        Some(s) => s.to_string(),
        None => format!("{f:.6}"),
    }
}

/// Go's `strconv.Quote`: double quotes, backslash escapes for quotes, backslashes and
/// control characters; printable Unicode kept as is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn special(f: f64) -> Option<&'static str> {
    if f.is_nan() {
        Some("NaN")
    } else if f == f64::INFINITY {
        Some("+Inf")
    } else if f == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

/// A small stack buffer for `{:e}` output (at most 24 bytes for an f64).
#[derive(Default)]
struct StackStr {
    buf: [u8; 32],
    len: usize,
}

impl StackStr {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0e0")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(f: f64, format: GoFloat) -> String {
        let mut out = Vec::new();
        append_go_float(&mut out, f, format);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn go_float_formats() {
        use GoFloat::*;
        let cases: &[(f64, GoFloat, &str)] = &[
            (1.0, F, "1"),
            (0.1, F, "0.1"),
            (-0.0, F, "-0"),
            (1e21, F, "1000000000000000000000"),
            (1e-7, F, "0.0000001"),
            (123.456, F, "123.456"),
            (f64::INFINITY, F, "+Inf"),
            (f64::NEG_INFINITY, E, "-Inf"),
            (f64::NAN, G, "NaN"),
            (1e21, E, "1e+21"),
            (1.5e-7, E, "1.5e-07"),
            (-2.5e300, E, "-2.5e+300"),
            (f64::MAX, E, "1.7976931348623157e+308"),
            (5e-324, E, "5e-324"),
            (10000.0, G, "10000"),
            (1e6, G, "1e+06"),
            (123456789.0, G, "1.23456789e+08"),
            (0.0001, G, "0.0001"),
            (0.00001, G, "1e-05"),
            (0.0, G, "0"),
            (-1.5, G, "-1.5"),
            (1.7e9, G, "1.7e+09"),
        ];
        for &(f, format, want) in cases {
            assert_eq!(go(f, format), want, "{f} {format:?}");
        }
    }

    #[test]
    fn floats_format_as_go_does() {
        assert_eq!(go_g(1.1), "1.1");
        assert_eq!(go_g(-1.0), "-1");
        assert_eq!(go_g(123456.0), "123456");
        assert_eq!(go_g(1e6), "1e+06");
        assert_eq!(go_g(1.5e-7), "1.5e-07");
        assert_eq!(go_g(0.0001), "0.0001");
        assert_eq!(go_g(f64::NAN), "NaN");
        assert_eq!(go_g(f64::NEG_INFINITY), "-Inf");
        assert_eq!(go_f(1e21), "1000000000000000000000");
        assert_eq!(go_f(f64::INFINITY), "+Inf");
    }

    #[test]
    fn g_matches_go() {
        let cases = [
            (0.5, "0.5"),
            (-0.1, "-0.1"),
            (1.01, "1.01"),
            (1.0, "1"),
            (100000.0, "100000"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-300, "1.5e-300"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (0.0, "0"),
            (123.456, "123.456"),
        ];
        for (f, want) in cases {
            assert_eq!(go_g(f), want, "formatting {f}");
        }
    }

    #[test]
    fn f6_matches_go() {
        assert_eq!(go_f6(0.0), "0.000000");
        assert_eq!(go_f6(1.5), "1.500000");
        assert_eq!(go_f6(f64::NAN), "NaN");
        assert_eq!(go_f6(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn quote_matches_go() {
        assert_eq!(go_quote("up"), "\"up\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("x\ny\u{1}"), "\"x\\ny\\x01\"");
        assert_eq!(go_quote("Hello World"), "\"Hello World\"");
        assert_eq!(go_quote("é"), "\"é\"");
    }
}
