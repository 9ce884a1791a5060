//! The HTTP API: routes, authentication and the shared state handlers use.
//!
//! Filters only route, authenticate and decode; each endpoint's logic is a
//! plain async function in its own file. Every route but `/health` needs the
//! `X-Auth-Token` header, checked before the body is read.

mod body;
mod errors;
mod execute;
mod files;
pub mod models;
mod release;
mod status;
mod stream;

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
    let execute_stream = warp::path!("execute" / "stream")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body::json(limit))
        .then(|state, request| async move { respond(stream::handle(state, request).await) });
    let release = warp::path!("release")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body::json(64 * 1024))
        .then(|state, request| async move { respond(release::handle(state, request).await) });
    let status = warp::path!("status")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .map(status::handle);

    // The file API: `/files` lists, `/files/{path}` is one file.
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let tail = warp::path::tail().map(|tail: warp::path::Tail| tail.as_str().to_string());
    let file_routes = warp::path("files").and(auth).and(with_state);
    let list = file_routes
        .clone()
        .and(warp::path::end())
        .and(warp::get())
        .and(query.clone())
        .then(|state, query| async move { respond(files::list(state, query).await) });
    let download = file_routes
        .clone()
        .and(tail.clone())
        .and(warp::get())
        .and(query.clone())
        .then(
            |state, path, query| async move { respond(files::download(state, path, query).await) },
        );
    let upload = file_routes
        .clone()
        .and(tail.clone())
        .and(warp::put())
        .and(query.clone())
        .and(warp::body::stream())
        .then(|state, path, query, body| async move {
            respond(files::upload(state, path, query, body).await)
        });
    let delete =
        file_routes.and(tail).and(warp::delete()).and(query).then(
            |state, path, query| async move { respond(files::delete(state, path, query).await) },
        );

    health
        .or(execute_stream)
        .unify()
        .or(execute)
        .unify()
        .or(release)
        .unify()
        .or(status)
        .unify()
        .or(list)
        .unify()
        .or(download)
        .unify()
        .or(upload)
        .unify()
        .or(delete)
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
