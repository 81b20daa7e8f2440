//! Reads the file sink's lines. While a live load runs, a thread reads what was appended every
//! 100 ms and stamps each line with the time it was first seen (within 100 ms of the write; the
//! daemon acknowledges after the fsync that follows it). A backlog is read once, after the run:
//! a reader of the file while the sink appends to it made the sink's writes cost three times
//! the kernel CPU (the reference client, which it is compared with, has no reader), so its
//! lines are stamped from the daemon's delivered counter instead.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
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
    /// When the line was delivered, Unix seconds.
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
    /// Message lines read, duplicates included.
    messages: usize,
    duplicates: usize,
    malformed: usize,
}

/// What was read from an event file: distinct events, duplicates, malformed lines.
pub type Events = (Vec<Seen>, usize, usize);

/// The part of an event file not read yet.
struct Tail {
    path: PathBuf,
    offset: u64,
    /// The start of a line whose end was not written yet.
    partial: Vec<u8>,
    buf: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            buf: vec![0u8; 8 << 20],
        }
    }

    /// Hands every complete line appended since the last call to `line` (a file that does not
    /// exist yet has none).
    fn read(&mut self, mut line: impl FnMut(&[u8])) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            self.offset += n as u64;
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &self.buf[..n]) {
                if self.partial.is_empty() {
                    line(&self.buf[start..end]);
                } else {
                    self.partial.extend_from_slice(&self.buf[start..end]);
                    line(&self.partial);
                    self.partial.clear();
                }
                start = end + 1;
            }
            self.partial.extend_from_slice(&self.buf[start..n]);
        }
    }
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
                let mut tail = Tail::new(path);
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    let now = unix_now();
                    {
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        tail.read(|line| take_line(line, &mut st, |_| now));
                        unique.store(st.keys.len(), Ordering::Relaxed);
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
    pub fn finish(mut self) -> Events {
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

/// The daemon's `inboxd_messages_delivered_total` over time: (Unix seconds, value) samples in
/// the order taken.
pub type Delivered = [(f64, f64)];

/// Reads the whole file once. The k-th message line counts as delivered at the first sample
/// of `delivered` that reached k: every acknowledged event's line is already written, so this
/// is never before the line was (at most one sample interval after its acknowledgement). A line
/// past the last sample is stamped `otherwise`.
pub fn read_once(path: &Path, delivered: &Delivered, otherwise: f64) -> Events {
    let mut st = State::default();
    let stamp = |k: usize| {
        let i = delivered.partition_point(|(_, n)| *n < k as f64);
        delivered.get(i).map_or(otherwise, |(t, _)| *t)
    };
    Tail::new(path.to_path_buf()).read(|line| take_line(line, &mut st, stamp));
    (st.seen, st.duplicates, st.malformed)
}

/// Parses the head of one line: the fields before `,"body":` (a quote inside a JSON string is
/// always escaped, so the first unescaped `,"body":` is the top-level key). A message line is
/// stamped `seen_at(k)`, k counting message lines from 1, duplicates included.
fn take_line(line: &[u8], st: &mut State, seen_at: impl Fn(usize) -> f64) {
    const BODY: &[u8] = b",\"body\":";
    let head_end = memchr::memmem::find(line, BODY);
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
    st.messages += 1;
    if !st.keys.insert(dedup_key.clone()) {
        st.duplicates += 1;
        return;
    }
    st.seen.push(Seen {
        received_at: received.unix_timestamp_nanos() as f64 / 1e9,
        internet_message_id,
        dedup_key,
        seen_at: seen_at(st.messages),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_stops_at_the_top_level_body() {
        let mut st = State::default();
        let line = br#"{"dedup_key":"k1","internet_message_id":"<gen-3-a@b>","subject":"x,\"body\":{","received_at":"2024-01-01T00:00:01Z","body":{"text":"t"},"attachments":[]}"#;
        take_line(line, &mut st, |_| 5.0);
        take_line(line, &mut st, |_| 6.0);
        take_line(b"{not json", &mut st, |_| 6.0);
        take_line(
            br#"{"schema":"inboxd.mailbox_state.v1","mailbox":"a@b","state":"active"}"#,
            &mut st,
            |_| 6.0,
        );
        take_line(br#"{"schema":"inboxd.message.v1","dedup_key":"k2"}"#, &mut st, |_| 6.0);
        assert_eq!(st.seen.len(), 1);
        assert_eq!(st.duplicates, 1);
        assert_eq!(
            st.malformed, 2,
            "a message without its fields is malformed; a state event is not"
        );
        assert_eq!(st.seen[0].internet_message_id, "<gen-3-a@b>");
        assert_eq!(st.seen[0].received_at, 1_704_067_201.0);
    }

    fn line(key: &str) -> String {
        format!(
            r#"{{"schema":"inboxd.message.v1","dedup_key":"{key}","internet_message_id":"<{key}>","received_at":"2024-01-01T00:00:00Z","body":{{"text":"a\nb"}}}}"#
        )
    }

    #[test]
    fn a_backlog_read_once_is_stamped_from_the_delivered_counter() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.ndjson");
        let state = r#"{"schema":"inboxd.mailbox_state.v1","mailbox":"a@b","state":"active"}"#;
        // Four message lines (one a duplicate) around a state event, and a torn last line.
        let text = [
            line("k1"),
            state.to_string(),
            line("k2"),
            line("k2"),
            line("k3"),
            "{\"sch".to_string(),
        ]
        .join("\n");
        std::fs::write(&path, text).expect("written");
        // The counter read 0, then 2, then 3 (the fourth message line was never counted).
        let delivered = [(10.0, 0.0), (10.1, 2.0), (10.2, 3.0)];
        let (seen, duplicates, malformed) = read_once(&path, &delivered, 99.0);
        let stamps: Vec<(&str, f64)> = seen.iter().map(|s| (s.dedup_key.as_str(), s.seen_at)).collect();
        assert_eq!(stamps, vec![("k1", 10.1), ("k2", 10.1), ("k3", 99.0)]);
        assert_eq!((duplicates, malformed), (1, 0), "a torn last line is not read");
    }
}
