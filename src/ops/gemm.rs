//! Strided single-precision GEMM on the CPU, through the `gemm` crate (allowed for the CPU
//! backend by ARCHITECTURE.md; the CUDA kernels are handwritten).
//!
//! `c (m×n) = a (m×k) · b (k×n)` or `c += a · b`, each matrix given by a slice plus its row and
//! column strides, so transposes and head slices are free. The crate splits work over output
//! tiles only (never over k), so results do not depend on the number of threads that run it.

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major (rows × cols) matrix at the start of `data`.
    pub fn rm(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// Sub-view starting at `offset` with row stride `rs`, as used for head slices of (B,T,C).
    pub fn strided(data: &'a [f32], offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Mat {
            data,
            offset,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }
    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm: {what} view reaches element {last} of a slice of {}",
                self.data.len()
            );
        }
    }
}

/// A mutable strided matrix view.
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatMut<'a> {
    pub fn rm(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    pub fn strided(
        data: &'a mut [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
    ) -> Self {
        MatMut {
            data,
            offset,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }
    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        MatMut {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// Whether a GEMM of this size is worth splitting across threads.
fn parallelism(m: usize, n: usize, k: usize, allow: bool) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if allow && threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// c = alpha * a · b (accumulate = false) or c += alpha * a · b (accumulate = true).
/// `parallel` lets the GEMM use the rayon pool; pass false when already inside a parallel loop.
pub fn sgemm(c: MatMut, a: Mat, b: Mat, alpha: f32, accumulate: bool, parallel: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm: ({}x{})·({}x{}) into ({}x{})",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        m,
        n
    );
    a.check("lhs");
    b.check("rhs");
    if m > 0 && n > 0 {
        let last = c.offset + (m - 1) * c.rs + (n - 1) * c.cs;
        assert!(
            last < c.data.len(),
            "gemm: dst view reaches element {last} of a slice of {}",
            c.data.len()
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c.data[c.offset + i * c.rs + j * c.cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: every view was bounds-checked above against its slice; dst does not alias the
    // inputs (it is a &mut borrow while they are shared borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr().add(c.offset),
            c.cs as isize,
            c.rs as isize,
            accumulate,
            a.data.as_ptr().add(a.offset),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.offset),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism(m, n, k, parallel),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
            }
        }
        c
    }

    #[test]
    fn strided_gemm_matches_naive_at_ragged_shapes() {
        let mut rng = Rng::new(1);
        for &(m, k, n) in &[(1, 1, 1), (70, 45, 33), (37, 8, 129), (3, 200, 5)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let want = naive(&a, &b, m, k, n);
            let mut c = vec![1.0f32; m * n];
            sgemm(
                MatMut::rm(&mut c, m, n),
                Mat::rm(&a, m, k),
                Mat::rm(&b, k, n),
                1.0,
                true,
                true,
            );
            for i in 0..m * n {
                let tol = 1e-4 * (k as f64).sqrt() * 4.0;
                assert!(
                    (c[i] as f64 - 1.0 - want[i]).abs() < tol,
                    "({m},{k},{n}) element {i}: {} vs {}",
                    c[i] - 1.0,
                    want[i]
                );
            }
            // Transposed views: cᵀ = bᵀ aᵀ.
            let mut ct = vec![0.0f32; n * m];
            sgemm(
                MatMut::rm(&mut ct, n, m),
                Mat::rm(&b, k, n).t(),
                Mat::rm(&a, m, k).t(),
                2.0,
                false,
                false,
            );
            for i in 0..m {
                for j in 0..n {
                    let tol = 2e-4 * (k as f64).sqrt() * 4.0;
                    assert!((ct[j * m + i] as f64 - 2.0 * want[i * n + j]).abs() < tol);
                }
            }
        }
    }
}
