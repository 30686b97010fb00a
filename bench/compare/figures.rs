//! The figures measured per system per run, and their summary over runs (median, min,
//! max). Owns the list of figures and their formatting; calls nothing.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Figure {
    IngestRate,
    SamplesPerCpuSecond,
    CpuSecondsPerMillion,
    PeakRssMib,
    RssPerSeries,
    BlockBytesPerSample,
    DirBytesPerSample,
    WriteP50Ms,
    WriteP99Ms,
    WriteErrors,
    WriteRetries,
    QueryP50Ms,
    QueryP99Ms,
}

impl Figure {
    pub const ALL: [Figure; 13] = [
        Figure::IngestRate,
        Figure::SamplesPerCpuSecond,
        Figure::CpuSecondsPerMillion,
        Figure::PeakRssMib,
        Figure::RssPerSeries,
        Figure::BlockBytesPerSample,
        Figure::DirBytesPerSample,
        Figure::WriteP50Ms,
        Figure::WriteP99Ms,
        Figure::WriteErrors,
        Figure::WriteRetries,
        Figure::QueryP50Ms,
        Figure::QueryP99Ms,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Figure::IngestRate => "ingest, samples/s (wall)",
            Figure::SamplesPerCpuSecond => "ingest, samples per CPU-second",
            Figure::CpuSecondsPerMillion => "ingest, CPU-seconds per million samples",
            Figure::PeakRssMib => "peak RSS, MiB",
            Figure::RssPerSeries => "peak RSS per active series, bytes",
            Figure::BlockBytesPerSample => "disk, flushed blocks, bytes/sample",
            Figure::DirBytesPerSample => {
                "disk, whole data dir before flush (WAL incl.), bytes/sample"
            }
            Figure::WriteP50Ms => "write request latency p50, ms",
            Figure::WriteP99Ms => "write request latency p99, ms",
            Figure::WriteErrors => "write errors (requests refused or given up)",
            Figure::WriteRetries => "write retries (5xx/429/transport)",
            Figure::QueryP50Ms => "dashboard query latency p50, ms",
            Figure::QueryP99Ms => "dashboard query latency p99, ms",
        }
    }

    fn decimals(self) -> usize {
        match self {
            Figure::BlockBytesPerSample | Figure::DirBytesPerSample => 3,
            Figure::CpuSecondsPerMillion | Figure::WriteP50Ms | Figure::QueryP50Ms => 2,
            Figure::WriteP99Ms | Figure::QueryP99Ms | Figure::PeakRssMib => 1,
            _ => 0,
        }
    }

    pub fn format(self, v: f64) -> String {
        let text = format!("{v:.*}", self.decimals());
        if self.decimals() == 0 {
            group_thousands(&text)
        } else {
            text
        }
    }
}

pub fn group_thousands(digits: &str) -> String {
    let (sign, digits) = digits.strip_prefix('-').map_or(("", digits), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// One run of one system: a value per figure, in `Figure::ALL` order.
#[derive(Clone, Debug)]
pub struct Run(pub Vec<f64>);

impl Run {
    pub fn get(&self, f: Figure) -> f64 {
        let i = Figure::ALL.iter().position(|&x| x == f).unwrap_or(0);
        self.0[i]
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(runs: &[Run], f: Figure) -> Summary {
        let mut v: Vec<f64> = runs.iter().map(|r| r.get(f)).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Summary {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The `q`-quantile (0..=1) of unsorted values, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        let runs: Vec<Run> = [3.0, 1.0, 2.0].iter().map(|&x| Run(vec![x; 13])).collect();
        let s = Summary::of(&runs, Figure::IngestRate);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(group_thousands("1234567"), "1,234,567");
    }
}
