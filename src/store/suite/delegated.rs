//! The store suite: delegated tokens and consent states.

use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::addr;
use crate::store::{ConsentState, DelegatedToken, Store};

on_both!(delegated_tokens_and_consent_states,);

async fn delegated_tokens_and_consent_states(store: Arc<dyn Store>) {
    let mailbox = addr("user@contoso.com");
    assert!(store.delegated_token(&mailbox).await.unwrap().is_none());
    let token = DelegatedToken {
        mailbox: mailbox.clone(),
        sealed_token: vec![0, 1, 2, 255],
        scopes: "Mail.Read offline_access".into(),
        last_used_at: datetime!(2025-03-04 05:06:07.5 UTC),
    };
    store.save_granted_token(&token).await.unwrap();
    assert_eq!(store.delegated_token(&mailbox).await.unwrap(), Some(token.clone()));
    let rotated = DelegatedToken {
        sealed_token: vec![9; 40],
        ..token
    };
    store.save_delegated_token(&rotated).await.unwrap();
    assert_eq!(store.delegated_token(&mailbox).await.unwrap(), Some(rotated));

    let later = OffsetDateTime::now_utc() + Duration::minutes(10);
    let state = ConsentState {
        state: "s-1".into(),
        mailbox: mailbox.clone(),
        sealed_verifier: vec![7; 12],
        expires_at: later,
    };
    store.save_consent_state(&state).await.unwrap();
    let taken = store.take_consent_state("s-1").await.unwrap().unwrap();
    assert_eq!((taken.mailbox, taken.sealed_verifier), (mailbox.clone(), vec![7; 12]));
    assert!(
        store.take_consent_state("s-1").await.unwrap().is_none(),
        "a state works once"
    );
    assert!(store.claim_consent_state("s-2", &mailbox, later).await.unwrap());
    assert!(!store.claim_consent_state("s-2", &mailbox, later).await.unwrap());
}
