//! The file API: upload, download, list and delete files in a session's work
//! directory (`/sandbox`; `/home/sandbox` is the same directory). A path is
//! relative to it, or absolute under either name.
//!
//! Every operation runs inside the user's own kernel, as the unprivileged
//! sandbox user, through `_code_interpreter_files` (containerfiles/worker/),
//! which walks paths without following symlinks and touches regular files
//! only; the gateway checks paths first, moves bytes in base64 chunks, and
//! never opens a file itself. Operations take their turn with the user's
//! executions.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::errors::ApiError;
use super::models::validate_user;
use super::AppState;
use crate::kernel::{ExecuteError, KernelClient};

/// Bytes moved per kernel call.
pub(super) const CHUNK: usize = 2 * 1024 * 1024;
/// Longest one kernel call of a transfer (a chunk, a listing, a delete) may
/// take. Not Podman's call timeout (`worker::podman`), which bounds calls to
/// the Podman service and happens to be 60 s as well.
pub(super) const KERNEL_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest accepted path, bytes.
const MAX_PATH: usize = 1024;

/// `PUT /files/{path}?user_uuid=`: the body becomes the file (created or replaced).
pub async fn upload<S, B>(
    state: Arc<AppState>,
    tail: String,
    user: Option<String>,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let (user, path) = target(user, Some(&tail))?;
    let written = store(&state, &user, &path, body).await?;
    Ok(warp::reply::json(&json!({"status": "ok", "path": path, "size": written})).into_response())
}

/// `GET /files/{path}?user_uuid=`: the file's bytes.
pub async fn download(
    state: Arc<AppState>,
    tail: String,
    user: Option<String>,
) -> Result<Response, ApiError> {
    let (user, path) = target(user, Some(&tail))?;
    let content = fetch(&state, &user, &path).await?;
    let name = path
        .rsplit('/')
        .next()
        .unwrap_or("file")
        .replace(['"', '\\'], "_");
    let mut response = Response::new(Bytes::from(content).into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `GET /files?user_uuid=`: every regular file of the work directory.
pub async fn list(state: Arc<AppState>, user: Option<String>) -> Result<Response, ApiError> {
    let (user, _) = target(user, None)?;
    let files = listing(&state, &user).await?;
    Ok(warp::reply::json(&json!({"files": files})).into_response())
}

/// Writes `body` to the file at `path` (relative to the work directory,
/// checked) of `user`'s session, starting one if needed; returns its size.
/// The file API's upload and the MCP tool `write_file` both end here.
pub(crate) async fn store<S, B>(
    state: &AppState,
    user: &str,
    path: &str,
    body: S,
) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let limit = state.config.limits.disk_mb * 1024 * 1024;
    state
        .sessions
        .with_kernel(user, true, KERNEL_CALL_TIMEOUT, async |kernel| {
            let mut body = std::pin::pin!(body);
            let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
            let mut offset: u64 = 0;
            let mut ended = false;
            loop {
                while chunk.len() < CHUNK && !ended {
                    match body.next().await {
                        Some(Ok(mut part)) => {
                            while part.has_remaining() {
                                let bytes = part.chunk();
                                chunk.extend_from_slice(bytes);
                                let n = bytes.len();
                                part.advance(n);
                            }
                        }
                        // A stalled or trickled body (408) ends the
                        // upload and with it the user's turn.
                        Some(Err(e)) => return Ok(Err(ApiError::reading_body(&e, "the upload"))),
                        None => ended = true,
                    }
                }
                if offset + chunk.len() as u64 > limit {
                    return Ok(Err(too_large(limit)));
                }
                if let Err(refused) = write_chunk(kernel, path, offset, &chunk).await? {
                    return Ok(Err(refused));
                }
                offset += chunk.len() as u64;
                chunk.clear();
                if ended {
                    return Ok(Ok(offset));
                }
            }
        })
        .await?
}

/// The bytes of the file at `path` (relative, checked) of `user`'s session,
/// which must exist. The file API's download and the MCP tool `read_file`.
pub(crate) async fn fetch(state: &AppState, user: &str, path: &str) -> Result<Vec<u8>, ApiError> {
    let limit = state.config.limits.disk_mb * 1024 * 1024;
    state
        .sessions
        .with_kernel(user, false, KERNEL_CALL_TIMEOUT, async |kernel| {
            let mut content: Vec<u8> = Vec::new();
            loop {
                let (data, size) = match read_chunk(kernel, path, content.len() as u64).await? {
                    Ok(read) => read,
                    Err(refused) => return Ok(Err(refused)),
                };
                content.extend_from_slice(&data);
                if content.len() as u64 > limit {
                    return Ok(Err(too_large(limit)));
                }
                if data.is_empty() || content.len() as u64 >= size {
                    return Ok(Ok(content));
                }
            }
        })
        .await?
}

/// Every regular file of `user`'s work directory (`[{name, size, modified}]`);
/// `NoSession` (404) when the user has none. The file API's list and the MCP tool `list_files`.
pub(crate) async fn listing(state: &AppState, user: &str) -> Result<Value, ApiError> {
    state
        .sessions
        .with_kernel(user, false, KERNEL_CALL_TIMEOUT, async |kernel| {
            call_kernel(kernel, "listing()").await
        })
        .await?
}

/// `DELETE /files/{path}?user_uuid=`.
pub async fn delete(
    state: Arc<AppState>,
    tail: String,
    user: Option<String>,
) -> Result<Response, ApiError> {
    let (user, path) = target(user, Some(&tail))?;
    state
        .sessions
        .with_kernel(&user, false, KERNEL_CALL_TIMEOUT, async |kernel| {
            call_kernel(kernel, &format!("delete({})", literal(&path))).await
        })
        .await??;
    Ok(
        warp::reply::json(&json!({"status": "ok", "detail": format!("deleted {path}")}))
            .into_response(),
    )
}

/// Writes `data` at `offset` of the file at `path` (relative to the work
/// directory, checked); offset 0 creates or truncates it.
pub(super) async fn write_chunk(
    kernel: &mut KernelClient,
    path: &str,
    offset: u64,
    data: &[u8],
) -> Result<Result<(), ApiError>, ExecuteError> {
    let data = base64::engine::general_purpose::STANDARD.encode(data);
    let call = format!("write({}, {offset}, {})", literal(path), literal(&data));
    Ok(call_kernel(kernel, &call).await?.map(|_| ()))
}

/// Reads at most [`CHUNK`] bytes at `offset`; also the file's size now.
pub(super) async fn read_chunk(
    kernel: &mut KernelClient,
    path: &str,
    offset: u64,
) -> Result<Result<(Vec<u8>, u64), ApiError>, ExecuteError> {
    let call = format!("read({}, {offset}, {CHUNK})", literal(path));
    let reply = match call_kernel(kernel, &call).await? {
        Ok(reply) => reply,
        Err(refused) => return Ok(Err(refused)),
    };
    let data = base64::engine::general_purpose::STANDARD
        .decode(reply["data"].as_str().unwrap_or_default())
        .map_err(|e| ExecuteError::Kernel(anyhow::anyhow!("kernel sent bad base64: {e}")))?;
    if data.len() > CHUNK {
        return Err(ExecuteError::Kernel(anyhow::anyhow!(
            "the file helper sent more than it was asked for"
        )));
    }
    Ok(Ok((data, reply["size"].as_u64().unwrap_or(0))))
}

/// Deletes the file at `path`, whatever the helper answers (a partial
/// transfer's clean-up).
pub(super) async fn delete_quietly(
    kernel: &mut KernelClient,
    path: &str,
) -> Result<(), ExecuteError> {
    let _ = call_kernel(kernel, &format!("delete({})", literal(path))).await?;
    Ok(())
}

/// Calls a function of the in-kernel helper; the outer error means the kernel
/// failed (the worker is reset), the inner one that the helper refused.
async fn call_kernel(
    kernel: &mut KernelClient,
    call: &str,
) -> Result<Result<Value, ApiError>, ExecuteError> {
    let expression = format!("__import__('_code_interpreter_files').{call}");
    let deadline = tokio::time::Instant::now() + KERNEL_CALL_TIMEOUT;
    let text = kernel.evaluate(&expression, deadline).await?;
    let reply: Value = serde_json::from_str(&text).map_err(|e| {
        ExecuteError::Kernel(anyhow::anyhow!("the file helper answered {text:.80}: {e}"))
    })?;
    if let Some(value) = reply.get("ok") {
        return Ok(Ok(value.clone()));
    }
    let detail = reply["detail"]
        .as_str()
        .unwrap_or("file operation failed")
        .to_string();
    let status = match reply["error"].as_str().unwrap_or("") {
        "bad_path" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "no_space" | "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Ok(Err(ApiError::new(status, detail)))
}

pub(super) fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "files are limited to the worker's disk ({} MiB)",
            limit / (1024 * 1024)
        ),
    )
}

/// A Rust string as a Python string literal (JSON strings are valid Python).
fn literal(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialise")
}

/// The user (`?user_uuid=`, decoded by warp's query filter) and the checked
/// path from the URL tail (still percent-encoded: warp's `tail()` is not decoded).
fn target(user: Option<String>, tail: Option<&str>) -> Result<(String, String), ApiError> {
    let user =
        user.ok_or_else(|| ApiError::bad_request("the user_uuid query parameter is required"))?;
    validate_user(&user).map_err(ApiError::bad_request)?;
    let path = match tail {
        Some(tail) => {
            let path = decode_path(tail)?;
            work_relative(&path)
                .map(str::to_string)
                .map_err(ApiError::bad_request)?
        }
        None => String::new(),
    };
    Ok((user, path))
}

/// Absolute spellings of the work directory a path may start with.
pub const WORK_DIR_NAMES: [&str; 2] = ["/sandbox", "/home/sandbox"];

/// `path` relative to the work directory: as given when relative, without
/// the prefix when absolute under `/sandbox` or `/home/sandbox`; checked.
pub fn work_relative(path: &str) -> Result<&str, String> {
    let relative = WORK_DIR_NAMES
        .iter()
        .find_map(|dir| path.strip_prefix(dir)?.strip_prefix('/'))
        .unwrap_or(path);
    if path.starts_with('/') && relative.len() == path.len() {
        return Err(format!(
            "an absolute path must be inside the work directory ({}/...)",
            WORK_DIR_NAMES[0]
        ));
    }
    validate_path(relative)?;
    Ok(relative)
}

/// The work directory's path relative to itself for a directory `dir` and a
/// file `name` of a request body: `dir` is absolute inside the work directory
/// (`/sandbox/data`, or `/home/sandbox/data`), relative to it (`data`), or the
/// directory itself; `name` is one path component. The result is checked like
/// a URL path.
pub(super) fn in_work_dir(dir: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains(['/', '\\']) || name.contains("..") || name == "." {
        return Err(format!(
            "the name {name:?} must be one path component (no separator, no \"..\")"
        ));
    }
    let dir = dir.trim_end_matches('/');
    let relative = if dir.is_empty() || dir == "." || WORK_DIR_NAMES.contains(&dir) {
        ""
    } else if dir.starts_with('/') || dir.starts_with('~') {
        let outside = || {
            format!(
                "the path {dir:?} is outside the work directory {}",
                WORK_DIR_NAMES[0]
            )
        };
        if dir.starts_with('~') {
            return Err(outside());
        }
        // A path under the work directory keeps its own complaint (a `..`, say).
        work_relative(dir).map_err(|e| {
            if WORK_DIR_NAMES
                .iter()
                .any(|d| dir.starts_with(&format!("{d}/")))
            {
                e
            } else {
                outside()
            }
        })?
    } else {
        dir
    };
    let path = if relative.is_empty() {
        name.to_string()
    } else {
        format!("{relative}/{name}")
    };
    validate_path(&path)?;
    Ok(path)
}

/// The absolute path of a path relative to the work directory.
pub(super) fn full_path(relative: &str) -> String {
    format!("{}/{relative}", WORK_DIR_NAMES[0])
}

/// A path relative to the work directory, without tricks.
fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a file path is required: /files/{path}".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!("paths are limited to {MAX_PATH} bytes"));
    }
    if path.starts_with('/') {
        return Err("the path must be relative to the work directory".into());
    }
    if path.chars().any(char::is_control) {
        return Err("the path must not contain NUL or control characters".into());
    }
    if path.split('/').any(|part| matches!(part, "" | "." | "..")) {
        return Err("empty, '.' and '..' path components are not allowed".into());
    }
    Ok(())
}

/// Percent-decodes the URL tail. `percent_decode_str` passes a stray `%`
/// through as is; a path with one is refused instead, as a client that meant
/// a literal `%` would have sent `%25`.
fn decode_path(tail: &str) -> Result<String, ApiError> {
    let well_formed = tail
        .split('%')
        .skip(1)
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return Err(ApiError::bad_request(
            "malformed percent-encoding in the URL",
        ));
    }
    percent_encoding::percent_decode_str(tail)
        .decode_utf8()
        .map(|path| path.into_owned())
        .map_err(|_| ApiError::bad_request("the path is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_before_the_kernel_sees_them() {
        for good in ["data.csv", "dir/sub/file.txt", "ünïcode.txt", "a b.txt"] {
            assert!(validate_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/.",
            "x\0y",
            "a\nb",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn absolute_paths_inside_the_work_directory_are_made_relative() {
        assert_eq!(work_relative("/sandbox/a/b.csv"), Ok("a/b.csv"));
        assert_eq!(work_relative("/home/sandbox/b.csv"), Ok("b.csv"));
        assert_eq!(work_relative("data/x.txt"), Ok("data/x.txt"));
        for bad in [
            "/sandbox",
            "/sandbox/",
            "/sandboxes/x",
            "/home/sandbox/../x",
            "/etc/passwd",
            "/tmp/x",
            "/sandbox//x",
        ] {
            assert!(work_relative(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn body_paths_stay_in_the_work_directory() {
        assert_eq!(in_work_dir("/home/sandbox", "a.csv").unwrap(), "a.csv");
        assert_eq!(in_work_dir("/home/sandbox/", "a.csv").unwrap(), "a.csv");
        assert_eq!(in_work_dir("", "a.csv").unwrap(), "a.csv");
        assert_eq!(in_work_dir(".", "a.csv").unwrap(), "a.csv");
        assert_eq!(
            in_work_dir("/home/sandbox/d/e", "a.csv").unwrap(),
            "d/e/a.csv"
        );
        assert_eq!(in_work_dir("d", "a.csv").unwrap(), "d/a.csv");
        for (dir, name) in [
            ("/etc", "a"),
            ("/home/sandboxx", "a"),
            ("/home/sandbox/../x", "a"),
            ("../x", "a"),
            ("~", "a"),
            ("/sandboxx", "a"),
            ("~/x", "a"),
            ("d", "a/b"),
            ("d", "a\\b"),
            ("d", ".."),
            ("d", "."),
            ("d", ""),
            ("d", "x..y"),
            ("d//e", "a"),
            ("d", "a\0"),
        ] {
            assert!(in_work_dir(dir, name).is_err(), "{dir:?} {name:?} accepted");
        }
        assert_eq!(full_path("d/a.csv"), "/sandbox/d/a.csv");
        assert_eq!(in_work_dir("/sandbox/d", "a.csv").unwrap(), "d/a.csv");
        assert_eq!(in_work_dir("/sandbox/", "a.csv").unwrap(), "a.csv");
    }

    #[test]
    fn tails_decode() {
        let user = || Some("u".to_string());
        let (_, path) = target(user(), Some("dir/na%C3%AFve%2Etxt")).unwrap();
        assert_eq!(path, "dir/naïve.txt");
        let (_, path) = target(user(), Some("a+b%2B%25.txt")).unwrap();
        assert_eq!(path, "a+b+%.txt", "+ is not a space in a path");
        let (_, path) = target(user(), Some("%2Fsandbox%2Fa.txt")).unwrap();
        assert_eq!(path, "a.txt");
        assert!(target(None, Some("a")).is_err());
        assert!(
            target(user(), Some("%2e%2e/x")).is_err(),
            "encoded .. is refused"
        );
        assert!(
            target(user(), Some("a%00b")).is_err(),
            "encoded NUL is refused"
        );
        for malformed in ["%zz", "a%2", "a%", "%%41"] {
            assert!(target(user(), Some(malformed)).is_err(), "{malformed}");
        }
        assert!(
            target(user(), Some("%FF")).is_err(),
            "invalid UTF-8 is refused"
        );
    }

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(literal("a\"); import os #"), r#""a\"); import os #""#);
        assert_eq!(literal("x\\y\n"), r#""x\\y\n""#);
    }
}
