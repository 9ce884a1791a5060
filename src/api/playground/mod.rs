//! The playground: a page to try the API by hand, served at `/` from files
//! embedded in the binary (no CDN, no build step).
//!
//! The page needs no token to load; its script sends the token the person
//! enters with every API call. A strict Content-Security-Policy allows only
//! this origin's script and style (no inline code) and images from `data:`
//! URLs, which is how plots arrive. Outputs come from `/execute/stream` (a
//! same-origin fetch); a downloaded file is fetched with the token header and
//! saved through a link to a `blob:` URL, which the policy need not allow
//! (saving a download is neither a fetch nor an image).

use warp::http::header::{self, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

const INDEX_HTML: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("playground.js");
const STYLE: &str = include_str!("playground.css");

/// Only same-origin script, style and API calls; images may be `data:` URLs.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `GET /`, `GET /playground.js`, `GET /playground.css` (and `HEAD`).
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let index = warp::path::end().map(|| page(INDEX_HTML, "text/html; charset=utf-8"));
    let script =
        warp::path!("playground.js").map(|| page(SCRIPT, "text/javascript; charset=utf-8"));
    let style = warp::path!("playground.css").map(|| page(STYLE, "text/css; charset=utf-8"));
    // HEAD too, for `curl -I` and link checkers; hyper sends no body for it.
    let method = warp::get().or(warp::head()).unify();
    method.and(index.or(script).unify().or(style).unify())
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small files: always revalidate so an upgraded gateway serves its own page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn page_and_assets_carry_a_strict_policy() {
        let f = routes();
        for (path, kind) in [
            ("/", "text/html"),
            ("/playground.js", "text/javascript"),
            ("/playground.css", "text/css"),
        ] {
            let head = warp::test::request()
                .method("HEAD")
                .path(path)
                .reply(&f)
                .await;
            assert_eq!(head.status(), 200, "HEAD {path}");
            let response = warp::test::request().path(path).reply(&f).await;
            assert_eq!(response.status(), 200, "{path}");
            let h = response.headers();
            assert!(h["content-type"].to_str().unwrap().starts_with(kind));
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"));
        }
    }

    #[test]
    fn the_page_has_no_inline_script_and_never_sets_html() {
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains(" on"));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML"));
        assert!(!SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("eval("));
    }
}
