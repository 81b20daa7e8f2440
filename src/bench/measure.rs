//! CPU time and memory of a child process, read from `/proc` (Linux), so the daemon is
//! measured alone: the emulator and the bench itself run in other processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the resident set is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of `pid` so far (fields 14 and 15 of `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The value of `key` in `/proc/PID/status`, trimmed.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let kb: u64 = status_field(pid, key)?.trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Samples the resident set of a process every 100 ms until stopped.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pid: u32,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = status_bytes(pid, "VmRSS") {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    #[allow(clippy::disallowed_methods, reason = "a dedicated OS thread, not a runtime worker")]
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
            pid,
        }
    }

    /// Peak resident set in bytes: the larger of the sampled VmRSS and the kernel's VmHWM
    /// (call while the process is still alive).
    pub fn peak_bytes(&self) -> u64 {
        let hwm = status_bytes(self.pid, "VmHWM").unwrap_or(0);
        self.peak.load(Ordering::Relaxed).max(hwm)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The machine the figures come from.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    serde_json::json!({
        "nproc": nproc, "cpu_model": model, "memory_mb": mem_kb / 1024,
        "bench_cpus": cpus_allowed(std::process::id()).unwrap_or_else(|| "unknown".into()),
    })
}

/// The CPUs process `pid` may run on, as the kernel lists them (`0-1`, `1`).
pub fn cpus_allowed(pid: u32) -> Option<String> {
    status_field(pid, "Cpus_allowed_list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid, clock_ticks()).is_some());
        assert!(status_bytes(pid, "VmHWM").unwrap() > 1024 * 1024);
        assert!(status_bytes(pid, "VmRSS").unwrap() > 0);
    }
}
