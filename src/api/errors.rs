//! One error type for the HTTP API and its mapping to status codes and JSON.
//!
//! Every failure a client can see is a JSON object with at least `detail`;
//! warp's own rejections (unknown path, wrong method) are mapped here too, so
//! nothing answers with an empty or HTML body.

use std::convert::Infallible;

use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::sessions::SessionError;

/// An API failure with the status code it maps to.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// The user's kernel was destroyed; their next request starts a fresh session.
    pub session_reset: bool,
    /// Seconds a client should wait before trying again (503, 429).
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            session_reset: false,
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// A failure to read the request body: 408 when it arrived too slowly for
    /// the front's rule ([`crate::front::BodyTimeout`]), else 400.
    pub fn reading_body(error: &warp::Error, what: &str) -> Self {
        let timeout = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<crate::front::BodyTimeout>());
        match timeout {
            Some(timeout) => Self::new(StatusCode::REQUEST_TIMEOUT, timeout.detail.clone()),
            None => Self::bad_request(format!("reading {what}: {error}")),
        }
    }

    pub fn with_session_reset(mut self) -> Self {
        self.session_reset = true;
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = if self.session_reset {
            json!({"detail": self.detail, "session_reset": true})
        } else {
            json!({"detail": self.detail})
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        match error {
        SessionError::Timeout(after) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "execution exceeded the {:.1} s timeout; the session was reset",
                after.as_secs_f64()
            ),
        )
        .with_session_reset(),
        SessionError::KernelFailed(why) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the kernel failed ({why}); the session was reset"),
        )
        .with_session_reset(),
        SessionError::Misbehaved(why) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the worker misbehaved and was destroyed ({why}); the session was reset"),
        )
        .with_session_reset(),
        SessionError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "all workers are in use; try again later",
        )
        .with_retry_after(5),
        SessionError::WorkerUnavailable(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not start a worker: {why}"),
        )
        .with_retry_after(5),
        SessionError::QueueFull(max) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("more than {max} requests of this user are already waiting"),
        )
        .with_retry_after(1),
        SessionError::NoSession => ApiError::new(
            StatusCode::NOT_FOUND,
            "no session for this user (run code first)",
        ),
        SessionError::Abandoned => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the client went away and the interrupted kernel did not stop; the session was reset",
        )
        .with_session_reset(),
    }
    }
}

/// Turns any rejection into a JSON error response.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        ApiError {
            status: e.status,
            detail: e.detail.clone(),
            session_reset: e.session_reset,
            retry_after: e.retry_after,
        }
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("invalid query string")
    } else if rejection.find::<warp::reject::MissingHeader>().is_some() {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing X-Auth-Token header")
    } else {
        tracing::warn!("unhandled rejection: {rejection:?}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    Ok(error.into_response())
}
