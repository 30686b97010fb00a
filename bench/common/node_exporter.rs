//! Deterministic node_exporter-like series for the benchmarks (shared by `storage_bench`
//! and `query_bench` through `#[path]`; owns no I/O, calls only `timbala::model` and `rand`).
//!
//! The catalogue mirrors the families of one node_exporter scrape on a small Linux host
//! (8 CPUs, 2 network devices, 2 disks, 4 filesystems), following node_exporter's own
//! end-to-end fixture (`collector/fixtures/e2e-output.txt`, summarised at
//! deepwiki.com/grafana/node_exporter/1.3-metrics-overview). Per host, 472 series:
//!
//! | family                                   | series | kind                                  |
//! |------------------------------------------|-------:|---------------------------------------|
//! | node_cpu_seconds_total{cpu,mode}         |     64 | float counter, 0.01 s ticks (USER_HZ) |
//! | node_interrupts_total{cpu,type,devices}  |    160 | integer counter, bursty, many idle    |
//! | node_network_*_total{device}             |     16 | integer counter (bytes, packets, errs)|
//! | node_network_{mtu,speed,up,info}         |      8 | constant                              |
//! | node_disk_*_total{device}                |     10 | integer counter + 0.001 s float ctr   |
//! | node_disk_io_now{device}                 |      2 | small integer gauge                   |
//! | node_filesystem_*{device,fstype,mount}   |     28 | constant sizes, rarely/often changing |
//! | node_memory_*_bytes                      |     40 | 15 constant, 10 rare, 15 kB-step gauges|
//! | node_vmstat_*, node_netstat_*            |     40 | integer counters, half never move     |
//! | node_load{1,5,15}                        |      3 | gauge, 0.01 resolution                |
//! | node_scrape_collector_{duration,success} |     80 | full-precision noisy gauge / constant |
//! | info, boot time, fds, context switches.. |     11 | constant / counters / gauges          |
//! | go_*, process_*                          |      9 | gauges and a float counter            |
//! | up                                       |      1 | constant 1                            |
//!
//! Taken together (measured by `storage_bench`, which prints the shares): 22% constant
//! series, 4% rarely changing gauges, 44% integer counters (128 of the 160 interrupt
//! lines stay idle on 4 scrapes in 5), 15% float counters (3 of 8 CPU modes never move),
//! 7% gauges stepping on a grid every scrape, 8% full-precision gauges.
//! The query benchmark adds an HTTP service with classic histograms
//! (`http_request_duration_seconds_bucket{le}` with 10 finite buckets and +Inf).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use timbala::model::Labels;

pub const INTERVAL_MS: i64 = 15_000;
pub const START_MS: i64 = 1_700_000_000_000;

/// How a series' value evolves from scrape to scrape.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Info metrics, sizes, limits: the first value forever.
    Constant(f64),
    /// Changes by a multiple of `step` with probability 1% per scrape.
    RareGauge { start: f64, step: f64 },
    /// Random walk on a grid of `step` every scrape (memory in kB, load in 0.01).
    Gauge { start: f64, step: f64, spread: f64 },
    /// A fresh full-precision float every scrape (durations, temperatures).
    NoisyGauge { mean: f64 },
    /// Integer counter: idle on a scrape with probability `idle`, else bursts around `mean`.
    IntCounter { mean: f64, idle: f64 },
    /// Float counter counted in `resolution` ticks (CPU seconds: 0.01), `mean` per scrape.
    FloatCounter { mean: f64, resolution: f64 },
    /// Cumulative bucket `bin` (10 = +Inf, also `_count`) of histogram `group`.
    Bucket { group: usize, bin: usize },
    /// `_sum` of histogram `group`.
    HistogramSum { group: usize },
}

pub struct SeriesSpec {
    pub labels: Labels,
    pub kind: Kind,
}

/// Upper bounds of the classic histogram's finite buckets (Prometheus's defaults).
pub const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Share of requests falling in each bucket (the last entry goes to +Inf only).
const BUCKET_SHARE: [f64; 11] = [
    0.05, 0.10, 0.20, 0.25, 0.17, 0.12, 0.06, 0.03, 0.015, 0.004, 0.001,
];

const CPU_MODES: [(&str, f64); 8] = [
    ("idle", 13.0),
    ("user", 1.2),
    ("system", 0.5),
    ("iowait", 0.1),
    ("softirq", 0.05),
    ("irq", 0.0),
    ("nice", 0.0),
    ("steal", 0.0),
];
const CPUS: usize = 8;
const NET_DEVICES: [&str; 2] = ["eth0", "lo"];
const DISKS: [&str; 2] = ["nvme0n1", "sda"];
const MOUNTS: [(&str, &str, &str); 4] = [
    ("/dev/nvme0n1p2", "ext4", "/"),
    ("/dev/nvme0n1p3", "ext4", "/var"),
    ("/dev/sda1", "xfs", "/data"),
    ("tmpfs", "tmpfs", "/run"),
];

/// Builds a label set from `__name__`, the target's labels and extra pairs.
fn series(name: &str, target: &[(&str, &str)], extra: &[(&str, &str)]) -> Labels {
    let pairs = std::iter::once(("__name__", name))
        .chain(target.iter().copied())
        .chain(extra.iter().copied());
    Labels::from_pairs(pairs)
}

/// The series of one node_exporter target (`instance` = `host`:9100, `job` = node).
pub fn node_exporter_target(host: usize) -> Vec<SeriesSpec> {
    let instance = format!("host-{host:03}:9100");
    let t: [(&str, &str); 2] = [("instance", &instance), ("job", "node")];
    let mut out = Vec::with_capacity(472);
    let mut push = |name: &str, extra: &[(&str, &str)], kind: Kind| {
        out.push(SeriesSpec {
            labels: series(name, &t, extra),
            kind,
        });
    };
    for cpu in 0..CPUS {
        let cpu = cpu.to_string();
        for (mode, mean) in CPU_MODES {
            let kind = Kind::FloatCounter {
                mean,
                resolution: 0.01,
            };
            push(
                "node_cpu_seconds_total",
                &[("cpu", &cpu), ("mode", mode)],
                kind,
            );
        }
        for irq in 0..20 {
            let (ty, devices) = (format!("irq{irq}"), format!("dev{}", irq % 7));
            // A few busy interrupt lines, most fire rarely.
            let (mean, idle) = if irq < 4 { (400.0, 0.05) } else { (3.0, 0.8) };
            let extra = [("cpu", cpu.as_str()), ("type", &ty), ("devices", &devices)];
            push(
                "node_interrupts_total",
                &extra,
                Kind::IntCounter { mean, idle },
            );
        }
    }
    for dev in NET_DEVICES {
        let d = [("device", dev)];
        for dir in ["receive", "transmit"] {
            let counters = [("bytes", 150_000.0, 0.0), ("packets", 200.0, 0.0)];
            for (what, mean, idle) in counters
                .into_iter()
                .chain([("errs", 1.0, 0.99), ("drop", 1.0, 0.97)])
            {
                let name = format!("node_network_{dir}_{what}_total");
                push(&name, &d, Kind::IntCounter { mean, idle });
            }
        }
        push("node_network_mtu_bytes", &d, Kind::Constant(1500.0));
        push("node_network_speed_bytes", &d, Kind::Constant(1.25e9));
        push("node_network_up", &d, Kind::Constant(1.0));
        push(
            "node_network_info",
            &[("device", dev), ("operstate", "up")],
            Kind::Constant(1.0),
        );
    }
    for disk in DISKS {
        let d = [("device", disk)];
        push(
            "node_disk_reads_completed_total",
            &d,
            Kind::IntCounter {
                mean: 30.0,
                idle: 0.3,
            },
        );
        push(
            "node_disk_writes_completed_total",
            &d,
            Kind::IntCounter {
                mean: 80.0,
                idle: 0.1,
            },
        );
        push(
            "node_disk_read_bytes_total",
            &d,
            Kind::IntCounter {
                mean: 4096.0 * 60.0,
                idle: 0.3,
            },
        );
        push(
            "node_disk_written_bytes_total",
            &d,
            Kind::IntCounter {
                mean: 4096.0 * 200.0,
                idle: 0.1,
            },
        );
        let io_time = Kind::FloatCounter {
            mean: 0.4,
            resolution: 0.001,
        };
        push("node_disk_io_time_seconds_total", &d, io_time);
        push(
            "node_disk_io_now",
            &d,
            Kind::Gauge {
                start: 0.0,
                step: 1.0,
                spread: 1.0,
            },
        );
    }
    for (i, (device, fstype, mount)) in MOUNTS.into_iter().enumerate() {
        let d = [
            ("device", device),
            ("fstype", fstype),
            ("mountpoint", mount),
        ];
        let size = 1024.0 * 1024.0 * 1024.0 * (20 << i) as f64;
        push("node_filesystem_size_bytes", &d, Kind::Constant(size));
        push("node_filesystem_files", &d, Kind::Constant(size / 16384.0));
        push("node_filesystem_readonly", &d, Kind::Constant(0.0));
        push("node_filesystem_device_error", &d, Kind::Constant(0.0));
        // Busy mounts (/ and /var get logs) change every scrape by whole 4 KiB blocks.
        let free = if i < 2 {
            Kind::Gauge {
                start: size * 0.4,
                step: 4096.0,
                spread: 50.0,
            }
        } else {
            Kind::RareGauge {
                start: size * 0.7,
                step: 4096.0,
            }
        };
        push("node_filesystem_avail_bytes", &d, free);
        push("node_filesystem_free_bytes", &d, free);
        push(
            "node_filesystem_files_free",
            &d,
            Kind::RareGauge {
                start: size / 20000.0,
                step: 1.0,
            },
        );
    }
    for m in 0..40 {
        let name = format!("node_memory_Field{m:02}_bytes");
        let base = 1024.0 * f64::from(1_000_000 + m * 77_777);
        let kind = match m {
            0..15 => Kind::Constant(base),
            15..25 => Kind::RareGauge {
                start: base,
                step: 1024.0,
            },
            _ => Kind::Gauge {
                start: base,
                step: 1024.0,
                spread: 200.0,
            },
        };
        push(&name, &[], kind);
    }
    for v in 0..40 {
        let (name, kind) = if v < 10 {
            (
                format!("node_vmstat_field{v}"),
                Kind::IntCounter {
                    mean: 500.0,
                    idle: 0.2,
                },
            )
        } else if v < 20 {
            (
                format!("node_netstat_Tcp_Field{v}"),
                Kind::IntCounter {
                    mean: 20.0,
                    idle: 0.5,
                },
            )
        } else {
            // Error counters that stay at their boot value on a healthy host.
            (
                format!("node_netstat_TcpExt_Field{v}"),
                Kind::Constant(f64::from(v * 3)),
            )
        };
        push(&name, &[], kind);
    }
    for (name, start) in [
        ("node_load1", 0.8),
        ("node_load5", 0.7),
        ("node_load15", 0.6),
    ] {
        push(
            name,
            &[],
            Kind::Gauge {
                start,
                step: 0.01,
                spread: 5.0,
            },
        );
    }
    for c in 0..40 {
        let collector = format!("collector{c:02}");
        let d = [("collector", collector.as_str())];
        push(
            "node_scrape_collector_duration_seconds",
            &d,
            Kind::NoisyGauge { mean: 0.002 },
        );
        push("node_scrape_collector_success", &d, Kind::Constant(1.0));
    }
    let uname = [("release", "6.1.0-27-amd64"), ("machine", "x86_64")];
    push("node_uname_info", &uname, Kind::Constant(1.0));
    push(
        "node_os_info",
        &[("id", "debian"), ("version_id", "12")],
        Kind::Constant(1.0),
    );
    push(
        "node_boot_time_seconds",
        &[],
        Kind::Constant(1_699_000_000.0),
    );
    push(
        "node_time_seconds",
        &[],
        Kind::FloatCounter {
            mean: 15.0,
            resolution: 1e-9,
        },
    );
    push("node_filefd_maximum", &[], Kind::Constant(9.2e18));
    push(
        "node_filefd_allocated",
        &[],
        Kind::Gauge {
            start: 2000.0,
            step: 1.0,
            spread: 5.0,
        },
    );
    push(
        "node_context_switches_total",
        &[],
        Kind::IntCounter {
            mean: 30_000.0,
            idle: 0.0,
        },
    );
    push(
        "node_intr_total",
        &[],
        Kind::IntCounter {
            mean: 20_000.0,
            idle: 0.0,
        },
    );
    push(
        "node_forks_total",
        &[],
        Kind::IntCounter {
            mean: 40.0,
            idle: 0.0,
        },
    );
    push(
        "node_procs_running",
        &[],
        Kind::Gauge {
            start: 3.0,
            step: 1.0,
            spread: 1.0,
        },
    );
    push("node_entropy_available_bits", &[], Kind::Constant(256.0));
    push_process_metrics(&mut push);
    push("up", &[], Kind::Constant(1.0));
    out
}

/// The exporter's own Go runtime and process metrics.
fn push_process_metrics(push: &mut impl FnMut(&str, &[(&str, &str)], Kind)) {
    push(
        "go_goroutines",
        &[],
        Kind::Gauge {
            start: 9.0,
            step: 1.0,
            spread: 1.0,
        },
    );
    push("go_threads", &[], Kind::Constant(8.0));
    let heap = Kind::Gauge {
        start: 3.0e6,
        step: 8.0,
        spread: 2000.0,
    };
    push("go_memstats_alloc_bytes", &[], heap);
    push("go_memstats_heap_inuse_bytes", &[], heap);
    push(
        "go_memstats_sys_bytes",
        &[],
        Kind::RareGauge {
            start: 1.3e7,
            step: 65536.0,
        },
    );
    let gc = Kind::IntCounter {
        mean: 1.0,
        idle: 0.7,
    };
    push("go_gc_cycles_total", &[], gc);
    let cpu = Kind::FloatCounter {
        mean: 0.02,
        resolution: 0.01,
    };
    push("process_cpu_seconds_total", &[], cpu);
    push(
        "process_resident_memory_bytes",
        &[],
        Kind::Gauge {
            start: 2.0e7,
            step: 4096.0,
            spread: 5.0,
        },
    );
    push(
        "process_open_fds",
        &[],
        Kind::Gauge {
            start: 10.0,
            step: 1.0,
            spread: 1.0,
        },
    );
}

/// One instrumented HTTP service target: request counters and a latency histogram per
/// handler. `group_base` numbers the histograms so groups of all targets are distinct.
pub fn http_service_target(host: usize, group_base: usize) -> Vec<SeriesSpec> {
    let instance = format!("api-{host:02}:8080");
    let t: [(&str, &str); 2] = [("instance", &instance), ("job", "api")];
    let mut out = Vec::new();
    let mut push = |name: &str, extra: &[(&str, &str)], kind: Kind| {
        out.push(SeriesSpec {
            labels: series(name, &t, extra),
            kind,
        });
    };
    for (h, handler) in ["/api/v1/query", "/api/v1/write", "/login", "/static"]
        .iter()
        .enumerate()
    {
        let group = group_base + h;
        let hl = [("handler", *handler), ("method", "GET")];
        for (bin, le) in BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()])
            .enumerate()
        {
            let extra = [hl[0], hl[1], ("le", le.as_str())];
            push(
                "http_request_duration_seconds_bucket",
                &extra,
                Kind::Bucket { group, bin },
            );
        }
        push(
            "http_request_duration_seconds_count",
            &hl,
            Kind::Bucket { group, bin: 10 },
        );
        push(
            "http_request_duration_seconds_sum",
            &hl,
            Kind::HistogramSum { group },
        );
        for (code, mean, idle) in [("200", 120.0, 0.0), ("404", 2.0, 0.6), ("500", 1.0, 0.95)] {
            let extra = [hl[0], ("code", code)];
            push(
                "http_requests_total",
                &extra,
                Kind::IntCounter { mean, idle },
            );
        }
    }
    push("up", &[], Kind::Constant(1.0));
    out
}

/// Histograms per HTTP service target (one per handler).
pub const HISTOGRAMS_PER_SERVICE: usize = 4;

/// Cumulative state of one classic histogram.
#[derive(Clone, Copy, Default)]
struct Histogram {
    /// Cumulative counts per bucket; index 10 is +Inf (= `_count`).
    cumulative: [f64; 11],
    sum: f64,
}

/// Produces each series' next value, scrape after scrape, from a fixed seed.
pub struct Generator {
    rng: SmallRng,
    kinds: Vec<Kind>,
    values: Vec<f64>,
    histograms: Vec<Histogram>,
}

impl Generator {
    pub fn new(kinds: Vec<Kind>, seed: u64) -> Self {
        let histograms = kinds
            .iter()
            .filter_map(|k| match k {
                Kind::Bucket { group, .. } | Kind::HistogramSum { group } => Some(group + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let values = kinds.iter().map(initial_value).collect();
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            kinds,
            values,
            histograms: vec![Histogram::default(); histograms],
        }
    }

    pub fn kind(&self, i: usize) -> Kind {
        self.kinds[i]
    }

    /// Advances every series by one scrape; read the values with `value`.
    pub fn scrape(&mut self) {
        for h in 0..self.histograms.len() {
            self.observe_requests(h);
        }
        for i in 0..self.kinds.len() {
            self.values[i] = self.next_value(i);
        }
    }

    pub fn value(&self, i: usize) -> f64 {
        self.values[i]
    }

    /// One scrape interval of requests into histogram `h`.
    fn observe_requests(&mut self, h: usize) {
        let requests = self.rng.random_range(50..150) as f64;
        let hist = &mut self.histograms[h];
        let mut below = 0.0;
        for (bin, share) in BUCKET_SHARE.iter().enumerate() {
            let jitter = 0.8 + 0.4 * self.rng.random::<f64>();
            let in_bin = (requests * share * jitter).round();
            below += in_bin;
            hist.cumulative[bin] += below;
            let upper = BUCKETS.get(bin).copied().unwrap_or(10.0);
            hist.sum += in_bin * upper * 0.7;
        }
    }

    fn next_value(&mut self, i: usize) -> f64 {
        let v = self.values[i];
        match self.kinds[i] {
            Kind::Constant(c) => c,
            Kind::RareGauge { step, .. } => {
                if self.rng.random_bool(0.01) {
                    v + step * f64::from(self.rng.random_range(-100..=100))
                } else {
                    v
                }
            }
            Kind::Gauge { step, spread, .. } => {
                let range = spread as i64;
                let moved = v + step * self.rng.random_range(-range..=range) as f64;
                // Stay on the grid: a walk in kB is whole kB, load in hundredths.
                ((moved / step).round() * step).max(0.0)
            }
            Kind::NoisyGauge { mean } => mean * (0.5 + self.rng.random::<f64>()),
            Kind::IntCounter { mean, idle } => {
                if self.rng.random_bool(idle) {
                    v
                } else {
                    // Exponential bursts: mostly small increments, a few large ones.
                    let burst = -mean * (1.0 - self.rng.random::<f64>()).ln();
                    v + burst.round()
                }
            }
            Kind::FloatCounter { mean, resolution } => {
                let ticks = (mean / resolution * (0.7 + 0.6 * self.rng.random::<f64>())).round();
                // The exporter divides a tick count, so values are ticks * resolution.
                let total_ticks = (v / resolution).round() + ticks;
                total_ticks * resolution
            }
            Kind::Bucket { group, bin } => self.histograms[group].cumulative[bin],
            Kind::HistogramSum { group } => self.histograms[group].sum,
        }
    }
}

fn initial_value(kind: &Kind) -> f64 {
    match *kind {
        Kind::Constant(c) => c,
        Kind::RareGauge { start, .. } | Kind::Gauge { start, .. } => start,
        Kind::NoisyGauge { mean } => mean,
        Kind::IntCounter { mean, .. } => (mean * 1000.0).round(),
        Kind::FloatCounter { mean, resolution } => {
            ((mean * 1000.0) / resolution).round() * resolution
        }
        Kind::Bucket { .. } | Kind::HistogramSum { .. } => 0.0,
    }
}

/// Scrape timestamps the way Prometheus writes them: on the exact interval grid
/// (Prometheus snaps scrapes that land within 2 ms of it), except for a fraction
/// `jitter_share` of scrapes that miss the tolerance by a few milliseconds.
pub struct ScrapeClock {
    rng: SmallRng,
    start_ms: i64,
    jitter_share: f64,
    jitter_ms: i64,
}

impl ScrapeClock {
    pub fn new(seed: u64, jitter_share: f64, jitter_ms: i64) -> Self {
        ScrapeClock {
            rng: SmallRng::seed_from_u64(seed),
            start_ms: START_MS,
            jitter_share,
            jitter_ms: jitter_ms.max(0),
        }
    }

    /// The same clock with scrape 0 at `start_ms` instead of `START_MS` (the side-by-side
    /// benchmark ends its data near the wall clock, as live scrapes do).
    pub fn starting_at(self, start_ms: i64) -> Self {
        ScrapeClock { start_ms, ..self }
    }

    pub fn time(&mut self, scrape: i64) -> i64 {
        let on_grid = self.start_ms + scrape * INTERVAL_MS;
        if self.jitter_ms > 0 && self.rng.random_bool(self.jitter_share.clamp(0.0, 1.0)) {
            on_grid + self.rng.random_range(-self.jitter_ms..=self.jitter_ms)
        } else {
            on_grid
        }
    }
}
