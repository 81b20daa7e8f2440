//! The status page (`/ui/`) against the real daemon and the emulator: over plain HTTP, and in a
//! real browser (Debian's chromium driven through chromedriver).

mod a11y;
mod chromium;
mod page;
mod receiver;
#[path = "../daemon/support.rs"]
mod support;
mod ui_http;
