//! Certificate assertions: algorithms, thumbprints, audience, issuer, subject, validity.

use crate::support::identity::*;
use crate::support::{Emu, TENANT};

#[tokio::test]
async fn certificate_assertion_ps256_with_x5t_s256() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let jwt = assertion(&cert.key, &cert.cert, Alg::Ps256, &good_claims(&own_audience(&emu)));
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_app_token(status, &body, CERT_CLIENT);
}

#[tokio::test]
async fn certificate_assertion_rs256_with_x5t_sha1() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let jwt = assertion(&cert.key, &cert.cert, Alg::Rs256, &good_claims(&own_audience(&emu)));
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_app_token(status, &body, CERT_CLIENT);
}

#[tokio::test]
async fn certificate_assertion_public_audience_accepted() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let aud = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
    for alg in [Alg::Ps256, Alg::Rs256] {
        let jwt = assertion(&cert.key, &cert.cert, alg, &good_claims(&aud));
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_app_token(status, &body, CERT_CLIENT);
    }
}

#[tokio::test]
async fn certificate_assertion_wrong_key_is_700027() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let other = new_cert();
    for alg in [Alg::Ps256, Alg::Rs256] {
        // The header names the registered certificate, but another key signed it.
        let jwt = assertion(&other.key, &cert.cert, alg, &good_claims(&own_audience(&emu)));
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_token_error(status, &body, 401, "invalid_client", Some(700027));
    }
}

#[tokio::test]
async fn certificate_assertion_wrong_audience_refused() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    for aud in [
        format!("https://example.invalid/{TENANT}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com/{OTHER_TENANT}/oauth2/v2.0/token"),
    ] {
        let jwt = assertion(&cert.key, &cert.cert, Alg::Ps256, &good_claims(&aud));
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_assertion_refused(status, &body);
    }
}

#[tokio::test]
async fn certificate_assertion_issuer_and_subject_must_be_client() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let now = now_unix();
    let aud = own_audience(&emu);
    for (iss, sub) in [(CLIENT2, CERT_CLIENT), (CERT_CLIENT, CLIENT2), (CLIENT2, CLIENT2)] {
        let jwt = assertion(
            &cert.key,
            &cert.cert,
            Alg::Ps256,
            &assertion_claims(&aud, iss, sub, now - 5, now + 600),
        );
        let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
        assert_assertion_refused(status, &body);
    }
}

#[tokio::test]
async fn certificate_assertion_expired_or_not_yet_valid_refused() {
    let emu = Emu::start().await;
    let cert = cert_app(&emu).await;
    let now = now_unix();
    let aud = own_audience(&emu);
    // Expired ten minutes ago.
    let jwt = assertion(
        &cert.key,
        &cert.cert,
        Alg::Ps256,
        &assertion_claims(&aud, CERT_CLIENT, CERT_CLIENT, now - 1200, now - 600),
    );
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_assertion_refused(status, &body);
    // Not valid before an hour from now.
    let jwt = assertion(
        &cert.key,
        &cert.cert,
        Alg::Ps256,
        &assertion_claims(&aud, CERT_CLIENT, CERT_CLIENT, now + 3600, now + 4200),
    );
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_assertion_refused(status, &body);
    // A good one still works, so the refusals were about time.
    let jwt = assertion(&cert.key, &cert.cert, Alg::Ps256, &good_claims(&aud));
    let (status, body) = assertion_grant(&emu, CERT_CLIENT, &jwt).await;
    assert_app_token(status, &body, CERT_CLIENT);
}
