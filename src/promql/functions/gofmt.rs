//! Go-compatible formatting of numbers and strings for texts Prometheus users see.
//!
//! Owns: `%g`, `%f` and `%q` as Go's `fmt`/`strconv` print them, so annotations, error
//! messages and labels (histogram_quantiles' quantile label) read byte for byte as in
//! Prometheus. Calls nothing else.

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` (also `fmt`'s `%g`): shortest digits that
/// round-trip, exponent form when the exponent is < -4 or >= 6 (e.g. `1e+06`).
pub fn go_g(f: f64) -> String {
    if let Some(special) = special(f) {
        return special.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let (digits, exp) = shortest_digits(f.abs());
    let mut out = String::with_capacity(digits.len() + 8);
    if f < 0.0 {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        push_exponent_form(&mut out, &digits, exp);
    } else {
        push_fixed_form(&mut out, &digits, exp);
    }
    out
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

/// The shortest round-trip decimal digits of a finite positive `f` and the decimal
/// exponent of the first digit (`1234.5` -> ("12345", 3)).
fn shortest_digits(f: f64) -> (String, i32) {
    // Rust's `{:e}` prints the shortest round-trip digits: "1.2345e3".
    let formatted = format!("{f:e}");
    let (mantissa, exp) = formatted.split_once('e').unwrap_or((&formatted, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    (digits, exp.parse().unwrap_or(0))
}

fn push_exponent_form(out: &mut String, digits: &str, exp: i32) {
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    let abs = exp.unsigned_abs();
    if abs < 10 {
        out.push('0');
    }
    out.push_str(&abs.to_string());
}

fn push_fixed_form(out: &mut String, digits: &str, exp: i32) {
    let point = exp + 1; // Digits before the decimal point.
    if point <= 0 {
        out.push_str("0.");
        for _ in 0..-point {
            out.push('0');
        }
        out.push_str(digits);
        return;
    }
    let point = point as usize;
    if digits.len() <= point {
        out.push_str(digits);
        for _ in digits.len()..point {
            out.push('0');
        }
    } else {
        out.push_str(&digits[..point]);
        out.push('.');
        out.push_str(&digits[point..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
