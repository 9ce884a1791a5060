//! The HTTP API: routes, authentication and the shared state handlers use.
//!
//! Filters only route, authenticate and decode; each endpoint's logic is a
//! plain async function in its own file. Every API route but `/health` needs
//! the `X-Auth-Token` header, checked before the body is read. The API routes
//! are served at the root and, for the original's clients, under `/api/v1`;
//! the playground page and the OpenAPI document need no token.

mod body;
mod cors;
mod errors;
pub(crate) mod execute;
pub(crate) mod files;
mod files_url;
pub mod models;
mod openapi;
mod playground;
mod release;
mod status;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use warp::filters::BoxedFilter;
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
    pub podman_version: String,
    /// Which OCI runtime isolates the workers, as checked at start-up.
    pub isolation: crate::worker::isolation::Isolation,
    pub started: Instant,
    /// Connections the HTTP front serves at once (the configured limit, or
    /// less when the open-file limit does not fit it).
    pub max_connections: usize,
    /// The HTTP client of files by URL, with its limits.
    pub transfers: Arc<crate::transfer::Transfers>,
    /// Cancelled when the gateway begins to shut down (MCP sessions end their streams).
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Every route the gateway serves, as (method, path). The API routes (all but
/// the playground's and the document's) are served under [`API_PREFIX`] too.
/// Kept in step with `routes()` and with `openapi.json` by the tests in `openapi.rs`.
#[cfg(test)]
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/playground.js"),
    ("GET", "/playground.css"),
    ("GET", "/openapi.json"),
    ("GET", "/health"),
    ("POST", "/execute"),
    ("POST", "/release"),
    ("GET", "/status"),
    ("POST", "/execute/stream"),
    ("GET", "/files"),
    ("GET", "/files/{path}"),
    ("PUT", "/files/{path}"),
    ("DELETE", "/files/{path}"),
    ("POST", "/files"),
    ("POST", "/files/export"),
    ("POST", "/mcp"),
    ("GET", "/mcp"),
    ("DELETE", "/mcp"),
];

/// The original's versioned prefix, under which the API routes are served as well.
#[cfg(test)]
pub const API_PREFIX: &str = "/api/v1";

/// Whether a path of [`ROUTES`] is an API route (served under [`API_PREFIX`] too).
#[cfg(test)]
pub fn is_api(path: &str) -> bool {
    !matches!(path, "/" | "/openapi.json") && !path.starts_with("/playground.")
}

/// Room for JSON escaping around the largest accepted `code` (`\u0000` is 6 bytes).
pub(crate) fn body_limit(max_code_bytes: usize) -> usize {
    max_code_bytes.saturating_mul(6).saturating_add(64 * 1024)
}

/// All routes, with errors rendered as JSON and CORS applied.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let origins = state.config.server.cors_origins.clone();
    let api = api_routes(state);
    let versioned = warp::path!("api" / "v1" / ..).and(api.clone());
    let all = playground::routes()
        .or(openapi::route())
        .unify()
        .or(api)
        .unify()
        .or(versioned)
        .unify()
        .recover(errors::recover)
        .unify();
    cors::wrap(origins, all)
}

/// The JSON API, without a prefix. Boxed: the nested filter types of every
/// route would otherwise exceed the compiler's recursion limit.
fn api_routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let limit = body_limit(state.config.server.max_code_bytes);
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let auth = authenticated(state.token.clone(), false);
    let mcp = crate::mcp::route(Arc::clone(&state));

    let health = warp::path!("health")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let execute = warp::path!("execute")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .and(body::json(limit))
        .then(|state, query, request| async move {
            respond(execute::handle(state, query, request).await)
        });
    let execute_stream = warp::path!("execute" / "stream")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .and(body::json(limit))
        .then(|state, query, request| async move {
            respond(stream::handle(state, query, request).await)
        });
    let release = warp::path!("release")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .and(body::json_or_empty(64 * 1024))
        .then(|state, query, request| async move {
            respond(release::handle(state, query, request).await)
        });
    let status = warp::path!("status")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .map(status::handle);

    // The file API: `/files` lists, `/files/{path}` is one file. The method is
    // checked before the token so that a wrong method is 405 on every route.
    let list = warp::path!("files")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .then(|state, user| async move { respond(files::list(state, user).await) });
    let download = file_path()
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .then(|path, state, user| async move { respond(files::download(state, path, user).await) });
    let upload = file_path()
        .and(warp::put())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .and(warp::body::stream())
        .then(|path, state, user, body| async move {
            respond(files::upload(state, path, user, body).await)
        });
    // Files by URL: `POST /files` fetches, `POST /files/export` uploads.
    let fetch = warp::path!("files")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .and(body::json(files_url::BODY_LIMIT))
        .then(
            |state, user, body| async move { respond(files_url::fetch(state, user, body).await) },
        );
    let export = warp::path!("files" / "export")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(user_query())
        .and(body::json(files_url::BODY_LIMIT))
        .then(
            |state, user, body| async move { respond(files_url::export(state, user, body).await) },
        );
    let delete = file_path()
        .and(warp::delete())
        .and(auth)
        .and(with_state)
        .and(user_query())
        .then(|path, state, user| async move { respond(files::delete(state, path, user).await) });

    let files = list
        .or(download)
        .unify()
        .or(upload)
        .unify()
        .or(delete)
        .unify()
        .or(fetch)
        .unify()
        .or(export)
        .unify()
        .boxed();
    health
        .or(execute_stream)
        .unify()
        .or(execute)
        .unify()
        .or(release)
        .unify()
        .or(status)
        .unify()
        .or(files)
        .unify()
        .or(mcp)
        .unify()
        .boxed()
}

/// `/files/{path}`: the rest of the URL path, still percent-encoded; an empty
/// one (`/files/`) is no route.
fn file_path() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path("files")
        .and(warp::path::tail())
        .and_then(|tail: warp::path::Tail| async move {
            match tail.as_str() {
                "" => Err(warp::reject::not_found()),
                path => Ok(path.to_string()),
            }
        })
}

/// `?user_uuid=` (the original's later clients send it there); other parameters are ignored.
fn user_query() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::query::<models::UserQuery>().map(|query: models::UserQuery| query.user_uuid)
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

/// Passes only requests whose `X-Auth-Token` matches; with `bearer`,
/// `Authorization: Bearer` counts too (MCP clients send the token so).
pub(crate) fn authenticated(
    token: Token,
    bearer: bool,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let (missing, invalid) = if bearer {
        (
            "missing token: send X-Auth-Token or Authorization: Bearer",
            "invalid token",
        )
    } else {
        ("missing X-Auth-Token header", "invalid X-Auth-Token")
    };
    warp::header::optional::<String>("x-auth-token")
        .and(warp::header::optional::<String>("authorization"))
        .and_then(
            move |header: Option<String>, authorization: Option<String>| {
                let token = token.clone();
                async move {
                    let bearer = authorization.filter(|_| bearer).and_then(|value| {
                        let (scheme, credentials) = value.split_once(' ')?;
                        scheme
                            .eq_ignore_ascii_case("bearer")
                            .then(|| credentials.trim().to_string())
                    });
                    match header.or(bearer) {
                        Some(value) if token.matches(&value) => Ok(()),
                        Some(_) => Err(warp::reject::custom(ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            invalid,
                        ))),
                        None => Err(warp::reject::custom(ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            missing,
                        ))),
                    }
                }
            },
        )
        .untuple_one()
}

/// A state for in-process route tests: no worker can start (a fake runtime refuses).
/// The returned directory holds the runtime dir; it is removed when dropped.
#[cfg(test)]
pub(crate) fn test_state() -> (Arc<AppState>, TestDir) {
    test_state_with(|_| {})
}

/// [`test_state`] with the default configuration changed by `edit`.
#[cfg(test)]
pub(crate) fn test_state_with(edit: impl FnOnce(&mut Config)) -> (Arc<AppState>, TestDir) {
    use crate::worker::{fake::FakeRuntime, WorkerFactory};

    let dir = TestDir(std::env::temp_dir().join(format!("ci-api-test-{}", crate::random::hex(6))));
    let mut config = Config::default();
    config.paths.runtime_dir = Some(dir.0.join("run"));
    config.paths.state_dir = Some(dir.0.join("state"));
    edit(&mut config);
    let config = Arc::new(config);
    // Every creation fails, as with no Podman.
    let runtime = FakeRuntime::default();
    runtime.fail_next(usize::MAX);
    let cgroups = crate::host::CgroupSupport::new("unknown", true, Vec::new());
    let factory = Arc::new(
        WorkerFactory::new(Arc::new(runtime), Arc::clone(&config), cgroups.clone()).unwrap(),
    );
    let metrics = Arc::new(Metrics::default());
    let registry = crate::state::Registry::new(dir.0.join("state"));
    let pool = Pool::new(
        factory,
        Arc::clone(&metrics),
        Arc::clone(&registry),
        crate::pool::Settings {
            min_idle: 0,
            parallelism: Some(1),
            cores: 1,
            queue_timeout: std::time::Duration::from_millis(100),
            max_idle: 0,
            trim_after: std::time::Duration::from_secs(60),
            preload: Vec::new(),
        },
        crate::capacity::Policy {
            max_workers: 1,
            reserve_bytes: 0,
        },
        Arc::new(crate::capacity::HostMemory),
    );
    let expiry = crate::sessions::Expiry {
        idle_timeout: std::time::Duration::from_secs(60),
        max_age: std::time::Duration::from_secs(600),
    };
    let sessions = Arc::new(Sessions::new(
        Arc::clone(&pool),
        Arc::clone(&metrics),
        8,
        crate::kernel::OutputLimits {
            max_output_bytes: 1 << 20,
            max_flood_bytes: 1 << 20,
        },
        expiry,
        registry,
    ));
    let host = HostInfo::detect(cgroups);
    let transfers = Arc::new(crate::transfer::Transfers::new(&config).unwrap());
    let state = Arc::new(AppState {
        config,
        token: Token::new("test-token-0123456789".into()),
        sessions,
        pool,
        metrics,
        host,
        podman_version: "test".into(),
        isolation: crate::worker::isolation::Isolation::unverified(Default::default()),
        started: Instant::now(),
        max_connections: 1024,
        transfers,
        stopping: tokio_util::sync::CancellationToken::new(),
    });
    (state, dir)
}

/// A temporary directory removed on drop.
#[cfg(test)]
pub(crate) struct TestDir(pub std::path::PathBuf);

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
