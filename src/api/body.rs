//! Reads a JSON request body with a size limit and precise errors.
//!
//! warp's own `json()` filter cannot tell 400 from 415 from 413 in a way we can
//! report, and its length limit needs a Content-Length header; this reads the
//! body stream itself, so chunked bodies are bounded too.

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::errors::ApiError;

/// A filter that extracts a `T` from a JSON body of at most `limit` bytes.
pub fn json<T: DeserializeOwned + Send>(
    limit: usize,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::stream())
        .and_then(move |content_type: Option<String>, body| async move {
            check_content_type(content_type.as_deref()).map_err(warp::reject::custom)?;
            let bytes = read_limited(body, limit)
                .await
                .map_err(warp::reject::custom)?;
            parse::<T>(&bytes).map_err(warp::reject::custom)
        })
}

/// Like [`json`], but an empty body (with any or no Content-Type) is `T::default()`:
/// clients that send everything in the query string post nothing.
pub fn json_or_empty<T: DeserializeOwned + Default + Send>(
    limit: usize,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::stream())
        .and_then(move |content_type: Option<String>, body| async move {
            let bytes = read_limited(body, limit)
                .await
                .map_err(warp::reject::custom)?;
            if bytes.is_empty() {
                return Ok(T::default());
            }
            check_content_type(content_type.as_deref()).map_err(warp::reject::custom)?;
            parse::<T>(&bytes).map_err(warp::reject::custom)
        })
}

fn check_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (Content-Type: application/json)",
        ))
    }
}

async fn read_limited<S, B>(body: S, limit: usize) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::reading_body(&e, "the request body"))?;
        if bytes.len() + chunk.remaining() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {limit} bytes"),
            ));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(check_content_type(Some("application/json")).is_ok());
        assert!(check_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        assert_eq!(
            check_content_type(Some("text/plain")).unwrap_err().status,
            415
        );
        assert_eq!(check_content_type(None).unwrap_err().status, 415);
    }
}
