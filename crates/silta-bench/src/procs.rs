//! What a process group costs, read from Linux's `/proc`: CPU seconds (user + system, all
//! threads) and resident memory (current and peak). The servers under test run as child
//! processes so their cost is theirs alone, not the load generator's.

use std::path::Path;
use std::process::Command;

/// Clock ticks per second, the unit of `utime`/`stime` in `/proc/PID/stat`.
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// A set of processes measured together (nginx's master and workers plus the echo server
/// behind them count as one system).
#[derive(Debug, Clone, Default)]
pub(crate) struct Group {
    pub(crate) pids: Vec<u32>,
}

impl Group {
    pub(crate) fn new(pids: Vec<u32>) -> Self {
        Group { pids }
    }

    /// User + system CPU seconds so far, over all threads of every process.
    pub(crate) fn cpu_seconds(&self, ticks: f64) -> f64 {
        self.pids
            .iter()
            .filter_map(|pid| stat_ticks(*pid))
            .sum::<u64>() as f64
            / ticks
    }

    /// Resident memory now, in bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| status_kb(*p, "VmRSS:"))
            .sum::<u64>()
            * 1024
    }

    /// Peak resident memory since each process started, in bytes.
    pub(crate) fn peak_rss_bytes(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| status_kb(*p, "VmHWM:"))
            .sum::<u64>()
            * 1024
    }
}

/// This process's own CPU seconds so far (the load generator and the subscriber).
pub(crate) fn own_cpu_seconds(ticks: f64) -> f64 {
    stat_ticks(std::process::id()).unwrap_or(0) as f64 / ticks
}

/// The whole machine's CPU time so far, as (busy, total) clock ticks over all cores, from
/// `/proc/stat`: how close to saturation a point ran, whoever used the time.
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // Fields 4 and 5 of the counters: idle and iowait.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn stat_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The direct children of `parent` (nginx's workers).
pub(crate) fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes on disk of a file and its SQLite companions (`-wal`, `-shm`).
pub(crate) fn sqlite_size(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(Path::new(&name)).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// Whether this process runs as root (nginx then needs `user root;` to read the key files it
/// was given; the workers would otherwise drop to `nobody`).
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
