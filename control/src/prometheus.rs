//! Asking a Prometheus HTTP API for a metric's value, as Flagger's Prometheus provider
//! does: an instant query; the last sample of a vector wins; an empty result or NaN is
//! "no values found"; each query has 5 seconds.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::checks::QueryOutcome;
use crate::http_client::HttpPoster;

/// Flagger's query timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// Runs `promql` against the Prometheus at `address`.
pub async fn query(client: &HttpPoster, address: &str, promql: &str) -> QueryOutcome {
    let url = format!(
        "{}/api/v1/query?query={}",
        address.trim_end_matches('/'),
        utf8_percent_encode(promql, NON_ALPHANUMERIC)
    );
    let answer = match client.get(&url, QUERY_TIMEOUT).await {
        Ok(a) => a,
        Err(e) => return QueryOutcome::Failed(format!("running query failed: {e}")),
    };
    let reply: Reply = match serde_json::from_str(&answer.body) {
        Ok(r) => r,
        Err(_) => {
            return QueryOutcome::Failed(format!(
                "running query failed: status {}: {}",
                answer.status,
                answer.body.chars().take(200).collect::<String>()
            ))
        }
    };
    if reply.status != "success" {
        return QueryOutcome::Failed(format!(
            "running query failed: {}: {}",
            reply.error_type.unwrap_or_default(),
            reply.error.unwrap_or_default()
        ));
    }
    let Some(data) = reply.data else {
        return QueryOutcome::NoValues("running query failed: no values found".into());
    };
    value(&data)
}

/// The value of an instant query's result.
fn value(data: &Data) -> QueryOutcome {
    let sample = match data.result_type.as_str() {
        // The last sample of the vector wins, as in Flagger.
        "vector" => data
            .result
            .as_array()
            .and_then(|r| r.last())
            .and_then(|s| s.get("value")),
        "scalar" => Some(&data.result),
        "matrix" => {
            return QueryOutcome::Failed(
                "running query failed: multiple values returned (a range vector)".into(),
            )
        }
        other => return QueryOutcome::Failed(format!("running query failed: result type {other}")),
    };
    let parsed = sample
        .and_then(|v| v.get(1))
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse::<f64>().ok());
    match parsed {
        Some(v) if !v.is_nan() => QueryOutcome::Value(v),
        _ => QueryOutcome::NoValues("running query failed: no values found".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(result_type: &str, result: serde_json::Value) -> Data {
        Data {
            result_type: result_type.into(),
            result,
        }
    }

    #[test]
    fn results_read_as_flagger_reads_them() {
        let v = serde_json::json!([
            {"metric": {"a": "1"}, "value": [1.0, "3.5"]},
            {"metric": {"a": "2"}, "value": [1.0, "7"]}
        ]);
        assert_eq!(value(&data("vector", v)), QueryOutcome::Value(7.0));
        assert!(matches!(
            value(&data("vector", serde_json::json!([]))),
            QueryOutcome::NoValues(_)
        ));
        let nan = serde_json::json!([{"metric": {}, "value": [1.0, "NaN"]}]);
        assert!(matches!(
            value(&data("vector", nan)),
            QueryOutcome::NoValues(_)
        ));
        assert_eq!(
            value(&data("scalar", serde_json::json!([1.0, "2"]))),
            QueryOutcome::Value(2.0)
        );
        assert!(matches!(
            value(&data("matrix", serde_json::json!([]))),
            QueryOutcome::Failed(_)
        ));
    }
}
