//! Arithmetic on float native histograms with Prometheus v3.14's semantics
//! (`model/histogram/float_histogram.go` and `generic.go`): bucket bounds and
//! iteration order, scaling, addition and subtraction across schemas and zero
//! thresholds (and across mismatched custom bounds, which Prometheus reconciles to
//! their intersection), the Kahan-compensated addition Prometheus uses for `sum`/`avg`
//! and the `*_over_time` sums, compaction, resolution reduction, counter-reset
//! detection and bitwise equality.
//!
//! Owns: those operations on `FloatHistogram`, the exponential bucket bounds, and
//! Kahan/Neumaier summation (`kahan_inc`). Calls only `model::histogram` (the types).
//!
//! How it works: each side's buckets are expanded into an ascending list of
//! (bucket index, count, Kahan compensation) and written back as spans afterwards.
//! Results therefore carry the same buckets (including explicitly present empty ones)
//! as Prometheus's in-place span surgery, with adjacent spans merged; only the span
//! *encoding* may differ, which nothing but `equals` observes (and Prometheus's
//! PromQL compacts results before they are compared or returned). Counts are added
//! in the same order as Prometheus so that results agree to the bit.
//!
//! Nothing here panics on input: where Prometheus would panic on an invalid histogram
//! (which validation keeps out of storage), these functions return a typed error or
//! the best-defined result and say so in their docs.

use std::sync::Arc;

use super::histogram::{
    CounterResetHint, FloatHistogram, HistogramError, Side, Span, CUSTOM_BUCKETS_SCHEMA,
    EXPONENTIAL_SCHEMA_MAX, EXPONENTIAL_SCHEMA_MIN_RESERVED,
};

/// Fractions (in [0.5, 1)) of the bucket upper bounds within one power of two at
/// schema 8; schema s < 8 uses every 2^(8-s)-th entry. These are Prometheus's
/// constants (`exponentialBounds`), reproduced as data because they are not what
/// computing 2^(i/256)/2 gives: 341 of the 510 entries of schemas 1..=8 differ from a
/// libm computation in the last bit, and bucket bounds must be Prometheus's to the
/// bit (they are compared, printed in the API and interpolated between).
const SCHEMA8_FRACTIONS: [f64; 256] = [
    0.5,
    0.5013556375251013,
    0.5027149505564014,
    0.5040779490592088,
    0.5054446430258502,
    0.5068150424757447,
    0.5081891574554764,
    0.509566998038869,
    0.5109485743270583,
    0.5123338964485679,
    0.5137229745593818,
    0.5151158188430205,
    0.5165124395106142,
    0.5179128468009786,
    0.5193170509806894,
    0.520725062344158,
    0.5221368912137069,
    0.5235525479396449,
    0.5249720429003435,
    0.526395386502313,
    0.5278225891802786,
    0.5292536613972564,
    0.5306886136446309,
    0.5321274564422321,
    0.5335702003384117,
    0.5350168559101208,
    0.5364674337629877,
    0.5379219445313954,
    0.5393803988785598,
    0.5408428074966075,
    0.5423091811066545,
    0.5437795304588847,
    0.5452538663326288,
    0.5467321995364429,
    0.5482145409081883,
    0.549700901315111,
    0.5511912916539204,
    0.5526857228508706,
    0.5541842058618393,
    0.5556867516724088,
    0.5571933712979462,
    0.5587040757836845,
    0.5602188762048033,
    0.5617377836665098,
    0.5632608093041209,
    0.564787964283144,
    0.5663192597993595,
    0.5678547070789026,
    0.5693943173783458,
    0.5709381019847808,
    0.572486072215902,
    0.5740382394200894,
    0.5755946149764913,
    0.5771552102951081,
    0.5787200368168754,
    0.5802891060137493,
    0.5818624293887887,
    0.5834400184762408,
    0.585021884841625,
    0.5866080400818185,
    0.5881984958251406,
    0.5897932637314379,
    0.5913923554921704,
    0.5929957828304968,
    0.5946035575013605,
    0.5962156912915756,
    0.5978321960199137,
    0.5994530835371903,
    0.6010783657263515,
    0.6027080545025619,
    0.6043421618132907,
    0.6059806996384005,
    0.6076236799902344,
    0.6092711149137041,
    0.6109230164863786,
    0.6125793968185725,
    0.6142402680534349,
    0.6159056423670379,
    0.6175755319684665,
    0.6192499490999082,
    0.620928906036742,
    0.622612415087629,
    0.6243004885946023,
    0.6259931389331581,
    0.6276903785123455,
    0.6293922197748583,
    0.6310986751971253,
    0.6328097572894031,
    0.6345254785958666,
    0.6362458516947014,
    0.637970889198196,
    0.6397006037528346,
    0.6414350080393891,
    0.6431741147730128,
    0.6449179367033329,
    0.6466664866145447,
    0.6484197773255048,
    0.6501778216898253,
    0.6519406325959679,
    0.6537082229673385,
    0.6554806057623822,
    0.6572577939746774,
    0.659039800633032,
    0.6608266388015788,
    0.6626183215798706,
    0.6644148621029772,
    0.6662162735415805,
    0.6680225691020727,
    0.6698337620266515,
    0.6716498655934177,
    0.6734708931164728,
    0.6752968579460171,
    0.6771277734684463,
    0.6789636531064505,
    0.6808045103191123,
    0.6826503586020058,
    0.6845012114872953,
    0.6863570825438342,
    0.688217985377265,
    0.690083933630119,
    0.6919549409819159,
    0.6938310211492645,
    0.6957121878859629,
    0.6975984549830999,
    0.6994898362691555,
    0.7013863456101023,
    0.7032879969095076,
    0.7051948041086352,
    0.7071067811865475,
    0.7090239421602076,
    0.7109463010845827,
    0.7128738720527471,
    0.7148066691959849,
    0.7167447066838943,
    0.718687998724491,
    0.7206365595643126,
    0.7225904034885232,
    0.7245495448210174,
    0.7265139979245261,
    0.7284837772007218,
    0.7304588970903234,
    0.7324393720732029,
    0.7344252166684908,
    0.7364164454346837,
    0.7384130729697496,
    0.7404151139112358,
    0.7424225829363761,
    0.7444354947621984,
    0.7464538641456323,
    0.7484777058836176,
    0.7505070348132126,
    0.7525418658117031,
    0.7545822137967112,
    0.7566280937263048,
    0.7586795205991071,
    0.7607365094544071,
    0.762799075372269,
    0.7648672334736434,
    0.7669409989204777,
    0.7690203869158282,
    0.7711054127039704,
    0.7731960915705107,
    0.7752924388424999,
    0.7773944698885442,
    0.7795022001189185,
    0.7816156449856788,
    0.7837348199827764,
    0.7858597406461707,
    0.7879904225539431,
    0.7901268813264122,
    0.7922691326262467,
    0.7944171921585818,
    0.7965710756711334,
    0.7987307989543135,
    0.8008963778413465,
    0.8030678282083853,
    0.805245165974627,
    0.8074284071024302,
    0.8096175675974316,
    0.8118126635086642,
    0.8140137109286738,
    0.8162207259936375,
    0.8184337248834821,
    0.820652723822003,
    0.8228777390769823,
    0.8251087869603088,
    0.8273458838280969,
    0.8295890460808079,
    0.8318382901633681,
    0.8340936325652911,
    0.8363550898207981,
    0.8386226785089391,
    0.8408964152537144,
    0.8431763167241966,
    0.8454623996346523,
    0.8477546807446661,
    0.8500531768592616,
    0.8523579048290255,
    0.8546688815502312,
    0.8569861239649629,
    0.8593096490612387,
    0.8616394738731368,
    0.8639756154809185,
    0.8663180910111553,
    0.8686669176368529,
    0.871022112577578,
    0.8733836930995842,
    0.8757516765159389,
    0.8781260801866495,
    0.8805069215187917,
    0.8828942179666361,
    0.8852879870317771,
    0.8876882462632604,
    0.890095013257712,
    0.8925083056594671,
    0.8949281411607002,
    0.8973545375015533,
    0.8997875124702672,
    0.9022270839033115,
    0.9046732696855155,
    0.9071260877501991,
    0.909585556079304,
    0.9120516927035263,
    0.9145245157024483,
    0.9170040432046711,
    0.9194902933879467,
    0.9219832844793128,
    0.9244830347552253,
    0.9269895625416926,
    0.92950288621441,
    0.9320230241988943,
    0.9345499949706191,
    0.9370838170551498,
    0.93962450902828,
    0.9421720895161669,
    0.9447265771954693,
    0.9472879907934827,
    0.9498563490882775,
    0.9524316709088368,
    0.9550139751351947,
    0.9576032806985735,
    0.9601996065815236,
    0.9628029718180622,
    0.9654133954938133,
    0.9680308967461471,
    0.9706554947643201,
    0.9732872087896164,
    0.9759260581154889,
    0.9785720620876999,
    0.9812252401044634,
    0.9838856116165875,
    0.9865531961276168,
    0.9892280131939752,
    0.9919100824251095,
    0.9945994234836328,
    0.9972960560854698,
];

/// Prometheus's `kahansum.Inc`: adds `inc` to `sum` with Neumaier's variant of Kahan
/// summation, returning the new sum and compensation. The compensation is reset when
/// the sum overflows to infinity (an infinite sum has nothing left to compensate).
/// The caller adds the compensation to the sum at the end.
pub fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// 2^e for e within the normal exponent range (-1022..=1023).
fn pow2(e: i64) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// Go's `math.Ldexp(frac, exp)` for the bounds computed here (`frac` positive and
/// finite): frac × 2^exp with a single rounding, including into the subnormals.
fn ldexp(frac: f64, exp: i64) -> f64 {
    if exp > 1023 {
        // Two exact-power steps; the second overflows to +Inf when the value does.
        if exp > 2046 {
            return f64::INFINITY;
        }
        return frac * pow2(1023) * pow2(exp - 1023);
    }
    if exp >= -1022 {
        return frac * pow2(exp);
    }
    if exp < -1100 {
        return 0.0;
    }
    // Scale into the normal range exactly first, so that only the last step rounds.
    (frac * pow2(exp + 1022)) * pow2(-1022)
}

/// Upper bound of bucket `idx` under exponential schema `schema` (Prometheus's
/// `getBoundExponential`): the last bucket before the one counting ±Inf observations
/// ends at `f64::MAX`. NaN for a schema outside the reserved range -9..=52 or above 8
/// (Prometheus has no bounds for those; validated histograms never have them).
pub fn exponential_bound(idx: i32, schema: i32) -> f64 {
    if !(EXPONENTIAL_SCHEMA_MIN_RESERVED..=EXPONENTIAL_SCHEMA_MAX).contains(&schema) {
        return f64::NAN;
    }
    if schema < 0 {
        let exp = i64::from(idx) << (-schema);
        if exp == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exp);
    }
    let frac_idx = (idx & ((1 << schema) - 1)) as usize;
    let frac = SCHEMA8_FRACTIONS[frac_idx << (8 - schema)];
    let exp = i64::from(idx >> schema) + 1;
    if frac == 0.5 && exp == 1025 {
        return f64::MAX;
    }
    ldexp(frac, exp)
}

/// Upper bound of bucket `idx` (Prometheus's `getBound`): under custom buckets the
/// listed bound, +Inf for the bucket after the last bound and -Inf for index -1 (the
/// lower bound of the first bucket). Indexes beyond those (Prometheus panics) give
/// ±Inf on the side they are on.
pub fn bucket_bound(idx: i32, schema: i32, custom_values: &[f64]) -> f64 {
    if schema != CUSTOM_BUCKETS_SCHEMA {
        return exponential_bound(idx, schema);
    }
    if idx < 0 {
        return f64::NEG_INFINITY;
    }
    custom_values
        .get(idx as usize)
        .copied()
        .unwrap_or(f64::INFINITY)
}

/// One bucket with its bounds, as Prometheus's bucket iterators yield it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub lower: f64,
    pub upper: f64,
    pub lower_inclusive: bool,
    pub upper_inclusive: bool,
    pub count: f64,
    /// The bucket's index within its schema and side; meaningless for the zero bucket.
    pub index: i32,
}

impl Bucket {
    /// The first element of the bucket's array in Prometheus's JSON (`[rule, "lower",
    /// "upper", "count"]`, `jsonutil.MarshalHistogram`): 0 when only the upper bound
    /// is inclusive (left open), 1 when only the lower one is (right open), 2 when
    /// neither is, 3 when both are. (The JSON leaves out buckets whose count is 0.)
    pub fn boundary_rule(&self) -> u8 {
        match (self.lower_inclusive, self.upper_inclusive) {
            (true, true) => 3,
            (true, false) => 1,
            (false, true) => 0,
            (false, false) => 2,
        }
    }
}

/// Why an operation on two histograms, or a resolution change, is not possible.
#[derive(Clone, Debug, PartialEq)]
pub enum HistogramOpError {
    /// One histogram has custom buckets and the other exponential ones
    /// (`ErrHistogramsIncompatibleSchema`; PromQL turns it into the
    /// "mix of histograms with exponential and custom buckets schemas" warning).
    IncompatibleSchema,
    /// A resolution reduction was asked of a custom-buckets histogram.
    ReduceCustomBuckets,
    /// A resolution reduction was asked with the custom-buckets schema as target.
    ReduceToCustomBuckets,
    /// A resolution reduction to a schema that is not lower.
    ReduceNotLower { from: i32, to: i32 },
    /// The histogram's spans do not describe its buckets.
    Invalid(HistogramError),
}

impl std::fmt::Display for HistogramOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HistogramOpError::IncompatibleSchema => f.write_str(
                "cannot apply this operation on histograms with a mix of exponential and \
                 custom bucket schemas",
            ),
            HistogramOpError::ReduceCustomBuckets => {
                f.write_str("cannot reduce resolution when there are custom buckets")
            }
            HistogramOpError::ReduceToCustomBuckets => {
                f.write_str("cannot reduce resolution to custom buckets schema")
            }
            HistogramOpError::ReduceNotLower { from, to } => {
                write!(f, "cannot reduce resolution from schema {from} to {to}")
            }
            HistogramOpError::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for HistogramOpError {}

/// What an addition or subtraction noticed besides its result; PromQL turns each into
/// an annotation (see `promql::histogram_fns::HistogramAnnotation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Combined {
    /// One operand was hinted as a counter reset and the other as not one
    /// (Prometheus's `counterResetCollision`); the result's hint became unknown.
    pub counter_reset_collision: bool,
    /// Both had custom buckets with different bounds; the result has the bounds both
    /// share (their intersection), each bucket folded into the next shared bound.
    pub custom_bounds_reconciled: bool,
}

/// One bucket of one side while an operation works on it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    idx: i32,
    v: f64,
    /// Kahan compensation (0 outside Kahan summation).
    c: f64,
}

/// Expands spans and counts (and compensations, when given) into entries. Stops at
/// whichever runs out first, so malformed input yields fewer buckets, not a panic.
fn load(spans: &[Span], buckets: &[f64], comps: Option<&[f64]>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(buckets.len());
    let mut idx = 0i64;
    let mut pos = 0usize;
    for s in spans {
        idx += i64::from(s.offset);
        for _ in 0..s.length {
            let Some(&v) = buckets.get(pos) else {
                return out;
            };
            let c = comps.and_then(|c| c.get(pos)).copied().unwrap_or(0.0);
            let clamped = idx.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
            out.push(Entry { idx: clamped, v, c });
            idx += 1;
            pos += 1;
        }
    }
    out
}

/// Writes entries back as spans (adjacent buckets share a span), counts and
/// compensations.
fn store(entries: &[Entry]) -> (Arc<[Span]>, Vec<f64>, Vec<f64>) {
    let mut spans: Vec<Span> = Vec::new();
    let mut next: Option<i64> = None;
    for e in entries {
        let idx = i64::from(e.idx);
        match (next, spans.last_mut()) {
            (Some(n), Some(last)) if n == idx => last.length += 1,
            (Some(n), _) => spans.push(Span {
                offset: (idx - n) as i32,
                length: 1,
            }),
            (None, _) => spans.push(Span {
                offset: e.idx,
                length: 1,
            }),
        }
        next = Some(idx + 1);
    }
    (
        spans.into(),
        entries.iter().map(|e| e.v).collect(),
        entries.iter().map(|e| e.c).collect(),
    )
}

/// Prometheus's `targetIdx`: the index at `to` of the bucket `idx` at `from` >= `to`.
fn target_idx(idx: i32, from: i32, to: i32) -> i32 {
    let shift = (from - to).clamp(0, 63) as u32;
    (((i64::from(idx) - 1) >> shift) + 1) as i32
}

/// Merges the buckets of schema `from` into those of the lower schema `to`, adding
/// counts in bucket order (and, under Kahan summation, compensations too, as
/// Prometheus's `kahanReduceResolution` does).
fn reduce(entries: Vec<Entry>, from: i32, to: i32, kahan: bool) -> Vec<Entry> {
    if to >= from {
        return entries;
    }
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries {
        let t = target_idx(e.idx, from, to);
        match out.last_mut() {
            Some(last) if last.idx == t => {
                if kahan {
                    (last.v, last.c) = kahan_inc(e.v, last.v, last.c);
                    (last.v, last.c) = kahan_inc(e.c, last.v, last.c);
                } else {
                    last.v += e.v;
                }
            }
            _ => out.push(Entry {
                idx: t,
                v: e.v,
                c: if kahan { e.c } else { 0.0 },
            }),
        }
    }
    out
}

/// Prometheus's `addBuckets`/`kahanAddBuckets`: adds (or, with `negate`, subtracts)
/// `b` into `a`, keeping every bucket either has. With `skip_within` = (schema,
/// threshold) of an exponential histogram, `b`'s buckets whose upper bound is at most
/// the threshold are left out (their counts are already in the zero bucket).
fn merge(
    a: Vec<Entry>,
    b: &[Entry],
    negate: bool,
    kahan: bool,
    skip_within: Option<(i32, f64)>,
) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut below_threshold = skip_within.is_some();
    for e in b {
        if below_threshold {
            if let Some((schema, threshold)) = skip_within {
                if exponential_bound(e.idx, schema) <= threshold {
                    continue;
                }
            }
            below_threshold = false;
        }
        let (bv, bc) = if negate { (-e.v, -e.c) } else { (e.v, e.c) };
        while let Some(x) = a.next_if(|x| x.idx < e.idx) {
            out.push(x);
        }
        match a.next_if(|x| x.idx == e.idx) {
            Some(mut x) => {
                if kahan {
                    (x.v, x.c) = kahan_inc(bv, x.v, x.c);
                    if bc != 0.0 {
                        (x.v, x.c) = kahan_inc(bc, x.v, x.c);
                    }
                } else {
                    x.v += bv;
                }
                out.push(x);
            }
            None => out.push(Entry {
                idx: e.idx,
                v: bv,
                c: if kahan { bc } else { 0.0 },
            }),
        }
    }
    out.extend(a);
    out
}

/// Prometheus's `intersectCustomBucketBounds`: the bounds both lists have.
fn intersect_bounds(a: &[f64], b: &[f64]) -> Vec<f64> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(a[i]);
            i += 1;
            j += 1;
        } else if a[i] < b[j] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Prometheus's `CustomBucketBoundsMatch`.
fn bounds_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Prometheus's `addCustomBucketsWithMismatches`: folds both histograms' custom
/// buckets into the buckets of `shared` bounds (each bucket into the first shared
/// bound at or above its own upper bound, the rest into +Inf), adding with Kahan
/// summation, and keeps only the buckets whose count or compensation is not 0.
/// Compensations are returned only under Kahan summation; Prometheus computes and
/// drops them otherwise (they still decide which buckets are kept).
fn merge_custom_mismatched(
    a: &[Entry],
    a_bounds: &[f64],
    b: &[Entry],
    b_bounds: &[f64],
    shared: &[f64],
    negate: bool,
    kahan: bool,
) -> Vec<Entry> {
    let n = shared.len() + 1;
    let mut values = vec![0.0; n];
    let mut comps = vec![0.0; n];
    let mut fold = |entries: &[Entry], bounds: &[f64], negate: bool, with_comp: bool| {
        let mut shared_idx = 0;
        for e in entries {
            let mut target = n - 1;
            let own_bound = usize::try_from(e.idx).ok().and_then(|i| bounds.get(i));
            if let Some(&own_bound) = own_bound {
                while shared_idx < shared.len() {
                    if shared[shared_idx] >= own_bound {
                        target = shared_idx;
                        break;
                    }
                    shared_idx += 1;
                }
            }
            let v = if negate { -e.v } else { e.v };
            (values[target], comps[target]) = kahan_inc(v, values[target], comps[target]);
            if with_comp {
                (values[target], comps[target]) = kahan_inc(e.c, values[target], comps[target]);
            }
        }
    };
    fold(a, a_bounds, false, kahan);
    fold(b, b_bounds, negate, false);
    (0..n)
        .filter(|&i| values[i] != 0.0 || comps[i] != 0.0)
        .map(|i| Entry {
            idx: i as i32,
            v: values[i],
            c: if kahan { comps[i] } else { 0.0 },
        })
        .collect()
}

/// Upper and lower bound (absolute values) of exponential bucket `idx`.
fn abs_bounds(idx: i32, schema: i32) -> (f64, f64) {
    (
        exponential_bound(idx.saturating_sub(1), schema),
        exponential_bound(idx, schema),
    )
}

/// One exponential histogram's zero bucket and buckets while an operation works on it.
struct Zeroed<'a> {
    schema: i32,
    threshold: f64,
    zero_count: f64,
    pos: &'a [Entry],
    neg: &'a [Entry],
}

impl Zeroed<'_> {
    /// Prometheus's `zeroCountForLargerThreshold`: the zero count (and, with
    /// `with_comp`, its compensation starting at `c_zero`) the histogram would have
    /// with zero threshold `larger` (not below its own). When `larger` falls inside a
    /// populated bucket, it is raised to that bucket's upper bound, which is returned.
    fn count_for_larger_threshold(
        &self,
        mut larger: f64,
        c_zero: f64,
        with_comp: bool,
    ) -> (f64, f64, f64) {
        if larger <= self.threshold {
            // Prometheus panics on a smaller threshold; no caller asks for one.
            return (self.zero_count, self.threshold, c_zero);
        }
        // The compensation is deliberately not reset when the search restarts below:
        // Prometheus keeps accumulating it across restarts, and results must match.
        let mut cz = c_zero;
        'outer: loop {
            let mut hz = self.zero_count;
            for e in self.pos {
                let (lower, upper) = abs_bounds(e.idx, self.schema);
                if lower >= larger {
                    break;
                }
                (hz, cz) = kahan_inc(e.v, hz, cz);
                if with_comp {
                    (hz, cz) = kahan_inc(e.c, hz, cz);
                }
                if upper > larger {
                    if e.v != 0.0 {
                        larger = upper;
                    }
                    break;
                }
            }
            for e in self.neg {
                let (lower_abs, upper_abs) = abs_bounds(e.idx, self.schema);
                if -lower_abs <= -larger {
                    break;
                }
                (hz, cz) = kahan_inc(e.v, hz, cz);
                if with_comp {
                    (hz, cz) = kahan_inc(e.c, hz, cz);
                }
                if -upper_abs < -larger {
                    if e.v != 0.0 {
                        // The positive side must be redone with the wider threshold.
                        larger = upper_abs;
                        continue 'outer;
                    }
                    break;
                }
            }
            return (hz, larger, cz);
        }
    }
}

/// Prometheus's `trimBucketsInZeroBucket` (with its `Compact(0)`): empties the buckets
/// inside the zero bucket, whose counts are already in the zero count, then drops every
/// bucket whose count and compensation are 0.
fn trim_into_zero_bucket(schema: i32, threshold: f64, pos: &mut Vec<Entry>, neg: &mut Vec<Entry>) {
    for side in [&mut *pos, &mut *neg] {
        for e in side.iter_mut() {
            if abs_bounds(e.idx, schema).0 >= threshold {
                break;
            }
            e.v = 0.0;
            e.c = 0.0;
        }
        side.retain(|e| e.v != 0.0 || e.c != 0.0);
    }
}

/// Prometheus's `compactBuckets` on one side: drops the empty buckets (count and
/// compensation 0), then fills gaps of at most `max_empty` buckets between the
/// remaining ones with explicit empty buckets so they share a span.
fn compact_side(entries: Vec<Entry>, max_empty: usize) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries.into_iter().filter(|e| e.v != 0.0 || e.c != 0.0) {
        if let Some(last) = out.last() {
            let gap = i64::from(e.idx) - i64::from(last.idx) - 1;
            if gap > 0 && gap as u64 <= max_empty as u64 {
                let from = last.idx;
                for idx in (from + 1)..e.idx {
                    out.push(Entry {
                        idx,
                        v: 0.0,
                        c: 0.0,
                    });
                }
            }
        }
        out.push(e);
    }
    out
}

/// Leaves out the leading buckets whose upper bound (absolute) is at most `threshold`
/// (exponential schemas only), as Prometheus's bucket iterator does when given a start
/// value.
fn above_threshold(entries: &[Entry], schema: i32, threshold: f64) -> &[Entry] {
    if schema == CUSTOM_BUCKETS_SCHEMA || threshold == 0.0 {
        return entries;
    }
    let skip = entries
        .iter()
        .take_while(|e| exponential_bound(e.idx, schema) <= threshold)
        .count();
    &entries[skip..]
}

/// Prometheus's `detectReset` on one side: a bucket populated in `prev` is missing from
/// `curr`, or has a lower count there.
fn side_reset(curr: &[Entry], prev: &[Entry]) -> bool {
    let mut curr = curr.iter().peekable();
    for p in prev {
        while curr.next_if(|c| c.idx < p.idx).is_some() {}
        match curr.peek() {
            Some(c) if c.idx == p.idx => {
                if c.v < p.v {
                    return true;
                }
            }
            _ => {
                if p.v != 0.0 {
                    return true;
                }
            }
        }
    }
    false
}

/// Cumulative counts of custom buckets up to given bounds, walking the buckets once
/// (Prometheus's `rollupSumForBound`).
struct Rollup {
    /// (upper bound, count) of each bucket, ascending.
    buckets: Vec<(f64, f64)>,
    next: usize,
    started: bool,
    has_more: bool,
}

impl Rollup {
    fn new(entries: &[Entry], bounds: &[f64]) -> Rollup {
        Rollup {
            buckets: entries
                .iter()
                .map(|e| (bucket_bound(e.idx, CUSTOM_BUCKETS_SCHEMA, bounds), e.v))
                .collect(),
            next: 0,
            started: false,
            has_more: false,
        }
    }

    /// Sum of the not yet counted buckets whose upper bound is at most `bound`.
    fn up_to(&mut self, bound: f64) -> f64 {
        if self.started && !self.has_more {
            return 0.0;
        }
        self.started = true;
        let mut sum = 0.0;
        while let Some(&(upper, count)) = self.buckets.get(self.next) {
            // Not `upper > bound`: a NaN bound ends the walk, as in Prometheus.
            if upper <= bound {
                sum += count;
                self.next += 1;
            } else {
                self.has_more = true;
                return sum;
            }
        }
        self.has_more = false;
        sum
    }
}

/// Prometheus's `spansMatch`: the same layout once zero-length spans are folded into
/// the next span (adjacent spans with offset 0 are NOT the same as one span).
fn spans_match(a: &[Span], b: &[Span]) -> bool {
    /// The next span with zero-length spans folded in; None when none is left.
    fn next_span(spans: &[Span], i: &mut usize) -> Option<Span> {
        let mut cur = *spans.get(*i)?;
        *i += 1;
        if cur.length == 0 {
            while let Some(s) = spans.get(*i).filter(|s| s.length == 0) {
                cur.offset = cur.offset.wrapping_add(s.offset);
                *i += 1;
            }
            if let Some(s) = spans.get(*i) {
                cur.offset = cur.offset.wrapping_add(s.offset);
                cur.length = s.length;
                *i += 1;
            }
        }
        Some(cur)
    }
    let all_empty = |s: &[Span]| s.iter().all(|s| s.length == 0);
    let (mut i, mut j) = (0, 0);
    loop {
        if i >= a.len() {
            return all_empty(&b[j.min(b.len())..]);
        }
        if j >= b.len() {
            return all_empty(&a[i..]);
        }
        let (Some(x), Some(y)) = (next_span(a, &mut i), next_span(b, &mut j)) else {
            return true;
        };
        if x.length == 0 && y.length == 0 {
            return true;
        }
        if x != y {
            return false;
        }
    }
}

/// Bitwise equality of counts (NaN equals NaN of the same bits).
fn buckets_match_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The bucket `idx` of one side with Prometheus's bounds and inclusiveness.
fn bucket_at(h: &FloatHistogram, idx: i32, count: f64, positive: bool) -> Bucket {
    let upper_abs = bucket_bound(idx, h.schema, &h.custom_values);
    let lower_abs = bucket_bound(idx.saturating_sub(1), h.schema, &h.custom_values);
    let (lower, upper) = if positive {
        (lower_abs, upper_abs)
    } else {
        (-upper_abs, -lower_abs)
    };
    let (lower_inclusive, upper_inclusive) = if h.schema == CUSTOM_BUCKETS_SCHEMA {
        (idx == 0, true)
    } else {
        (lower < 0.0, upper > 0.0)
    };
    Bucket {
        lower,
        upper,
        lower_inclusive,
        upper_inclusive,
        count,
        index: idx,
    }
}

/// Clips a bucket that reaches into the zero bucket at the zero threshold, as
/// Prometheus's all-buckets iterators do.
fn clip_at_zero_bucket(mut b: Bucket, threshold: f64) -> Bucket {
    if b.upper < 0.0 && b.upper > -threshold {
        b.upper = -threshold;
    } else if b.lower > 0.0 && b.lower < threshold {
        b.lower = threshold;
    }
    b
}

impl FloatHistogram {
    /// Whether the histogram has custom buckets (Prometheus's `UsesCustomBuckets`).
    pub fn uses_custom_buckets(&self) -> bool {
        self.schema == CUSTOM_BUCKETS_SCHEMA
    }

    /// Prometheus's `ZeroBucket`: [-threshold, threshold], both bounds inclusive. None
    /// under custom buckets, which have no zero bucket (Prometheus panics).
    pub fn zero_bucket(&self) -> Option<Bucket> {
        (!self.uses_custom_buckets()).then_some(Bucket {
            lower: -self.zero_threshold,
            upper: self.zero_threshold,
            lower_inclusive: true,
            upper_inclusive: true,
            count: self.zero_count,
            index: 0,
        })
    }

    /// Prometheus's `PositiveBucketIterator`: every positive bucket present (empty ones
    /// included), ascending.
    pub fn positive_buckets(&self) -> Vec<Bucket> {
        load(&self.positive_spans, &self.positive_buckets, None)
            .iter()
            .map(|e| bucket_at(self, e.idx, e.v, true))
            .collect()
    }

    /// Prometheus's `NegativeBucketIterator`: every negative bucket present, from the
    /// one nearest zero downwards.
    pub fn negative_buckets(&self) -> Vec<Bucket> {
        load(&self.negative_spans, &self.negative_buckets, None)
            .iter()
            .map(|e| bucket_at(self, e.idx, e.v, false))
            .collect()
    }

    /// Prometheus's `AllBucketIterator`: negative buckets from the lowest up, the zero
    /// bucket if its count is above 0, then the positive buckets; bounds of buckets
    /// reaching into the zero bucket are clipped at the zero threshold. What
    /// `histogram_quantile`, `histogram_fraction`, `histogram_stddev` and the JSON
    /// rendering walk.
    pub fn all_buckets(&self) -> Vec<Bucket> {
        let mut out = self.negative_buckets();
        out.reverse();
        for b in &mut out {
            *b = clip_at_zero_bucket(*b, self.zero_threshold);
        }
        if let Some(z) = self.zero_bucket().filter(|z| z.count > 0.0) {
            out.push(z);
        }
        out.extend(
            self.positive_buckets()
                .into_iter()
                .map(|b| clip_at_zero_bucket(b, self.zero_threshold)),
        );
        out
    }

    /// Prometheus's `AllReverseBucketIterator`: `all_buckets` from the highest down.
    pub fn all_buckets_reverse(&self) -> Vec<Bucket> {
        let mut out = self.all_buckets();
        out.reverse();
        out
    }

    /// Prometheus's `Mul`: scales the zero count, count, sum and every bucket. A
    /// negative factor makes it a gauge histogram. (PromQL's unary minus is `mul(-1)`.)
    pub fn mul(&mut self, factor: f64) {
        self.zero_count *= factor;
        self.count *= factor;
        self.sum *= factor;
        self.positive_buckets.iter_mut().for_each(|b| *b *= factor);
        self.negative_buckets.iter_mut().for_each(|b| *b *= factor);
        if factor < 0.0 {
            self.counter_reset_hint = CounterResetHint::Gauge;
        }
    }

    /// Prometheus's `Div`. Dividing by 0 (either sign) divides the zero count, count
    /// and sum (giving ±Inf or NaN) and removes every bucket, leaving the hint alone;
    /// a negative divisor makes it a gauge histogram.
    pub fn div(&mut self, scalar: f64) {
        self.zero_count /= scalar;
        self.count /= scalar;
        self.sum /= scalar;
        if scalar == 0.0 {
            self.positive_buckets = Vec::new();
            self.negative_buckets = Vec::new();
            self.positive_spans = Arc::from([]);
            self.negative_spans = Arc::from([]);
            return;
        }
        self.positive_buckets.iter_mut().for_each(|b| *b /= scalar);
        self.negative_buckets.iter_mut().for_each(|b| *b /= scalar);
        if scalar < 0.0 {
            self.counter_reset_hint = CounterResetHint::Gauge;
        }
    }

    /// Prometheus's `Add`: adds `other` into this histogram. The zero buckets are
    /// widened to a common threshold, the finer schema is reduced to the coarser one,
    /// and buckets only `other` has are inserted. Custom buckets with other bounds are
    /// reconciled to the shared bounds (reported in `Combined`). Fails, leaving this
    /// histogram unchanged, only when one has custom buckets and the other not. The
    /// result may hold empty buckets; PromQL compacts (`compact(0)`) before returning
    /// it.
    pub fn add(&mut self, other: &FloatHistogram) -> Result<Combined, HistogramOpError> {
        self.combine(other, false, None)
    }

    /// Prometheus's `Sub`: like `add` but subtracts `other`. The counter-reset hint is
    /// reconciled as for `add`; PromQL's `-` operator then sets it to gauge itself.
    pub fn sub(&mut self, other: &FloatHistogram) -> Result<Combined, HistogramOpError> {
        self.combine(other, true, None)
    }

    /// Prometheus's `KahanAdd`: `add` with Kahan (Neumaier) summation, as PromQL's
    /// `sum`/`avg` aggregations and `sum_over_time`/`avg_over_time` use for histograms.
    /// `comp` holds the compensation histogram between calls; start with None (the
    /// first call creates it with this histogram's layout). When done, Prometheus adds
    /// the compensation with a plain `add` (`value.add(&comp)`) and then compacts.
    pub fn kahan_add(
        &mut self,
        other: &FloatHistogram,
        comp: &mut Option<FloatHistogram>,
    ) -> Result<Combined, HistogramOpError> {
        if self.uses_custom_buckets() != other.uses_custom_buckets() {
            return Err(HistogramOpError::IncompatibleSchema);
        }
        let c = comp.get_or_insert_with(|| FloatHistogram {
            counter_reset_hint: self.counter_reset_hint,
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            custom_values: self.custom_values.clone(),
            positive_spans: self.positive_spans.clone(),
            negative_spans: self.negative_spans.clone(),
            positive_buckets: vec![0.0; self.positive_buckets.len()],
            negative_buckets: vec![0.0; self.negative_buckets.len()],
            ..FloatHistogram::default()
        });
        self.combine(other, false, Some(c))
    }

    /// Prometheus's `adjustCounterReset`: the hint of a sum or difference; true on a
    /// collision of a counter reset with a not-counter-reset hint.
    fn adjust_counter_reset(&mut self, other: &FloatHistogram) -> bool {
        use CounterResetHint::*;
        let (mine, theirs) = (self.counter_reset_hint, other.counter_reset_hint);
        if mine == theirs || mine == Gauge {
            return false;
        }
        if theirs == Gauge {
            self.counter_reset_hint = Gauge;
            return false;
        }
        if mine == Unknown {
            return false;
        }
        self.counter_reset_hint = Unknown;
        // Unknown on the other side is no collision; CounterReset against
        // NotCounterReset is.
        theirs != Unknown
    }

    /// `add`, `sub` and `kahan_add` (with `comp`) in one, following Prometheus's steps in
    /// its order so that the floating-point results agree.
    fn combine(
        &mut self,
        other: &FloatHistogram,
        negate: bool,
        mut comp: Option<&mut FloatHistogram>,
    ) -> Result<Combined, HistogramOpError> {
        if self.uses_custom_buckets() != other.uses_custom_buckets() {
            return Err(HistogramOpError::IncompatibleSchema);
        }
        let kahan = comp.is_some();
        let mut out = Combined {
            counter_reset_collision: self.adjust_counter_reset(other),
            custom_bounds_reconciled: false,
        };
        let comps = |c: &Option<&mut FloatHistogram>, positive: bool| -> Option<Vec<f64>> {
            c.as_ref().map(|c| {
                if positive {
                    c.positive_buckets.clone()
                } else {
                    c.negative_buckets.clone()
                }
            })
        };
        let (cp, cn) = (comps(&comp, true), comps(&comp, false));
        let mut pos = load(&self.positive_spans, &self.positive_buckets, cp.as_deref());
        let mut neg = load(&self.negative_spans, &self.negative_buckets, cn.as_deref());
        let mut other_pos = load(&other.positive_spans, &other.positive_buckets, None);
        let mut other_neg = load(&other.negative_spans, &other.negative_buckets, None);

        let sign = if negate { -1.0 } else { 1.0 };
        if !self.uses_custom_buckets() {
            let (other_zero, other_zero_comp) = self.reconcile_zero_buckets(
                other, &other_pos, &other_neg, &mut pos, &mut neg, &mut comp,
            );
            match comp.as_deref_mut() {
                Some(c) => {
                    (self.zero_count, c.zero_count) =
                        kahan_inc(other_zero, self.zero_count, c.zero_count);
                    (self.zero_count, c.zero_count) =
                        kahan_inc(other_zero_comp, self.zero_count, c.zero_count);
                }
                None => self.zero_count += sign * other_zero,
            }
        }
        match comp.as_deref_mut() {
            Some(c) => {
                (self.count, c.count) = kahan_inc(other.count, self.count, c.count);
                (self.sum, c.sum) = kahan_inc(other.sum, self.sum, c.sum);
            }
            None => {
                self.count += sign * other.count;
                self.sum += sign * other.sum;
            }
        }

        if self.uses_custom_buckets() {
            if bounds_match(&self.custom_values, &other.custom_values) {
                pos = merge(pos, &other_pos, negate, kahan, None);
            } else {
                out.custom_bounds_reconciled = true;
                let shared = intersect_bounds(&self.custom_values, &other.custom_values);
                pos = merge_custom_mismatched(
                    &pos,
                    &self.custom_values,
                    &other_pos,
                    &other.custom_values,
                    &shared,
                    negate,
                    kahan,
                );
                self.custom_values = shared.into();
            }
            let (spans, values, compensations) = store(&pos);
            self.positive_spans = spans.clone();
            self.positive_buckets = values;
            if let Some(c) = comp {
                c.positive_spans = spans;
                c.positive_buckets = compensations;
                c.custom_values = self.custom_values.clone();
            }
            return Ok(out);
        }

        if other.schema < self.schema {
            pos = reduce(pos, self.schema, other.schema, kahan);
            neg = reduce(neg, self.schema, other.schema, kahan);
            self.schema = other.schema;
        } else if other.schema > self.schema {
            other_pos = reduce(other_pos, other.schema, self.schema, kahan);
            other_neg = reduce(other_neg, other.schema, self.schema, kahan);
        }
        let skip = Some((self.schema, self.zero_threshold));
        let pos = merge(pos, &other_pos, negate, kahan, skip);
        let neg = merge(neg, &other_neg, negate, kahan, skip);
        let (pspans, pvalues, pcomps) = store(&pos);
        let (nspans, nvalues, ncomps) = store(&neg);
        self.positive_spans = pspans.clone();
        self.positive_buckets = pvalues;
        self.negative_spans = nspans.clone();
        self.negative_buckets = nvalues;
        if let Some(c) = comp {
            c.schema = self.schema;
            c.zero_threshold = self.zero_threshold;
            c.positive_spans = pspans;
            c.positive_buckets = pcomps;
            c.negative_spans = nspans;
            c.negative_buckets = ncomps;
        }
        Ok(out)
    }

    /// Prometheus's `reconcileZeroBuckets`: widens this histogram's zero bucket (moving
    /// the buckets inside it into the zero count, and the compensation's likewise) until
    /// it matches `other`'s as widened, and returns the zero count `other` would have,
    /// with the compensation of adding its buckets into it.
    fn reconcile_zero_buckets(
        &mut self,
        other: &FloatHistogram,
        other_pos: &[Entry],
        other_neg: &[Entry],
        pos: &mut Vec<Entry>,
        neg: &mut Vec<Entry>,
        comp: &mut Option<&mut FloatHistogram>,
    ) -> (f64, f64) {
        let other_zeroed = Zeroed {
            schema: other.schema,
            threshold: other.zero_threshold,
            zero_count: other.zero_count,
            pos: other_pos,
            neg: other_neg,
        };
        let (mut other_zero, mut other_threshold, mut other_comp) =
            (other.zero_count, other.zero_threshold, 0.0);
        while other_threshold != self.zero_threshold {
            let before = (other_threshold.to_bits(), self.zero_threshold.to_bits());
            if self.zero_threshold > other_threshold {
                (other_zero, other_threshold, other_comp) =
                    other_zeroed.count_for_larger_threshold(self.zero_threshold, 0.0, false);
            }
            if other_threshold > self.zero_threshold {
                let c_zero = comp.as_ref().map_or(0.0, |c| c.zero_count);
                let (zero, threshold, cz) = Zeroed {
                    schema: self.schema,
                    threshold: self.zero_threshold,
                    zero_count: self.zero_count,
                    pos,
                    neg,
                }
                .count_for_larger_threshold(
                    other_threshold,
                    c_zero,
                    comp.is_some(),
                );
                self.zero_count = zero;
                self.zero_threshold = threshold;
                if let Some(c) = comp.as_deref_mut() {
                    c.zero_count = cz;
                }
                trim_into_zero_bucket(self.schema, self.zero_threshold, pos, neg);
            }
            if before == (other_threshold.to_bits(), self.zero_threshold.to_bits()) {
                // Only a NaN threshold gets here (Prometheus would loop forever).
                break;
            }
        }
        (other_zero, other_comp)
    }

    /// Prometheus's `Compact`: drops empty buckets and joins spans at most `max_empty`
    /// buckets apart (filling the gap with empty buckets). PromQL uses `compact(0)`.
    pub fn compact(&mut self, max_empty: usize) {
        let pos = compact_side(
            load(&self.positive_spans, &self.positive_buckets, None),
            max_empty,
        );
        let neg = compact_side(
            load(&self.negative_spans, &self.negative_buckets, None),
            max_empty,
        );
        (self.positive_spans, self.positive_buckets, _) = store(&pos);
        (self.negative_spans, self.negative_buckets, _) = store(&neg);
    }

    /// Prometheus's `ReduceResolution`: merges the buckets into the lower
    /// `target_schema`. Errors (leaving the histogram unchanged) for custom buckets, a
    /// custom or not lower target, or spans that do not describe the buckets.
    pub fn reduce_resolution(&mut self, target_schema: i32) -> Result<(), HistogramOpError> {
        let reduced = self.copy_to_schema_checked(target_schema)?;
        self.positive_spans = reduced.positive_spans;
        self.positive_buckets = reduced.positive_buckets;
        self.negative_spans = reduced.negative_spans;
        self.negative_buckets = reduced.negative_buckets;
        self.schema = target_schema;
        Ok(())
    }

    /// Prometheus's `CopyToSchema`: a copy at the lower (or same) `target_schema`. As
    /// in Prometheus, a copy at another schema does not keep the counter-reset hint
    /// (it is unknown). Errors where Prometheus panics: custom buckets on either side
    /// or a higher target.
    pub fn copy_to_schema(&self, target_schema: i32) -> Result<FloatHistogram, HistogramOpError> {
        if target_schema == self.schema {
            return Ok(self.clone());
        }
        self.copy_to_schema_checked(target_schema)
    }

    fn copy_to_schema_checked(&self, target: i32) -> Result<FloatHistogram, HistogramOpError> {
        if self.uses_custom_buckets() {
            return Err(HistogramOpError::ReduceCustomBuckets);
        }
        if target == CUSTOM_BUCKETS_SCHEMA {
            return Err(HistogramOpError::ReduceToCustomBuckets);
        }
        if target >= self.schema {
            return Err(HistogramOpError::ReduceNotLower {
                from: self.schema,
                to: target,
            });
        }
        type Reduced = (Arc<[Span]>, Vec<f64>, Vec<f64>);
        let side =
            |side: Side, spans: &[Span], buckets: &[f64]| -> Result<Reduced, HistogramOpError> {
                check_spans_for_reduction(side, spans, buckets.len())?;
                Ok(store(&reduce(
                    load(spans, buckets, None),
                    self.schema,
                    target,
                    false,
                )))
            };
        let (pspans, pbuckets, _) =
            side(Side::Positive, &self.positive_spans, &self.positive_buckets)?;
        let (nspans, nbuckets, _) =
            side(Side::Negative, &self.negative_spans, &self.negative_buckets)?;
        Ok(FloatHistogram {
            counter_reset_hint: CounterResetHint::Unknown,
            schema: target,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count,
            count: self.count,
            sum: self.sum,
            positive_spans: pspans,
            negative_spans: nspans,
            positive_buckets: pbuckets,
            negative_buckets: nbuckets,
            custom_values: Arc::from([]),
        })
    }

    /// Prometheus's `DetectReset`: whether this histogram, following `previous`, starts
    /// a new counter. A counter-reset hint answers yes, a not-counter-reset hint no;
    /// otherwise (unknown or gauge) it is a reset when the count went down, the schema
    /// went up, the zero threshold went down or now cuts a populated bucket of
    /// `previous`, the zero count went down, or any bucket of `previous` (merged to this
    /// schema) lost observations. Custom buckets after exponential ones are a reset;
    /// with other custom bounds, the cumulative counts at the bounds both share are
    /// compared.
    pub fn detect_reset(&self, previous: &FloatHistogram) -> bool {
        match self.counter_reset_hint {
            CounterResetHint::CounterReset => return true,
            CounterResetHint::NotCounterReset => return false,
            CounterResetHint::Unknown | CounterResetHint::Gauge => {}
        }
        if self.count < previous.count {
            return true;
        }
        let curr_pos = load(&self.positive_spans, &self.positive_buckets, None);
        let prev_pos = load(&previous.positive_spans, &previous.positive_buckets, None);
        if self.uses_custom_buckets() {
            if !previous.uses_custom_buckets() {
                return true;
            }
            if !bounds_match(&self.custom_values, &previous.custom_values) {
                return custom_reset_mismatched(
                    &curr_pos,
                    &self.custom_values,
                    &prev_pos,
                    &previous.custom_values,
                );
            }
        }
        if self.schema > previous.schema {
            return true;
        }
        if self.zero_threshold < previous.zero_threshold {
            return true;
        }
        let prev_neg = load(&previous.negative_spans, &previous.negative_buckets, None);
        let (prev_zero, threshold, _) = Zeroed {
            schema: previous.schema,
            threshold: previous.zero_threshold,
            zero_count: previous.zero_count,
            pos: &prev_pos,
            neg: &prev_neg,
        }
        .count_for_larger_threshold(self.zero_threshold, 0.0, false);
        if threshold != self.zero_threshold {
            return true;
        }
        if self.zero_count < prev_zero {
            return true;
        }
        let curr_neg = load(&self.negative_spans, &self.negative_buckets, None);
        let (schema, t) = (self.schema, self.zero_threshold);
        let prev_pos = reduce(prev_pos, previous.schema, schema, false);
        let prev_neg = reduce(prev_neg, previous.schema, schema, false);
        side_reset(
            above_threshold(&curr_pos, schema, t),
            above_threshold(&prev_pos, schema, t),
        ) || side_reset(
            above_threshold(&curr_neg, schema, t),
            above_threshold(&prev_neg, schema, t),
        )
    }

    /// Prometheus's `Equals`: the same schema, zero threshold, bucket layout (spans
    /// equal once zero-length spans are folded away) and custom bounds (custom buckets
    /// only), with count, sum, zero count and bucket counts equal bit for bit (so NaN
    /// equals the same NaN). The counter-reset hint is not compared.
    pub fn equals(&self, other: &FloatHistogram) -> bool {
        if self.schema != other.schema
            || self.count.to_bits() != other.count.to_bits()
            || self.sum.to_bits() != other.sum.to_bits()
        {
            return false;
        }
        if self.uses_custom_buckets() && !bounds_match(&self.custom_values, &other.custom_values) {
            return false;
        }
        self.zero_threshold == other.zero_threshold
            && self.zero_count.to_bits() == other.zero_count.to_bits()
            && spans_match(&self.negative_spans, &other.negative_spans)
            && buckets_match_bits(&self.negative_buckets, &other.negative_buckets)
            && spans_match(&self.positive_spans, &other.positive_spans)
            && buckets_match_bits(&self.positive_buckets, &other.positive_buckets)
    }

    /// Prometheus's `HasOverflow`: whether any count, the sum or a custom bound is
    /// infinite (aggregations warn then).
    pub fn has_overflow(&self) -> bool {
        [self.zero_count, self.count, self.sum]
            .iter()
            .chain(&self.positive_buckets)
            .chain(&self.negative_buckets)
            .chain(self.custom_values.iter())
            .any(|v| v.is_infinite())
    }
}

/// Prometheus's checks in `reduceResolution`: no negative offset after the first span,
/// and as many buckets as the spans describe.
fn check_spans_for_reduction(
    side: Side,
    spans: &[Span],
    buckets: usize,
) -> Result<(), HistogramOpError> {
    if let Some((n, s)) = spans.iter().enumerate().skip(1).find(|(_, s)| s.offset < 0) {
        return Err(HistogramOpError::Invalid(
            HistogramError::NegativeSpanOffset {
                side,
                span: n + 1,
                offset: s.offset,
            },
        ));
    }
    let spans_need = super::histogram::span_buckets(spans);
    if spans_need != buckets as u64 {
        return Err(HistogramOpError::Invalid(
            HistogramError::SpansBucketsMismatch {
                side,
                spans_need,
                have: buckets,
            },
        ));
    }
    Ok(())
}

/// Prometheus's `detectResetWithMismatchedCustomBounds`: a reset when, at any bound
/// both histograms have (and +Inf), the observations counted since the previous shared
/// bound went down.
fn custom_reset_mismatched(
    curr: &[Entry],
    curr_bounds: &[f64],
    prev: &[Entry],
    prev_bounds: &[f64],
) -> bool {
    let mut curr_roll = Rollup::new(curr, curr_bounds);
    let mut prev_roll = Rollup::new(prev, prev_bounds);
    let (mut i, mut j) = (0, 0);
    while i <= curr_bounds.len() && j <= prev_bounds.len() {
        let cb = curr_bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let pb = prev_bounds.get(j).copied().unwrap_or(f64::INFINITY);
        if cb == pb {
            if curr_roll.up_to(cb) < prev_roll.up_to(cb) {
                return true;
            }
            i += 1;
            j += 1;
        } else if cb < pb {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(offset: i32, length: u32) -> Span {
        Span { offset, length }
    }

    /// An exponential histogram in promqltest's notation: one span per side starting
    /// at bucket index 0.
    fn exp(schema: i32, zero: (f64, f64), pos: &[f64], neg: &[f64]) -> FloatHistogram {
        let spans = |b: &[f64]| -> Arc<[Span]> {
            if b.is_empty() {
                Arc::from([])
            } else {
                vec![span(0, b.len() as u32)].into()
            }
        };
        let count = zero.1 + pos.iter().sum::<f64>() + neg.iter().sum::<f64>();
        FloatHistogram {
            schema,
            zero_threshold: zero.0,
            zero_count: zero.1,
            count,
            sum: count,
            positive_spans: spans(pos),
            negative_spans: spans(neg),
            positive_buckets: pos.to_vec(),
            negative_buckets: neg.to_vec(),
            ..FloatHistogram::default()
        }
    }

    fn custom(bounds: &[f64], buckets: &[f64]) -> FloatHistogram {
        let count = buckets.iter().sum();
        FloatHistogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            count,
            sum: count,
            positive_spans: vec![span(0, buckets.len() as u32)].into(),
            positive_buckets: buckets.to_vec(),
            custom_values: bounds.to_vec().into(),
            ..FloatHistogram::default()
        }
    }

    /// (index, count) of every positive bucket present.
    fn positive(h: &FloatHistogram) -> Vec<(i32, f64)> {
        h.positive_buckets()
            .iter()
            .map(|b| (b.index, b.count))
            .collect()
    }

    #[test]
    // 1.414213562373095 is deliberately one ulp below SQRT_2: Prometheus's bound.
    #[allow(clippy::approx_constant)]
    fn exponential_bounds_are_prometheus_constants() {
        assert_eq!(exponential_bound(0, 0), 1.0);
        assert_eq!(exponential_bound(1, 0), 2.0);
        assert_eq!(exponential_bound(-1, 0), 0.5);
        assert_eq!(exponential_bound(1, -1), 4.0);
        assert_eq!(exponential_bound(-2, -2), 1.0 / 256.0);
        // Prometheus's table, not a computed 2^(1/2) (1.4142135623730951).
        assert_eq!(exponential_bound(1, 1), 1.414213562373095);
        assert_ne!(exponential_bound(1, 1), std::f64::consts::SQRT_2);
        assert_eq!(exponential_bound(3, 3), 1.2968395546510096);
        assert_eq!(exponential_bound(-255, 8), 0.5013556375251013);
        // The last finite bucket ends at f64::MAX, the next one counts ±Inf.
        assert_eq!(exponential_bound(1024, 0), f64::MAX);
        assert_eq!(exponential_bound(1025, 0), f64::INFINITY);
        assert_eq!(exponential_bound(64, -4), f64::MAX);
        assert_eq!(exponential_bound(1024 << 8, 8), f64::MAX);
        // Down into the subnormals, then 0.
        assert_eq!(exponential_bound(-1074, 0), f64::from_bits(1));
        assert_eq!(exponential_bound(-1076, 0), 0.0);
        assert!(exponential_bound(0, 9).is_nan());
        assert_eq!(
            bucket_bound(-1, CUSTOM_BUCKETS_SCHEMA, &[1.0]),
            f64::NEG_INFINITY
        );
        assert_eq!(bucket_bound(0, CUSTOM_BUCKETS_SCHEMA, &[1.0]), 1.0);
        assert_eq!(
            bucket_bound(1, CUSTOM_BUCKETS_SCHEMA, &[1.0]),
            f64::INFINITY
        );
    }

    #[test]
    fn all_buckets_in_prometheus_order_with_json_boundary_rules() {
        let mut h = exp(0, (0.001, 2.0), &[2.0, 3.0], &[1.0, 4.0]);
        h.negative_buckets[0] = 0.0; // present but empty: still iterated
        let got: Vec<(f64, f64, u8, f64)> = h
            .all_buckets()
            .iter()
            .map(|b| (b.lower, b.upper, b.boundary_rule(), b.count))
            .collect();
        assert_eq!(
            got,
            vec![
                (-2.0, -1.0, 1, 4.0),
                (-1.0, -0.5, 1, 0.0),
                (-0.001, 0.001, 3, 2.0),
                (0.5, 1.0, 0, 2.0),
                (1.0, 2.0, 0, 3.0),
            ]
        );
        let reversed: Vec<f64> = h.all_buckets_reverse().iter().map(|b| b.count).collect();
        assert_eq!(reversed, vec![3.0, 2.0, 2.0, 0.0, 4.0]);
        // No zero bucket without observations in it.
        h.zero_count = 0.0;
        assert_eq!(h.all_buckets().len(), 4);
        // A bucket reaching into a wide zero bucket is clipped at the threshold.
        let wide = exp(0, (0.7, 1.0), &[2.0], &[3.0]);
        let b = wide.all_buckets();
        assert_eq!((b[0].lower, b[0].upper), (-1.0, -0.7));
        assert_eq!((b[2].lower, b[2].upper), (0.7, 1.0));
        // Custom buckets: the first is closed at -Inf, the others left open.
        let c = custom(&[1.0, 5.0], &[1.0, 2.0, 3.0]);
        let got: Vec<(f64, f64, u8)> = c
            .all_buckets()
            .iter()
            .map(|b| (b.lower, b.upper, b.boundary_rule()))
            .collect();
        assert_eq!(
            got,
            vec![
                (f64::NEG_INFINITY, 1.0, 3),
                (1.0, 5.0, 0),
                (5.0, f64::INFINITY, 0),
            ]
        );
        assert_eq!(c.zero_bucket(), None);
    }

    #[test]
    fn mul_and_div_follow_prometheus() {
        let mut h = exp(0, (0.001, 2.0), &[2.0, 4.0], &[6.0]);
        h.counter_reset_hint = CounterResetHint::NotCounterReset;
        h.mul(0.5);
        assert_eq!((h.count, h.zero_count), (7.0, 1.0));
        assert_eq!(h.positive_buckets, vec![1.0, 2.0]);
        assert_eq!(h.counter_reset_hint, CounterResetHint::NotCounterReset);
        h.mul(-1.0);
        assert_eq!(h.counter_reset_hint, CounterResetHint::Gauge);
        assert_eq!(h.negative_buckets, vec![-3.0]);

        let mut h = exp(0, (0.001, 2.0), &[2.0, 4.0], &[6.0]);
        h.div(2.0);
        assert_eq!(h.positive_buckets, vec![1.0, 2.0]);
        assert_eq!(h.counter_reset_hint, CounterResetHint::Unknown);
        h.div(0.0);
        assert_eq!(
            (h.count, h.sum, h.zero_count),
            (f64::INFINITY, f64::INFINITY, f64::INFINITY)
        );
        assert!(h.positive_buckets.is_empty() && h.positive_spans.is_empty());
        assert!(h.negative_buckets.is_empty() && h.negative_spans.is_empty());
        assert_eq!(h.counter_reset_hint, CounterResetHint::Unknown);
        let mut h = exp(0, (0.001, 2.0), &[2.0], &[]);
        h.div(-2.0);
        assert_eq!(h.counter_reset_hint, CounterResetHint::Gauge);
    }

    #[test]
    fn add_reduces_the_finer_schema() {
        // Schema 1 buckets 0..=3 fall into schema 0 buckets 0, 1, 1, 2.
        let mut a = exp(1, (0.0, 0.0), &[1.0, 2.0, 3.0, 4.0], &[]);
        let mut b = exp(0, (0.0, 0.0), &[], &[]);
        b.positive_spans = vec![span(1, 2)].into();
        b.positive_buckets = vec![10.0, 20.0];
        b.count = 30.0;
        b.sum = 30.0;
        let out = a.add(&b).unwrap();
        assert_eq!(out, Combined::default());
        assert_eq!(a.schema, 0);
        assert_eq!(positive(&a), vec![(0, 1.0), (1, 15.0), (2, 24.0)]);
        assert_eq!(&*a.positive_spans, &[span(0, 3)]);
        assert_eq!((a.count, a.sum), (40.0, 40.0));
        // The other way round gives the same histogram.
        let mut b2 = b.clone();
        b2.add(&exp(1, (0.0, 0.0), &[1.0, 2.0, 3.0, 4.0], &[]))
            .unwrap();
        assert!(b2.equals(&a));
        // Subtracting it again leaves the buckets present but empty.
        a.sub(&b).unwrap();
        assert_eq!(positive(&a), vec![(0, 1.0), (1, 5.0), (2, 4.0)]);
        let mut c = a.clone();
        c.sub(&a).unwrap();
        assert_eq!(positive(&c), vec![(0, 0.0), (1, 0.0), (2, 0.0)]);
        c.compact(0);
        assert!(c.positive_buckets.is_empty() && c.positive_spans.is_empty());
    }

    #[test]
    fn add_widens_the_zero_bucket() {
        // a: zero bucket 0.001 (1 obs), buckets (0.25,0.5]: 2 and (0.5,1]: 3.
        let mut a = exp(0, (0.001, 1.0), &[], &[]);
        a.positive_spans = vec![span(-1, 2)].into();
        a.positive_buckets = vec![2.0, 3.0];
        // b: zero bucket 0.5 (4 obs), bucket (1,2]: 5.
        let mut b = exp(0, (0.5, 4.0), &[], &[]);
        b.positive_spans = vec![span(1, 1)].into();
        b.positive_buckets = vec![5.0];
        let mut sum = a.clone();
        sum.add(&b).unwrap();
        assert_eq!((sum.zero_threshold, sum.zero_count), (0.5, 7.0));
        assert_eq!(positive(&sum), vec![(0, 3.0), (1, 5.0)]);
        // A threshold inside a populated bucket moves up to that bucket's bound.
        b.zero_threshold = 0.7;
        let mut sum = a.clone();
        sum.add(&b).unwrap();
        assert_eq!((sum.zero_threshold, sum.zero_count), (1.0, 10.0));
        assert_eq!(positive(&sum), vec![(1, 5.0)]);
        // From the other side: b's threshold stays, a's buckets inside it are skipped
        // and their counts go into the zero count.
        let mut sum = b.clone();
        sum.add(&a).unwrap();
        assert_eq!((sum.zero_threshold, sum.zero_count), (1.0, 10.0));
        assert_eq!(positive(&sum), vec![(1, 5.0)]);
    }

    #[test]
    fn custom_bounds_reconcile_to_their_intersection() {
        let mut a = custom(&[1.0, 2.0, 5.0], &[1.0, 2.0, 3.0, 4.0]);
        let b = custom(&[1.0, 5.0, 10.0], &[10.0, 20.0, 30.0, 40.0]);
        let out = a.add(&b).unwrap();
        assert!(out.custom_bounds_reconciled);
        assert_eq!(&*a.custom_values, &[1.0, 5.0]);
        assert_eq!(positive(&a), vec![(0, 11.0), (1, 25.0), (2, 74.0)]);
        // native_histograms.test: [10] + [2 10] -> [10]; [5] - [5 10] leaves nothing.
        let mut a = custom(&[10.0], &[1.0]);
        assert!(
            a.add(&custom(&[2.0, 10.0], &[1.0]))
                .unwrap()
                .custom_bounds_reconciled
        );
        assert_eq!(
            (&*a.custom_values, positive(&a)),
            (&[10.0][..], vec![(0, 2.0)])
        );
        let mut a = custom(&[5.0], &[1.0]);
        a.sub(&custom(&[5.0, 10.0], &[1.0])).unwrap();
        assert_eq!(&*a.custom_values, &[5.0]);
        assert!(a.positive_buckets.is_empty());
        assert_eq!((a.count, a.sum), (0.0, 0.0));
        // Equal bounds: a plain bucket-wise sum.
        let mut a = custom(&[1.0, 5.0], &[1.0, 2.0]);
        assert_eq!(
            a.add(&custom(&[1.0, 5.0], &[0.0, 1.0, 1.0])).unwrap(),
            Combined::default()
        );
        assert_eq!(positive(&a), vec![(0, 1.0), (1, 3.0), (2, 1.0)]);
    }

    #[test]
    fn exponential_and_custom_do_not_mix() {
        let mut a = exp(0, (0.0, 0.0), &[1.0], &[]);
        let before = a.clone();
        let c = custom(&[1.0], &[1.0]);
        assert_eq!(a.add(&c), Err(HistogramOpError::IncompatibleSchema));
        assert_eq!(a.sub(&c), Err(HistogramOpError::IncompatibleSchema));
        assert_eq!(
            a.kahan_add(&c, &mut None),
            Err(HistogramOpError::IncompatibleSchema)
        );
        assert_eq!(a, before);
    }

    #[test]
    fn counter_reset_hints_combine_as_prometheus() {
        use CounterResetHint::*;
        let cases = [
            (CounterReset, NotCounterReset, Unknown, true),
            (NotCounterReset, CounterReset, Unknown, true),
            (CounterReset, CounterReset, CounterReset, false),
            (Gauge, CounterReset, Gauge, false),
            (CounterReset, Gauge, Gauge, false),
            (Unknown, CounterReset, Unknown, false),
            (NotCounterReset, Unknown, Unknown, false),
        ];
        for (mine, theirs, want, collision) in cases {
            let mut a = exp(0, (0.0, 0.0), &[1.0], &[]);
            a.counter_reset_hint = mine;
            let mut b = a.clone();
            b.counter_reset_hint = theirs;
            let out = a.add(&b).unwrap();
            assert_eq!(
                (a.counter_reset_hint, out.counter_reset_collision),
                (want, collision)
            );
        }
    }

    #[test]
    fn compact_drops_empty_buckets_and_joins_close_spans() {
        let h = exp(0, (0.0, 0.0), &[0.0, 1.0, 0.0, 0.0, 2.0, 0.0], &[]);
        let compacted = |max| {
            let mut c = h.clone();
            c.compact(max);
            (c.positive_spans.to_vec(), c.positive_buckets)
        };
        assert_eq!(compacted(0), (vec![span(1, 1), span(2, 1)], vec![1.0, 2.0]));
        assert_eq!(compacted(1), (vec![span(1, 1), span(2, 1)], vec![1.0, 2.0]));
        assert_eq!(compacted(2), (vec![span(1, 4)], vec![1.0, 0.0, 0.0, 2.0]));
        // NaN counts are not empty.
        let mut n = exp(0, (0.0, 0.0), &[f64::NAN, 0.0], &[]);
        n.compact(0);
        assert_eq!(n.positive_buckets.len(), 1);
    }

    #[test]
    fn reduce_resolution_and_copy_to_schema() {
        let mut h = exp(2, (0.0, 0.0), &[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0, 1.0, 1.0]);
        h.counter_reset_hint = CounterResetHint::NotCounterReset;
        let copy = h.copy_to_schema(0).unwrap();
        assert_eq!(copy.counter_reset_hint, CounterResetHint::Unknown);
        assert_eq!(positive(&copy), vec![(0, 1.0), (1, 14.0)]);
        assert_eq!(h.copy_to_schema(2).unwrap(), h);
        h.reduce_resolution(1).unwrap();
        assert_eq!(h.schema, 1);
        assert_eq!(positive(&h), vec![(0, 1.0), (1, 5.0), (2, 9.0)]);
        assert_eq!(h.negative_buckets, vec![1.0, 2.0]);
        assert_eq!(h.counter_reset_hint, CounterResetHint::NotCounterReset);
        assert_eq!(
            h.reduce_resolution(1),
            Err(HistogramOpError::ReduceNotLower { from: 1, to: 1 })
        );
        assert_eq!(
            h.reduce_resolution(CUSTOM_BUCKETS_SCHEMA),
            Err(HistogramOpError::ReduceToCustomBuckets)
        );
        assert_eq!(
            custom(&[1.0], &[1.0]).reduce_resolution(0),
            Err(HistogramOpError::ReduceCustomBuckets)
        );
        h.positive_buckets.push(1.0);
        assert!(matches!(
            h.reduce_resolution(0),
            Err(HistogramOpError::Invalid(
                HistogramError::SpansBucketsMismatch { .. }
            ))
        ));
    }

    #[test]
    fn detect_reset_cases() {
        let prev = exp(1, (0.001, 2.0), &[1.0, 2.0], &[3.0]);
        let mut more = exp(1, (0.001, 2.0), &[1.0, 3.0], &[3.0]);
        assert!(!more.detect_reset(&prev));
        // Hints answer first.
        more.counter_reset_hint = CounterResetHint::CounterReset;
        assert!(more.detect_reset(&prev));
        let mut fewer = exp(1, (0.001, 2.0), &[1.0, 1.0], &[4.0]);
        assert!(fewer.detect_reset(&prev), "a bucket lost observations");
        fewer.counter_reset_hint = CounterResetHint::NotCounterReset;
        assert!(!fewer.detect_reset(&prev));
        // A populated bucket missing; an empty one may go.
        let gone = exp(1, (0.001, 2.0), &[1.0], &[3.0, 5.0]);
        assert!(gone.detect_reset(&prev));
        let mut prev_empty_bucket = prev.clone();
        prev_empty_bucket.positive_spans = vec![span(0, 3)].into();
        prev_empty_bucket.positive_buckets.push(0.0);
        assert!(!more_plain().detect_reset(&prev_empty_bucket));
        // Higher resolution means a reset; lower resolution merges the previous buckets.
        assert!(exp(2, (0.001, 2.0), &[1.0, 3.0], &[3.0]).detect_reset(&prev));
        let coarse = exp(0, (0.001, 2.0), &[1.0, 2.0], &[3.0]);
        assert!(!coarse.detect_reset(&prev));
        let coarse_less = exp(0, (0.001, 2.0), &[0.5, 2.5], &[3.0]);
        assert!(coarse_less.detect_reset(&prev));
        // Zero threshold: lower is a reset; higher swallows buckets into the zero count.
        assert!(exp(1, (0.0001, 2.0), &[1.0, 2.0], &[3.0]).detect_reset(&prev));
        let mut wider = exp(1, (0.0, 0.0), &[], &[]);
        wider.zero_threshold = 1.0;
        wider.zero_count = 6.0;
        wider.positive_spans = vec![span(1, 1)].into();
        wider.positive_buckets = vec![2.0];
        wider.count = 8.0;
        assert!(!wider.detect_reset(&prev));
        wider.zero_count = 5.0;
        assert!(wider.detect_reset(&prev));
        // A count going down is a reset whatever the buckets say.
        let mut lower_count = more_plain();
        lower_count.count = 1.0;
        assert!(lower_count.detect_reset(&prev));
    }

    fn more_plain() -> FloatHistogram {
        exp(1, (0.001, 2.0), &[1.0, 3.0], &[3.0])
    }

    #[test]
    fn detect_reset_with_custom_buckets() {
        let prev = custom(&[1.0, 5.0], &[1.0, 2.0, 3.0]);
        assert!(!custom(&[1.0, 5.0], &[1.0, 2.0, 4.0]).detect_reset(&prev));
        assert!(custom(&[1.0, 5.0], &[1.0, 1.0, 4.0]).detect_reset(&prev));
        assert!(custom(&[1.0], &[1.0, 9.0]).detect_reset(&exp(0, (0.0, 0.0), &[1.0], &[])));
        assert!(exp(0, (0.0, 0.0), &[9.0], &[]).detect_reset(&prev));
        // Other bounds: compared at the shared bounds 1 and +Inf (cumulatively between).
        assert!(!custom(&[1.0, 10.0], &[1.0, 2.0, 3.0]).detect_reset(&prev));
        assert!(custom(&[1.0, 10.0], &[0.0, 3.0, 4.0]).detect_reset(&prev));
        assert!(custom(&[1.0, 10.0], &[2.0, 1.0, 3.5]).detect_reset(&prev));
    }

    #[test]
    fn equals_compares_bits_and_layout() {
        let a = exp(0, (0.001, 2.0), &[1.0, 2.0], &[]);
        let mut b = a.clone();
        b.counter_reset_hint = CounterResetHint::Gauge;
        assert!(a.equals(&b));
        b.positive_spans = vec![span(0, 0), span(0, 2)].into();
        assert!(a.equals(&b), "zero-length spans fold away");
        b.positive_spans = vec![span(0, 1), span(0, 1)].into();
        assert!(!a.equals(&b), "two adjacent spans are another layout");
        let mut nan = a.clone();
        nan.sum = f64::NAN;
        assert!(nan.equals(&nan.clone()));
        let mut other_zero = a.clone();
        other_zero.zero_threshold = 0.01;
        assert!(!a.equals(&other_zero));
        let c = custom(&[1.0], &[1.0]);
        assert!(!c.equals(&custom(&[2.0], &[1.0])));
    }

    #[test]
    fn kahan_add_keeps_what_plain_addition_loses() {
        let big = exp(0, (0.0, 0.0), &[1e16], &[]);
        let one = exp(0, (0.0, 0.0), &[1.0], &[]);
        let mut plain = big.clone();
        let mut kahan = big.clone();
        let mut comp = None;
        for _ in 0..10 {
            plain.add(&one).unwrap();
            kahan.kahan_add(&one, &mut comp).unwrap();
        }
        assert_eq!(plain.positive_buckets, vec![1e16]);
        let comp = comp.unwrap();
        assert_eq!(comp.positive_buckets, vec![10.0]);
        kahan.add(&comp).unwrap();
        assert_eq!(kahan.positive_buckets, vec![1e16 + 10.0]);
        assert_eq!(kahan.count, 1e16 + 10.0);
        // Across schemas the compensation follows the buckets.
        let mut fine = exp(1, (0.0, 0.0), &[1e16, 1.0, 1.0], &[]);
        let mut comp = None;
        let coarse = exp(0, (0.0, 0.0), &[1.0, 1.0], &[]);
        fine.kahan_add(&coarse, &mut comp).unwrap();
        fine.kahan_add(&coarse, &mut comp).unwrap();
        let comp = comp.unwrap();
        assert_eq!((fine.schema, comp.schema), (0, 0));
        assert_eq!(comp.positive_spans, fine.positive_spans);
        assert_eq!(comp.positive_buckets, vec![2.0, 0.0]);
        fine.add(&comp).unwrap();
        assert_eq!(positive(&fine), vec![(0, 1e16 + 2.0), (1, 4.0)]);
    }

    #[test]
    fn kahan_inc_compensates() {
        let (s, c) = kahan_inc(1.0, 1e16, 0.0);
        assert_eq!((s, c), (1e16, 1.0));
        let (s, c) = kahan_inc(f64::MAX, f64::MAX, 5.0);
        assert_eq!((s, c), (f64::INFINITY, 0.0));
    }
}
