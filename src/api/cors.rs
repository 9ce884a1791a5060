//! Cross-origin access (CORS) for browser pages served from other origins, and
//! the headers every response carries.
//!
//! Off unless `[server] cors_origins` lists origins. An allowed origin gets its
//! own value echoed back in `Access-Control-Allow-Origin` (never `*`) and no
//! `Allow-Credentials`: the token travels in a header, never in a cookie, so a
//! page must already know it. Requests from other origins are served as usual
//! without CORS headers, and the browser keeps their answers from the page.

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::json;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// What a preflight may ask for: every method the API serves (`/files` uses
/// PUT and DELETE).
const ALLOWED_METHODS: &str = "GET, POST, PUT, DELETE";
const ALLOWED_HEADERS: &str = "content-type, x-auth-token";
/// Seconds a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Answers preflights and adds CORS and `nosniff` headers to `inner`'s responses.
pub fn wrap<F>(
    origins: Vec<String>,
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let origins = Arc::new(origins);
    let preflight = {
        let origins = Arc::clone(&origins);
        warp::options()
            .and(warp::header::headers_cloned())
            .map(move |headers: HeaderMap| preflight(&origins, &headers))
    };
    let actual = warp::header::headers_cloned()
        .and(inner)
        .map(move |headers: HeaderMap, response| decorate(&origins, &headers, response));
    preflight.or(actual).unify()
}

/// The request's `Origin` when it is on the allow-list.
fn allowed_origin<'a>(origins: &[String], headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    origins.iter().any(|o| o == text).then_some(origin)
}

fn preflight(origins: &[String], headers: &HeaderMap) -> Response {
    let Some(origin) = allowed_origin(origins, headers) else {
        let body = json!({
            "detail": "cross-origin requests from this origin are not allowed \
                       (see [server] cors_origins in config.toml)"
        });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), StatusCode::FORBIDDEN)
                .into_response();
        add_common(response.headers_mut());
        return response;
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    add_common(h);
    response
}

fn decorate(origins: &[String], headers: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = allowed_origin(origins, headers) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    add_common(response.headers_mut());
    response
}

/// Headers on every response: the answer depends on `Origin`, and is never sniffed.
fn add_common(h: &mut HeaderMap) {
    h.append(header::VARY, HeaderValue::from_static("origin"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(origins: &[&str]) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
        let inner = warp::any().map(|| warp::reply::json(&json!({"ok": true})).into_response());
        wrap(origins.iter().map(|o| o.to_string()).collect(), inner)
    }

    #[tokio::test]
    async fn off_by_default() {
        let f = filter(&[]);
        let response = warp::test::request()
            .method("POST")
            .header("origin", "https://elsewhere.example")
            .reply(&f)
            .await;
        assert_eq!(response.status(), 200);
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let preflight = warp::test::request()
            .method("OPTIONS")
            .header("origin", "https://elsewhere.example")
            .header("access-control-request-method", "POST")
            .reply(&f)
            .await;
        assert_eq!(preflight.status(), 403);
    }

    #[tokio::test]
    async fn allowed_origins_are_echoed_never_star() {
        let f = filter(&["https://app.example"]);
        let preflight = warp::test::request()
            .method("OPTIONS")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-auth-token, content-type",
            )
            .reply(&f)
            .await;
        assert_eq!(preflight.status(), 204);
        let h = preflight.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert!(h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-auth-token"));
        assert!(h.get("access-control-allow-credentials").is_none());

        let actual = warp::test::request()
            .method("POST")
            .header("origin", "https://app.example")
            .reply(&f)
            .await;
        assert_eq!(
            actual.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let other = warp::test::request()
            .method("POST")
            .header("origin", "https://evil.example")
            .reply(&f)
            .await;
        assert!(other.headers().get("access-control-allow-origin").is_none());
    }

    /// A preflight for every route the gateway serves (with and without the
    /// `/api/v1` prefix) allows the route's method, and the actual request
    /// carries the allowed origin: `/files` works cross-origin with PUT and DELETE.
    #[tokio::test]
    async fn every_route_passes_its_preflight() {
        let (state, _dir) = crate::api::test_state_with(|config| {
            config.server.cors_origins = vec!["https://app.example".into()];
        });
        let routes = crate::api::routes(state);
        for &(method, path) in crate::api::ROUTES {
            let path = path.replace("{path}", "dir/data.csv");
            let prefixes: &[&str] = if crate::api::is_api(&path) {
                &["", crate::api::API_PREFIX]
            } else {
                &[""]
            };
            for prefix in prefixes {
                let uri = format!("{prefix}{path}?user_uuid=u");
                let preflight = warp::test::request()
                    .method("OPTIONS")
                    .path(&uri)
                    .header("origin", "https://app.example")
                    .header("access-control-request-method", method)
                    .header(
                        "access-control-request-headers",
                        "x-auth-token, content-type",
                    )
                    .reply(&routes)
                    .await;
                assert_eq!(preflight.status(), 204, "{method} {uri}");
                let h = preflight.headers();
                assert_eq!(h["access-control-allow-origin"], "https://app.example");
                let methods = h["access-control-allow-methods"].to_str().unwrap();
                assert!(
                    methods.split(", ").any(|m| m == method),
                    "{method} {uri}: allowed {methods}"
                );
                // The actual request (refused here for its missing token, or
                // served without one) carries the origin for the page to read.
                let actual = warp::test::request()
                    .method(method)
                    .path(&uri)
                    .header("origin", "https://app.example")
                    .reply(&routes)
                    .await;
                assert_ne!(actual.status(), 404, "{method} {uri}");
                assert_ne!(actual.status(), 405, "{method} {uri}");
                assert_eq!(
                    actual.headers()["access-control-allow-origin"],
                    "https://app.example",
                    "{method} {uri}"
                );
            }
        }
    }
}
