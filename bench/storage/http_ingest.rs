//! HTTP ingest mode of the storage benchmark: the full single-node write path
//! (HTTP edge, snappy + protobuf decode, validation, replication's local append, TSDB,
//! WAL fsync) measured from outside a running `timbala` process.
//!
//! Run: start a server on a fresh data directory, then
//! `cargo run --release --example storage_bench -- http ADDR PID [series] [scrapes] [clients]`
//! (defaults 20000 series, 120 scrapes, 4 concurrent clients). Every request is encoded
//! before the clock starts: remote-write 1.0 bodies of 2000 series with one sample each,
//! realistic node_exporter series, one scrape's requests sent concurrently and finished
//! before the next scrape starts, so every series stays in time order. The figure is
//! samples per CPU-second of the server process, read from `/proc/PID/stat`, which the
//! other processes sharing the machine do not distort.
//!
//! This is a minimal driver for profiling, not the side-by-side comparison harness.

use std::time::Instant;

use timbala::proto;

use super::{make_batch, Profile, Workload, BATCH_SERIES};

struct HttpArgs {
    addr: String,
    pid: u32,
    series: usize,
    scrapes: i64,
    clients: usize,
}

fn parse(args: &[String]) -> Option<HttpArgs> {
    let number = |i: usize, default: usize| {
        args.get(i)
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(default)
            .max(1)
    };
    Some(HttpArgs {
        addr: args.first()?.clone(),
        pid: args.get(1)?.parse().ok()?,
        series: number(2, 20_000),
        scrapes: number(3, 120) as i64,
        clients: number(4, 4),
    })
}

/// Runs the HTTP mode; `args` are the arguments after `http`.
pub fn run(args: &[String]) {
    let Some(args) = parse(args) else {
        eprintln!("usage: storage_bench http ADDR PID [series] [scrapes] [clients]");
        std::process::exit(2);
    };
    let requests = encode_requests(args.series, args.scrapes);
    let body_bytes: usize = requests.iter().flatten().map(Vec::len).sum();
    let url = format!("http://{}/api/v1/write", args.addr);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let cpu_before = server_cpu_seconds(args.pid);
    let rss_before = server_rss_bytes(args.pid);
    let started = Instant::now();
    for scrape in &requests {
        post_concurrently(&agent, &url, scrape, args.clients);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = server_cpu_seconds(args.pid) - cpu_before;
    let rss = server_rss_bytes(args.pid).saturating_sub(rss_before);
    let samples = args.series as f64 * args.scrapes as f64;
    println!(
        "http ingest: {samples} samples in {} requests ({:.1} compressed bytes/sample), \
         {wall:.2}s wall, server {cpu:.2} CPU-s -> {:.0} samples per server CPU-second, \
         {:.3} server CPU-s per million samples",
        requests.len() * requests.first().map_or(0, Vec::len),
        body_bytes as f64 / samples,
        samples / cpu.max(f64::EPSILON),
        cpu * 1e6 / samples,
    );
    println!(
        "server RSS grew by {:.0} bytes per active series ({} series)",
        rss as f64 / args.series as f64,
        args.series
    );
}

/// Snappy-compressed remote-write bodies, one list per scrape.
fn encode_requests(series: usize, scrapes: i64) -> Vec<Vec<Vec<u8>>> {
    let label_sets = Workload::labels(Profile::Realistic, series);
    let mut work = Workload::new(Profile::Realistic, series, 5);
    (0..scrapes)
        .map(|scrape| {
            let t = work.scrape_time(scrape);
            (0..series)
                .step_by(BATCH_SERIES)
                .map(|start| {
                    let batch = make_batch(&mut work, &label_sets, start, t);
                    proto::encode_snappy(&proto::WriteRequest {
                        timeseries: batch.iter().map(proto::series_to_proto).collect(),
                        metadata: vec![],
                    })
                })
                .collect()
        })
        .collect()
}

/// Sends one scrape's requests from `clients` threads and waits for all of them.
fn post_concurrently(agent: &ureq::Agent, url: &str, bodies: &[Vec<u8>], clients: usize) {
    std::thread::scope(|scope| {
        for client in 0..clients.min(bodies.len()) {
            scope.spawn(move || {
                for body in bodies.iter().skip(client).step_by(clients) {
                    post(agent, url, body);
                }
            });
        }
    });
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) {
    let response = agent
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send(body)
        .expect("POST /api/v1/write");
    let status = response.status().as_u16();
    assert_eq!(status, 204, "remote write answered {status}");
}

/// utime + stime of a process, from `/proc/PID/stat`.
fn server_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server pid");
    // The command name may hold spaces; the fields after it are space separated.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

fn server_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
