//! `POST /execute`: run code in the caller's session and answer when done.

use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::errors::ApiError;
use super::models::{resolve_user, ExecuteRequest, ExecuteResponse};
use super::AppState;

pub async fn handle(
    state: Arc<AppState>,
    query_user: Option<String>,
    request: ExecuteRequest,
) -> Result<Response, ApiError> {
    let (user, timeout) = prepare(&state, query_user, &request)?;
    // Run detached: a client that hangs up must not leave the kernel half-read.
    let task_state = Arc::clone(&state);
    let outcome = tokio::spawn(async move {
        task_state
            .sessions
            .execute(&user, &request.code, timeout, None)
            .await
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("execution task failed: {e}"),
        )
    })??;
    Ok(warp::reply::json(&ExecuteResponse::from(outcome)).into_response())
}

/// Checks an execute request; returns its user (from the body or the query
/// string) and its effective timeout.
pub fn prepare(
    state: &AppState,
    query_user: Option<String>,
    request: &ExecuteRequest,
) -> Result<(String, Duration), ApiError> {
    let user =
        resolve_user(request.user_uuid.clone(), query_user).map_err(ApiError::bad_request)?;
    if request.code.trim().is_empty() {
        return Err(ApiError::bad_request("code must not be empty"));
    }
    let limit = state.config.server.max_code_bytes;
    if request.code.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("code is {} bytes; the limit is {limit}", request.code.len()),
        ));
    }
    Ok((
        user,
        effective_timeout(request.timeout, state.config.max_timeout())?,
    ))
}

/// The request's timeout, capped by the configured one.
fn effective_timeout(requested: Option<f64>, max: Duration) -> Result<Duration, ApiError> {
    match requested {
        None => Ok(max),
        Some(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs).min(max)),
        Some(_) => Err(ApiError::bad_request(
            "timeout must be a positive number of seconds",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_never_exceed_the_configured_one() {
        let max = Duration::from_secs(30);
        assert_eq!(effective_timeout(None, max).unwrap(), max);
        assert_eq!(
            effective_timeout(Some(2.5), max).unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(effective_timeout(Some(999.0), max).unwrap(), max);
        assert!(effective_timeout(Some(0.0), max).is_err());
        assert!(effective_timeout(Some(f64::NAN), max).is_err());
    }
}
