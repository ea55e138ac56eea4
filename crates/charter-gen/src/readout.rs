//! A linear probe on a decoder's own states: the cheap streaming
//! classifier (Sharma et al. 2025 name it as the low-cost option).
//!
//! The probe reads the last residual stream at the position that predicts
//! a token, RMS-normalised (the final norm without its per-channel weight,
//! which a linear probe absorbs), so its score for answer token *i* depends
//! on the prompt and the tokens before *i*: everything the model has seen
//! when it chooses *i*. One dot product per token; the engine applies it
//! while generating ([`crate::GenerateOptions::readout`]) and stops a row
//! before the first token whose score reaches the threshold.

/// Added to the mean square before the root, as the models' own norms do.
pub const NORM_EPS: f32 = 1e-5;

/// A logistic probe: P(flagged) = σ(w · h / rms(h) + b).
#[derive(Debug, Clone, PartialEq)]
pub struct Readout {
    /// One weight per hidden channel.
    pub weights: Vec<f32>,
    /// The bias.
    pub bias: f32,
    /// While generating, a row stops before the first token whose
    /// probability is at or above it.
    pub threshold: f64,
}

/// `hidden` RMS-normalised into `out` (same length).
pub fn normalise(hidden: &[f32], out: &mut [f32]) {
    let scale = inverse_rms(hidden);
    for (o, &h) in out.iter_mut().zip(hidden) {
        *o = h * scale;
    }
}

fn inverse_rms(hidden: &[f32]) -> f32 {
    let squares: f32 = hidden.iter().map(|h| h * h).sum();
    1.0 / (squares / hidden.len().max(1) as f32 + NORM_EPS).sqrt()
}

impl Readout {
    /// The probe's logit of one hidden state.
    pub fn logit(&self, hidden: &[f32]) -> f32 {
        debug_assert_eq!(hidden.len(), self.weights.len());
        let dot: f32 = self.weights.iter().zip(hidden).map(|(w, h)| w * h).sum();
        dot * inverse_rms(hidden) + self.bias
    }

    /// P(flagged) of one hidden state.
    pub fn probability(&self, hidden: &[f32]) -> f64 {
        1.0 / (1.0 + (-f64::from(self.logit(hidden))).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logit_is_the_dot_product_with_the_normalised_state() {
        let r = Readout {
            weights: vec![1.0, -2.0, 0.5],
            bias: 0.25,
            threshold: 0.5,
        };
        let h = [3.0f32, 1.0, -2.0];
        let mut n = [0f32; 3];
        normalise(&h, &mut n);
        let rms = ((9.0 + 1.0 + 4.0) / 3.0 + NORM_EPS).sqrt();
        assert!((n[0] - 3.0 / rms).abs() < 1e-6);
        let want = (3.0 - 2.0 - 1.0) / rms + 0.25;
        assert!((r.logit(&h) - want).abs() < 1e-6);
        // Scaling the state changes nothing: the norm takes it out.
        let doubled = h.map(|x| 2.0 * x);
        assert!((r.logit(&doubled) - r.logit(&h)).abs() < 1e-4);
        assert!((r.probability(&h) - 1.0 / (1.0 + (-f64::from(want)).exp())).abs() < 1e-6);
    }
}
