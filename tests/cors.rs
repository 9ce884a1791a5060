//! CORS against a real gateway: a browser's preflight for every method of the
//! API passes from an allowed origin, and a page on that origin can upload,
//! list, download and delete files (PUT and DELETE included) and read the answers.

mod common;

use common::{Gateway, Options};
use reqwest::Method;

const ORIGIN: &str = "https://app.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_work_cross_origin_from_an_allowed_origin() {
    let gw = Gateway::start(Options {
        server: format!("cors_origins = [\"{ORIGIN}\"]\n"),
        ..Options::default()
    })
    .await;

    // What a browser sends before each call of the playground's files panel.
    for (method, path) in [
        ("POST", "/execute"),
        ("POST", "/execute/stream"),
        ("POST", "/release"),
        ("GET", "/status"),
        ("GET", "/files"),
        ("GET", "/files/dir/data.csv"),
        ("PUT", "/files/dir/data.csv"),
        ("DELETE", "/files/dir/data.csv"),
        ("PUT", "/api/v1/files/dir/data.csv"),
        ("DELETE", "/api/v1/files/dir/data.csv"),
    ] {
        let response = gw
            .http()
            .request(Method::OPTIONS, format!("{}{path}?user_uuid=page", gw.url))
            .header("Origin", ORIGIN)
            .header("Access-Control-Request-Method", method)
            .header("Access-Control-Request-Headers", "x-auth-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "preflight {method} {path}");
        let h = response.headers();
        assert_eq!(h["access-control-allow-origin"], ORIGIN);
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(
            methods.split(", ").any(|m| m == method),
            "preflight {method} {path}: allows {methods}"
        );
        assert!(h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-auth-token"));
    }

    // The calls themselves, each answered with the origin so the page may read it.
    let call = |method: Method, path: &str| {
        gw.http()
            .request(method, format!("{}{path}?user_uuid=page", gw.url))
            .header("Origin", ORIGIN)
            .header("X-Auth-Token", &gw.token)
    };
    for (request, what) in [
        (
            call(Method::PUT, "/files/dir/data.csv").body("x,y\n1,2\n"),
            "PUT",
        ),
        (call(Method::GET, "/files"), "GET list"),
        (call(Method::GET, "/files/dir/data.csv"), "GET file"),
        (call(Method::DELETE, "/files/dir/data.csv"), "DELETE"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{what}");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            ORIGIN,
            "{what}"
        );
    }

    // Another origin's preflight is refused.
    let refused = gw
        .http()
        .request(Method::OPTIONS, format!("{}/files/x", gw.url))
        .header("Origin", "https://elsewhere.example")
        .header("Access-Control-Request-Method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}
