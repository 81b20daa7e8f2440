//! Admin consent, and the redirects of `/authorize` and admin consent.

use reqwest::StatusCode;

use crate::support::identity::*;
use crate::support::{CLIENT, Emu, GRAPH_SCOPE, TENANT};

#[tokio::test]
async fn admin_consent_v2_and_v1_redirect() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let v2 = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/v2.0/adminconsent")),
        &[
            ("client_id", CLIENT),
            ("scope", GRAPH_SCOPE),
            ("redirect_uri", REDIRECT),
            ("state", "s-42"),
        ],
    )
    .unwrap();
    let v1 = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/adminconsent")),
        &[("client_id", CLIENT), ("redirect_uri", REDIRECT), ("state", "s-42")],
    )
    .unwrap();
    for url in [v2, v1] {
        let (status, location) = get_redirect(&emu, url.clone()).await;
        assert!(status.is_redirection(), "{status} {url}");
        let location = location.expect("Location");
        assert!(
            location.as_str().starts_with(REDIRECT),
            "redirects to redirect_uri: {location}"
        );
        assert_eq!(
            query_param(&location, "admin_consent").as_deref(),
            Some("True"),
            "{location}"
        );
        assert_eq!(query_param(&location, "tenant").as_deref(), Some(TENANT), "{location}");
        assert_eq!(query_param(&location, "state").as_deref(), Some("s-42"), "{location}");
    }
}

#[tokio::test]
async fn authorize_and_admin_consent_answer_302() {
    let emu = Emu::start().await;
    delegated_setup(&emu).await;
    let (_, challenge) = pkce_pair();
    let authorize = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/oauth2/v2.0/authorize")),
        &[
            ("client_id", CLIENT),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "offline_access Mail.ReadWrite"),
            ("state", "xyz"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("login_hint", ADDRESS),
        ],
    )
    .unwrap();
    let consent = url::Url::parse_with_params(
        &emu.at(&format!("/{TENANT}/v2.0/adminconsent")),
        &[
            ("client_id", CLIENT),
            ("scope", GRAPH_SCOPE),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
        ],
    )
    .unwrap();
    for url in [authorize, consent] {
        let (status, location) = get_redirect(&emu, url.clone()).await;
        assert_eq!(
            status,
            StatusCode::FOUND,
            "the identity platform answers 302 Found: {url}"
        );
        assert!(location.is_some(), "Location: {url}");
    }
}
