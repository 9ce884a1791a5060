//! `POST /execute`: run code in the caller's session.

use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::errors::ApiError;
use super::models::{resolve_user, ExecuteRequest, ExecuteResponse};
use super::AppState;
use crate::sessions::SessionError;

pub async fn handle(
    state: Arc<AppState>,
    query_user: Option<String>,
    request: ExecuteRequest,
) -> Result<Response, ApiError> {
    let user = resolve_user(request.user_uuid, query_user).map_err(ApiError::bad_request)?;
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
    let timeout = effective_timeout(request.timeout, state.config.max_timeout())?;
    // Run detached: a client that hangs up must not leave the kernel half-read.
    let task_state = Arc::clone(&state);
    let outcome = tokio::spawn(async move {
        task_state
            .sessions
            .execute(&user, &request.code, timeout)
            .await
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("execution task failed: {e}"),
        )
    })?
    .map_err(session_error)?;
    let execution = outcome.execution;
    let body = ExecuteResponse {
        result_text: execution.result_text(),
        result_base64: execution.result_base64(),
        status: if execution.status == "ok" {
            "ok".into()
        } else {
            "error".into()
        },
        error: execution.error().cloned(),
        execution_count: execution.execution_count,
        duration_ms: outcome.duration.as_millis() as u64,
        session_created: outcome.session_created,
        output_truncated: execution.truncated(),
        outputs: execution.outputs,
    };
    Ok(warp::reply::json(&body).into_response())
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

fn session_error(error: SessionError) -> ApiError {
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
