//! What a client asks of an export: its parameters, its format, whether it takes gzip.

use axum::http::{header, HeaderMap};

use crate::serve::config::{ExportFormat, FORMAT_KEY};

/// Longest parameter value accepted from a query string.
pub const MAX_PARAM_LEN: usize = 4096;

/// A request the route cannot serve, with the message for the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: a parameter is missing, unknown, repeated or too long; a format unknown.
    BadRequest(String),
    /// 406: the `Accept` header names none of the route's formats.
    NotAcceptable(String),
}

/// The parameter values in the order of the query's numbered parameters.
pub fn bind_params(pairs: &[(String, String)], names: &[String]) -> Result<Vec<String>, Rejection> {
    let mut values: Vec<Option<&str>> = vec![None; names.len()];
    for (key, value) in pairs {
        if key == FORMAT_KEY {
            continue;
        }
        let Some(i) = names.iter().position(|n| n == key) else {
            return Err(Rejection::BadRequest(format!(
                "unknown parameter `{key}`; this export takes: {}",
                list(names)
            )));
        };
        if values[i].is_some() {
            return Err(Rejection::BadRequest(format!(
                "parameter `{key}` is given twice"
            )));
        }
        if value.len() > MAX_PARAM_LEN {
            return Err(Rejection::BadRequest(format!(
                "parameter `{key}` is longer than {MAX_PARAM_LEN} bytes"
            )));
        }
        values[i] = Some(value);
    }
    let missing: Vec<String> = names
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| format!("`{n}`"))
        .collect();
    if !missing.is_empty() {
        return Err(Rejection::BadRequest(format!(
            "missing parameter {} (in the query string, as in ?{}=…)",
            missing.join(", "),
            missing[0].trim_matches('`')
        )));
    }
    Ok(values.into_iter().flatten().map(str::to_string).collect())
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "no parameters".to_string();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The format: `?format=` first, then the `Accept` header, then the route's first.
pub fn choose_format(
    pairs: &[(String, String)],
    headers: &HeaderMap,
    offered: &[ExportFormat],
) -> Result<ExportFormat, Rejection> {
    let names = || {
        offered
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut asked = pairs.iter().filter(|(k, _)| k == FORMAT_KEY);
    if let Some((_, name)) = asked.next() {
        if asked.next().is_some() {
            return Err(Rejection::BadRequest("`format` is given twice".into()));
        }
        return offered
            .iter()
            .copied()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                Rejection::BadRequest(format!(
                    "format `{name}` is not offered here; choose one of: {}",
                    names()
                ))
            });
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(offered[0]);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.starts_with("q=0.0"));
        if refused {
            continue;
        }
        let wanted = match media.as_str() {
            "*/*" | "text/*" | "application/*" => return Ok(offered[0]),
            "text/csv" => ExportFormat::Csv,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                ExportFormat::Ndjson
            }
            _ => continue,
        };
        if offered.contains(&wanted) {
            return Ok(wanted);
        }
    }
    Err(Rejection::NotAcceptable(format!(
        "Accept names none of the formats offered here ({}); or pass ?format=",
        names()
    )))
}

/// Whether the client takes a gzip'd body (`Accept-Encoding: gzip`, not at q=0).
pub fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.starts_with("q=0.0"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

pub fn content_type(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "text/csv; charset=utf-8; header=present",
        ExportFormat::Ndjson => "application/x-ndjson",
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parameters_are_ordered_by_the_query_and_checked() {
        let n = names(&["min", "max"]);
        let ok = bind_params(&pairs(&[("max", "9"), ("format", "csv"), ("min", "1")]), &n);
        assert_eq!(ok.unwrap(), ["1", "9"]);
        let Err(Rejection::BadRequest(e)) = bind_params(&pairs(&[("min", "1")]), &n) else {
            panic!("a missing parameter passed");
        };
        assert!(e.contains("missing parameter `max`"), "{e}");
        let Err(Rejection::BadRequest(e)) =
            bind_params(&pairs(&[("min", "1"), ("max", "2"), ("drop", "x")]), &n)
        else {
            panic!("an unknown parameter passed");
        };
        assert!(
            e.contains("unknown parameter `drop`") && e.contains("`min`, `max`"),
            "{e}"
        );
        let twice = bind_params(&pairs(&[("min", "1"), ("min", "2"), ("max", "3")]), &n);
        assert!(matches!(twice, Err(Rejection::BadRequest(e)) if e.contains("twice")));
        let long = "9".repeat(MAX_PARAM_LEN + 1);
        let too_long = bind_params(&pairs(&[("min", &long), ("max", "1")]), &n);
        assert!(matches!(too_long, Err(Rejection::BadRequest(e)) if e.contains("longer")));
    }

    #[test]
    fn format_by_query_then_accept_then_default() {
        let both = [ExportFormat::Csv, ExportFormat::Ndjson];
        let mut h = HeaderMap::new();
        assert_eq!(choose_format(&[], &h, &both), Ok(ExportFormat::Csv));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/csv;q=0, application/x-ndjson"),
        );
        assert_eq!(choose_format(&[], &h, &both), Ok(ExportFormat::Ndjson));
        let q = pairs(&[("format", "csv")]);
        assert_eq!(choose_format(&q, &h, &both), Ok(ExportFormat::Csv));
        let bad = pairs(&[("format", "xml")]);
        assert!(matches!(
            choose_format(&bad, &h, &both),
            Err(Rejection::BadRequest(_))
        ));
        h.insert(header::ACCEPT, HeaderValue::from_static("image/png"));
        assert!(matches!(
            choose_format(&[], &h, &both),
            Err(Rejection::NotAcceptable(_))
        ));
    }

    #[test]
    fn gzip_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!wants_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.5"),
        );
        assert!(wants_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!wants_gzip(&h));
    }
}
