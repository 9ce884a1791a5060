//! The HTTP API: routes, authentication and the shared state handlers use.
//!
//! Filters only route, authenticate and decode; each endpoint's logic is a
//! plain async function in its own file. Every route but `/health` needs the
//! `X-Auth-Token` header, checked before the body is read.

mod body;
mod errors;
mod execute;
pub mod models;
mod release;
mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::Token;
use crate::config::Config;
use crate::host::HostInfo;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::sessions::Sessions;
pub use errors::ApiError;

/// What every handler may use.
pub struct AppState {
    pub config: Arc<Config>,
    pub token: Token,
    pub sessions: Arc<Sessions>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub host: HostInfo,
    pub host_capacity: usize,
    pub podman_version: String,
    pub started: Instant,
}

/// Room for JSON escaping around the largest accepted `code` (`\u0000` is 6 bytes).
fn body_limit(max_code_bytes: usize) -> usize {
    max_code_bytes.saturating_mul(6).saturating_add(64 * 1024)
}

/// All routes, with errors rendered as JSON.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let limit = body_limit(state.config.server.max_code_bytes);
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let auth = authenticated(state.token.clone());

    let health = warp::path!("health")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let execute = warp::path!("execute")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body::json(limit))
        .then(|state, request| async move { respond(execute::handle(state, request).await) });
    let release = warp::path!("release")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body::json(64 * 1024))
        .then(|state, request| async move { respond(release::handle(state, request).await) });
    let status = warp::path!("status")
        .and(warp::get())
        .and(auth)
        .and(with_state)
        .map(status::handle);

    health
        .or(execute)
        .unify()
        .or(release)
        .unify()
        .or(status)
        .unify()
        .recover(errors::recover)
        .unify()
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

/// Passes only requests whose `X-Auth-Token` matches.
fn authenticated(token: Token) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("x-auth-token")
        .and_then(move |provided: Option<String>| {
            let token = token.clone();
            async move {
                match provided {
                    Some(value) if token.matches(&value) => Ok(()),
                    Some(_) => Err(warp::reject::custom(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid X-Auth-Token",
                    ))),
                    None => Err(warp::reject::custom(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "missing X-Auth-Token header",
                    ))),
                }
            }
        })
        .untuple_one()
}
