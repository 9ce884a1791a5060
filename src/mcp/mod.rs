//! The Model Context Protocol server at `/mcp`: agents use the sandbox as a tool.
//!
//! The protocol is the official Rust SDK's (`rmcp`): its Streamable HTTP
//! transport is a tower service over `http` 1 types, so a warp route calls it
//! beside the REST handlers, behind the same token and the same HTTP front.
//! The route rebuilds an `http::Request` from warp's parts and streams rmcp's
//! answer (JSON, or server-sent events while a tool runs) back through warp.
//!
//! - `tools.rs`: the tools and the handler of one MCP session, on the same
//!   session table as the REST API (no second path to the kernel);
//! - `content.rs`: outputs and failures as MCP tool results;
//! - `stdio.rs`: `code-interpreter mcp`, a stdio server forwarding to `/mcp`.

mod content;
pub mod stdio;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::api::AppState;

/// Server-sent comments that keep a quiet stream (a long run) open through proxies.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `/mcp` (POST, GET and DELETE, as Streamable HTTP has them), authenticated
/// with `X-Auth-Token` or `Authorization: Bearer`.
pub fn route(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let service = service(Arc::clone(&state));
    let methods = warp::post()
        .or(warp::get())
        .unify()
        .or(warp::delete())
        .unify();
    warp::path!("mcp")
        .and(methods)
        .and(crate::api::authenticated(state.token.clone(), true))
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method, headers, body| {
            let service = service.clone();
            async move { forward(&service, method, headers, body).await }
        })
        .boxed()
}

type Service = StreamableHttpService<tools::Sandbox, LocalSessionManager>;

/// rmcp's service: one [`tools::Sandbox`] per MCP session; a session idles
/// out when the sandbox sessions do, and every session ends when the gateway
/// begins to shut down (their streams would otherwise hold the shutdown).
fn service(state: Arc<AppState>) -> Service {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive =
        Some(Duration::from_secs(state.config.sessions.idle_timeout_secs));
    let stopping = state.stopping.clone();
    let mut config = StreamableHttpServerConfig::default()
        // The token guards every request, which DNS rebinding cannot learn:
        // the loopback-only Host check would refuse every remote client.
        .disable_allowed_hosts()
        .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
        .with_max_request_body_bytes(max_body(&state))
        .with_cancellation_token(stopping.child_token());
    // Browser pages: the same origins CORS lets in, and no other.
    config = config
        .with_allowed_origins(state.config.server.cors_origins.clone())
        .enforce_origin_validation();
    let factory = move || Ok(tools::Sandbox::new(Arc::clone(&state), stopping.clone()));
    StreamableHttpService::new(factory, Arc::new(sessions), config)
}

/// The largest JSON-RPC message: code as `/execute` takes it, or a file as
/// large as the files API takes (base64 in `write_file`).
fn max_body(state: &AppState) -> usize {
    let code = crate::api::body_limit(state.config.server.max_code_bytes);
    let file = (state.config.limits.disk_mb as usize)
        .saturating_mul(1024 * 1024)
        .saturating_mul(4)
        / 3
        + 64 * 1024;
    code.max(file)
}

/// Hands the request to rmcp and streams its answer back.
async fn forward<S, B>(service: &Service, method: Method, headers: HeaderMap, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    let body = http_body_util::StreamBody::new(
        body.map(|chunk| chunk.map(|mut buf| Frame::data(buf.copy_to_bytes(buf.remaining())))),
    );
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from_static("/mcp");
    *request.headers_mut() = headers;
    let (parts, body) = service.handle(request).await.into_parts();
    let stream = http_body_util::BodyDataStream::new(body);
    let mut response = warp::reply::stream(stream).into_response();
    *response.status_mut() = parts.status;
    *response.headers_mut() = parts.headers;
    response
}

#[cfg(test)]
mod tests {
    use crate::api::{routes, test_state};

    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;

    fn request(auth: Option<(&str, &str)>) -> warp::test::RequestBuilder {
        let mut request = warp::test::request()
            .method("POST")
            .path("/mcp")
            .header("host", "gateway.example:3874")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(INITIALIZE);
        if let Some((name, value)) = auth {
            request = request.header(name, value);
        }
        request
    }

    #[tokio::test]
    async fn a_missing_or_wrong_token_is_401_json_and_bearer_is_accepted() {
        let (state, _dir) = test_state();
        let token = state.token.reveal().to_string();
        let filter = routes(state);
        for auth in [
            None,
            Some(("authorization", "Bearer nope")),
            Some(("x-auth-token", "nope")),
        ] {
            let response = request(auth).reply(&filter).await;
            assert_eq!(response.status(), 401, "{auth:?}");
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert!(body["detail"].as_str().unwrap().contains("token"));
        }
        let bearer = format!("Bearer {token}");
        for auth in [("authorization", bearer.as_str()), ("x-auth-token", &token)] {
            let response = request(Some(auth)).reply(&filter).await;
            assert_eq!(
                response.status(),
                200,
                "{}",
                String::from_utf8_lossy(response.body())
            );
            assert!(response.headers().contains_key("mcp-session-id"));
            let body = String::from_utf8_lossy(response.body());
            assert!(body.contains(r#""protocolVersion":"2025-06-18""#), "{body}");
        }
        let response = warp::test::request()
            .method("PUT")
            .path("/mcp")
            .reply(&filter)
            .await;
        assert_eq!(response.status(), 405);
    }
}
