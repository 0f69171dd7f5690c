//! KL divergence and top-1 agreement of a (quantized) model against a base model's logits.
//!
//! Full logits of a perplexity run are gigabytes (23k positions × 49k vocabulary), so the base
//! file keeps, for every scored position, the base model's [`TOP_K`] most likely tokens with
//! their log-probabilities. KL(P‖Q) is then summed over those tokens plus one bucket holding
//! the rest of the mass on both sides — by the log-sum inequality a lower bound of the full KL,
//! tight when the top tokens carry nearly all of P's mass (they do here: see the `rest_mass`
//! figure reported).

use crate::model::{ModelError, Result};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Base tokens kept per position.
pub const TOP_K: usize = 64;
const MAGIC: &[u8; 8] = b"LBKLv001";

/// Log-softmax of one row, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::file(path.display(), e.to_string())
}

/// Writes the base model's top tokens, one record per scored position.
pub struct BaseWriter {
    out: BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    pub positions: u64,
}

impl BaseWriter {
    /// Creates `path`; `fingerprint` identifies the scored text (tokens, ctx) so a comparison
    /// on different text is refused.
    pub fn create(path: &Path, fingerprint: u64) -> Result<Self> {
        let f =
            std::fs::File::create(path).map_err(|e| io_err(path, format!("cannot create: {e}")))?;
        let mut out = BufWriter::new(f);
        out.write_all(MAGIC)
            .and_then(|_| out.write_all(&fingerprint.to_le_bytes()))
            .map_err(|e| io_err(path, e))?;
        Ok(Self {
            out,
            path: path.to_path_buf(),
            positions: 0,
        })
    }

    /// Records one row of base logits.
    pub fn push(&mut self, logits: &[f32]) -> Result<()> {
        let lp = log_softmax(logits);
        let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
        let k = TOP_K.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
        let mut rec = Vec::with_capacity(k * 8);
        for &i in &idx {
            rec.extend_from_slice(&i.to_le_bytes());
            rec.extend_from_slice(&(lp[i as usize] as f32).to_le_bytes());
        }
        self.out
            .write_all(&rec)
            .map_err(|e| io_err(&self.path, e))?;
        self.positions += 1;
        Ok(())
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<u64> {
        self.out.flush().map_err(|e| io_err(&self.path, e))?;
        Ok(self.positions)
    }
}

/// Compares rows of logits with a base file, position by position.
pub struct KlComparer {
    input: BufReader<std::fs::File>,
    path: std::path::PathBuf,
    sum_kl: f64,
    sum_rest: f64,
    top1_same: u64,
    positions: u64,
}

/// What a comparison measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KlReport {
    pub positions: u64,
    /// Mean KL(base ‖ this) in nats.
    pub mean_kl: f64,
    /// Fraction of positions whose most likely token is the base model's.
    pub top1_agreement: f64,
    /// Mean probability mass of the base model outside its stored top tokens.
    pub rest_mass: f64,
}

impl KlComparer {
    /// Opens a base file and checks it was made on the same text.
    pub fn open(path: &Path, fingerprint: u64) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| io_err(path, format!("cannot open: {e}")))?;
        let mut input = BufReader::new(f);
        let mut head = [0u8; 16];
        input
            .read_exact(&mut head)
            .map_err(|e| io_err(path, format!("not a lowbit KL base file: {e}")))?;
        if &head[..8] != MAGIC {
            return Err(io_err(
                path,
                "not a lowbit KL base file (bad magic); make one with --save-kl-base",
            ));
        }
        let fp = u64::from_le_bytes(head[8..16].try_into().map_err(|e| io_err(path, e))?);
        if fp != fingerprint {
            return Err(io_err(
                path,
                "was made on a different text or --ctx/--chunks; make it again with the same ones",
            ));
        }
        Ok(Self {
            input,
            path: path.to_path_buf(),
            sum_kl: 0.0,
            sum_rest: 0.0,
            top1_same: 0,
            positions: 0,
        })
    }

    /// Compares the next row.
    pub fn push(&mut self, logits: &[f32]) -> Result<()> {
        let mut rec = vec![0u8; TOP_K.min(logits.len()) * 8];
        self.input.read_exact(&mut rec).map_err(|e| {
            io_err(
                &self.path,
                format!("ends before position {}: {e}", self.positions),
            )
        })?;
        let lq = log_softmax(logits);
        let (mut kl, mut p_top, mut q_top) = (0.0f64, 0.0f64, 0.0f64);
        let mut base_top1 = u32::MAX;
        for (n, c) in rec.chunks_exact(8).enumerate() {
            let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let lp = f64::from(f32::from_le_bytes([c[4], c[5], c[6], c[7]]));
            let Some(&lqi) = lq.get(id as usize) else {
                return Err(io_err(
                    &self.path,
                    format!("token id {id} outside this model's vocabulary"),
                ));
            };
            if n == 0 {
                base_top1 = id;
            }
            let p = lp.exp();
            kl += p * (lp - lqi);
            p_top += p;
            q_top += lqi.exp();
        }
        let (p_rest, q_rest) = ((1.0 - p_top).max(0.0), (1.0 - q_top).max(1e-30));
        if p_rest > 0.0 {
            kl += p_rest * (p_rest.ln() - q_rest.ln());
        }
        let own_top1 = lq
            .iter()
            .enumerate()
            .fold((0usize, f64::NEG_INFINITY), |b, (i, &v)| {
                if v > b.1 {
                    (i, v)
                } else {
                    b
                }
            })
            .0;
        self.top1_same += u64::from(own_top1 as u32 == base_top1);
        self.sum_kl += kl;
        self.sum_rest += p_rest;
        self.positions += 1;
        Ok(())
    }

    /// The means.
    pub fn report(&self) -> KlReport {
        let n = self.positions.max(1) as f64;
        KlReport {
            positions: self.positions,
            mean_kl: self.sum_kl / n,
            top1_agreement: self.top1_same as f64 / n,
            rest_mass: self.sum_rest / n,
        }
    }
}

/// Identifies a perplexity run's input: the token ids and the window layout.
pub fn fingerprint(tokens: &[u32], ctx: usize, windows: usize) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(ctx as u64);
    feed(windows as u64);
    for &t in &tokens[..(ctx * windows).min(tokens.len())] {
        feed(u64::from(t));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_have_zero_kl_and_full_agreement_and_shifted_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("lowbit-kl-{}", std::process::id()));
        let rows: Vec<Vec<f32>> = (0..5)
            .map(|r| {
                (0..200)
                    .map(|i| ((i * 37 + r * 11) % 101) as f32 * 0.05)
                    .collect()
            })
            .collect();
        let mut w = BaseWriter::create(&dir, 42).unwrap();
        for r in &rows {
            w.push(r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 5);
        let mut same = KlComparer::open(&dir, 42).unwrap();
        let mut other = KlComparer::open(&dir, 42).unwrap();
        for r in &rows {
            same.push(r).unwrap();
            let flat: Vec<f32> = r.iter().map(|v| v * 0.5).collect();
            other.push(&flat).unwrap();
        }
        let s = same.report();
        assert!(s.mean_kl.abs() < 1e-6 && s.top1_agreement == 1.0, "{s:?}");
        let o = other.report();
        assert!(o.mean_kl > 1e-3, "{o:?}");
        assert!(KlComparer::open(&dir, 43).is_err());
        std::fs::remove_file(&dir).unwrap();
    }
}
