//! Which token windows make up each training batch, as a pure function of (seed, step).
//!
//! An epoch is one pass over the training tokens in windows of T+1 tokens (T inputs, T shifted
//! targets). Each epoch draws a random phase in [0, T) and a random order of the windows
//! starting at phase + i·T, both from (seed, epoch) alone; a batch takes the next B windows.
//! Nothing needs saving to resume: step s is always the same batch.

use crate::ops::IGNORE;
use crate::rng::Rng;
use anyhow::{bail, Result};

pub struct Sampler {
    seed: u64,
    b: usize,
    t: usize,
    n_tokens: usize,
    windows_per_epoch: usize,
    cached: Option<(u64, usize, Vec<u32>)>,
}

impl Sampler {
    pub fn new(seed: u64, n_tokens: usize, b: usize, t: usize) -> Result<Self> {
        // With phase ≤ T-1, at least this many full windows fit: floor((N - T) / T).
        let windows = n_tokens.saturating_sub(t) / t;
        if windows < b {
            bail!(
                "the training split has {n_tokens} tokens: too few for one batch of {b} windows of {t}+1 tokens; lower --batch or --seq-len, or train on more text"
            );
        }
        Ok(Sampler {
            seed,
            b,
            t,
            n_tokens,
            windows_per_epoch: windows,
            cached: None,
        })
    }

    /// Optimizer steps in one epoch (windows that do not fill a batch are left for later epochs).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.windows_per_epoch / self.b) as u64
    }

    fn plan(&mut self, epoch: u64) -> &(u64, usize, Vec<u32>) {
        if self.cached.as_ref().map(|c| c.0) != Some(epoch) {
            let mut rng = Rng::derive(self.seed, &format!("epoch {epoch}"));
            let phase = rng.below(self.t as u64) as usize;
            let mut order: Vec<u32> = (0..self.windows_per_epoch as u32).collect();
            rng.shuffle(&mut order);
            self.cached = Some((epoch, phase, order));
        }
        self.cached.as_ref().unwrap()
    }

    /// Inputs and targets (B, T) of the batch at 0-based `step`.
    pub fn batch(&mut self, step: u64, tokens: &[u32]) -> (Vec<u32>, Vec<u32>) {
        assert_eq!(tokens.len(), self.n_tokens);
        let spe = self.steps_per_epoch();
        let (epoch, k) = (step / spe, (step % spe) as usize);
        let (b, t) = (self.b, self.t);
        let (_, phase, order) = self.plan(epoch).clone();
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for &w in &order[k * b..(k + 1) * b] {
            let s = phase + w as usize * t;
            inputs.extend_from_slice(&tokens[s..s + t]);
            targets.extend_from_slice(&tokens[s + 1..s + t + 1]);
        }
        (inputs, targets)
    }
}

/// How many targets [`eval_windows`] scores in a stream of `n_tokens`: every token but the
/// first, which no window predicts.
pub fn eval_targets(n_tokens: usize) -> usize {
    n_tokens.saturating_sub(1)
}

/// Windows covering every target of `tokens` exactly once: (inputs, targets) of length T each,
/// targets already counted by an earlier window set to IGNORE; short text is padded (IGNORE).
pub fn eval_windows(tokens: &[u32], t: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let n_targets = tokens.len().saturating_sub(1);
    let mut out = vec![];
    let mut covered = 0; // targets tokens[1..=covered] are scored
    while covered < n_targets {
        let start = if covered + t <= n_targets {
            covered
        } else {
            n_targets.saturating_sub(t)
        };
        let mut inp = vec![0u32; t];
        let mut tgt = vec![IGNORE; t];
        for i in 0..t {
            let pos = start + i; // input token index; its target is pos + 1
            if pos + 1 > n_targets {
                break;
            }
            inp[i] = tokens[pos];
            if pos + 1 > covered {
                tgt[i] = tokens[pos + 1];
            }
        }
        covered = (start + t).min(n_targets);
        out.push((inp, tgt));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_windows_of_the_stream_and_deterministic() {
        let tokens: Vec<u32> = (0..1000).collect();
        let mut s = Sampler::new(7, tokens.len(), 4, 10).unwrap();
        assert_eq!(s.steps_per_epoch(), 99 / 4);
        let (i, t) = s.batch(3, &tokens);
        for w in 0..4 {
            for k in 0..10 {
                assert_eq!(
                    t[w * 10 + k],
                    i[w * 10 + k] + 1,
                    "targets are inputs shifted by one"
                );
            }
            assert_eq!(
                (i[w * 10] as usize) % 10,
                (i[0] as usize) % 10,
                "one phase per epoch"
            );
        }
        let mut s2 = Sampler::new(7, tokens.len(), 4, 10).unwrap();
        assert_eq!(s2.batch(3, &tokens), (i.clone(), t));
        // Within an epoch no window repeats.
        let mut starts: Vec<u32> = (0..s.steps_per_epoch())
            .flat_map(|st| {
                s.batch(st, &tokens)
                    .0
                    .chunks(10)
                    .map(|c| c[0])
                    .collect::<Vec<_>>()
            })
            .collect();
        let n = starts.len();
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), n);
        assert!(Sampler::new(7, 30, 4, 10).is_err());
    }

    #[test]
    fn eval_windows_score_every_target_exactly_once() {
        for (n, t) in [(1000, 10), (25, 10), (5, 10), (11, 10), (2, 1), (21, 10)] {
            let tokens: Vec<u32> = (0..n as u32).collect();
            let mut seen = vec![0; n];
            for (inp, tgt) in eval_windows(&tokens, t) {
                assert_eq!(inp.len(), t);
                for i in 0..t {
                    if tgt[i] != IGNORE {
                        assert_eq!(tgt[i], inp[i] + 1, "n {n} t {t}: target follows its input");
                        seen[tgt[i] as usize] += 1;
                    }
                }
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&c| c == 1), "n {n} t {t}: {seen:?}");
            assert_eq!(seen.iter().sum::<usize>(), eval_targets(n), "n {n} t {t}");
        }
    }
}
