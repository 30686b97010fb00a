//! Size and nesting limits of PromQL text, checked before the text is parsed.
//!
//! Owns: the two limits (`MAX_DEPTH`, `MAX_TOKENS`), `check_text` (one iterative pass
//! over the text that counts its tokens and bounds the depth of the expression tree the
//! parser would build from it), `parse` (promql-parser guarded by that check and by a
//! check of numbers written as durations, which the parser panics on; every entry point
//! that parses PromQL or a series selector goes through it) and `tree_depth` (the real
//! depth of a parsed tree, counted without recursion). Calls only `promql_parser`.
//!
//! Why before parsing: promql-parser's grammar is table-driven, but its type checks
//! (`value_type` inside `check_ast`, run at every reduction), the AST's `Drop` and our
//! planner and evaluator recurse once per level of the tree, and the type checks cost
//! depth × size. Unchecked, 10,000 nested `abs(` overflows a thread's stack (the
//! process aborts) and a 50,000-term `1+1+...` parses for minutes. The bound computed
//! here is never below the real depth, so a query that passes can be parsed, walked and
//! dropped on an ordinary 2 MiB thread stack; the engine sizes the evaluation's stack
//! from the same bound. See ADR 0008.

use promql_parser::parser::Expr;

/// Deepest expression tree accepted. Brackets, function calls, aggregations and every
/// operator of a chain (`a + b + c` is `(a + b) + c`) each add a level. Hand-written and
/// generated dashboard queries stay far below (a few dozen levels at most).
pub const MAX_DEPTH: usize = 512;

/// Most tokens (names, numbers, strings, operators, brackets) a query may have. Bounds
/// the parser's work, the tree's size and the work of every evaluation step. A long
/// regular expression or label value is one token.
pub const MAX_TOKENS: usize = 20_000;

/// Parses PromQL (or a series selector) after checking it against the limits; the
/// error is the limit's or the parser's message.
pub fn parse(text: &str) -> Result<Expr, String> {
    parse_with_depth(text).map(|(expr, _)| expr)
}

/// `parse`, also returning `check_text`'s bound of the tree's depth.
pub fn parse_with_depth(text: &str) -> Result<(Expr, usize), String> {
    let depth = check_text(text)?;
    check_number_durations(text)?;
    // A panic of the parser on some input is its bug, not the request's: refuse the text
    // (the panic is still logged) rather than drop the connection.
    let parsed = std::panic::catch_unwind(|| promql_parser::parser::parse(text))
        .map_err(|_| "parse error: the PromQL parser failed on this input".to_string())?;
    Ok((parsed?, depth))
}

/// Checks `text` against `MAX_DEPTH` and `MAX_TOKENS` without parsing it. Returns a
/// bound (at most `MAX_DEPTH`) of the depth of the tree the text parses to.
pub fn check_text(text: &str) -> Result<usize, String> {
    check_text_with(text, MAX_DEPTH, MAX_TOKENS)
}

/// The depth of a parsed expression tree (a leaf is 1), counted with a heap stack: it
/// holds for any tree, however deep.
pub fn tree_depth(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(expr, 1)];
    while let Some((e, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        match e {
            Expr::Aggregate(a) => {
                pending.extend(a.param.iter().map(|p| (&**p, depth + 1)));
                pending.push((&a.expr, depth + 1));
            }
            Expr::Unary(u) => pending.push((&u.expr, depth + 1)),
            Expr::Binary(b) => {
                pending.push((&b.lhs, depth + 1));
                pending.push((&b.rhs, depth + 1));
            }
            Expr::Paren(p) => pending.push((&p.expr, depth + 1)),
            Expr::Subquery(s) => pending.push((&s.expr, depth + 1)),
            Expr::Call(c) => pending.extend(c.args.args.iter().map(|a| (&**a, depth + 1))),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    deepest
}

fn too_deep(max_depth: usize) -> String {
    format!(
        "query is nested more than {max_depth} levels deep (limit of the expression's nesting \
         depth; brackets, function calls, aggregations and each operator of a chain add a level)"
    )
}

fn too_large(max_tokens: usize) -> String {
    format!("query has more than {max_tokens} tokens (limit of the expression's size)")
}

/// One bracket level of the text being scanned: the comma-separated segments inside one
/// pair of parentheses (or the whole text, at the root).
#[derive(Default)]
struct Level {
    /// Operators (binary, unary, subquery or range brackets) in the current segment.
    operators: usize,
    /// Deepest bracketed group closed so far in the current segment.
    deepest_group: usize,
    /// Deepest finished segment of this level.
    deepest_segment: usize,
}

impl Level {
    /// Every operator of a segment can put one node above its deepest operand.
    fn end_segment(&mut self) {
        let segment = self.operators + self.deepest_group.max(1);
        self.deepest_segment = self.deepest_segment.max(segment);
        self.operators = 0;
        self.deepest_group = 0;
    }

    /// The depth bound of the finished level.
    fn finish(mut self) -> usize {
        self.end_segment();
        self.deepest_segment
    }
}

/// What the scanner found at one position.
enum Token {
    /// Whitespace or a comment: not a token.
    Skip,
    /// A name, number, string, `@`, `:` or anything the lexer will judge.
    Operand,
    /// A binary or unary operator (`+`, `==`, `and`, ...).
    Operator,
    Open(u8),
    Close(u8),
    Comma,
}

/// The scan behind `check_text`, with the limits as parameters for tests.
fn check_text_with(text: &str, max_depth: usize, max_tokens: usize) -> Result<usize, String> {
    let bytes = text.as_bytes();
    let mut levels: Vec<Level> = vec![Level::default()];
    // Braces hold label matchers and brackets durations: no expression nests in them,
    // and neither nests in itself (the lexer refuses `{{` and `[[`).
    let (mut in_braces, mut in_brackets) = (false, false);
    let mut tokens = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let (token, next) = scan_token(bytes, i);
        i = next;
        if matches!(token, Token::Skip) {
            continue;
        }
        tokens += 1;
        if tokens > max_tokens {
            return Err(too_large(max_tokens));
        }
        let level = levels.last_mut().expect("the root level is never popped");
        match token {
            Token::Skip | Token::Operand => {}
            Token::Open(b'{') => in_braces = true,
            Token::Close(b'}') => in_braces = false,
            Token::Open(b'[') if !in_braces => {
                // A subquery wraps the expression before it; a range does not, but
                // counting it as well keeps the bound simple and never too low.
                in_brackets = true;
                level.operators += 1;
            }
            Token::Close(b']') => in_brackets = false,
            _ if in_braces || in_brackets => {}
            Token::Operator => level.operators += 1,
            Token::Comma => level.end_segment(),
            Token::Open(_) => {
                // Checked on opening, so unclosed brackets are refused too.
                if levels.len() >= max_depth {
                    return Err(too_deep(max_depth));
                }
                levels.push(Level::default());
            }
            Token::Close(_) => {
                // An unmatched `)` is the parser's to report.
                if levels.len() > 1 {
                    let group = 1 + levels.pop().expect("more than one level").finish();
                    let parent = levels.last_mut().expect("the root level is never popped");
                    parent.deepest_group = parent.deepest_group.max(group);
                }
            }
        }
        let level = levels.last().expect("the root level is never popped");
        if level.operators + level.deepest_group.max(1) + levels.len() - 1 > max_depth {
            return Err(too_deep(max_depth));
        }
    }
    // Unclosed levels (the parser refuses them) are closed here to finish the bound.
    let mut depth = 0;
    while let Some(mut level) = levels.pop() {
        level.deepest_group = level.deepest_group.max(depth);
        depth = 1 + level.finish();
    }
    let bound = depth - 1;
    if bound > max_depth {
        return Err(too_deep(max_depth));
    }
    Ok(bound)
}

/// The token starting at `bytes[i]` and the index after it. Mirrors promql-parser's
/// lexer closely enough to count tokens and never to miss an operator: an exponent's
/// sign (`1e+5`) counts as an operator, which only makes the bound looser.
fn scan_token(bytes: &[u8], i: usize) -> (Token, usize) {
    let c = bytes[i];
    let two = |second: &[u8]| bytes.get(i + 1).is_some_and(|n| second.contains(n));
    match c {
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => (Token::Skip, i + 1),
        b'#' => {
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| i + p + 1);
            (Token::Skip, end)
        }
        b'"' | b'\'' | b'`' => (Token::Operand, skip_string(bytes, i)),
        b'(' | b'{' | b'[' => (Token::Open(c), i + 1),
        b')' | b'}' | b']' => (Token::Close(c), i + 1),
        b',' => (Token::Comma, i + 1),
        b'=' | b'!' | b'<' | b'>' if two(b"=~") => (Token::Operator, i + 2),
        b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>' | b'~' => {
            (Token::Operator, i + 1)
        }
        c if c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.') => {
            let len = bytes[i..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.'))
                .count();
            let word = &bytes[i..i + len];
            let is_operator = [&b"and"[..], b"or", b"unless", b"atan2"]
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k));
            let token = if is_operator {
                Token::Operator
            } else {
                Token::Operand
            };
            (token, i + len)
        }
        // `@`, and any other byte (UTF-8 included) the lexer will judge, one at a time.
        _ => (Token::Operand, i + 1),
    }
}

/// Refuses a number written where a duration goes (`x[1e309]`, `x offset Inf`, the
/// step of a subquery) that is not a finite, non-negative count of seconds below 2^64:
/// promql-parser converts it with `Duration::from_secs_f64`, which panics on those.
/// Scans like the lexer: a duration number follows `[`, a `:` inside brackets, or
/// `offset` (and an optional sign).
fn check_number_durations(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let (mut in_brackets, mut expecting) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts_number =
            c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        if starts_number {
            let end = number_end(bytes, i);
            // Followed by a unit, it is a duration such as `1h30m` (parsed with checks).
            let unit = bytes[end..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if expecting && unit == 0 {
                check_seconds(&text[i..end])?;
            }
            expecting = false;
            i = end + unit;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => {
                i = skip_string(bytes, i);
                expecting = false;
                continue;
            }
            b'#' if !in_brackets => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p);
                continue;
            }
            b'[' => (in_brackets, expecting) = (true, true),
            b']' => (in_brackets, expecting) = (false, false),
            b':' if in_brackets => expecting = true,
            b'+' | b'-' if expecting && !in_brackets => {}
            c if c.is_ascii_whitespace() => {}
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let len = bytes[i..]
                    .iter()
                    .take_while(|&&b| {
                        b.is_ascii_alphanumeric() || b == b'_' || (b == b':' && !in_brackets)
                    })
                    .count();
                let word = &text[i..i + len];
                if expecting
                    && (word.eq_ignore_ascii_case("inf") || word.eq_ignore_ascii_case("nan"))
                {
                    return Err(duration_out_of_range(word));
                }
                expecting = !in_brackets && word.eq_ignore_ascii_case("offset");
                i += len;
                continue;
            }
            _ => expecting = false,
        }
        i += 1;
    }
    Ok(())
}

/// The end of the number the lexer scans from `start`: `0x` hex digits, or digits with
/// an optional fraction and exponent (with its sign).
fn number_end(bytes: &[u8], start: usize) -> usize {
    let digits_from = |mut i: usize, hex: bool| {
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_digit() || (hex && b.is_ascii_hexdigit()))
        {
            i += 1;
        }
        i
    };
    let hex = bytes[start] == b'0' && matches!(bytes.get(start + 1), Some(b'x' | b'X'));
    let mut i = digits_from(if hex { start + 2 } else { start }, hex);
    if bytes.get(i) == Some(&b'.') {
        i = digits_from(i + 1, hex);
    }
    if !hex && matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits_from(i, false);
    }
    i
}

/// Whether `Duration::from_secs_f64` takes the number (hex and octal numbers, which
/// the parser reads as integers below 2^63, always fit).
fn check_seconds(number: &str) -> Result<(), String> {
    match number.parse::<f64>() {
        Ok(seconds) if !(seconds.is_finite() && (0.0..1.8e19).contains(&seconds)) => {
            Err(duration_out_of_range(number))
        }
        _ => Ok(()),
    }
}

fn duration_out_of_range(number: &str) -> String {
    format!("parse error: duration out of range: {number}")
}

/// The index after the string literal starting at `bytes[start]` (the end of the text
/// if it is not closed). Backslash escapes apply except in backquoted strings.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest depth limit the text passes.
    fn bound(text: &str) -> usize {
        (1..10_000)
            .find(|&d| check_text_with(text, d, usize::MAX).is_ok())
            .expect("a bound below 10,000")
    }

    #[test]
    fn bound_is_never_below_the_parsed_depth() {
        for q in [
            "up",
            "1",
            "-1",
            "- - -up",
            "up + up",
            "up + up * up ^ up",
            "(up + up) * (up - up)",
            "sum by (job) (rate(http_requests_total{job=~\"a|b\"}[5m]))",
            "sum(rate(x[5m])) by (job) / on(job) group_left(instance) count(up)",
            "max_over_time((rate(x[1m]))[10m:1m] offset 5m)",
            "topk(3, sum without (i) (m)) or on() vector(0)",
            "histogram_quantile(0.9, sum by (le) (rate(b[5m]))) > bool 0.5",
            "label_replace(up, \"a\", \"$1\", \"b\", \"(.*)\")",
            "up and up or up unless up atan2 up",
            "abs(abs(abs(-up)))",
            "up @ start() offset -5m",
            "{__name__=\"a(b\", c=\"])\"}",
            "# comment (((\nup",
            "`raw ( string`",
            "0x1e+0x1e+0x1e",
            "1e+5 - 1e-5",
        ] {
            let expr = promql_parser::parser::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            let (real, bound) = (tree_depth(&expr), bound(q));
            assert_eq!(check_text_with(q, 10_000, usize::MAX), Ok(bound), "{q}");
            assert!(bound >= real, "{q}: bound {bound} below depth {real}");
            assert!(
                bound <= real + 3,
                "{q}: bound {bound} far above depth {real}"
            );
        }
    }

    #[test]
    fn nesting_and_chains_are_refused_before_parsing() {
        let deep = |open: &str, n: usize| format!("{}up{}", open.repeat(n), ")".repeat(n));
        let chain = |term: &str, n: usize| vec![term; n].join("+");
        for q in [
            deep("(", 100_000),
            deep("abs(", 10_000),
            deep("sum(", 20_000),
            "(".repeat(100_000),
            chain("up", 3_000),
            chain("1", 100_000),
            format!("{}up", "-".repeat(1_000)),
            deep("(", MAX_DEPTH),
            chain("up", MAX_DEPTH + 1),
        ] {
            let err = check_text(&q).expect_err(&q[..20]);
            assert!(err.contains("limit"), "{err}");
        }
        assert!(check_text(&deep("(", MAX_DEPTH - 2)).is_ok());
        assert!(check_text(&chain("up", MAX_DEPTH - 1)).is_ok());
    }

    #[test]
    fn size_counts_tokens_not_bytes() {
        let long_regex = format!("up{{job=~\"{}\"}}", "a|".repeat(100_000));
        assert!(check_text(&long_regex).is_ok());
        // Wide but shallow: many arguments of one call.
        let wide = format!("sort_by_label(up{})", ", \"l\"".repeat(MAX_TOKENS / 2));
        assert_eq!(check_text(&wide), Err(too_large(MAX_TOKENS)));
        // Balanced: 8,192 leaves, 14 levels deep.
        let mut balanced = "up".to_string();
        for _ in 0..13 {
            balanced = format!("({balanced}+{balanced})");
        }
        assert_eq!(check_text(&balanced), Err(too_large(MAX_TOKENS)));
    }

    #[test]
    fn numbers_as_durations_out_of_range_are_refused() {
        // Each of these panicked inside promql-parser (Duration::from_secs_f64).
        for q in [
            "x[1e309]",
            "x[1e+309]",
            "x[1e308]",
            "x[18446744073709551616]",
            "x[5m:1e309]",
            "sum_over_time(x[1m:1e309])",
            "x offset Inf",
            "x offset -NaN",
            "x offset 1e309",
            "x offset -1e309",
            "x offset .5e400",
        ] {
            let err = parse(q).expect_err(q);
            assert!(
                err.starts_with("parse error: duration out of range"),
                "{q}: {err}"
            );
        }
        for q in [
            "x[1e19]",
            "x[300]",
            "x[5m:30]",
            "x offset 1.5",
            "x[0x10]",
            "x{a=\"[1e309]\"}",
            "1e309 + x",
            "x offset 5m + 1e309",
            "# x[1e309]\nx",
        ] {
            assert!(parse(q).is_ok(), "{q}: {:?}", parse(q).err());
        }
    }

    #[test]
    fn parse_reports_limits_and_parser_errors() {
        assert!(parse("sum(rate(x[5m]))").is_ok());
        assert!(parse("sum(").is_err());
        assert_eq!(parse(&"(".repeat(600)).unwrap_err(), too_deep(MAX_DEPTH));
    }
}
