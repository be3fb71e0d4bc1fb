//! The site tier: serves the browser chat (`site/`, embedded in the binary so the
//! binary is all a deployment needs) and `/config.json`, the runtime configuration
//! that tells the page where the API and WebSocket are. Changing those addresses
//! needs no rebuild: set `--api-url` / `--ws-url` (or their `COURIER_` variables);
//! left unset, the page uses its own host name with the configured ports.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the browser finds the API and the WebSocket.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteConfig {
    /// Full API base URL, e.g. `https://chat.example.com/api`; `None`: same host.
    pub api_url: Option<String>,
    /// Full WebSocket URL, e.g. `wss://chat.example.com/ws`; `None`: same host.
    pub ws_url: Option<String>,
    /// API port used when `api_url` is unset.
    pub api_port: u16,
    /// WebSocket port used when `ws_url` is unset.
    pub ws_port: u16,
}

const INDEX_HTML: &str = include_str!("../site/index.html");
const APP_JS: &str = include_str!("../site/app.js");
const STYLE_CSS: &str = include_str!("../site/style.css");

/// The site's routes.
pub fn router(config: SiteConfig) -> Router {
    Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML) }))
        .route("/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }))
        .route("/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS) }))
        .route(
            "/config.json",
            get(|State(config): State<SiteConfig>| async move {
                ([(header::CACHE_CONTROL, "no-store")], axum::Json(config)).into_response()
            }),
        )
        .with_state(config)
}

/// Serves the site until `shutdown`.
pub async fn serve(config: SiteConfig, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(config)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
