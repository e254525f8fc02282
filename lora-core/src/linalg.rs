//! Small dense linear algebra on the host, in f64: what combining adapters needs (a thin QR and
//! the SVD of a small square matrix). The sizes are adapter ranks (tens), so plain exact methods
//! are fast enough and need no dependency.

use burn::prelude::*;

use crate::error::Result;
use crate::io::HostTensor;

/// A row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }

    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.set(j, i, self.at(i, j));
            }
        }
        t
    }

    pub fn matmul(&self, other: &Self) -> Self {
        let mut out = Self::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                if a == 0.0 {
                    continue;
                }
                for j in 0..other.cols {
                    out.data[i * other.cols + j] += a * other.at(k, j);
                }
            }
        }
        out
    }

    fn column_dot(&self, p: usize, q: usize) -> f64 {
        (0..self.rows).map(|k| self.at(k, p) * self.at(k, q)).sum()
    }
}

/// Thin QR by modified Gram-Schmidt, each column orthogonalised twice ("twice is enough"):
/// `a = q·r` with `q` `[m, n]` (orthonormal columns; a column that depends on earlier ones is
/// zero) and `r` `[n, n]` upper triangular.
pub(crate) fn thin_qr(a: &Mat) -> (Mat, Mat) {
    let (m, n) = (a.rows, a.cols);
    let mut q = a.clone();
    let mut r = Mat::zeros(n, n);
    for j in 0..n {
        let original = q.column_dot(j, j).sqrt();
        for _ in 0..2 {
            for i in 0..j {
                let dot = q.column_dot(i, j);
                r.set(i, j, r.at(i, j) + dot);
                for k in 0..m {
                    q.set(k, j, q.at(k, j) - dot * q.at(k, i));
                }
            }
        }
        let norm = q.column_dot(j, j).sqrt();
        let independent = norm > 1e-12 * original && norm > 0.0;
        r.set(j, j, if independent { norm } else { 0.0 });
        for k in 0..m {
            q.set(k, j, if independent { q.at(k, j) / norm } else { 0.0 });
        }
    }
    (q, r)
}

/// Thin SVD by one-sided Jacobi rotations: `m = u·diag(s)·vᵀ` with `k = min(rows, cols)`
/// singular values, descending; `u` `[rows, k]`, `v` `[cols, k]`. Columns of `u` for zero
/// singular values are zero.
pub(crate) fn svd(m: &Mat) -> (Mat, Vec<f64>, Mat) {
    if m.rows < m.cols {
        let (u, s, v) = svd(&m.transpose());
        return (v, s, u);
    }
    let n = m.cols;
    let mut w = m.clone();
    let mut v = Mat::zeros(n, n);
    (0..n).for_each(|i| v.set(i, i, 1.0));
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) =
                    (w.column_dot(p, p), w.column_dot(q, q), w.column_dot(p, q));
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                // The rotation that makes columns p and q orthogonal.
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for mat in [&mut w, &mut v] {
                    for k in 0..mat.rows {
                        let (xp, xq) = (mat.at(k, p), mat.at(k, q));
                        mat.set(k, p, c * xp - s * xq);
                        mat.set(k, q, s * xp + c * xq);
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    let norms: Vec<f64> = (0..n).map(|j| w.column_dot(j, j).sqrt()).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]));
    let (mut u, mut vs) = (Mat::zeros(w.rows, n), Mat::zeros(n, n));
    let mut s = Vec::with_capacity(n);
    for (dst, &src) in order.iter().enumerate() {
        let sigma = norms[src];
        s.push(sigma);
        for k in 0..w.rows {
            u.set(
                k,
                dst,
                if sigma > 0.0 {
                    w.at(k, src) / sigma
                } else {
                    0.0
                },
            );
        }
        for k in 0..n {
            vs.set(k, dst, v.at(k, src));
        }
    }
    (u, s, vs)
}

/// A device tensor on the host, in f64.
pub(crate) fn to_mat(t: Tensor<2>, key: &str) -> Result<Mat> {
    let h = HostTensor::from_tensor(t, key)?;
    Ok(Mat {
        rows: h.shape[0],
        cols: h.shape[1],
        data: h.data.iter().map(|&v| v as f64).collect(),
    })
}

/// A host matrix as an f32 tensor on `device`.
pub(crate) fn to_tensor(m: &Mat, device: &Device, key: &str) -> Result<Tensor<2>> {
    HostTensor {
        shape: vec![m.rows, m.cols],
        data: m.data.iter().map(|&v| v as f32).collect(),
    }
    .to_tensor(device, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut x = seed;
        let data = (0..rows * cols)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        Mat { rows, cols, data }
    }

    fn max_diff(a: &Mat, b: &Mat) -> f64 {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn qr_reconstructs_and_is_orthonormal() {
        let a = mat(9, 4, 1);
        let (q, r) = thin_qr(&a);
        assert!(max_diff(&q.matmul(&r), &a) < 1e-12);
        let mut eye = Mat::zeros(4, 4);
        (0..4).for_each(|i| eye.set(i, i, 1.0));
        assert!(max_diff(&q.transpose().matmul(&q), &eye) < 1e-12);
    }

    #[test]
    fn svd_of_a_wide_matrix_reconstructs() {
        let m = mat(3, 7, 4);
        let (u, s, v) = svd(&m);
        assert_eq!((u.rows, u.cols, s.len(), v.rows, v.cols), (3, 3, 3, 7, 3));
        let mut us = u.clone();
        for k in 0..3 {
            for (j, sigma) in s.iter().enumerate() {
                us.set(k, j, u.at(k, j) * sigma);
            }
        }
        assert!(max_diff(&us.matmul(&v.transpose()), &m) < 1e-12);
    }

    #[test]
    fn svd_reconstructs_with_sorted_values_and_rank_deficiency() {
        // Rank 2 in a 4×4 matrix: two zero singular values.
        let m = mat(4, 2, 2).matmul(&mat(2, 4, 3));
        let (u, s, v) = svd(&m);
        assert!(s.windows(2).all(|p| p[0] >= p[1]));
        assert!(s[2] < 1e-12 && s[3] < 1e-12);
        let mut us = u.clone();
        for k in 0..4 {
            for (j, sigma) in s.iter().enumerate() {
                us.set(k, j, u.at(k, j) * sigma);
            }
        }
        assert!(max_diff(&us.matmul(&v.transpose()), &m) < 1e-12);
    }
}
