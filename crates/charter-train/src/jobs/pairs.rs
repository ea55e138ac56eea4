//! Tokenised comparisons and the pairwise objective the preference model
//! and DPO share.

use crate::Result;
use crate::data::{Formatter, PreferenceExample, Tokens};
use crate::loss::{agreement, soft_pair_loss};
use crate::tensor::values;
use crate::train::Objective;

/// A tokenised comparison.
pub(super) struct PairRow {
    pub(super) id: String,
    pub(super) a: Tokens,
    pub(super) b: Tokens,
    pub(super) p_a: f64,
}

/// Tokenises labels, dropping pairs where either conversation does not fit.
pub(super) fn pair_rows(
    formatter: &Formatter,
    examples: &[PreferenceExample],
) -> Result<(Vec<PairRow>, usize)> {
    let mut rows = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for e in examples {
        let a = formatter.encode(&e.prompt, &e.a, true)?;
        let b = formatter.encode(&e.prompt, &e.b, true)?;
        match (a, b) {
            (Some(a), Some(b)) => rows.push(PairRow {
                id: e.id.clone(),
                a,
                b,
                p_a: e.p_a,
            }),
            _ => skipped += 1,
        }
    }
    Ok((rows, skipped))
}

/// The conversations of pairs `batch`: every A, then every B.
pub(super) fn both_sides<'r>(rows: &'r [PairRow], batch: &[usize]) -> Vec<&'r Tokens> {
    batch
        .iter()
        .map(|&i| &rows[i].a)
        .chain(batch.iter().map(|&i| &rows[i].b))
        .collect()
}

fn pair_tokens(row: &PairRow) -> usize {
    row.a.ids.len() + row.b.ids.len()
}

/// Margin `z` (A over B, `[pairs]`) of pairs `batch` under a model.
pub(super) type Margins<'r, M> = Box<dyn Fn(&M, &[usize]) -> Result<burn::tensor::Tensor<1>> + 'r>;

/// The PM and DPO objective: the soft pairwise loss on a margin the model
/// gives each pair (score difference, or DPO's log-ratio margin).
pub(super) struct Pairwise<'r, M> {
    pub(super) rows: &'r [PairRow],
    pub(super) margins: Margins<'r, M>,
}

impl<M> Objective<M> for Pairwise<'_, M> {
    fn examples(&self) -> usize {
        self.rows.len()
    }
    fn id(&self, i: usize) -> &str {
        &self.rows[i].id
    }
    fn tokens(&self, i: usize) -> usize {
        pair_tokens(&self.rows[i])
    }
    fn weight(&self, _: usize) -> usize {
        1
    }
    fn loss(
        &self,
        model: &M,
        batch: &[usize],
        denominator: f64,
    ) -> Result<(burn::tensor::Tensor<1>, Option<(usize, usize)>)> {
        let z = (self.margins)(model, batch)?;
        let p: Vec<f64> = batch.iter().map(|&i| self.rows[i].p_a).collect();
        let agree = agreement(&values(z.clone().into_data())?, &p);
        Ok((soft_pair_loss(z, &p, denominator), Some(agree)))
    }
}
