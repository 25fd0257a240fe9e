// SPDX-License-Identifier: Apache-2.0
//! HTTP request parsing (httparse) and routing to [`ApiRequest`]s.
//!
//! Pure functions over bytes, so the fuzzer drives them directly.

use serde::de::DeserializeOwned;

use super::{ApiRequest, ApiResponse, RestoreBody, ResumeBody, SnapshotBody, API_PREFIX};
use crate::migration::{MigrationUrl, ReceiveOptions, SendOptions};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;

/// Why a request cannot be parsed. Each maps to an HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request headers are larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("chunked request bodies are not supported: send Content-Length")]
    Chunked,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadContentLength => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Chunked => 411,
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub expect_continue: bool,
}

/// Parses the request head at the start of `buf`; `Ok(None)` when more
/// bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let mut content_length = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(HttpError::BadContentLength)?;
            if content_length.is_some_and(|c| c != v) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(Some(Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        content_length,
        len,
        expect_continue,
    }))
}

fn body<T: DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<T, ApiResponse> {
    if body.is_empty() {
        return Err(ApiResponse::error(
            400,
            &format!("{endpoint} needs a JSON body"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiResponse::error(400, &format!("bad {endpoint} body: {e}")))
}

/// A body that may be left out (empty or only whitespace): `T::default()`.
fn optional_body<T: DeserializeOwned + Default>(
    payload: &[u8],
    endpoint: &str,
) -> Result<T, ApiResponse> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    body(payload, endpoint)
}

fn check_url(url: &str) -> Result<(), ApiResponse> {
    MigrationUrl::parse(url)
        .map(|_| ())
        .map_err(|e| ApiResponse::error(400, &e.to_string()))
}

/// Turns a request into an [`ApiRequest`], or the error answer.
pub fn route(method: &str, path: &str, payload: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let path = path.split('?').next().unwrap_or("");
    let Some(endpoint) = path.strip_prefix(API_PREFIX) else {
        return Err(ApiResponse::error(404, &format!("no endpoint at {path}")));
    };
    let get = matches!(endpoint, "vm.info" | "vm.migration-status");
    let known = matches!(
        endpoint,
        "vm.info"
            | "vm.pause"
            | "vm.resume"
            | "vm.shutdown"
            | "vm.snapshot"
            | "vm.restore"
            | "vm.send-migration"
            | "vm.receive-migration"
            | "vm.migration-status"
            | "vm.migration-cancel"
    );
    if !known {
        return Err(ApiResponse::error(404, &format!("no endpoint {endpoint}")));
    }
    let method_ok = if get {
        method == "GET"
    } else {
        method == "PUT" || method == "POST"
    };
    if !method_ok {
        let want = if get { "GET" } else { "PUT" };
        return Err(ApiResponse::error(
            405,
            &format!("{endpoint} takes {want}, not {method}"),
        ));
    }
    Ok(match endpoint {
        "vm.info" => ApiRequest::VmInfo,
        "vm.pause" => ApiRequest::VmPause,
        "vm.resume" => {
            let b: ResumeBody = optional_body(payload, endpoint)?;
            ApiRequest::VmResume { force: b.force }
        }
        "vm.shutdown" => ApiRequest::VmShutdown,
        "vm.snapshot" => {
            let b: SnapshotBody = body(payload, endpoint)?;
            ApiRequest::VmSnapshot {
                destination: b.destination,
            }
        }
        "vm.restore" => {
            let b: RestoreBody = body(payload, endpoint)?;
            ApiRequest::VmRestore { source: b.source }
        }
        "vm.send-migration" => {
            let o: SendOptions = body(payload, endpoint)?;
            check_url(&o.destination_url)?;
            ApiRequest::SendMigration(o)
        }
        "vm.receive-migration" => {
            let o: ReceiveOptions = body(payload, endpoint)?;
            check_url(&o.receiver_url)?;
            ApiRequest::ReceiveMigration(o)
        }
        "vm.migration-status" => ApiRequest::MigrationStatus,
        _ => ApiRequest::MigrationCancel,
    })
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Encodes a response (the connection is closed after it).
pub fn encode_response(r: &ApiResponse) -> Vec<u8> {
    let body = r
        .body
        .as_ref()
        .and_then(|b| serde_json::to_vec(b).ok())
        .unwrap_or_default();
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    if !body.is_empty() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Fuzz entry point: parses and routes `data` as one request. Never panics.
pub fn fuzz_request(data: &[u8]) {
    if let Ok(Some(head)) = parse_head(data) {
        let end = head.len.saturating_add(head.content_length).min(data.len());
        let _ = route(&head.method, &head.path, &data[head.len..end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_head_is_parsed_with_its_length() {
        let req = b"PUT /api/v1/vm.pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nrest";
        let h = parse_head(req).unwrap().unwrap();
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/api/v1/vm.pause");
        assert_eq!(h.len, req.len() - 4);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(
            parse_head(b"GET /api/v1/vm.info HTTP/1.1\r\nHo").unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let err = parse_head(b"\x00\x01 nonsense\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn endless_head_is_too_large() {
        let mut req = b"GET /api/v1/vm.info HTTP/1.1\r\n".to_vec();
        while req.len() < MAX_HEAD + 10 {
            req.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_head(&req).unwrap_err(), HttpError::HeadTooLarge);
    }

    #[test]
    fn huge_content_length_is_refused_before_reading() {
        let req = b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
        assert_eq!(parse_head(req).unwrap_err().status(), 413);
    }

    #[test]
    fn conflicting_content_lengths_are_refused() {
        let req = b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_head(req).unwrap_err(), HttpError::BadContentLength);
    }

    #[test]
    fn chunked_body_asks_for_a_length() {
        let req = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(req).unwrap_err().status(), 411);
    }

    #[test]
    fn every_endpoint_routes() {
        let cases: [(&str, &str, &str, ApiRequest); 6] = [
            ("GET", "vm.info", "", ApiRequest::VmInfo),
            ("PUT", "vm.pause", "", ApiRequest::VmPause),
            (
                "POST",
                "vm.resume",
                "",
                ApiRequest::VmResume { force: false },
            ),
            ("PUT", "vm.shutdown", "", ApiRequest::VmShutdown),
            (
                "GET",
                "vm.migration-status",
                "",
                ApiRequest::MigrationStatus,
            ),
            (
                "PUT",
                "vm.migration-cancel",
                "",
                ApiRequest::MigrationCancel,
            ),
        ];
        for (m, e, b, want) in cases {
            assert_eq!(
                route(m, &format!("/api/v1/{e}"), b.as_bytes()).unwrap(),
                want
            );
        }
        assert_eq!(
            route("PUT", "/api/v1/vm.snapshot", br#"{"destination":"/tmp/s"}"#).unwrap(),
            ApiRequest::VmSnapshot {
                destination: "/tmp/s".into()
            }
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.restore", br#"{"source":"/tmp/s"}"#).unwrap(),
            ApiRequest::VmRestore {
                source: "/tmp/s".into()
            }
        );
        assert_eq!(
            route(
                "PUT",
                "/api/v1/vm.receive-migration",
                br#"{"receiver_url":"tcp:0.0.0.0:4000"}"#
            )
            .unwrap(),
            ApiRequest::ReceiveMigration(ReceiveOptions {
                receiver_url: "tcp:0.0.0.0:4000".into()
            })
        );
    }

    #[test]
    fn send_migration_fills_in_defaults() {
        let r = route(
            "PUT",
            "/api/v1/vm.send-migration",
            br#"{"destination_url":"unix:/tmp/m.sock"}"#,
        )
        .unwrap();
        let ApiRequest::SendMigration(o) = r else {
            panic!("wrong request {r:?}");
        };
        assert_eq!(o.downtime_ms, 100);
        assert!(!o.local);
    }

    #[test]
    fn send_migration_with_a_bad_url_is_a_400_naming_the_forms() {
        let err = route(
            "PUT",
            "/api/v1/vm.send-migration",
            br#"{"destination_url":"ftp://x"}"#,
        )
        .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.body.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("unix:PATH or tcp:HOST:PORT"));
    }

    #[test]
    fn missing_or_bad_bodies_are_400() {
        assert_eq!(
            route("PUT", "/api/v1/vm.snapshot", b"").unwrap_err().status,
            400
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.snapshot", b"{")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            route(
                "PUT",
                "/api/v1/vm.snapshot",
                br#"{"destination":"/a","x":1}"#
            )
            .unwrap_err()
            .status,
            400
        );
    }

    #[test]
    fn resume_without_a_body_is_not_forced() {
        for payload in [&b""[..], b"  \r\n"] {
            assert_eq!(
                route("PUT", "/api/v1/vm.resume", payload).unwrap(),
                ApiRequest::VmResume { force: false }
            );
        }
    }

    #[test]
    fn resume_with_force_is_forced() {
        assert_eq!(
            route("PUT", "/api/v1/vm.resume", br#"{"force":true}"#).unwrap(),
            ApiRequest::VmResume { force: true }
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.resume", br#"{"force":false}"#).unwrap(),
            ApiRequest::VmResume { force: false }
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.resume", b"{}").unwrap(),
            ApiRequest::VmResume { force: false }
        );
    }

    #[test]
    fn resume_with_a_bad_body_is_a_400_naming_the_problem() {
        let cases: [(&[u8], &str); 4] = [
            (b"{", "EOF"),
            (br#"{"force":"yes"}"#, "invalid type"),
            (br#"{"forced":true}"#, "unknown field `forced`"),
            (b"null", "invalid type: null"),
        ];
        for (payload, problem) in cases {
            let err = route("PUT", "/api/v1/vm.resume", payload).unwrap_err();
            assert_eq!(err.status, 400);
            let message = err.body.unwrap()["error"].as_str().unwrap().to_string();
            assert!(message.starts_with("bad vm.resume body"), "{message}");
            assert!(message.contains(problem), "{message}");
        }
    }

    #[test]
    fn wrong_method_is_405_and_unknown_endpoint_is_404() {
        assert_eq!(
            route("GET", "/api/v1/vm.pause", b"").unwrap_err().status,
            405
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.info", b"").unwrap_err().status,
            405
        );
        assert_eq!(
            route("GET", "/api/v1/vm.nope", b"").unwrap_err().status,
            404
        );
        assert_eq!(route("GET", "/other", b"").unwrap_err().status, 404);
    }

    #[test]
    fn response_has_length_and_closes() {
        let out = encode_response(&ApiResponse::error(409, "busy"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"));
        assert!(text.contains("Content-Length: 16\r\n"));
        assert!(text.ends_with("{\"error\":\"busy\"}"));
    }

    #[test]
    fn fuzz_entry_survives_odd_inputs() {
        fuzz_request(b"");
        fuzz_request(b"PUT /api/v1/vm.snapshot HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"dest");
        fuzz_request(b"GET / HTTP/1.1\r\n\r\n");
        fuzz_request(b"PUT /api/v1/vm.resume HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"force\"");
        fuzz_request(&[0xff; 100]);
    }
}
