//! Text generation with a key/value cache: greedy, sampling (temperature, top-k, top-p, seed)
//! and beam search (`num_beams`, `length_penalty`, `no_repeat_ngram_size`, eos), following
//! Hugging Face's `generate`.

use burn::prelude::*;
use lora_core::LoraLayer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::{Gpt2LmHeadModel, KvCache};
use crate::error::{ModelError, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    /// The most likely token (first one on ties).
    Greedy,
    /// Sampling from the (temperature-scaled, top-k and top-p filtered) distribution.
    Sample {
        /// Divides the logits (> 0).
        temperature: f64,
        /// Keep only the k most likely tokens.
        top_k: Option<usize>,
        /// Keep the smallest set whose probability reaches p (0 < p ≤ 1).
        top_p: Option<f64>,
        /// RNG seed, so a run is reproducible.
        seed: u64,
    },
    /// Beam search.
    Beam {
        /// Beams kept per prompt (≥ 1).
        num_beams: usize,
        /// Finished scores are `sum logprob / len^length_penalty`.
        length_penalty: f64,
        /// Stop a prompt as soon as `num_beams` hypotheses have finished.
        early_stopping: bool,
    },
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Token choice.
    pub decoding: Decoding,
    /// Forbid repeating any n-gram of this size (0 = off).
    pub no_repeat_ngram_size: usize,
    /// Stop a sequence at this token (it is kept in the output).
    pub eos_token_id: Option<u32>,
    /// Padding for prompts of unequal length and finished sequences.
    pub pad_token_id: u32,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, GPT-2's eos (50256) as eos and padding.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            decoding: Decoding::Greedy,
            no_repeat_ngram_size: 0,
            eos_token_id: Some(50256),
            pad_token_id: 50256,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(ModelError::InvalidInput(m.to_string()));
        match &self.decoding {
            Decoding::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => {
                if !(*temperature > 0.0 && temperature.is_finite()) {
                    return bad("temperature must be positive");
                }
                if top_k == &Some(0) {
                    return bad("top_k must be at least 1");
                }
                if let Some(p) = top_p
                    && !(*p > 0.0 && *p <= 1.0)
                {
                    return bad("top_p must be in (0, 1]");
                }
            }
            Decoding::Beam {
                num_beams,
                length_penalty,
                ..
            } => {
                if *num_beams == 0 {
                    return bad("num_beams must be at least 1");
                }
                if !length_penalty.is_finite() {
                    return bad("length_penalty must be finite");
                }
            }
            Decoding::Greedy => {}
        }
        Ok(())
    }
}

/// Generated continuations, one per prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New token ids (ending with eos when one was produced).
    pub tokens: Vec<Vec<u32>>,
    /// Model log-probability of each new token (log-softmax of the raw logits).
    pub logprobs: Vec<Vec<f32>>,
    /// Beam search: the normalised score of the returned hypothesis; otherwise the sum of
    /// `logprobs`.
    pub scores: Vec<f32>,
}

fn log_softmax_row(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    row.iter().map(|v| v - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Sets to −∞ every token that would complete an n-gram already present in `seq`.
fn ban_repeated_ngrams(seq: &[u32], n: usize, row: &mut [f32]) {
    if n == 0 || seq.len() + 1 < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for w in seq.windows(n) {
        if &w[..n - 1] == prefix
            && let Some(v) = row.get_mut(w[n - 1] as usize)
        {
            *v = f32::NEG_INFINITY;
        }
    }
}

fn sample(
    row: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: &mut StdRng,
) -> usize {
    let mut idx: Vec<usize> = (0..row.len()).filter(|&i| row[i].is_finite()).collect();
    if idx.is_empty() {
        return argmax(row);
    }
    let scaled: Vec<f64> = row.iter().map(|&v| v as f64 / temperature).collect();
    idx.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    if let Some(k) = top_k {
        idx.truncate(k.max(1));
    }
    let max = scaled[idx[0]];
    let mut probs: Vec<f64> = idx.iter().map(|&i| (scaled[i] - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = top_p {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p {
                keep = i + 1;
                break;
            }
        }
        idx.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    let mut u: f64 = rng.random();
    for (i, q) in idx.iter().zip(&probs) {
        if u < *q {
            return *i;
        }
        u -= q;
    }
    idx[idx.len() - 1]
}

/// Left-pads prompts; returns ids, mask and per-row real lengths.
fn left_pad(prompts: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<i64>>) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let ids = prompts
        .iter()
        .map(|p| {
            let mut row = vec![pad; width - p.len()];
            row.extend(p);
            row
        })
        .collect();
    let mask = prompts
        .iter()
        .map(|p| {
            let mut row = vec![0i64; width - p.len()];
            row.extend(std::iter::repeat_n(1, p.len()));
            row
        })
        .collect();
    (ids, mask)
}

/// Incremental decoding state shared by all strategies: rows of ids and mask, and the cache.
struct Stepper<'a> {
    model: &'a Gpt2LmHeadModel,
    device: Device,
    mask: Vec<Vec<i64>>,
    cache: Option<KvCache>,
    /// Forward passes so far: the 1-based index of the token the last logits choose.
    steps: usize,
}

impl Stepper<'_> {
    /// Feeds `new` tokens per row (`[rows][new]`); returns the last position's logits per row.
    fn step(&mut self, new: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let rows = new.len();
        let t = new[0].len();
        // Positions count real tokens only, as Hugging Face's generate does for left padding.
        let mut pos = Vec::with_capacity(rows * t);
        for m in &self.mask {
            let total = m.len();
            let mut c: i64 = m[..total - t].iter().sum();
            for &v in &m[total - t..] {
                c += v;
                pos.push(if v == 0 { 1 } else { c - 1 });
            }
        }
        let flat_ids: Vec<i64> = new.iter().flatten().map(|&v| v as i64).collect();
        let flat_mask: Vec<i64> = self.mask.iter().flatten().copied().collect();
        let width = self.mask[0].len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat_ids, [rows, t]), &self.device);
        let mask =
            Tensor::<2, Int>::from_data(TensorData::new(flat_mask, [rows, width]), &self.device);
        let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [rows, t]), &self.device);
        let (logits, cache) =
            self.model
                .forward_cached(ids, Some(mask), Some(pos), self.cache.take())?;
        self.cache = Some(cache);
        let [_, _, v] = logits.dims();
        let last = logits.narrow(1, t - 1, 1).reshape([rows, v]);
        let data = last
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::InvalidInput(format!("logits: {e:?}")))?;
        self.steps += 1;
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            // NaN/Inf would make every candidate unrankable (beam search) or fall back to an
            // arbitrary token (sampling): the output would be garbage, silently.
            return Err(ModelError::InvalidInput(format!(
                "non-finite logit {} at generation step {} (row {}, token {}): the model or \
                 its adapter produced NaN/Inf",
                data[i],
                self.steps,
                i / v,
                i % v
            )));
        }
        Ok(data.chunks(v).map(<[f32]>::to_vec).collect())
    }

    fn extend_mask(&mut self) {
        for m in &mut self.mask {
            m.push(1);
        }
    }

    fn reorder(&mut self, rows: &[usize]) {
        self.mask = rows.iter().map(|&r| self.mask[r].clone()).collect();
        if let Some(c) = &self.cache {
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let n = idx.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.device);
            self.cache = Some(c.select(idx));
        }
    }
}

impl Gpt2LmHeadModel {
    /// Continues each prompt (token ids; prompts may differ in length and are left-padded).
    ///
    /// The model should be in inference mode (`model.valid()`, or built on a device without
    /// autodiff) so dropout is off.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        device: &Device,
    ) -> Result<Generation> {
        config.validate()?;
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::InvalidInput(
                "every prompt needs at least one token".into(),
            ));
        }
        let vocab = self.transformer.wte.dims().0;
        let out_of_range = prompts.iter().enumerate().find_map(|(i, p)| {
            let id = p
                .iter()
                .chain([&config.pad_token_id])
                .find(|&&t| t as usize >= vocab)?;
            Some((i, *id))
        });
        if let Some((i, id)) = out_of_range {
            return Err(ModelError::InvalidInput(format!(
                "prompt {i} (or the pad token) holds token id {id}, but the model has {vocab} \
                 (a tokenizer from another checkpoint or with added tokens?)"
            )));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest + config.max_new_tokens > self.transformer.n_positions {
            return Err(ModelError::SequenceTooLong {
                len: longest + config.max_new_tokens,
                max: self.transformer.n_positions,
            });
        }
        match &config.decoding {
            Decoding::Beam {
                num_beams,
                length_penalty,
                early_stopping,
            } => self.beam_search(
                prompts,
                config,
                *num_beams,
                *length_penalty,
                *early_stopping,
                device,
            ),
            _ => self.sample_or_greedy(prompts, config, device),
        }
    }

    fn sample_or_greedy(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        device: &Device,
    ) -> Result<Generation> {
        let (ids, mask) = left_pad(prompts, config.pad_token_id);
        let mut st = Stepper {
            model: self,
            device: device.clone(),
            mask,
            cache: None,
            steps: 0,
        };
        let mut rng = match config.decoding {
            Decoding::Sample { seed, .. } => StdRng::seed_from_u64(seed),
            _ => StdRng::seed_from_u64(0),
        };
        let n = prompts.len();
        let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
        let mut out = vec![Vec::new(); n];
        let mut lps = vec![Vec::new(); n];
        let mut done = vec![false; n];
        let mut logits = st.step(&ids)?;
        for step in 0..config.max_new_tokens {
            let mut next = Vec::with_capacity(n);
            for i in 0..n {
                if done[i] {
                    next.push(vec![config.pad_token_id]);
                    continue;
                }
                let raw = log_softmax_row(&logits[i]);
                let mut row = logits[i].clone();
                ban_repeated_ngrams(&seqs[i], config.no_repeat_ngram_size, &mut row);
                let tok = match &config.decoding {
                    Decoding::Sample {
                        temperature,
                        top_k,
                        top_p,
                        ..
                    } => sample(&row, *temperature, *top_k, *top_p, &mut rng),
                    _ => argmax(&row),
                } as u32;
                out[i].push(tok);
                lps[i].push(raw[tok as usize]);
                seqs[i].push(tok);
                done[i] = config.eos_token_id == Some(tok);
                next.push(vec![tok]);
            }
            if done.iter().all(|d| *d) || step + 1 == config.max_new_tokens {
                break;
            }
            st.extend_mask();
            logits = st.step(&next)?;
        }
        let scores = lps.iter().map(|l| l.iter().sum()).collect();
        Ok(Generation {
            tokens: out,
            logprobs: lps,
            scores,
        })
    }

    fn beam_search(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        k: usize,
        length_penalty: f64,
        early_stopping: bool,
        device: &Device,
    ) -> Result<Generation> {
        let (ids, mask) = left_pad(prompts, config.pad_token_id);
        let n = prompts.len();
        // Row b*k + j is beam j of prompt b.
        let rows: Vec<usize> = (0..n).flat_map(|b| std::iter::repeat_n(b, k)).collect();
        let mut st = Stepper {
            model: self,
            device: device.clone(),
            mask: rows.iter().map(|&b| mask[b].clone()).collect(),
            cache: None,
            steps: 0,
        };
        let mut search = BeamSearch::new(prompts, k, length_penalty, early_stopping);
        let mut logits = st.step(&rows.iter().map(|&b| ids[b].clone()).collect::<Vec<_>>())?;
        for step in 0..config.max_new_tokens {
            let parents = search.advance(&logits, step, config);
            if search.closed.iter().all(|c| *c) || step + 1 == config.max_new_tokens {
                break;
            }
            st.reorder(&parents);
            st.extend_mask();
            let last: Vec<Vec<u32>> = (search.beams.iter())
                .map(|bm| vec![*bm.new.last().unwrap_or(&0)])
                .collect();
            logits = st.step(&last)?;
        }
        search.results()
    }
}

/// One scored continuation: `(score, beam row, token, the token's raw log-probability)`.
type Candidate = (f64, usize, u32, f32);

/// Beam search's state over a batch of prompts: `k` live beams per prompt (row `b·k + j` is
/// beam `j` of prompt `b`), the finished hypotheses and which prompts are done, following
/// Hugging Face's `BeamSearchScorer`.
struct BeamSearch {
    k: usize,
    length_penalty: f64,
    early_stopping: bool,
    beams: Vec<Beam>,
    finished: Vec<Vec<(f64, Beam)>>,
    closed: Vec<bool>,
}

impl BeamSearch {
    fn new(prompts: &[Vec<u32>], k: usize, length_penalty: f64, early_stopping: bool) -> Self {
        let beams = (0..prompts.len() * k)
            .map(|r| Beam {
                seq: prompts[r / k].clone(),
                new: Vec::new(),
                lps: Vec::new(),
                // Only beam 0 starts alive, so the first step does not pick k copies.
                score: if r % k == 0 { 0.0 } else { -1e9 },
            })
            .collect();
        Self {
            k,
            length_penalty,
            early_stopping,
            beams,
            finished: vec![Vec::new(); prompts.len()],
            closed: vec![false; prompts.len()],
        }
    }

    fn normalized(&self, b: &Beam) -> f64 {
        b.score / (b.new.len().max(1) as f64).powf(self.length_penalty)
    }

    /// One step for every prompt, given each beam's next-token logits: the new beams replace
    /// the old, and the parent row of each new beam is returned (for the KV cache).
    fn advance(
        &mut self,
        logits: &[Vec<f32>],
        step: usize,
        config: &GenerationConfig,
    ) -> Vec<usize> {
        let k = self.k;
        let mut next = Vec::with_capacity(self.beams.len());
        let mut parents = Vec::with_capacity(self.beams.len());
        for b in 0..self.closed.len() {
            let kept = match self.closed[b] {
                true => 0,
                false => self.extend(b, logits, config, &mut next, &mut parents),
            };
            if kept == 0 {
                // A closed prompt, or every candidate ended in eos (a vocabulary this small;
                // logits are finite, the stepper checks): its beams stay as they are.
                next.extend(self.beams[b * k..(b + 1) * k].iter().cloned());
                parents.extend(b * k..(b + 1) * k);
                self.closed[b] = true;
                continue;
            }
            for _ in kept..k {
                // Fewer live candidates than beams (tiny vocab): repeat the best.
                let i = next.len() - 1;
                next.push(next[i].clone());
                parents.push(parents[i]);
            }
            self.close_if_done(b, step, &next[next.len() - k..]);
        }
        self.beams = next;
        parents
    }

    /// Every (beam, token) candidate of prompt `b`, best first.
    fn candidates(
        &self,
        b: usize,
        logits: &[Vec<f32>],
        config: &GenerationConfig,
    ) -> Vec<Candidate> {
        let mut cands = Vec::new();
        let rows = b * self.k..(b + 1) * self.k;
        for (r, row) in rows.clone().zip(&logits[rows]) {
            let mut lp = log_softmax_row(row);
            let raw = lp.clone();
            ban_repeated_ngrams(&self.beams[r].seq, config.no_repeat_ngram_size, &mut lp);
            let mut idx: Vec<usize> = (0..lp.len()).collect();
            let take = (2 * self.k).min(idx.len());
            idx.select_nth_unstable_by(take - 1, |&a, &c| lp[c].total_cmp(&lp[a]));
            for &t in &idx[..take] {
                if lp[t].is_finite() {
                    cands.push((self.beams[r].score + lp[t] as f64, r, t as u32, raw[t]));
                }
            }
        }
        cands.sort_by(|a, c| c.0.total_cmp(&a.0));
        cands
    }

    /// Pushes up to `k` continuations of prompt `b` (eos candidates finish instead); returns
    /// how many were pushed.
    fn extend(
        &mut self,
        b: usize,
        logits: &[Vec<f32>],
        config: &GenerationConfig,
        next: &mut Vec<Beam>,
        parents: &mut Vec<usize>,
    ) -> usize {
        let mut kept = 0;
        for (rank, (score, r, t, raw)) in self.candidates(b, logits, config).into_iter().enumerate()
        {
            let mut beam = self.beams[r].clone();
            beam.score = score;
            beam.seq.push(t);
            beam.new.push(t);
            beam.lps.push(raw);
            if config.eos_token_id == Some(t) {
                // As Hugging Face: only eos candidates ranked within the top k finish.
                if rank < self.k {
                    let score = self.normalized(&beam);
                    self.finished[b].push((score, beam));
                }
                continue;
            }
            next.push(beam);
            parents.push(r);
            kept += 1;
            if kept == self.k {
                break;
            }
        }
        kept
    }

    /// Closes prompt `b` once it has `k` finished hypotheses that its live beams (`live`)
    /// cannot beat (or at once with `early_stopping`).
    fn close_if_done(&mut self, b: usize, step: usize, live: &[Beam]) {
        let finished = &mut self.finished[b];
        finished.sort_by(|a, c| c.0.total_cmp(&a.0));
        finished.truncate(self.k);
        if finished.len() < self.k {
            return;
        }
        let best_live = live
            .iter()
            .map(|bm| bm.score)
            .fold(f64::NEG_INFINITY, f64::max);
        let can_improve = !self.early_stopping
            && finished.last().is_some_and(|(worst, _)| {
                best_live / ((step + 1) as f64).powf(self.length_penalty) > *worst
            });
        self.closed[b] = !can_improve;
    }

    /// The best hypothesis of each prompt: finished ones, and the live beams of prompts
    /// still open.
    fn results(self) -> Result<Generation> {
        let mut out = Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            scores: Vec::new(),
        };
        for (b, finished) in self.finished.iter().enumerate() {
            let mut pool = finished.clone();
            if !self.closed[b] {
                for bm in &self.beams[b * self.k..(b + 1) * self.k] {
                    pool.push((self.normalized(bm), bm.clone()));
                }
            }
            pool.sort_by(|a, c| c.0.total_cmp(&a.0));
            let (score, best) = pool.into_iter().next().ok_or_else(|| {
                ModelError::InvalidInput("beam search produced no hypothesis".into())
            })?;
            out.tokens.push(best.new);
            out.logprobs.push(best.lps);
            out.scores.push(score as f32);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
struct Beam {
    seq: Vec<u32>,
    new: Vec<u32>,
    lps: Vec<f32>,
    score: f64,
}
