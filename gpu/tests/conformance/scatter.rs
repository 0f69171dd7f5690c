//! Scattered weighted adds (`Backend::add_scattered`): a mixture of experts' sum of its
//! experts' outputs onto their rows.

use super::*;
use lowbit_gpu::ScatteredRows;

/// A mixture of experts' sum: parts of different sizes, rows in any order, a row in several
/// parts and some in none, an empty part; against float64, adding part after part.
pub(crate) fn scattered_adds_match_float64(be: &dyn Backend, b: Bounds) {
    let mut r = rng(31);
    let (rows, cols) = (9, 37);
    let base = random(&mut r, rows * cols);
    let tb = upload(be, rows, cols, &base);
    let targets: [&[usize]; 4] = [&[4, 0, 7], &[], &[0], &[8, 1, 4, 2, 6]];
    let parts: Vec<(Vec<f32>, Vec<f32>)> = targets
        .iter()
        .map(|t| (random(&mut r, t.len() * cols), random(&mut r, t.len())))
        .collect();
    let xs: Vec<Tensor> = parts
        .iter()
        .zip(targets)
        .map(|((x, _), t)| upload(be, t.len(), cols, x))
        .collect();
    let scattered: Vec<ScatteredRows<'_>> = xs
        .iter()
        .zip(targets)
        .zip(&parts)
        .map(|((x, rows), (_, weights))| ScatteredRows { x, rows, weights })
        .collect();
    let got = be
        .download(&be.add_scattered(&tb, &scattered).expect("add_scattered"))
        .expect("download");
    let mut want: Vec<f64> = base.iter().map(|&v| f64::from(v)).collect();
    for ((x, w), t) in parts.iter().zip(targets) {
        for (i, &row) in t.iter().enumerate() {
            for c in 0..cols {
                want[row * cols + c] += f64::from(w[i]) * f64::from(x[i * cols + c]);
            }
        }
    }
    let e = rel_err(&got, &want);
    assert!(e < b.elementwise * 4.0, "add_scattered: {e}");
    let untouched = be
        .download(&be.add_scattered(&tb, &[]).expect("no parts"))
        .expect("download");
    assert_eq!(untouched, base, "no parts: a copy of the base");
    let twice = ScatteredRows {
        x: &xs[3],
        rows: &[8, 1, 8, 2, 6],
        weights: &parts[3].1,
    };
    assert!(
        be.add_scattered(&tb, &[twice]).is_err(),
        "a row twice in a part"
    );
    let outside = ScatteredRows {
        x: &xs[2],
        rows: &[rows],
        weights: &parts[2].1,
    };
    assert!(
        be.add_scattered(&tb, &[outside]).is_err(),
        "a row outside the base"
    );
    let short = ScatteredRows {
        x: &xs[0],
        rows: &[1, 2],
        weights: &[1.0, 1.0],
    };
    assert!(
        be.add_scattered(&tb, &[short]).is_err(),
        "fewer rows than the part has"
    );
}
