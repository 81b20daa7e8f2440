//! Bad control input is a JSON error naming the problem.

use crate::support::control::*;
use crate::support::{Emu, TENANT};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn bad_control_input_is_a_json_error_naming_the_problem() {
    let emu = Emu::start().await;
    emu.default_app().await;

    let (status, body) = emu.post("/_emulator/mailboxes", json!({"tenant_id": TENANT})).await;
    assert_control_error(status, &body, &["address"]);

    let (status, body) = emu
        .post(
            &format!("/_emulator/mailboxes/{NOBODY}/messages"),
            json!({"from": {"name": "A", "address": "a@example.net"}, "to": [{"name": "N", "address": NOBODY}],
                   "subject": "x", "body": {"content_type": "text", "content": "x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_control_error(status, &body, &[NOBODY, "mailbox"]);

    let (status, body) = emu
        .get(&format!("/_emulator/mailboxes/{NOBODY}/folders/inbox/messages"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_control_error(status, &body, &[NOBODY, "mailbox"]);

    let (status, body) = emu
        .post(&format!("/_emulator/mailboxes/{NOBODY}/access"), json!({"deny": true}))
        .await;
    assert_control_error(status, &body, &[NOBODY, "mailbox"]);

    let (status, body) = emu
        .post("/_emulator/apps/no-such-app/secret", json!({"expired": true}))
        .await;
    assert_control_error(status, &body, &["no-such-app", "app", "client"]);

    let (status, body) = emu
        .post(
            "/_emulator/apps",
            json!({"tenant_id": TENANT, "client_secret": "x", "roles": []}),
        )
        .await;
    assert_control_error(status, &body, &["client_id"]);

    let (status, body) = emu.post("/_emulator/faults", json!({"status": 500})).await;
    assert_control_error(status, &body, &["path_prefix"]);
}
