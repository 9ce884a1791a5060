//! Files by URL: `POST /files` fetches URLs into a session, `POST
//! /files/export` uploads session files to URLs (a plain PUT, or an S3-style
//! presigned POST). The original service's API, with its 422 for bad input.
//!
//! Workers have no network: the gateway makes the HTTP requests
//! ([`crate::transfer`], guarded by [`crate::net_guard`]) and moves the bytes
//! through the user's kernel in the file API's chunks, streaming both ways,
//! so that it never holds more than a chunk of a file. Every item of a
//! request is checked before the first transfer; items then run in order and
//! the first failure ends the request (earlier files stay written; a file
//! fetched only in part is deleted).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::errors::ApiError;
use super::files::{self, CHUNK, KERNEL_CALL_TIMEOUT};
use super::models::validate_user;
use super::AppState;
use crate::kernel::{ExecuteError, KernelClient};
use crate::transfer::{TransferError, Transfers};

/// Largest request body of these routes, bytes (100 presigned URLs and their fields fit).
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Most files of one request.
pub const MAX_FILES: usize = 100;
/// Most `upload_fields` of one file, and the longest field value, bytes.
const MAX_FIELDS: usize = 64;
const MAX_FIELD_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
struct FetchRequest {
    files: Vec<FetchItem>,
}

#[derive(Debug, Deserialize)]
struct FetchItem {
    download_url: String,
    path: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ExportRequest {
    files: Vec<ExportItem>,
}

#[derive(Debug, Deserialize)]
struct ExportItem {
    path: String,
    name: String,
    upload_url: String,
    /// Present: an S3-style presigned POST with these form fields.
    #[serde(default)]
    upload_fields: Option<BTreeMap<String, String>>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
}

impl From<TransferError> for ApiError {
    fn from(error: TransferError) -> Self {
        match error {
            TransferError::Refused(why) => invalid(why),
            TransferError::TooLarge(limit) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("files by URL are limited to {limit} bytes (files.max_url_bytes and the worker's disk)"),
            ),
            TransferError::Remote(why) => ApiError::new(StatusCode::BAD_GATEWAY, why),
            TransferError::Timeout(after) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the transfer took longer than {} s (files.url_timeout_secs)", after.as_secs()),
            ),
        }
    }
}

/// The user, and the body as `T`: shape errors are 422 like the original's.
fn request<T: serde::de::DeserializeOwned>(
    user: Option<String>,
    body: Value,
) -> Result<(String, T), ApiError> {
    let user = user.ok_or_else(|| invalid("the user_uuid query parameter is required"))?;
    validate_user(&user).map_err(invalid)?;
    let parsed =
        serde_json::from_value(body).map_err(|e| invalid(format!("invalid request: {e}")))?;
    Ok((user, parsed))
}

fn check_count(count: usize) -> Result<(), ApiError> {
    if !(1..=MAX_FILES).contains(&count) {
        return Err(invalid(format!(
            "files must list 1 to {MAX_FILES} files, not {count}"
        )));
    }
    Ok(())
}

/// `POST /files?user_uuid=`: downloads each `download_url` into `path/name`.
pub async fn fetch(
    state: Arc<AppState>,
    user: Option<String>,
    body: Value,
) -> Result<Response, ApiError> {
    let transfers = Arc::clone(&state.transfers);
    let (user, request): (String, FetchRequest) = request(user, body)?;
    check_count(request.files.len())?;
    let mut planned = Vec::with_capacity(request.files.len());
    for (i, item) in request.files.iter().enumerate() {
        let path = files::in_work_dir(&item.path, &item.name)
            .map_err(|e| invalid(format!("files[{i}]: {e}")))?;
        transfers
            .parse(&item.download_url)
            .map_err(|e| prefixed(i, e.into()))?;
        planned.push((path, item.download_url.as_str()));
    }
    let mut results = Vec::with_capacity(planned.len());
    for (i, (path, url)) in planned.into_iter().enumerate() {
        let response = transfers
            .get(url)
            .await
            .map_err(|e| prefixed(i, e.into()))?;
        let size = state
            .sessions
            .with_kernel(&user, true, KERNEL_CALL_TIMEOUT, async |kernel| {
                stream_into(kernel, &transfers, response, &path).await
            })
            .await?
            .map_err(|e| prefixed(i, e))?;
        results.push(json!({"full_path": files::full_path(&path), "size": size}));
    }
    let body = json!({"success": true, "results": results});
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED).into_response())
}

/// The response body into the file at `path`, in chunks, counted against the
/// cap. A file written in part is deleted; one the failure came before (the
/// first write truncates) is left as it was.
async fn stream_into(
    kernel: &mut KernelClient,
    transfers: &Transfers,
    mut response: reqwest::Response,
    path: &str,
) -> Result<Result<u64, ApiError>, ExecuteError> {
    let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut offset: u64 = 0;
    loop {
        let part = match response.chunk().await {
            Ok(part) => part,
            Err(e) => return abandon(kernel, path, offset, transfers.failure(e).into()).await,
        };
        let ended = part.is_none();
        if let Some(part) = part {
            if offset + (chunk.len() + part.len()) as u64 > transfers.max_bytes {
                let error = TransferError::TooLarge(transfers.max_bytes).into();
                return abandon(kernel, path, offset, error).await;
            }
            chunk.extend_from_slice(&part);
        }
        // Whole chunks as they fill; the rest (or an empty file) at the end.
        while chunk.len() >= CHUNK || (ended && (!chunk.is_empty() || offset == 0)) {
            let n = chunk.len().min(CHUNK);
            if let Err(refused) = files::write_chunk(kernel, path, offset, &chunk[..n]).await? {
                return abandon(kernel, path, offset, refused).await;
            }
            offset += n as u64;
            chunk.drain(..n);
            if ended && chunk.is_empty() {
                break;
            }
        }
        if ended {
            return Ok(Ok(offset));
        }
    }
}

/// Ends a fetch with `error`, deleting the file when `written` bytes of it are.
async fn abandon(
    kernel: &mut KernelClient,
    path: &str,
    written: u64,
    error: ApiError,
) -> Result<Result<u64, ApiError>, ExecuteError> {
    if written > 0 {
        files::delete_quietly(kernel, path).await?;
    }
    Ok(Err(error))
}

/// `POST /files/export?user_uuid=`: uploads each session file to its `upload_url`.
pub async fn export(
    state: Arc<AppState>,
    user: Option<String>,
    body: Value,
) -> Result<Response, ApiError> {
    let transfers = Arc::clone(&state.transfers);
    let (user, request): (String, ExportRequest) = request(user, body)?;
    check_count(request.files.len())?;
    let mut planned = Vec::with_capacity(request.files.len());
    for (i, item) in request.files.iter().enumerate() {
        let path = files::in_work_dir(&item.path, &item.name)
            .map_err(|e| invalid(format!("files[{i}]: {e}")))?;
        if let Some(fields) = &item.upload_fields {
            check_fields(fields).map_err(|e| invalid(format!("files[{i}]: {e}")))?;
        }
        transfers
            .parse(&item.upload_url)
            .map_err(|e| prefixed(i, e.into()))?;
        planned.push((path, item));
    }
    let mut results = Vec::with_capacity(planned.len());
    for (i, (path, item)) in planned.into_iter().enumerate() {
        let size = state
            .sessions
            .with_kernel(&user, false, KERNEL_CALL_TIMEOUT, async |kernel| {
                upload(kernel, &transfers, &path, item).await
            })
            .await?
            .map_err(|e| prefixed(i, e))?;
        results.push(json!({"path": item.path, "name": item.name, "size": size}));
    }
    Ok(warp::reply::json(&json!({"success": true, "results": results})).into_response())
}

/// S3-style form fields: names and values that fit in a multipart header.
fn check_fields(fields: &BTreeMap<String, String>) -> Result<(), String> {
    if fields.len() > MAX_FIELDS {
        return Err(format!("upload_fields has more than {MAX_FIELDS} fields"));
    }
    for (name, value) in fields {
        let bad_name = name.is_empty()
            || name == "file"
            || name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\');
        if bad_name || value.len() > MAX_FIELD_BYTES || value.contains(['\r', '\n']) {
            return Err(format!(
                "upload_fields: {name:.64?} is not a usable form field (no quotes, line breaks or \"file\"; values up to {MAX_FIELD_BYTES} bytes)"
            ));
        }
    }
    Ok(())
}

/// One file out: read in chunks from the kernel and sent as the request body
/// while it is read. The size is known from the first read, so the request
/// has a Content-Length (S3 refuses chunked uploads).
async fn upload(
    kernel: &mut KernelClient,
    transfers: &Transfers,
    path: &str,
    item: &ExportItem,
) -> Result<Result<u64, ApiError>, ExecuteError> {
    let (first, size) = match files::read_chunk(kernel, path, 0).await? {
        Ok(read) => read,
        Err(refused) => return Ok(Err(refused)),
    };
    if size > transfers.max_bytes {
        return Ok(Err(TransferError::TooLarge(transfers.max_bytes).into()));
    }
    // The file exists: now the host's addresses (a missing file is 404 first).
    let url = match transfers.check(&item.upload_url).await {
        Ok(url) => url,
        Err(e) => return Ok(Err(e.into())),
    };
    let (head, tail, content_type, method) = match &item.upload_fields {
        None => (
            Vec::new(),
            Vec::new(),
            "application/octet-stream".to_string(),
            reqwest::Method::PUT,
        ),
        Some(fields) => {
            let (head, tail, boundary) = multipart_frame(fields, &item.name);
            (
                head,
                tail,
                format!("multipart/form-data; boundary={boundary}"),
                reqwest::Method::POST,
            )
        }
    };
    let length = head.len() as u64 + size + tail.len() as u64;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let request = transfers
        .request(method.clone(), url)
        .header(reqwest::header::CONTENT_LENGTH, length)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(reqwest::Body::wrap_stream(stream));
    // Set once the server has answered: the body is no longer wanted, and a
    // server that stopped reading must not leave the producer waiting.
    let (answered, answered_rx) = tokio::sync::watch::channel(false);
    let send = async {
        let sent = request.send().await.map_err(|e| transfers.failure(e));
        let _ = answered.send(true);
        sent
    };
    let push = move |item: Result<Bytes, std::io::Error>| {
        let sender = sender.clone();
        let mut answered = answered_rx.clone();
        async move {
            tokio::select! {
                sent = sender.send(item) => sent.is_ok(),
                _ = answered.wait_for(|done| *done) => false,
            }
        }
    };
    // Owns `push` (and so the channel's sender): the body ends with it.
    let produce = async move {
        // Whether the body was sent whole; a send that fails means the
        // request ended (its error or answer is the one to report).
        let mut offset = 0u64;
        let mut next = Some(first);
        if !head.is_empty() && !push(Ok(head.into())).await {
            return Ok(Ok(false));
        }
        while offset < size {
            let mut data = match next.take() {
                Some(data) => data,
                None => match files::read_chunk(kernel, path, offset).await? {
                    Ok((data, _)) => data,
                    Err(refused) => {
                        push(Err(std::io::Error::other("read failed"))).await;
                        return Ok(Err(refused));
                    }
                },
            };
            if data.is_empty() {
                push(Err(std::io::Error::other("file shrank"))).await;
                return Ok(Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "the file shrank while it was exported",
                )));
            }
            data.truncate((size - offset).min(data.len() as u64) as usize);
            offset += data.len() as u64;
            if !push(Ok(data.into())).await {
                return Ok(Ok(false));
            }
        }
        let whole = tail.is_empty() || push(Ok(tail.into())).await;
        Ok::<_, ExecuteError>(Ok(whole))
    };
    let (sent, produced) = tokio::join!(send, produce);
    let whole = match produced? {
        Ok(whole) => whole,
        Err(failure) => return Ok(Err(failure)),
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return Ok(Err(e.into())),
    };
    let status = response.status();
    // A presigned POST with `success_action_redirect` answers 303 on success.
    let redirected_post = status == StatusCode::SEE_OTHER && method == reqwest::Method::POST;
    if (status.is_success() || redirected_post) && whole {
        return Ok(Ok(size));
    }
    if status.is_success() || redirected_post {
        return Ok(Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the upload server answered {status} before the whole file was sent"),
        )));
    }
    let said = match response.chunk().await {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
        _ => String::new(),
    };
    let detail = if status.is_redirection() {
        format!("the upload server answered {status}; uploads follow no redirects")
    } else {
        format!("the upload server answered {status}: {}", said.trim())
    };
    Ok(Err(ApiError::new(StatusCode::BAD_GATEWAY, detail)))
}

/// The bytes before and after the file in a multipart/form-data body: the
/// fields first, `file` last (as S3's POST policy requires), and the boundary.
fn multipart_frame(fields: &BTreeMap<String, String>, name: &str) -> (Vec<u8>, Vec<u8>, String) {
    let boundary = format!("code-interpreter-{}", crate::random::hex(16));
    let mut head = String::new();
    for (field, value) in fields {
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n"
        ));
    }
    let filename = name.replace(['"', '\r', '\n'], "_");
    head.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    ));
    let tail = format!("\r\n--{boundary}--\r\n");
    (head.into_bytes(), tail.into_bytes(), boundary)
}

/// An error of the `i`th file, saying which.
fn prefixed(i: usize, mut error: ApiError) -> ApiError {
    error.detail = format!("files[{i}]: {}", error.detail);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multipart_body_puts_the_file_last() {
        let fields = BTreeMap::from([
            ("key".to_string(), "uploads/plot.png".to_string()),
            ("policy".to_string(), "eyJ9".to_string()),
        ]);
        let (head, tail, boundary) = multipart_frame(&fields, "plot.png");
        let body = [head, b"PNG".to_vec(), tail].concat();
        let text = String::from_utf8(body).unwrap();
        let key = text.find("name=\"key\"").unwrap();
        let file = text.find("name=\"file\"; filename=\"plot.png\"").unwrap();
        assert!(key < file);
        assert!(text.ends_with(&format!("\r\n\r\nPNG\r\n--{boundary}--\r\n")));
    }

    #[test]
    fn fields_cannot_break_the_form() {
        let ok = BTreeMap::from([("x-amz-signature".to_string(), "abc".to_string())]);
        assert!(check_fields(&ok).is_ok());
        for (name, value) in [("a\"b", "v"), ("file", "v"), ("a", "v\r\n--x"), ("", "v")] {
            let fields = BTreeMap::from([(name.to_string(), value.to_string())]);
            assert!(check_fields(&fields).is_err(), "{name:?}={value:?}");
        }
    }

    #[test]
    fn counts_are_bounded() {
        assert!(check_count(0).is_err());
        assert!(check_count(1).is_ok());
        assert!(check_count(MAX_FILES).is_ok());
        assert_eq!(check_count(MAX_FILES + 1).unwrap_err().status, 422);
    }
}
