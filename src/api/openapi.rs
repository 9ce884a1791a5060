//! `GET /openapi.json`: the API's OpenAPI 3.1 document, a static file embedded
//! in the binary so that clients can generate code from what the server runs.
//!
//! The document is written by hand; the tests below keep its routes equal to
//! [`super::ROUTES`], and `tests/openapi.rs` checks its schemas and examples
//! against a real gateway.

use warp::http::header::{self, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn route() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json").and(warp::get()).map(|| {
        let mut response = DOCUMENT.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::super::{is_api, routes, test_state, API_PREFIX, ROUTES};
    use super::DOCUMENT;

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON")
    }

    /// (METHOD, path) of every operation in the document.
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method).is_some() {
                    found.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn documents_exactly_the_served_routes() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(operations(&doc), served);
        // Non-API paths say they live at the root only; API paths get both servers.
        for (path, item) in doc["paths"].as_object().unwrap() {
            assert_eq!(item.get("servers").is_none(), is_api(path), "{path}");
        }
        let servers: Vec<&str> = doc["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap())
            .collect();
        assert_eq!(servers, ["/", API_PREFIX]);
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut stack = vec![&doc];
        while let Some(value) = stack.pop() {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("local $ref");
                        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
                    }
                    stack.extend(map.values());
                }
                Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
    }

    /// Each route answers under each prefix it is documented for, with a status
    /// the document lists; other methods on the same path are 405.
    #[tokio::test]
    async fn the_server_serves_what_is_documented() {
        let doc = document();
        let (state, _dir) = test_state();
        let filter = routes(state);
        for (method, path) in operations(&doc) {
            let prefixes: &[&str] = if is_api(&path) {
                &["", API_PREFIX]
            } else {
                &[""]
            };
            for prefix in prefixes {
                // Path parameters get a sample value.
                let full = format!("{prefix}{}", path.replace("{path}", "dir/data.csv"));
                // No token: the protected routes must refuse before doing any work.
                let response = warp::test::request()
                    .method(&method)
                    .path(&full)
                    .reply(&filter)
                    .await;
                let status = response.status().as_u16().to_string();
                let documented = &doc["paths"][&path][method.to_lowercase()]["responses"];
                assert!(
                    documented.get(&status).is_some(),
                    "{method} {full} answered {status}, not documented"
                );
                for other in METHODS.map(str::to_uppercase) {
                    if doc["paths"][&path].get(other.to_lowercase()).is_some() {
                        continue;
                    }
                    // `/files/export` is also a file's path: GET, PUT and
                    // DELETE there are the file routes'.
                    let file_route = path.starts_with("/files/")
                        && doc["paths"]["/files/{path}"]
                            .get(other.to_lowercase())
                            .is_some();
                    if file_route {
                        continue;
                    }
                    let response = warp::test::request()
                        .method(&other)
                        .path(&full)
                        .reply(&filter)
                        .await;
                    assert_eq!(response.status(), 405, "{other} {full}");
                }
            }
        }
        let unknown = warp::test::request()
            .path("/api/v1/openapi.json")
            .reply(&filter)
            .await;
        assert_eq!(unknown.status(), 404);
    }
}
