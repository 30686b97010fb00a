//! Process metrics in the names Prometheus's client libraries use (`process_*`), read
//! from `/proc/self` at scrape time, so nothing is paid between scrapes.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct ProcessCollector {
    start_time_seconds: f64,
    clock_ticks_per_second: f64,
    page_size_bytes: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        ProcessCollector {
            start_time_seconds: start,
            clock_ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size_bytes: if page > 0 { page as f64 } else { 4096.0 },
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields of `/proc/self/stat` we report.
struct ProcStat {
    cpu_ticks: f64,
    virtual_bytes: f64,
    resident_pages: f64,
}

fn read_proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after it start past ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 is index 0, so utime(14)=11, stime(15)=12, vsize(23)=20, rss(24)=21.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some(ProcStat {
        cpu_ticks: num(11)? + num(12)?,
        virtual_bytes: num(20)?,
        resident_pages: num(21)?,
    })
}

fn count_open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur as f64)
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(stat) = read_proc_stat() {
            let cpu = ConstCounter::new(stat.cpu_ticks / self.clock_ticks_per_second);
            let help = "Total user and system CPU time spent in seconds";
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                cpu.metric_type(),
            )?)?;
            let rss = stat.resident_pages * self.page_size_bytes;
            encode_gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
            )?;
            let vsz = stat.virtual_bytes;
            encode_gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                vsz,
            )?;
        }
        if let Some(open) = count_open_fds() {
            encode_gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open,
            )?;
        }
        if let Some(max) = max_fds() {
            encode_gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max,
            )?;
        }
        let start_help = "Start time of the process since unix epoch in seconds";
        encode_gauge(
            &mut encoder,
            "process_start_time_seconds",
            start_help,
            self.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_stats() {
        let stat = read_proc_stat().expect("/proc/self/stat parses");
        assert!(stat.resident_pages > 0.0);
        assert!(stat.virtual_bytes > 0.0);
        assert!(count_open_fds().expect("fd count") >= 3.0);
    }
}
