// SPDX-License-Identifier: Apache-2.0
//! A small client for the control API (used by `shoal api`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::API_PREFIX;

/// Largest answer accepted.
const MAX_RESPONSE: u64 = 16 << 20;

/// Errors of talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the API socket {0} (is the VM running with --api-socket?)")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("cannot talk to the API")]
    Io(#[source] std::io::Error),
    #[error("malformed answer from the API: {0}")]
    Malformed(String),
}

/// An answer.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

impl Response {
    /// The `error` field of an error answer, or the status.
    pub fn error_message(&self) -> String {
        self.body
            .as_ref()
            .and_then(|b| b.get("error"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP status {}", self.status))
    }

    /// The body as indented JSON (empty when there is none).
    pub fn pretty(&self) -> String {
        self.body
            .as_ref()
            .and_then(|b| serde_json::to_string_pretty(b).ok())
            .unwrap_or_default()
    }

    /// The body decoded as `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        let body = self
            .body
            .clone()
            .ok_or_else(|| ClientError::Malformed("the answer has no body".into()))?;
        serde_json::from_value(body).map_err(|e| ClientError::Malformed(e.to_string()))
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request with a typed body (`None::<&()>` for none).
pub fn call<T: serde::Serialize>(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&T>,
) -> Result<Response, ClientError> {
    let value = match body {
        Some(b) => Some(
            serde_json::to_value(b).map_err(|e| ClientError::Malformed(format!("request: {e}")))?,
        ),
        None => None,
    };
    request(socket, method, endpoint, value.as_ref())
}

/// Sends one request to `endpoint` (e.g. `vm.info`) and reads the answer.
pub fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&serde_json::Value>,
) -> Result<Response, ClientError> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| ClientError::Connect(socket.to_path_buf(), e))?;
    s.set_read_timeout(Some(Duration::from_secs(330)))
        .map_err(ClientError::Io)?;
    let payload = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let mut req = format!(
        "{method} {API_PREFIX}{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&payload);
    s.write_all(&bytes).map_err(ClientError::Io)?;
    let mut out = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut out)
        .map_err(ClientError::Io)?;
    parse_response(&out)
}

/// Parses a whole answer.
pub fn parse_response(out: &[u8]) -> Result<Response, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::Malformed("the answer was cut short".into()))
        }
        Err(e) => return Err(ClientError::Malformed(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let body = &out[len..];
    let body = if body.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice(body)
                .map_err(|e| ClientError::Malformed(format!("body is not JSON: {e}")))?,
        )
    };
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_with_json_body_is_parsed() {
        let r =
            parse_response(b"HTTP/1.1 409 Conflict\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}")
                .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.error_message(), "x");
        assert!(!r.is_success());
    }

    #[test]
    fn cut_answer_is_malformed() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
    }

    #[test]
    fn missing_socket_error_names_it() {
        let err = request(Path::new("/nonexistent/api.sock"), "GET", "vm.info", None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/api.sock"));
    }
}
