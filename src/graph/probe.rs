//! The checks `inboxd doctor` makes of a mailbox: one small delta page, and a draft created
//! and deleted for good to show write access. Each is made once (a doctor reports what it
//! sees, it does not retry).

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::mailbox::MailboxGraph;
use super::{Call, CallError, segment};

/// A delta page, as far as a check reads it.
#[derive(Deserialize)]
struct IdPage {
    value: Vec<IdOnly>,
}

/// An item of which only the id is read.
#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl MailboxGraph<'_> {
    /// The ids of the first delta page of `folder`'s messages, asking for at most
    /// `page_size` items.
    pub async fn first_delta_page_ids(&self, folder: &str, page_size: u32) -> Result<Vec<String>, CallError> {
        let call = Call::get(
            "doctor_delta",
            self.path(&format!("mailFolders/{}/messages/delta?$select=id", segment(folder))),
        )
        .prefer(format!("odata.maxpagesize={page_size}"));
        let page: IdPage = self.typed(&call).await?;
        Ok(page.value.into_iter().map(|item| item.id).collect())
    }

    /// Creates a plain draft (no recipients) and returns its id. Made once, never retried.
    pub async fn create_plain_draft(&self, subject: &str, text: &str) -> Result<String, CallError> {
        let draft = json!({"subject": subject, "body": {"contentType": "text", "content": text}});
        let call = Call {
            retry: false,
            ..Call::post("doctor_draft", self.path("messages"), draft)
        };
        let created: IdOnly = self.typed(&call).await?;
        Ok(created.id)
    }

    /// Deletes a message for good (`permanentDelete`: not even Deleted Items keeps it).
    pub async fn permanent_delete(&self, id: &str) -> Result<(), CallError> {
        let call = Call {
            operation: "doctor_draft_delete",
            method: Method::POST,
            url: self.path(&format!("messages/{}/permanentDelete", segment(id))),
            body: None,
            prefer: Vec::new(),
            weight: 1,
            retry: false,
            max_retry_wait: None,
        };
        self.raw(&call).await.map(drop)
    }
}
