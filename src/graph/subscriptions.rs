//! Change-notification subscriptions: create, renew, delete.
