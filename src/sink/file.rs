//! The NDJSON file sink: one JSON line per event, fsynced before anything is acknowledged,
//! rotated by size without ever splitting a line across files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::sync::Mutex;

use super::{EncodedEvent, EventSink, SinkError, deliver_all};
use crate::event::SinkEvent;

/// How much of the live file's end stays in the page cache once fsynced: routing tailing the
/// file reads it from memory.
const CACHED_TAIL: u64 = 32 * 1024 * 1024;
/// What the ranges dropped from the page cache are aligned to.
const DROP_ALIGN: u64 = 2 * 1024 * 1024;

/// Appends events to an NDJSON file.
///
/// Durability: a batch is acknowledged only after its lines are written and `fdatasync`ed,
/// so an acknowledged event survives `kill -9` and power loss. A failed batch is truncated
/// away (never half-written), and a torn line left by a crash is cut off when the file is
/// reopened (it was never acknowledged).
///
/// Rotation: when appending a line would take the file past `max_bytes`, the file is renamed
/// to `<stem>.<UTC timestamp>.<ext>` (a `.1`, `.2`, ... suffix before the extension if that
/// name is taken; a rotated file is never overwritten), the directory is fsynced and a new
/// file is started. A single line larger than `max_bytes` gets a file of its own.
pub struct FileSink {
    /// The live file; the lock serialises deliveries from every mailbox task.
    state: Arc<Mutex<State>>,
    /// Where the live file lives (for Debug and logs).
    path: PathBuf,
}

/// The open file and what we know about its committed content.
struct State {
    /// Path of the live file.
    path: PathBuf,
    /// Rotation threshold in bytes; `None` never rotates.
    max_bytes: Option<u64>,
    /// The live file, opened for appending; `None` after a rotation that renamed the old
    /// file but could not open the new one (reopened by the next batch).
    file: Option<File>,
    /// Length of the file's acknowledged (complete, fsynced) content.
    len: u64,
    /// A failed write may have left bytes past `len`: truncate before the next write.
    dirty: bool,
    /// The start of the live file still in the page cache, as far as the sink knows.
    cached_from: u64,
    /// Test hook: this many more lines are written, then a write tears and fails.
    #[cfg(test)]
    fail_after_lines: Option<usize>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Opens (or creates) the file and its parent directories. A torn last line left by a
    /// crash is removed, so the file always holds complete lines only.
    pub async fn open(path: PathBuf, max_bytes: Option<u64>) -> Result<FileSink, SinkError> {
        let p = path.clone();
        let state = tokio::task::spawn_blocking(move || State::open(p, max_bytes))
            .await
            .map_err(|e| SinkError::Unavailable(format!("opening the sink file panicked: {e}")))?
            .map_err(|e| unavailable(&path, "cannot open", &e))?;
        Ok(FileSink {
            state: Arc::new(Mutex::new(state)),
            path,
        })
    }

    /// Encodes and delivers typed events (see [`EventSink::deliver_encoded`]).
    pub async fn deliver<E: SinkEvent>(&self, events: &[E]) -> Vec<Result<(), SinkError>> {
        deliver_all(self, events).await
    }
}

#[async_trait]
impl EventSink for FileSink {
    /// Appends one line per event and fsyncs once for the batch. On an I/O error every event
    /// of the batch is `Unavailable` and nothing of the batch remains in the live file.
    async fn deliver_encoded(&self, events: &[EncodedEvent<'_>]) -> Vec<Result<(), SinkError>> {
        if events.is_empty() {
            return Vec::new();
        }
        // The encoded events are written as they are (a newline after each), not copied.
        let lines: Vec<Bytes> = events.iter().map(|event| event.json.clone()).collect();
        let mut state = Arc::clone(&self.state).lock_owned().await;
        let written = tokio::task::spawn_blocking(move || state.append(&lines))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("sink writer panicked: {e}"))));
        match written {
            Ok(()) => events.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                let err = unavailable(&self.path, "cannot append to", &e);
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "File sink write failed; the batch stays pending."
                );
                events.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }
}

fn unavailable(path: &Path, what: &str, e: &io::Error) -> SinkError {
    SinkError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl State {
    fn open(path: PathBuf, max_bytes: Option<u64>) -> io::Result<State> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        sync_dir(&path)?;
        let len = complete_len(&file)?;
        if len != file.metadata()?.len() {
            tracing::warn!(
                path = %path.display(),
                "Cut off a torn last line left by a crash; it was never acknowledged."
            );
            file.set_len(len)?;
            file.sync_data()?;
        }
        Ok(State {
            path,
            max_bytes,
            file: Some(file),
            len,
            dirty: false,
            cached_from: 0,
            #[cfg(test)]
            fail_after_lines: None,
        })
    }

    /// Writes every line (rotating as needed), then fsyncs. On error the live file is
    /// truncated back to its last committed length.
    fn append(&mut self, lines: &[Bytes]) -> io::Result<()> {
        self.recover()?;
        let result = self.append_inner(lines);
        if result.is_err() {
            // The live file holds only lines of this batch past `len`: drop them now, or
            // before the next batch if even that fails.
            self.dirty = true;
            let _ = self.recover();
        }
        result
    }

    /// Brings the live file back to its committed state after a failure.
    fn recover(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            sync_dir(&self.path)?;
            self.len = complete_len(&file)?;
            self.file = Some(file);
            self.dirty = true;
        }
        if self.dirty {
            let len = self.len;
            let file = self.live()?;
            file.set_len(len)?;
            file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn live(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the sink file is not open"))
    }

    fn append_inner(&mut self, lines: &[Bytes]) -> io::Result<()> {
        let mut pending = 0u64;
        // Lines since the last rotation, written together.
        let mut from = 0;
        for (i, line) in lines.iter().enumerate() {
            let line_len = line.len() as u64 + 1;
            if let Some(max) = self.max_bytes
                && self.len + pending > 0
                && self.len + pending + line_len > max
            {
                self.write_lines(&lines[from..i])?;
                from = i;
                self.live()?.sync_data()?;
                self.len += pending;
                pending = 0;
                self.rotate()?;
            }
            pending += line_len;
        }
        self.write_lines(&lines[from..])?;
        self.live()?.sync_data()?;
        self.len += pending;
        self.uncache();
        Ok(())
    }

    /// Writes each line and its newline in as few `writev` calls as the kernel allows.
    fn write_lines(&mut self, lines: &[Bytes]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(mut n) = self.fail_after_lines {
            for line in lines {
                if n == 0 {
                    // A torn write: half a line reaches the file, then the error.
                    let torn = line.len() / 2;
                    self.live()?.write_all(&line[..torn])?;
                    self.fail_after_lines = Some(0);
                    return Err(io::Error::other("injected write failure"));
                }
                n -= 1;
                self.live()?.write_all(line)?;
                self.live()?.write_all(b"\n")?;
            }
            self.fail_after_lines = Some(n);
            return Ok(());
        }
        let mut slices: Vec<IoSlice<'_>> = lines
            .iter()
            .flat_map(|line| [IoSlice::new(line), IoSlice::new(b"\n")])
            .collect();
        let mut rest = &mut slices[..];
        let file = self.live()?;
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Asks the kernel to drop the live file's fsynced pages that lie more than
    /// [`CACHED_TAIL`] behind its end. A reader that keeps up still finds what it reads in
    /// memory; the rest would only have grown the page cache by every byte written, and
    /// dropping it lets the next writes reuse those pages.
    fn uncache(&mut self) {
        // The kernel drops only whole folios inside the range, and a file's folios can be as
        // large as 2 MiB: ranges that end on a 2 MiB boundary leave none half-advised for ever.
        let until = self.len.saturating_sub(CACHED_TAIL) & !(DROP_ALIGN - 1);
        let Some(len) = std::num::NonZeroU64::new(until.saturating_sub(self.cached_from)) else {
            return;
        };
        let from = self.cached_from;
        if let Some(file) = &self.file {
            // Advice only: if the kernel declines, the pages stay cached and nothing else changes.
            #[cfg(target_os = "linux")]
            let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
            #[cfg(not(target_os = "linux"))]
            let _ = (file, from, len);
            self.cached_from = until;
        }
    }

    /// Renames the (fsynced) live file aside and starts a new one.
    fn rotate(&mut self) -> io::Result<()> {
        let target = rotated_name(&self.path, OffsetDateTime::now_utc())?;
        fs::rename(&self.path, &target)?;
        self.file = None;
        self.len = 0;
        self.cached_from = 0;
        let file = open_append(&self.path)?;
        sync_dir(&self.path)?;
        self.file = Some(file);
        tracing::info!(path = %target.display(), "Rotated the sink file.");
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).read(true).open(path)
}

/// Makes a created or renamed directory entry durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Length of the file up to and including its last newline.
fn complete_len(mut file: &File) -> io::Result<u64> {
    let total = file.metadata()?.len();
    let mut end = total;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// `<stem>.<UTC timestamp>.<ext>`, or with `.1`, `.2`, ... before the extension when taken.
fn rotated_name(path: &Path, now: OffsetDateTime) -> io::Result<PathBuf> {
    let fmt = format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:6]Z");
    let stamp = now.format(&fmt).map_err(io::Error::other)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map_or_else(|| "ndjson".to_owned(), |e| e.to_string_lossy().into_owned());
    for n in 0u32.. {
        let name = match n {
            0 => format!("{stem}.{stamp}.{ext}"),
            n => format!("{stem}.{stamp}.{n}.{ext}"),
        };
        let candidate = path.with_file_name(name);
        if !candidate.try_exists()? {
            return Ok(candidate);
        }
    }
    Err(io::Error::other("no free name for the rotated sink file"))
}

#[cfg(test)]
mod schema_tests;
#[cfg(test)]
pub(super) mod tests;
