//! lowbit's weight formats: one enum, with names, sizes and fallbacks.

use std::fmt;

/// Values sharing one scale (and min) in the 4-bit formats, along K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupSize {
    G32 = 32,
    G64 = 64,
    G128 = 128,
}

impl GroupSize {
    /// Values per group.
    pub fn get(self) -> usize {
        self as usize
    }

    /// All sizes, largest first (the fallback order).
    pub const ALL_DESC: [GroupSize; 3] = [GroupSize::G128, GroupSize::G64, GroupSize::G32];

    fn from_usize(g: usize) -> Option<Self> {
        match g {
            32 => Some(Self::G32),
            64 => Some(Self::G64),
            128 => Some(Self::G128),
            _ => None,
        }
    }
}

/// Values per block of activations and of every quantized weight format: the unit of the
/// integer dot products. Every group size is a multiple of it.
pub const QBLOCK: usize = 32;

/// The 16 levels of a non-linear 4-bit format: value `d·T[q]` for code `q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codebook {
    /// Twice FP4 E2M1's values (`kvalues_mxfp4`): with a power-of-two scale, MXFP4 exactly.
    Fp4,
    /// IQ4_NL / IQ4_XS's levels (`kvalues_iq4nl`).
    Iq4nl,
}

impl Codebook {
    /// The levels, indexed by the 4-bit code.
    pub const fn levels(self) -> &'static [i8; 16] {
        match self {
            Self::Fp4 => &[0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12],
            Self::Iq4nl => &[
                -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
            ],
        }
    }

    /// The level of largest magnitude (the one a group's extreme maps to).
    pub fn extreme(self) -> i8 {
        match self {
            Self::Fp4 => -12,
            Self::Iq4nl => -127,
        }
    }

    /// The code whose level is nearest `v` (in units of the scale); ties go to the level of
    /// smaller magnitude, NaN to the code of 0. A binary search over the levels in order
    /// (quantizers call it for every value, dozens of times per group when searching).
    pub fn nearest(self, v: f32) -> u8 {
        if v.is_nan() {
            return self.zero_code();
        }
        let v = v.clamp(-1024.0, 1024.0);
        let sorted = self.sorted();
        let i = sorted.partition_point(|&(l, _)| f32::from(l) < v);
        let (Some(&(lo, lo_code)), Some(&(hi, hi_code))) =
            (sorted.get(i.wrapping_sub(1)), sorted.get(i))
        else {
            // Below the lowest level or at or above the highest.
            return if i == 0 {
                sorted[0].1
            } else {
                sorted[sorted.len() - 1].1
            };
        };
        let (below, above) = (v - f32::from(lo), f32::from(hi) - v);
        if below < above || (below == above && lo.unsigned_abs() <= hi.unsigned_abs()) {
            lo_code
        } else {
            hi_code
        }
    }

    /// The distinct levels in ascending order with their codes (FP4's 0 by its code 0).
    fn sorted(self) -> &'static [(i8, u8)] {
        match self {
            Self::Fp4 => &[
                (-12, 15),
                (-8, 14),
                (-6, 13),
                (-4, 12),
                (-3, 11),
                (-2, 10),
                (-1, 9),
                (0, 0),
                (1, 1),
                (2, 2),
                (3, 3),
                (4, 4),
                (6, 5),
                (8, 6),
                (12, 7),
            ],
            Self::Iq4nl => &[
                (-127, 0),
                (-104, 1),
                (-83, 2),
                (-65, 3),
                (-49, 4),
                (-35, 5),
                (-22, 6),
                (-10, 7),
                (1, 8),
                (13, 9),
                (25, 10),
                (38, 11),
                (53, 12),
                (69, 13),
                (89, 14),
                (113, 15),
            ],
        }
    }

    /// The code of the level nearest 0.
    fn zero_code(self) -> u8 {
        match self {
            Self::Fp4 => 0,
            Self::Iq4nl => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fp4 => "fp4",
            Self::Iq4nl => "iq4nl",
        }
    }
}

/// How one weight tensor is stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    F32,
    F16,
    /// int8, symmetric, one f16 scale per 32 values: `x = d·q`.
    Q8,
    /// int4, symmetric, one f16 scale per group: `x = d·(q − 8)`, `q ∈ 0..16`.
    Q4(GroupSize),
    /// int4 with f16 scale and f16 min per group: `x = d·q + m`, `q ∈ 0..16`.
    Q4M(GroupSize),
    /// 4-bit codes into a [`Codebook`], one f16 scale per 32: `x = d·T[q]`, `q ∈ 0..16`.
    Lut4(Codebook),
}

/// The names `QuantFormat::parse` accepts, for error messages.
pub const FORMAT_NAMES: &str =
    "f32, f16, q8, q4 (= q4g32), q4g64, q4g128, q4m (= q4mg32), q4mg64, q4mg128, fp4, iq4nl";

impl QuantFormat {
    /// Parses a format name (`q4g64`, `q8`, …).
    pub fn parse(name: &str) -> Result<Self, String> {
        let n = name.trim().to_ascii_lowercase();
        let group = |rest: &str| -> Option<GroupSize> {
            if rest.is_empty() {
                return Some(GroupSize::G32);
            }
            GroupSize::from_usize(rest.strip_prefix('g')?.parse().ok()?)
        };
        let f = match n.as_str() {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "q8" => Some(Self::Q8),
            "fp4" => Some(Self::Lut4(Codebook::Fp4)),
            "iq4nl" => Some(Self::Lut4(Codebook::Iq4nl)),
            _ => {
                if let Some(rest) = n.strip_prefix("q4m") {
                    group(rest).map(Self::Q4M)
                } else if let Some(rest) = n.strip_prefix("q4") {
                    group(rest).map(Self::Q4)
                } else {
                    None
                }
            }
        };
        f.ok_or_else(|| format!("unknown format '{name}' (valid: {FORMAT_NAMES})"))
    }

    /// Values sharing one scale (1 for the float formats).
    pub fn group(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q8 | Self::Lut4(_) => QBLOCK,
            Self::Q4(g) | Self::Q4M(g) => g.get(),
        }
    }

    /// Whether it is one of the integer formats.
    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16)
    }

    /// Storage bits per weight, scales and mins included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 32.0,
            Self::F16 => 16.0,
            Self::Q8 => 8.0 + 16.0 / QBLOCK as f64,
            Self::Q4(g) => 4.0 + 16.0 / g.get() as f64,
            Self::Q4M(g) => 4.0 + 32.0 / g.get() as f64,
            Self::Lut4(_) => 4.0 + 16.0 / QBLOCK as f64,
        }
    }

    /// Whether a row of `cols` values splits into whole groups (and whole 32-blocks).
    pub fn fits(self, cols: usize) -> bool {
        match self {
            Self::F32 | Self::F16 => true,
            _ => cols.is_multiple_of(self.group()) && cols.is_multiple_of(QBLOCK),
        }
    }

    /// The nearest format that fits rows of `cols`: a smaller group of the same kind, then
    /// Q8, then F16.
    pub fn fallback_for(self, cols: usize) -> Self {
        if self.fits(cols) {
            return self;
        }
        let same_kind = |make: fn(GroupSize) -> Self| {
            GroupSize::ALL_DESC
                .into_iter()
                .map(make)
                .find(|f| f.group() < self.group() && f.fits(cols))
        };
        let smaller = match self {
            Self::Q4(_) => same_kind(Self::Q4),
            Self::Q4M(_) => same_kind(Self::Q4M),
            _ => None,
        };
        smaller.unwrap_or(if Self::Q8.fits(cols) {
            Self::Q8
        } else {
            Self::F16
        })
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::F32 => write!(f, "f32"),
            Self::F16 => write!(f, "f16"),
            Self::Q8 => write!(f, "q8"),
            Self::Q4(g) => write!(f, "q4g{}", g.get()),
            Self::Q4M(g) => write!(f, "q4mg{}", g.get()),
            Self::Lut4(c) => write!(f, "{}", c.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for f in [
            QuantFormat::F32,
            QuantFormat::F16,
            QuantFormat::Q8,
            QuantFormat::Q4(GroupSize::G64),
            QuantFormat::Q4M(GroupSize::G128),
            QuantFormat::Lut4(Codebook::Fp4),
            QuantFormat::Lut4(Codebook::Iq4nl),
        ] {
            assert_eq!(QuantFormat::parse(&f.to_string()).unwrap(), f);
        }
        assert_eq!(
            QuantFormat::parse("Q4").unwrap(),
            QuantFormat::Q4(GroupSize::G32)
        );
        assert_eq!(
            QuantFormat::parse("q4m").unwrap(),
            QuantFormat::Q4M(GroupSize::G32)
        );
        let e = QuantFormat::parse("q3").unwrap_err();
        assert!(e.contains("q3") && e.contains("q4mg64"), "{e}");
        assert!(QuantFormat::parse("q4g48").is_err());
        assert_eq!(
            QuantFormat::parse("FP4").unwrap(),
            QuantFormat::Lut4(Codebook::Fp4)
        );
        // Not an alias: OCP MXFP4's scales are powers of two, fp4's any f16.
        assert!(QuantFormat::parse("mxfp4").is_err());
    }

    #[test]
    fn nearest_levels_round_ties_to_the_smaller_magnitude() {
        let fp4 = Codebook::Fp4;
        let level = |c: u8| fp4.levels()[usize::from(c)];
        for (v, want) in [
            (0.0, 0),
            (-0.0, 0),
            (0.5, 0),
            (-0.5, 0),
            (0.51, 1),
            (5.0, 4),
            (5.01, 6),
            (-10.0, -8),
            (-10.5, -12),
            (100.0, 12),
            (f32::INFINITY, 12),
            (f32::NEG_INFINITY, -12),
        ] {
            assert_eq!(level(fp4.nearest(v)), want, "{v}");
        }
        // 0 has two codes in FP4; the positive one (code 0) is taken, and for NaN too.
        assert_eq!(fp4.nearest(0.0), 0);
        assert_eq!(fp4.nearest(f32::NAN), 0);
        let iq4 = Codebook::Iq4nl;
        assert_eq!(iq4.levels()[usize::from(iq4.nearest(f32::NAN))], 1);
        assert_eq!(iq4.levels()[usize::from(iq4.nearest(7.0))], 1); // 6 from 1, 6 from 13: a tie
        assert_eq!(iq4.levels()[usize::from(iq4.nearest(7.01))], 13);
        assert_eq!(iq4.levels()[usize::from(iq4.nearest(-4.5))], 1); // 5.5 from 1, 5.5 from −10
        assert_eq!(iq4.levels()[usize::from(iq4.nearest(-200.0))], -127);
    }

    /// The binary search gives what a scan of all 16 levels gives, on a fine grid of values.
    #[test]
    fn nearest_equals_a_scan_of_every_level() {
        for book in [Codebook::Fp4, Codebook::Iq4nl] {
            let levels = book.levels();
            for i in -2700..=2700 {
                let v = i as f32 * 0.05;
                let scan = (0..16u8)
                    .min_by(|&a, &b| {
                        let (la, lb) = (levels[usize::from(a)], levels[usize::from(b)]);
                        let (ea, eb) = ((v - f32::from(la)).abs(), (v - f32::from(lb)).abs());
                        ea.total_cmp(&eb)
                            .then(la.unsigned_abs().cmp(&lb.unsigned_abs()))
                    })
                    .unwrap();
                let got = book.nearest(v);
                assert_eq!(
                    levels[usize::from(got)],
                    levels[usize::from(scan)],
                    "{book:?} {v}"
                );
            }
        }
    }

    #[test]
    fn formats_fall_back_to_the_nearest_that_fits() {
        let q4g128 = QuantFormat::Q4(GroupSize::G128);
        assert_eq!(q4g128.fallback_for(1536), q4g128);
        assert_eq!(q4g128.fallback_for(576), QuantFormat::Q4(GroupSize::G64));
        assert_eq!(q4g128.fallback_for(96), QuantFormat::Q4(GroupSize::G32));
        assert_eq!(
            QuantFormat::Q4M(GroupSize::G64).fallback_for(80),
            QuantFormat::F16
        );
        assert_eq!(QuantFormat::Q8.fallback_for(40), QuantFormat::F16);
        assert_eq!(
            QuantFormat::Lut4(Codebook::Iq4nl).fallback_for(48),
            QuantFormat::F16
        );
        for c in [Codebook::Fp4, Codebook::Iq4nl] {
            let extreme = c.levels().iter().map(|l| l.unsigned_abs()).max();
            assert_eq!(extreme, Some(c.extreme().unsigned_abs()), "{c:?}");
        }
        assert!((QuantFormat::Q4(GroupSize::G32).bits_per_weight() - 4.5).abs() < 1e-12);
    }
}
