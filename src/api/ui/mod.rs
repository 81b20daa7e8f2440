//! The status page at `/ui/`: server-rendered HTML for the people who run inboxd. A browser
//! signs in once with an API token and then holds a session cookie; forms carry a CSRF token;
//! a read-only token sees everything and changes nothing.

mod assets;
mod csrf;
mod pages;
mod session;
mod templates;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use super::ApiState;
use super::limit::PerClient;

/// What the page handlers share.
pub struct Ui {
    /// The API's state: the board, the store, the tokens in force.
    api: ApiState,
    /// Signed-in browsers.
    sessions: session::Sessions,
    /// Sign-in attempts per client address (guessing tokens is slow).
    sign_in_limiter: PerClient,
}

/// The page's routes, `/` included (it redirects to `/ui/`).
pub fn router(api: ApiState) -> Router<ApiState> {
    let ui = Arc::new(Ui {
        api,
        sessions: session::Sessions::default(),
        sign_in_limiter: PerClient::new(10, 0.2),
    });
    Router::new()
        .route("/", get(pages::to_ui))
        .route("/ui", get(pages::to_ui))
        .route("/ui/", get(pages::status))
        .route("/ui/sign-in", post(pages::sign_in))
        .route("/ui/sign-out", post(pages::sign_out))
        .route("/ui/quarantine/{id}/replay", post(pages::replay))
        .with_state(ui)
}
