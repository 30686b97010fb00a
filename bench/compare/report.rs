//! Turns the runs into the generated region of `bench/RESULTS.md` (machine, versions,
//! command, payload, table, ratios, target verdicts, query agreement) and into
//! `bench/chart.svg`. Owns the layout of both; calls `figures`, `queries`, `payload`,
//! `procstat` and, for version strings, the tools' `--version`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::figures::{Figure, Run, Summary};
use crate::payload::{Payload, SAMPLES_PER_REQUEST};
use crate::queries::{QueryReport, DASHBOARD, REPEATS};
use crate::systems::SystemKind;

pub const BEGIN: &str = "<!-- BEGIN make bench -->";
pub const END: &str = "<!-- END make bench -->";

/// Facts about the machine and the run.
pub struct Context {
    pub runs: usize,
    pub loads: Vec<f64>,
    pub duration: Duration,
    started_utc: String,
    cpu: String,
    nproc: usize,
    memory_gib: f64,
    kernel: String,
    versions: Vec<(&'static str, String)>,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

impl Context {
    pub fn collect(runs: usize) -> Context {
        let mem_kib: f64 = proc_field("/proc/meminfo", "MemTotal")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(f64::NAN);
        let commit = first_line("git", &["rev-parse", "--short", "HEAD"]);
        let dirty =
            !first_line("git", &["status", "--porcelain", "--untracked-files=no"]).eq("unknown");
        Context {
            runs,
            loads: Vec::new(),
            duration: Duration::ZERO,
            started_utc: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
            versions: vec![
                (
                    "timbala",
                    format!(
                        "commit {commit}{}",
                        if dirty { " + local changes" } else { "" }
                    ),
                ),
                ("rustc", first_line("rustc", &["--version"])),
                ("prometheus", first_line("prometheus", &["--version"])),
                (
                    "victoria-metrics",
                    first_line("dpkg-query", &["-W", "-f=${Version}", "victoria-metrics"]),
                ),
            ],
        }
    }
}

/// Every run's figures and dashboard answers, per system.
pub struct Results {
    systems: Vec<SystemKind>,
    runs: BTreeMap<usize, Vec<Run>>,
    series: BTreeMap<usize, Vec<Option<usize>>>,
    query_errors: BTreeMap<usize, usize>,
}

impl Results {
    pub fn new(systems: &[SystemKind]) -> Results {
        Results {
            systems: systems.to_vec(),
            runs: BTreeMap::new(),
            series: BTreeMap::new(),
            query_errors: BTreeMap::new(),
        }
    }

    fn key(&self, kind: SystemKind) -> usize {
        self.systems
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(usize::MAX)
    }

    pub fn add(&mut self, kind: SystemKind, run: Run, dashboard: QueryReport) {
        let key = self.key(kind);
        self.runs.entry(key).or_default().push(run);
        self.series.insert(key, dashboard.series);
        *self.query_errors.entry(key).or_default() += dashboard.errors;
    }

    fn summary(&self, kind: SystemKind, f: Figure) -> Option<Summary> {
        self.runs
            .get(&self.key(kind))
            .map(|runs| Summary::of(runs, f))
    }

    fn median(&self, kind: SystemKind, f: Figure) -> Option<f64> {
        self.summary(kind, f).map(|s| s.median)
    }
}

fn cell(f: Figure, s: Option<Summary>) -> String {
    match s {
        Some(s) if s.min == s.max => f.format(s.median),
        Some(s) => format!(
            "**{}** ({}–{})",
            f.format(s.median),
            f.format(s.min),
            f.format(s.max)
        ),
        None => "not run".to_string(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    }
}

pub fn markdown(ctx: &Context, payload: &Payload, results: &Results) -> String {
    let mut md = String::new();
    md.push_str(&header(ctx, payload));
    md.push_str(&table(results));
    md.push_str(&ratios(results));
    md.push_str(&verdicts(results));
    md.push_str(&agreement(results));
    md
}

fn header(ctx: &Context, payload: &Payload) -> String {
    let spec = &payload.spec;
    let loads: Vec<String> = ctx.loads.iter().map(|l| format!("{l:.1}")).collect();
    let versions: Vec<String> = ctx
        .versions
        .iter()
        .map(|(k, v)| format!("| {k} | {v} |"))
        .collect();
    format!(
        "## Side by side: Timbala, Prometheus, VictoriaMetrics (generated by `make bench`)\n\n\
This section is rewritten by `make bench` (`bench/compare/`); edit the harness, not the text.\n\
Started {started}, took {minutes:.1} min for {runs} runs of each system.\n\n\
| machine | |\n|---|---|\n| CPU | {cpu} |\n| nproc | {nproc} |\n| memory | {mem:.1} GiB |\n| kernel | {kernel} |\n\
| load average (1 min) after each ingest | {loads} |\n{versions}\n\n\
The machine is shared with other agents compiling; wall-clock figures (samples/s, latencies) \
are pessimistic and noisy, CPU-second figures steadier.\n\n\
Command (from a fresh clone; installs Debian's `prometheus` and `victoria-metrics` if missing):\n\n\
```\nmake bench\n# = cargo build --release --bin timbala --example bench_compare\n\
#   bash bench/install-peers.sh\n#   target/release/examples/bench_compare --runs {runs}\n```\n\n\
**Payload** (`bench/compare/payload.rs`, seeded, identical for every system and run): \
{hosts} node_exporter-like hosts (472 series each: counters, gauges, constants; mix in \
`bench/common/node_exporter.rs`) and {services} HTTP services with classic histograms \
(4 handlers x 11 buckets + `_sum`/`_count`, request counters; {hist} histogram series), \
3 to 6 labels per series incl. `job` and `instance`: **{series} series x {scrapes} scrapes \
at 15 s = {samples} samples** ({hours:.1} h ending about a minute before the run started). \
Each target scrapes at its own phase; {share:.0}% of scrapes miss the 15 s grid by up to \
±{jitter} ms. Pre-encoded before any clock starts into {requests} remote-write 1.0 \
requests (snappy protobuf, {per} samples each, {mb:.0} MB), sent over {conns} keep-alive \
HTTP/1.1 connections; each connection owns a disjoint set of series and sends in time order, \
and connections stay within 10 minutes of data of each other (Prometheus refuses samples \
more than 1 h behind its newest).\n\n\
**Method** (per system and run, fresh data directories): start, wait until ready (the cluster: \
until all nodes see 3 alive members and their re-replication of the formation is idle), send the payload, then wait until the processes are idle \
(<5% of a core for 1 s, at most 30 s) so background work caused by the writes counts. \
*CPU* = utime+stime from `/proc/<pid>/stat` over send + settle, summed over processes. \
*Peak RSS* = `VmHWM` after ingest, summed over processes; per series = divided by the \
{series} active series. *Whole data dir* = data directory size after ingest (WAL included). \
*Flushed blocks* = Prometheus's and Timbala's `POST /api/v1/admin/tsdb/snapshot` (writes \
the head as a block; size of the snapshot), VictoriaMetrics's `/internal/force_flush` then \
its data directory without `cache/` (it has no WAL). *Dashboard* = {queries} queries \
(8 range queries over the payload's last hour at 30 s step, 3 instant queries at its end; \
list in `bench/compare/queries.rs`), one untimed pass then {repeats} timed passes, \
p50/p99 over all timed queries. *Cluster*: 3 `timbala` processes on 127.0.0.1, each \
series stored on all 3 (replication factor 3 with 3 nodes); sender connections spread \
round-robin over the 3 nodes, queries sent to node 1; bytes per sample are per payload \
sample, i.e. include the 3 replicas. Timbala: `--web-enable-admin-api` (for the \
snapshot), `--query-cache-max-bytes=0` (no result cache). Prometheus: `--web.enable-remote-write-receiver --web.enable-admin-api`, no \
scrape jobs. VictoriaMetrics: `-retentionPeriod=10y \
-search.latencyOffset=0s -search.disableCache`.\n\n",
        started = ctx.started_utc,
        minutes = ctx.duration.as_secs_f64() / 60.0,
        runs = ctx.runs,
        cpu = ctx.cpu,
        nproc = ctx.nproc,
        mem = ctx.memory_gib,
        kernel = ctx.kernel,
        loads = loads.join(", "),
        versions = versions.join("\n"),
        hosts = spec.hosts,
        services = spec.services,
        hist = payload.histogram_series,
        series = payload.series,
        scrapes = spec.scrapes,
        samples = crate::figures::group_thousands(&payload.samples.to_string()),
        hours = (spec.scrapes * 15) as f64 / 3600.0,
        share = spec.jitter_share * 100.0,
        jitter = spec.jitter_ms,
        requests = payload.connections.iter().map(Vec::len).sum::<usize>(),
        per = SAMPLES_PER_REQUEST,
        mb = payload.encoded_bytes as f64 / 1e6,
        conns = spec.connections,
        queries = DASHBOARD.len(),
        repeats = REPEATS,
    )
}

fn table(results: &Results) -> String {
    let mut md = format!(
        "### Results: median of {} runs, **median** (min–max)\n\n| figure |",
        results.runs.values().map(Vec::len).max().unwrap_or(0)
    );
    for k in &results.systems {
        md.push_str(&format!(" {} |", k.name()));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(results.systems.len()));
    md.push('\n');
    for f in Figure::ALL {
        md.push_str(&format!("| {} |", f.label()));
        for &k in &results.systems {
            md.push_str(&format!(" {} |", cell(f, results.summary(k, f))));
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

fn ratios(results: &Results) -> String {
    let t = SystemKind::Timbala;
    let mut md = String::from(
        "### Ratios of medians, Timbala (one node) / peer\n\n| figure | / Prometheus | / VictoriaMetrics | 3-node cluster / one node |\n|---|---:|---:|---:|\n",
    );
    for f in Figure::ALL {
        if matches!(f, Figure::WriteErrors | Figure::WriteRetries) {
            continue;
        }
        let m = |k| results.median(k, f);
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            f.label(),
            ratio(m(t), m(SystemKind::Prometheus)),
            ratio(m(t), m(SystemKind::VictoriaMetrics)),
            ratio(m(SystemKind::TimbalaCluster), m(t)),
        ));
    }
    md.push('\n');
    md
}

/// One target: its wording, whether it is met, and the figures that decide it.
fn verdict(text: &str, met: Option<bool>, figures: String) -> String {
    let mark = match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    };
    format!("| {text} | {mark} | {figures} |\n")
}

/// A target of the form "Timbala's median is at most Prometheus's".
fn at_most_prometheus(results: &Results, text: &str, f: Figure, unit: &str) -> String {
    let t = results.median(SystemKind::Timbala, f);
    let p = results.median(SystemKind::Prometheus, f);
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| f.format(v));
    verdict(
        text,
        t.zip(p).map(|(t, p)| t <= p),
        format!(
            "Timbala {} vs Prometheus {}{unit} ({}x)",
            fmt(t),
            fmt(p),
            ratio(t, p)
        ),
    )
}

fn verdicts(results: &Results) -> String {
    use SystemKind::{Prometheus as P, Timbala as T, TimbalaCluster as C, VictoriaMetrics as V};
    let m = |k, f| results.median(k, f);
    let fmt = |f: Figure, v: Option<f64>| v.map_or("n/a".to_string(), |v| f.format(v));
    let both =
        |a: Option<f64>, b: Option<f64>, ok: fn(f64, f64) -> bool| a.zip(b).map(|(a, b)| ok(a, b));
    let mut md = String::from(
        "### Targets (issue 6), on the medians\n\n| target | verdict | figures |\n|---|---|---|\n",
    );

    let f = Figure::SamplesPerCpuSecond;
    let (t, p, v) = (m(T, f), m(P, f), m(V, f));
    let ok = both(t, v, |t, v| t >= v)
        .zip(both(t, p, |t, p| t >= 2.0 * p))
        .map(|(a, b)| a && b);
    md.push_str(&verdict(
        "single-node ingest per CPU-second ≥ VictoriaMetrics's and ≥ 2x Prometheus's",
        ok,
        format!(
            "Timbala {} vs VictoriaMetrics {} ({}x) and Prometheus {} ({}x)",
            fmt(f, t),
            fmt(f, v),
            ratio(t, v),
            fmt(f, p),
            ratio(t, p)
        ),
    ));
    for (text, f, unit) in [
        (
            "bytes per sample on disk (flushed blocks) ≤ Prometheus's",
            Figure::BlockBytesPerSample,
            "",
        ),
        (
            "RSS per active series ≤ Prometheus's",
            Figure::RssPerSeries,
            " bytes",
        ),
    ] {
        md.push_str(&at_most_prometheus(results, text, f, unit));
    }
    let f = Figure::IngestRate;
    let (c, t) = (m(C, f), m(T, f));
    md.push_str(&verdict(
        "3-node cluster ingest ≥ 0.25x a single node's",
        both(c, t, |c, t| c >= 0.25 * t),
        format!(
            "cluster {} vs one node {} samples/s ({}x)",
            fmt(f, c),
            fmt(f, t),
            ratio(c, t)
        ),
    ));
    md.push_str(&at_most_prometheus(
        results,
        "dashboard query p50 ≤ Prometheus's",
        Figure::QueryP50Ms,
        " ms",
    ));
    md.push('\n');
    md
}

/// Series per dashboard answer per system: the timings compare like with like only where
/// these agree.
fn agreement(results: &Results) -> String {
    let mut md = String::from("### Dashboard answers: series per query (last run)\n\n| query |");
    for k in &results.systems {
        md.push_str(&format!(" {} |", k.name()));
    }
    md.push_str(" agree |\n|---|");
    md.push_str(&"---:|".repeat(results.systems.len() + 1));
    md.push('\n');
    for (i, (name, query, _)) in DASHBOARD.iter().enumerate() {
        let counts: Vec<Option<usize>> = (0..results.systems.len())
            .map(|k| results.series.get(&k).and_then(|s| s[i]))
            .collect();
        md.push_str(&format!("| {name}: `{}` |", query.replace('|', "\\|")));
        for c in &counts {
            md.push_str(&c.map_or(" error |".to_string(), |c| format!(" {c} |")));
        }
        let agree = counts.windows(2).all(|w| w[0] == w[1]) && counts.iter().all(Option::is_some);
        md.push_str(if agree { " yes |\n" } else { " **no** |\n" });
    }
    let errors: Vec<String> = results
        .systems
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "{} {}",
                k.name(),
                results.query_errors.get(&i).copied().unwrap_or(0)
            )
        })
        .collect();
    md.push_str(&format!(
        "\nTimed queries that failed, all runs: {}.\n\n",
        errors.join(", ")
    ));
    md.push_str("Chart: `bench/chart.svg` (ingest samples/s and peak RSS, medians with min–max whiskers).\n\n");
    md
}

/// Replaces the text between `BEGIN` and `END` in `path` (inserting the markers after the
/// first heading if they are missing); everything else is kept.
pub fn rewrite_region(path: &Path, region: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmark results\n".to_string());
    let block = format!("{BEGIN}\n{region}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => {
            let after_title = old.find('\n').map_or(old.len(), |i| i + 1);
            format!("{}\n{block}\n{}", &old[..after_title], &old[after_title..])
        }
    };
    std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}

const COLOURS: [&str; 4] = ["#1f77b4", "#6baed6", "#d62728", "#2ca02c"];

/// One bar chart panel: a bar per system with a min–max whisker.
fn panel(results: &Results, f: Figure, title: &str, x0: f64) -> String {
    let (w, top, bottom) = (380.0, 40.0, 260.0);
    let sums: Vec<Option<Summary>> = results
        .systems
        .iter()
        .map(|&k| results.summary(k, f))
        .collect();
    let max = sums
        .iter()
        .flatten()
        .map(|s| s.max)
        .fold(0.0, f64::max)
        .max(1e-9);
    let scale = (bottom - top) / (max * 1.1);
    let bar_w = (w - 40.0) / results.systems.len().max(1) as f64;
    let mut out = format!(
        "<text x=\"{:.0}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{title}</text>\n\
<line x1=\"{x0}\" y1=\"{bottom}\" x2=\"{:.0}\" y2=\"{bottom}\" stroke=\"#333\"/>\n",
        x0 + 10.0,
        x0 + w - 20.0
    );
    for (i, (k, s)) in results.systems.iter().zip(&sums).enumerate() {
        let Some(s) = s else { continue };
        let x = x0 + 10.0 + i as f64 * bar_w;
        let y = bottom - s.median * scale;
        let cx = x + bar_w * 0.4;
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n\
<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\n\
<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n\
<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
            bar_w * 0.8,
            s.median * scale,
            COLOURS[i % COLOURS.len()],
            bottom - s.min * scale,
            bottom - s.max * scale,
            bottom - s.max * scale - 6.0,
            f.format(s.median),
            bottom + 16.0,
            k.name(),
        ));
    }
    out
}

pub fn svg(results: &Results) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"780\" height=\"300\" font-family=\"sans-serif\">\n\
<rect width=\"780\" height=\"300\" fill=\"#fff\"/>\n{}{}</svg>\n",
        panel(results, Figure::IngestRate, "Ingest, samples/s (median, min–max)", 0.0),
        panel(results, Figure::PeakRssMib, "Peak RSS, MiB (median, min–max)", 390.0),
    )
}
