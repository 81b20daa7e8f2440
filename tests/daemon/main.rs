//! Tests of the daemon against the emulator, over real HTTP, with real SQLite files.

mod support;
