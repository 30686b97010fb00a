//! The built-in web UI, in the look of Prometheus's own: the PromQL page (`/graph`, and
//! `/query` as in Prometheus 3.x: query box, Table and Graph tabs, a query in the URL
//! with Prometheus's `g0.*` parameters runs on load), the cluster page (`/cluster`, from `/api/v1/status/cluster`) and the
//! cardinality page (`/tsdb-status`, from `/api/v1/status/tsdb`). `GET /` redirects to
//! `/graph` keeping its query string, so that `/?g0.expr=...` links open a graph and
//! clients that probe the root (prometheus-api-client) find a 200 page.
//!
//! Owns: serving the pages and their assets (`ui/`), embedded in the binary at build time
//! (nothing fetched at run time, no CDN, no third-party script) and the security headers
//! of HTML answers. The pages are one shell; `ui/app.js` draws each page from the public
//! JSON API in the browser, with same-origin fetches to relative URLs, so the UI works
//! behind the web config's basic auth and TLS and behind a reverse proxy's path prefix
//! (Timbala has no route-prefix flag). Calls nothing but the embedded files.

use axum::extract::RawQuery;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const SHELL_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// Scripts, styles, images and fetches from this origin only; no inline script or
/// style, no framing, no plugins, forms and `<base>` to this origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// The pages of the UI: path, the name `app.js` draws it by, and the title. `/query` is
/// Prometheus 3.x's path of the PromQL page, for its links.
const PAGES: [(&str, &str, &str); 4] = [
    ("/graph", "graph", "Query"),
    ("/query", "graph", "Query"),
    ("/cluster", "cluster", "Cluster"),
    ("/tsdb-status", "tsdb-status", "Cardinality"),
];

pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(root_redirect))
        .route("/static/app.js", get(app_js))
        .route("/static/app.css", get(app_css));
    for (path, page, title) in PAGES {
        let html = shell(page, title);
        router = router.route(path, get(move || page_response(html.clone())));
    }
    router
}

/// The shell with the page's name and title filled in.
fn shell(page: &str, title: &str) -> String {
    SHELL_HTML
        .replace("{{page}}", page)
        .replace("{{title}}", title)
}

/// 302 to `graph`, relative so that a reverse proxy's path prefix is kept, with the
/// query string (Prometheus drops it; keeping it lets `/?g0.expr=...` links work).
async fn root_redirect(RawQuery(query): RawQuery) -> Response {
    let location = match query {
        Some(q) if !q.is_empty() => format!("graph?{q}"),
        _ => "graph".to_string(),
    };
    match HeaderValue::try_from(location) {
        Ok(value) => (StatusCode::FOUND, [(header::LOCATION, value)]).into_response(),
        // A query string axum accepted is always a valid header value; refuse rather
        // than panic if that ever changes.
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn page_response(html: String) -> Response {
    with_ui_headers("text/html; charset=utf-8", html)
}

async fn app_js() -> Response {
    with_ui_headers("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    with_ui_headers("text/css; charset=utf-8", APP_CSS)
}

/// Content type, CSP and hardening headers of every UI answer. `no-cache`: a browser
/// revalidates, so a new binary's assets are never mixed with an old page.
fn with_ui_headers(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_names_itself_and_loads_only_relative_assets() {
        for (_, page, title) in PAGES {
            let html = shell(page, title);
            assert!(html.contains(&format!("data-page=\"{page}\"")), "{html}");
            assert!(html.contains(&format!("<title>{title} - Timbala</title>")));
            assert!(!html.contains("{{"), "unfilled placeholder in {page}");
            assert!(html.contains("src=\"static/app.js\""));
            assert!(html.contains("href=\"static/app.css\""));
            // No inline script or style: the CSP would block them.
            assert!(!html.contains("<script>") && !html.contains("<style"));
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
    }

    #[tokio::test]
    async fn root_redirects_relatively_with_the_query() {
        let r = root_redirect(RawQuery(Some("g0.expr=up&g0.tab=1".into()))).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "graph?g0.expr=up&g0.tab=1");
        let r = root_redirect(RawQuery(None)).await;
        assert_eq!(r.headers()[header::LOCATION], "graph");
    }
}
