//! `match[]` parameters: a PromQL series selector turned into model matchers.
//!
//! Owns: parsing one selector with `promql-parser` and converting its matchers, with
//! Prometheus's rules for selectors given to the HTTP API (a bare vector selector; at
//! least one matcher that does not match the empty string). Calls `model`.

use promql_parser::label::{MatchOp as ParsedOp, Matcher as ParsedMatcher};
use promql_parser::parser::{self, Expr};

use super::ApiError;
use crate::model::{MatchOp, Matcher, METRIC_NAME};

/// Parses one `match[]` value such as `up{job=~"api.*"}` into matchers (ANDed).
pub fn parse_match_param(s: &str) -> Result<Vec<Matcher>, ApiError> {
    let expr = parser::parse(s)
        .map_err(|e| ApiError::bad_data(format!("invalid parameter \"match[]\": {e}")))?;
    let Expr::VectorSelector(selector) = expr else {
        return Err(ApiError::bad_data(format!(
            "invalid parameter \"match[]\": {s:?} is not a series selector"
        )));
    };
    if !selector.matchers.or_matchers.is_empty() {
        return Err(ApiError::bad_data(
            "invalid parameter \"match[]\": 'or' in a series selector is not supported",
        ));
    }
    let mut matchers = selector
        .matchers
        .matchers
        .iter()
        .map(convert)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(name) = selector.name {
        if !matchers.iter().any(|m| m.name == METRIC_NAME) {
            matchers.push(Matcher::equal(METRIC_NAME, name));
        }
    }
    if matchers.iter().all(Matcher::matches_empty) {
        return Err(ApiError::bad_data(
            "match[] must contain at least one non-empty matcher",
        ));
    }
    Ok(matchers)
}

fn convert(m: &ParsedMatcher) -> Result<Matcher, ApiError> {
    let op = match m.op {
        ParsedOp::Equal => MatchOp::Equal,
        ParsedOp::NotEqual => MatchOp::NotEqual,
        ParsedOp::Re(_) => MatchOp::RegexMatch,
        ParsedOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    Matcher::new(op, m.name.clone(), m.value.clone())
        .map_err(|e| ApiError::bad_data(format!("invalid regular expression {:?}: {e}", m.value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Vec<String> {
        let mut v: Vec<String> = parse_match_param(s)
            .unwrap()
            .iter()
            .map(|m| m.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn selectors_become_matchers() {
        assert_eq!(parsed("up"), vec![r#"__name__="up""#]);
        assert_eq!(
            parsed(r#"up{job=~"a.*",env!="dev"}"#),
            vec![r#"__name__="up""#, r#"env!="dev""#, r#"job=~"a.*""#]
        );
        assert_eq!(
            parsed(r#"{__name__=~"x|y", a!~"b"}"#),
            vec![r#"__name__=~"x|y""#, r#"a!~"b""#]
        );
    }

    #[test]
    fn bad_selectors_are_bad_data() {
        for bad in ["", "up{", "sum(up)", r#"{job=""}"#, r#"{a=~".*"}"#, "1"] {
            let err = parse_match_param(bad).unwrap_err();
            assert_eq!(err.error_type, "bad_data", "{bad}");
        }
    }
}
