//! Watches the file sink: every 100 ms it reads the lines appended since the last look and
//! stamps each with the time it was first seen, which is when the sink had written it
//! (within 100 ms; the daemon acknowledges after the fsync that follows the write).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How often the file is read.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// One delivered event, as far as the bench cares.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `received_at` of the event (Graph's `receivedDateTime`, whole seconds), Unix seconds.
    pub received_at: f64,
    /// `internet_message_id`, which the load generator numbers.
    pub internet_message_id: String,
    /// `dedup_key`: another process's copy of the same message must carry the same one.
    pub dedup_key: String,
    /// When the line was first seen in the file, Unix seconds.
    pub seen_at: f64,
}

/// The leading fields of an event line (everything before `body`).
#[derive(Deserialize)]
struct Head {
    /// Other event kinds in the file (mailbox states, outbound) are not messages.
    schema: Option<String>,
    dedup_key: Option<String>,
    internet_message_id: Option<String>,
    received_at: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    keys: HashSet<String>,
    duplicates: usize,
    malformed: usize,
}

/// A background reader of the event file.
pub struct EventWatch {
    state: Arc<Mutex<State>>,
    unique: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWatch {
    /// Starts watching `path` (which may not exist yet).
    pub fn start(path: PathBuf) -> EventWatch {
        let state = Arc::new(Mutex::new(State::default()));
        let unique = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (state, unique, stop) = (state.clone(), unique.clone(), stop.clone());
            move || {
                let mut offset = 0u64;
                let mut partial: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 8 << 20];
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    if let Ok(mut file) = std::fs::File::open(&path)
                        && file.seek(SeekFrom::Start(offset)).is_ok()
                    {
                        loop {
                            let n = match file.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            offset += n as u64;
                            let now = unix_now();
                            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                            let mut start = 0;
                            for (i, b) in buf[..n].iter().enumerate() {
                                if *b == b'\n' {
                                    partial.extend_from_slice(&buf[start..i]);
                                    take_line(&partial, now, &mut st);
                                    partial.clear();
                                    start = i + 1;
                                }
                            }
                            partial.extend_from_slice(&buf[start..n]);
                            unique.store(st.keys.len(), Ordering::Relaxed);
                        }
                    }
                    if last {
                        return;
                    }
                    #[allow(clippy::disallowed_methods, reason = "a dedicated OS thread, not a runtime worker")]
                    std::thread::sleep(LOOK_EVERY);
                }
            }
        });
        EventWatch {
            state,
            unique,
            stop,
            thread: Some(thread),
        }
    }

    /// Distinct events (by `dedup_key`) seen so far.
    pub fn unique(&self) -> usize {
        self.unique.load(Ordering::Relaxed)
    }

    /// `internet_message_id` of every distinct event seen so far (several processes' files
    /// are joined on it).
    pub fn message_ids(&self) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seen.iter().map(|s| s.internet_message_id.clone()).collect()
    }

    /// Reads what is left, stops, and returns what was seen plus duplicates and malformed lines.
    pub fn finish(mut self) -> (Vec<Seen>, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut st.seen), st.duplicates, st.malformed)
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses the head of one line: the fields before `,"body":` (a quote inside a JSON string is
/// always escaped, so the first unescaped `,"body":` is the top-level key).
fn take_line(line: &[u8], now: f64, st: &mut State) {
    const BODY: &[u8] = b",\"body\":";
    let head_end = line.windows(BODY.len()).position(|w| w == BODY);
    let head: Option<Head> = match head_end {
        Some(end) => {
            let mut text = line[..end].to_vec();
            text.push(b'}');
            serde_json::from_slice(&text).ok()
        }
        None => serde_json::from_slice(line).ok(),
    };
    let Some(head) = head else {
        st.malformed += 1;
        return;
    };
    if head
        .schema
        .as_deref()
        .is_some_and(|s| s != crate::event::MESSAGE_SCHEMA)
    {
        return;
    }
    let (Some(dedup_key), Some(internet_message_id), Some(received_at)) =
        (head.dedup_key, head.internet_message_id, head.received_at)
    else {
        st.malformed += 1;
        return;
    };
    let Ok(received) = OffsetDateTime::parse(&received_at, &Rfc3339) else {
        st.malformed += 1;
        return;
    };
    if !st.keys.insert(dedup_key.clone()) {
        st.duplicates += 1;
        return;
    }
    st.seen.push(Seen {
        received_at: received.unix_timestamp_nanos() as f64 / 1e9,
        internet_message_id,
        dedup_key,
        seen_at: now,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_stops_at_the_top_level_body() {
        let mut st = State::default();
        let line = br#"{"dedup_key":"k1","internet_message_id":"<gen-3-a@b>","subject":"x,\"body\":{","received_at":"2024-01-01T00:00:01Z","body":{"text":"t"},"attachments":[]}"#;
        take_line(line, 5.0, &mut st);
        take_line(line, 6.0, &mut st);
        take_line(b"{not json", 6.0, &mut st);
        take_line(
            br#"{"schema":"inboxd.mailbox_state.v1","mailbox":"a@b","state":"active"}"#,
            6.0,
            &mut st,
        );
        take_line(br#"{"schema":"inboxd.message.v1","dedup_key":"k2"}"#, 6.0, &mut st);
        assert_eq!(st.seen.len(), 1);
        assert_eq!(st.duplicates, 1);
        assert_eq!(
            st.malformed, 2,
            "a message without its fields is malformed; a state event is not"
        );
        assert_eq!(st.seen[0].internet_message_id, "<gen-3-a@b>");
        assert_eq!(st.seen[0].received_at, 1_704_067_201.0);
    }
}
