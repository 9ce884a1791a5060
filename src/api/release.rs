//! `POST /release`: end the caller's session (idempotent).

use std::sync::Arc;

use warp::reply::Response;
use warp::Reply;

use super::errors::ApiError;
use super::models::{resolve_user, ReleaseRequest, ReleaseResponse};
use super::AppState;

pub async fn handle(
    state: Arc<AppState>,
    query_user: Option<String>,
    request: ReleaseRequest,
) -> Result<Response, ApiError> {
    let user = resolve_user(request.user_uuid, query_user).map_err(ApiError::bad_request)?;
    let detail = if state.sessions.release(&user) {
        "session released; its worker is being destroyed"
    } else {
        "no session for this user"
    };
    Ok(warp::reply::json(&ReleaseResponse {
        status: "ok",
        detail: detail.into(),
    })
    .into_response())
}
