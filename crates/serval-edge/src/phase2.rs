//! The phase-2 client: forwarded instances go to the cloud model over the Open Inference
//! Protocol v2 REST (`POST /v2/models/{m}/infer`), keys as the BYTES input the server pairs
//! with the outputs, in batches, each POST retried with backoff and jitter (`serval-client`).

use serde_json::{Map, Value, json};
use serval_client::{PostError, Retry};
use serval_core::Tensor;
use serval_core::instances::FlatView;

use crate::error::EdgeError;

/// Where and how forwarded instances are sent.
#[derive(Debug, Clone)]
pub struct Phase2Options {
    /// The server, e.g. `http://127.0.0.1:8000`.
    pub server: String,
    /// The phase-2 model's name on it.
    pub model: String,
    /// A version number or label; the server's default when `None`.
    pub version: Option<String>,
    /// The key input's name on the server (its model's `key` setting).
    pub key_name: String,
    /// Instances per request.
    pub max_batch: usize,
    /// Retries, backoff and each attempt's timeout.
    pub retry: Retry,
}

impl Phase2Options {
    /// Phase 2 at `server`, model `model`, with the defaults (key `key`, 64 per request,
    /// 3 attempts from 200 ms, 10 s each).
    pub fn new(server: impl Into<String>, model: impl Into<String>) -> Phase2Options {
        Phase2Options {
            server: server.into(),
            model: model.into(),
            version: None,
            key_name: "key".into(),
            max_batch: 64,
            retry: Retry {
                attempts: 3,
                backoff: std::time::Duration::from_millis(200),
                timeout: std::time::Duration::from_secs(10),
            },
        }
    }
}

/// Phase 2's answer for one batch.
#[derive(Debug, Clone)]
pub struct Phase2Answer {
    /// The version that answered.
    pub version: String,
    /// Per instance, in the order sent: its outputs (the key left out).
    pub outputs: Vec<Map<String, Value>>,
}

/// A v2 REST client of one phase-2 model.
#[derive(Debug)]
pub struct Phase2Client {
    options: Phase2Options,
    url: String,
    agent: ureq::Agent,
}

impl Phase2Client {
    /// A client (nothing is sent until the first forward).
    pub fn new(options: Phase2Options) -> Phase2Client {
        let base = options.server.trim_end_matches('/');
        let url = match &options.version {
            Some(v) => format!("{base}/v2/models/{}/versions/{v}/infer", options.model),
            None => format!("{base}/v2/models/{}/infer", options.model),
        };
        let agent = options.retry.agent();
        Phase2Client {
            options,
            url,
            agent,
        }
    }

    /// The most instances sent in one request.
    pub fn max_batch(&self) -> usize {
        self.options.max_batch.max(1)
    }

    /// Where forwards are POSTed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The model forwarded to.
    pub fn model(&self) -> &str {
        &self.options.model
    }

    /// Reports phase-1 predictions (`{key, timestamp_us, inputs, outputs}` each) to the server's
    /// prediction log as `model`'s (`POST /v2/models/{m}/log`), in one attempt: a report is a
    /// sample, and an unreachable server should not hold up answers. Returns the records taken.
    pub fn report(
        &self,
        model: &str,
        version: Option<&str>,
        signature: &str,
        predictions: Vec<Value>,
    ) -> Result<usize, EdgeError> {
        let base = self.options.server.trim_end_matches('/');
        let url = match version {
            Some(v) => format!("{base}/v2/models/{model}/versions/{v}/log"),
            None => format!("{base}/v2/models/{model}/log"),
        };
        let body = serde_json::to_vec(&json!({"signature": signature, "predictions": predictions}))
            .map_err(|e| EdgeError::Phase2(format!("report could not be encoded: {e}")))?;
        let reply = self.post(&url, &body, 1, "report")?;
        Ok(reply["accepted"].as_u64().unwrap_or(0) as usize)
    }

    /// The key input's name on the server.
    pub fn key_name(&self) -> &str {
        &self.options.key_name
    }

    /// Sends one batch, `request` as [`infer_request`] builds it for `keys`. Unreachable after
    /// every retry (one attempt only for a `probe`) is [`EdgeError::Unreachable`] (the caller
    /// queues); a refusal or an answer that does not match the request is
    /// [`EdgeError::Phase2`] (queuing would not help).
    pub fn infer(
        &self,
        keys: &[String],
        request: &Value,
        probe: bool,
    ) -> Result<Phase2Answer, EdgeError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| EdgeError::Phase2(format!("request could not be encoded: {e}")))?;
        let attempts = if probe {
            1
        } else {
            self.options.retry.attempts
        };
        let reply = self.post(&self.url, &body, attempts, "forward")?;
        split_reply(&self.options.key_name, keys, &reply)
    }

    /// POSTs `body` to `url` in up to `attempts`; its JSON answer. A refusal is
    /// [`EdgeError::Phase2`] (naming `what` was refused), no answer [`EdgeError::Unreachable`].
    fn post(&self, url: &str, body: &[u8], attempts: u32, what: &str) -> Result<Value, EdgeError> {
        let retry = Retry {
            attempts,
            ..self.options.retry.clone()
        };
        let answered = retry
            .post(&self.agent, url, &[], body)
            .map_err(|e| match e {
                PostError::Refused { .. } => EdgeError::Phase2(format!("refused the {what}: {e}")),
                PostError::Unreachable { .. } => EdgeError::Unreachable(e),
            })?;
        serde_json::from_slice(&answered.body).map_err(|e| {
            EdgeError::Phase2(format!(
                "answered the {what} with something that is not JSON: {e}"
            ))
        })
    }
}

/// The v2 infer request for `inputs` (row `i` belongs to `keys[i]`), the keys as the
/// `key_name` BYTES input the server pairs with the outputs.
pub fn infer_request(key_name: &str, keys: &[String], inputs: &[(String, Tensor)]) -> Value {
    let mut tensors: Vec<Value> = inputs
        .iter()
        .map(|(name, tensor)| {
            json!({
                "name": name,
                "datatype": tensor.data_type().as_str(),
                "shape": tensor.shape(),
                "data": FlatView(tensor),
            })
        })
        .collect();
    tensors.push(json!({
        "name": key_name,
        "datatype": "BYTES",
        "shape": [keys.len()],
        "data": keys,
    }));
    json!({ "inputs": tensors })
}

/// Splits phase 2's v2 response into per-instance output objects, checking the keys came back
/// (as the `key_name` output) in the order sent.
pub fn split_reply(
    key_name: &str,
    keys: &[String],
    reply: &Value,
) -> Result<Phase2Answer, EdgeError> {
    let bad = |what: String| EdgeError::Phase2(what);
    let outputs = reply
        .get("outputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("answered without \"outputs\"".into()))?;
    let mut rows: Vec<Map<String, Value>> = vec![Map::new(); keys.len()];
    let mut keys_back = None;
    for output in outputs {
        let name = output
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("answered an output without a name".into()))?;
        let shape: Vec<usize> = output
            .get("shape")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let data = output
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("output '{name}' has no JSON data")))?;
        if shape.first() != Some(&keys.len()) {
            return Err(bad(format!(
                "output '{name}' has shape {shape:?} for {} instances",
                keys.len()
            )));
        }
        let row_len: usize = shape[1..].iter().product();
        if data.len() != row_len * keys.len() {
            return Err(bad(format!(
                "output '{name}' has {} values for shape {shape:?}",
                data.len()
            )));
        }
        if name == key_name {
            keys_back = Some(data);
            continue;
        }
        for (row, values) in rows.iter_mut().zip(data.chunks(row_len.max(1))) {
            row.insert(name.to_owned(), nest(values, &shape[1..]));
        }
    }
    match keys_back {
        Some(back)
            if back
                .iter()
                .map(Value::as_str)
                .eq(keys.iter().map(|k| Some(k.as_str()))) => {}
        Some(_) => return Err(bad("answered other keys than it was sent".into())),
        None => {
            return Err(bad(format!(
                "answered without the '{}' output (is the server's key setting the same?)",
                key_name
            )));
        }
    }
    Ok(Phase2Answer {
        version: reply
            .get("model_version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        outputs: rows,
    })
}

/// Flat row-major values as nested arrays of `dims` (a scalar for no dims).
fn nest(values: &[Value], dims: &[usize]) -> Value {
    match dims {
        [] => values.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(values.to_vec()),
        [_, inner @ ..] => {
            let step: usize = inner.iter().product::<usize>().max(1);
            Value::Array(values.chunks(step).map(|c| nest(c, inner)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_rebuilds_row_shapes() {
        let v: Vec<Value> = (0..6).map(Value::from).collect();
        assert_eq!(nest(&v[..1], &[]), json!(0));
        assert_eq!(nest(&v, &[6]), json!([0, 1, 2, 3, 4, 5]));
        assert_eq!(nest(&v, &[2, 3]), json!([[0, 1, 2], [3, 4, 5]]));
    }

    #[test]
    fn split_pairs_rows_with_keys_and_refuses_other_keys() {
        let keys = ["a".to_owned(), "b".to_owned()];
        let reply = json!({"model_version": "2", "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 4]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2]},
            {"name": "key", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
        ]});
        let answer = split_reply("key", &keys, &reply).unwrap();
        assert_eq!(answer.version, "2");
        assert_eq!(answer.outputs[1]["label"], json!(4));
        assert_eq!(answer.outputs[0]["probabilities"], json!([0.1, 0.9]));
        let swapped = json!({"outputs": [
            {"name": "key", "datatype": "BYTES", "shape": [2], "data": ["b", "a"]},
        ]});
        assert!(split_reply("key", &keys, &swapped).is_err());
    }
}
