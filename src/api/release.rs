//! `POST /release`: end the caller's session (idempotent).

use std::sync::Arc;

use warp::reply::Response;
use warp::Reply;

use super::errors::ApiError;
use super::models::{validate_user, ReleaseRequest, ReleaseResponse};
use super::AppState;

pub async fn handle(state: Arc<AppState>, request: ReleaseRequest) -> Result<Response, ApiError> {
    validate_user(&request.user_uuid).map_err(ApiError::bad_request)?;
    let detail = if state.sessions.release(&request.user_uuid) {
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
