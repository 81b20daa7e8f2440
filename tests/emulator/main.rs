//! Tests of `inboxd emulate`: every behaviour driven over real HTTP.

mod batch;
mod cli;
mod control;
mod documented;
mod faults;
mod graph_compose;
mod graph_read;
mod identity;
mod limits;
mod python_sdk;
mod subscriptions;
mod support;
mod transport;
