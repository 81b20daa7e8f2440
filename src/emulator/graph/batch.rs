//! `POST /v1.0/$batch`: up to 20 requests, four at a time, `dependsOn` → 424.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::{GraphError, GraphRequest, RequestIds, handle};
use crate::emulator::Shared;
use crate::emulator::middleware::{self, Record, ResetConnection};
use crate::emulator::util::log_time;

/// Most requests in one batch.
const MAX_REQUESTS: usize = 20;
/// Outlook runs up to four requests of a batch at a time.
const PARALLEL: usize = 4;

/// One request of the batch, validated.
#[derive(Clone)]
struct Part {
    id: String,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    depends_on: Vec<String>,
    /// Set when the request is refused before it runs.
    refused: Option<GraphError>,
}

/// Runs a batch; `outer_seq` links the inner requests to it in the log.
pub(crate) async fn handle_batch(emu: &Shared, outer: GraphRequest, outer_seq: Option<u64>) -> Response {
    let ids = RequestIds::from_headers(&outer.headers);
    let now = emu.clock.now();
    let parts = match parse(&outer) {
        Ok(parts) => parts,
        Err(err) => {
            let mut resp = err.render(now, &ids.request_id, &ids.client_request_id);
            ids.stamp(&mut resp);
            return resp;
        }
    };
    let mut done: HashMap<String, Value> = HashMap::new();
    let mut statuses: HashMap<String, u16> = HashMap::new();
    let mut reset = false;
    while done.len() < parts.len() {
        let ready: Vec<&Part> = parts
            .iter()
            .filter(|p| !done.contains_key(&p.id) && p.depends_on.iter().all(|d| statuses.contains_key(d)))
            .collect();
        let mut runnable = Vec::new();
        for part in ready {
            if part
                .depends_on
                .iter()
                .any(|d| statuses.get(d).is_some_and(|s| *s >= 400))
            {
                statuses.insert(part.id.clone(), 424);
                done.insert(part.id.clone(), json!({"id": part.id, "status": 424, "body": {"error": {"code": "FailedDependency", "message": "A request this one depends on failed."}}}));
            } else {
                runnable.push(part);
            }
        }
        let mut runs = Vec::with_capacity(runnable.len());
        for part in runnable {
            runs.push(run_part(emu.clone(), part.clone(), outer.headers.clone(), outer_seq));
        }
        let results: Vec<(String, u16, Value, bool)> = futures_util::stream::iter(runs)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (id, status, value, was_reset) in results {
            reset |= was_reset;
            statuses.insert(id.clone(), status);
            done.insert(id, value);
        }
    }
    let responses: Vec<Value> = parts.iter().filter_map(|p| done.remove(&p.id)).collect();
    let mut resp = Json(json!({"responses": responses})).into_response();
    ids.stamp(&mut resp);
    if reset {
        resp.extensions_mut().insert(ResetConnection);
    }
    resp
}

/// Validates the batch envelope; per-request problems become per-request 400s.
fn parse(outer: &GraphRequest) -> Result<Vec<Part>, GraphError> {
    let bad = |m: &str| GraphError::bad_request("BadRequest", m.to_string());
    let value: Value = serde_json::from_slice(&outer.body).map_err(|e| bad(&format!("Invalid batch payload: {e}")))?;
    let requests = value["requests"]
        .as_array()
        .ok_or_else(|| bad("Invalid batch payload format: 'requests' array missing."))?;
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(bad(&format!(
            "A batch holds 1 to {MAX_REQUESTS} requests; this one has {}.",
            requests.len()
        )));
    }
    let mut parts: Vec<Part> = Vec::new();
    for r in requests {
        let id = match &r["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(bad("Every batch request needs an 'id'.")),
        };
        if parts.iter().any(|p| p.id == id) {
            return Err(bad(&format!("Batch request id '{id}' is used more than once.")));
        }
        let method = r["method"]
            .as_str()
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .unwrap_or(Method::GET);
        let url = r["url"].as_str().unwrap_or_default().to_string();
        let mut headers = HeaderMap::new();
        for (k, v) in r["headers"].as_object().into_iter().flatten() {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(HeaderValue::from_str),
            ) {
                headers.insert(name, value);
            }
        }
        let body = match &r["body"] {
            Value::Null => Bytes::new(),
            Value::String(s) => Bytes::from(s.clone()),
            other => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
        };
        let mut refused = None;
        if url.is_empty() || url.starts_with("http") {
            refused = Some(bad(
                "Batch request urls are relative to the version, e.g. '/me/messages'.",
            ));
        } else if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
            refused = Some(bad(&format!(
                "Write request id : {id} does not contain Content-Type header or body."
            )));
        }
        let depends_on = r["dependsOn"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        parts.push(Part {
            id,
            method,
            url,
            headers,
            body,
            depends_on,
            refused,
        });
    }
    for p in &parts {
        if let Some(missing) = p.depends_on.iter().find(|d| !parts.iter().any(|q| &q.id == *d)) {
            return Err(bad(&format!(
                "Request '{}' depends on unknown request '{missing}'.",
                p.id
            )));
        }
    }
    Ok(parts)
}

/// Runs one part as its own Graph request (faults, throttling and log included).
async fn run_part(emu: Shared, part: Part, outer_headers: HeaderMap, batch: Option<u64>) -> (String, u16, Value, bool) {
    let (path, query) = match part.url.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (part.url.clone(), None),
    };
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let mut headers = part.headers.clone();
    if let Some(auth) = outer_headers.get(header::AUTHORIZATION) {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.body.len()));
    let seq = emu.log.begin();
    let started = Instant::now();
    let time = log_time(emu.clock.now());
    let full_path = crate::emulator::util::decode_path(&format!("/v1.0{path}"));
    let resp = if let Some(err) = &part.refused {
        let ids = RequestIds::from_headers(&headers);
        err.render(emu.clock.now(), &ids.request_id, &ids.client_request_id)
    } else {
        let (answer, delay_after) = middleware::fault(&emu, part.method.as_str(), &full_path, &headers).await;
        let resp = match answer {
            Some(resp) => resp,
            None => {
                handle(
                    &emu,
                    GraphRequest {
                        method: part.method.clone(),
                        path,
                        query: query.clone(),
                        headers: headers.clone(),
                        body: part.body.clone(),
                    },
                )
                .await
            }
        };
        if let Some(wait) = delay_after {
            tokio::time::sleep(wait).await;
        }
        resp
    };
    let record = Record {
        seq,
        time,
        started,
        method: part.method.to_string(),
        path: full_path,
        query,
        headers: &headers,
        batch,
    };
    middleware::record(&emu, record, &resp);
    let reset = resp.extensions().get::<ResetConnection>().is_some();
    let status = resp.status().as_u16();
    let mut out_headers = Map::new();
    for (name, value) in resp.headers() {
        if let Ok(v) = value.to_str() {
            out_headers.insert(name.to_string(), json!(v));
        }
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let mut value = json!({"id": part.id, "status": status, "headers": out_headers});
    if !bytes.is_empty() {
        value["body"] = match (is_json, serde_json::from_slice::<Value>(&bytes)) {
            (true, Ok(v)) => v,
            _ => json!(crate::emulator::util::b64(&bytes)),
        };
    }
    (part.id.clone(), status, value, reset)
}
