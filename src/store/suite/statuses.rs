//! The store suite: mailbox statuses.

use std::sync::Arc;

use time::macros::datetime;
use time::{OffsetDateTime, UtcOffset};

use super::addr;
use crate::domain::MailboxState;
use crate::store::{MailboxStatus, Store};

on_both!(statuses_round_trip_exactly,);

async fn statuses_round_trip_exactly(store: Arc<dyn Store>) {
    let (a, b) = (addr("a@contoso.com"), addr("b@contoso.com"));
    assert!(store.statuses().await.unwrap().is_empty());

    let plus_two = UtcOffset::from_hms(2, 0, 0).unwrap();
    let needs = MailboxStatus {
        state: MailboxState::NeedsReconsent,
        reason: Some("refresh token revoked".to_string()),
        aadsts: Some(50173),
        // Sub-second precision and a non-UTC offset must come back as the same instant.
        since: datetime!(2025-03-04 05:06:07.123456789 UTC).to_offset(plus_two),
        last_success_at: Some(datetime!(2025-03-04 05:00:00.5 UTC)),
    };
    let starting = MailboxStatus {
        state: MailboxState::Starting,
        reason: None,
        aadsts: None,
        since: OffsetDateTime::now_utc(),
        last_success_at: None,
    };
    store.save_status(&b, &needs).await.unwrap();
    store.save_status(&a, &starting).await.unwrap();
    assert_eq!(
        store.statuses().await.unwrap(),
        vec![(a.clone(), starting.clone()), (b.clone(), needs.clone())]
    );

    let active = MailboxStatus {
        state: MailboxState::Active,
        reason: None,
        aadsts: None,
        since: OffsetDateTime::now_utc(),
        last_success_at: Some(OffsetDateTime::now_utc()),
    };
    store.save_status(&b, &active).await.unwrap();
    assert_eq!(store.statuses().await.unwrap(), vec![(a, starting), (b, active)]);

    for state in MailboxState::ALL {
        let c = addr("c@contoso.com");
        let status = MailboxStatus { state, ..needs.clone() };
        store.save_status(&c, &status).await.unwrap();
        let all = store.statuses().await.unwrap();
        assert_eq!(all.iter().find(|(m, _)| *m == c).map(|(_, s)| s), Some(&status));
    }
}
