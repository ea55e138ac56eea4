//! Guarded generation: constitutional classifiers around the policy at run
//! time (Sharma et al. 2025).
//!
//! An input guard reads the rendered prompt before anything is generated;
//! an output guard reads the answer as it streams, every
//! [`StreamGuard::every`] tokens, and the stream stops before the first
//! token whose prefix it flags. Whichever fires, the answer becomes
//! [`REFUSAL`]: nothing from the flagged token on is ever released (a
//! streaming reader is shown only tokens a check has cleared).
//!
//! Guards read the policy's own token ids, so they must share its
//! tokenizer; the implementation (charter-train's classifiers) checks that
//! when it is opened. An output guard may instead be a linear probe on the
//! policy's own states ([`StreamGuard::readout`]): the engine scores it
//! before every token, at the cost of a dot product, and stops the row
//! before the first token it flags.

use crate::error::Result;

/// The one answer a guarded policy gives when a guard fires.
pub const REFUSAL: &str = "I'm sorry, but I can't help with that.";

/// Classifiers a policy's generation runs beside.
pub trait StreamGuard {
    /// Whether the input guard blocks the rendered prompt (false without one).
    fn blocks_prompt(&mut self, prompt: &[u32]) -> Result<bool>;
    /// [`StreamGuard::blocks_prompt`] of several prompts; an implementation
    /// may score them in one batch.
    fn blocks_prompts(&mut self, prompts: &[&[u32]]) -> Result<Vec<bool>> {
        prompts.iter().map(|p| self.blocks_prompt(p)).collect()
    }
    /// The first token of `answer` whose prefix the output guard flags
    /// (`None` without one).
    fn first_flagged(&mut self, prompt: &[u32], answer: &[u32]) -> Result<Option<usize>>;
    /// [`StreamGuard::first_flagged`] of several (prompt, answer) rows; an
    /// implementation may score them in one batch.
    fn first_flagged_many(&mut self, rows: &[(&[u32], &[u32])]) -> Result<Vec<Option<usize>>> {
        rows.iter().map(|(p, a)| self.first_flagged(p, a)).collect()
    }
    /// Tokens generated between two checks of the output guard.
    fn every(&self) -> usize;
    /// An output guard that is a linear probe on the policy's own states:
    /// the engine applies it before every token instead of
    /// [`StreamGuard::first_flagged`] being asked (`None` for a guard that
    /// reads tokens).
    fn readout(&self) -> Option<charter_gen::Readout> {
        None
    }
    /// The guards' model hashes, thresholds and `every`, for provenance.
    fn describe(&self) -> serde_json::Value;
}

/// Which guard refused a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The input guard, before generation.
    Input,
    /// The output guard, before answer token `at` (the tokens before it
    /// were generated, and cleared, before the flag).
    Output {
        /// The flagged token.
        at: usize,
    },
}

impl Refused {
    /// The `finish_reason` a refused row records: `guard_input` or `guard_output`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Input => "guard_input",
            Refused::Output { .. } => "guard_output",
        }
    }
}

/// An output guard's watch over rows generating together: called from the
/// engine's stop callback, it checks each row every `every` tokens.
pub struct Watch<'g> {
    guard: &'g mut dyn StreamGuard,
    /// Per row: answer tokens checked so far, and the flagged token.
    checked: Vec<usize>,
    flagged: Vec<Option<usize>>,
    error: Option<crate::Error>,
}

impl<'g> Watch<'g> {
    /// A watch over `rows` rows.
    pub fn new(guard: &'g mut dyn StreamGuard, rows: usize) -> Self {
        Watch {
            guard,
            checked: vec![0; rows],
            flagged: vec![None; rows],
            error: None,
        }
    }

    /// The guard, for the input check.
    pub fn guard(&mut self) -> &mut dyn StreamGuard {
        self.guard
    }

    fn due(&self, row: usize, answer: &[u32]) -> bool {
        self.flagged[row].is_none()
            && self.error.is_none()
            && answer.len() - self.checked[row] >= self.guard.every()
    }

    /// Checks, in one batch, every row of `rows` (row, prompt, answer so
    /// far) that `every` tokens have come to since its last check: the
    /// engine's per-step hook, before [`Watch::check`] asks about each.
    pub fn step(&mut self, rows: &[(usize, &[u32], &[u32])]) {
        let due: Vec<&(usize, &[u32], &[u32])> =
            rows.iter().filter(|(r, _, a)| self.due(*r, a)).collect();
        if due.is_empty() {
            return;
        }
        let pairs: Vec<(&[u32], &[u32])> = due.iter().map(|(_, p, a)| (*p, *a)).collect();
        match self.guard.first_flagged_many(&pairs) {
            Ok(flags) => {
                for ((row, _, answer), flag) in due.into_iter().zip(flags) {
                    self.checked[*row] = answer.len();
                    self.flagged[*row] = flag;
                }
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Whether row `row` is flagged (the engine then stops it), checking
    /// it first if `every` tokens have come since its last check and
    /// [`Watch::step`] did not. An error stops the row and is returned by
    /// [`Watch::finish`].
    pub fn check(&mut self, row: usize, prompt: &[u32], answer: &[u32]) -> bool {
        if self.due(row, answer) {
            self.run(row, prompt, answer);
        }
        self.flagged[row].is_some() || self.error.is_some()
    }

    fn run(&mut self, row: usize, prompt: &[u32], answer: &[u32]) {
        match self.guard.first_flagged(prompt, answer) {
            Ok(flag) => {
                self.checked[row] = answer.len();
                self.flagged[row] = flag;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Answer tokens of row `row` cleared so far: safe to show.
    pub fn cleared(&self, row: usize) -> usize {
        self.flagged[row].unwrap_or(self.checked[row])
    }

    /// After row `row` finished with `answer`: checks the tokens no check
    /// has seen and says where the guard flagged it, if anywhere.
    pub fn finish(&mut self, row: usize, prompt: &[u32], answer: &[u32]) -> Result<Option<usize>> {
        if self.flagged[row].is_none() && self.error.is_none() && self.checked[row] < answer.len() {
            self.run(row, prompt, answer);
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.flagged[row]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags the first answer token equal to `bad`, and counts its calls.
    struct Scripted {
        bad: u32,
        every: usize,
        calls: Vec<usize>,
        batches: Vec<usize>,
    }

    impl StreamGuard for Scripted {
        fn blocks_prompt(&mut self, _: &[u32]) -> Result<bool> {
            Ok(false)
        }
        fn first_flagged(&mut self, _: &[u32], answer: &[u32]) -> Result<Option<usize>> {
            self.calls.push(answer.len());
            Ok(answer.iter().position(|&t| t == self.bad))
        }
        fn first_flagged_many(&mut self, rows: &[(&[u32], &[u32])]) -> Result<Vec<Option<usize>>> {
            self.batches.push(rows.len());
            rows.iter().map(|(p, a)| self.first_flagged(p, a)).collect()
        }
        fn every(&self) -> usize {
            self.every
        }
        fn describe(&self) -> serde_json::Value {
            serde_json::json!({})
        }
    }

    /// Feeds `answer` to a watch one token at a time, as the engine does,
    /// until it stops; what was cleared at the stop, and the flag.
    fn stream(guard: &mut Scripted, answer: &[u32]) -> (usize, Option<usize>) {
        let bad = answer.iter().position(|&t| t == guard.bad);
        let mut watch = Watch::new(guard, 1);
        let mut end = answer.len();
        for n in 1..=answer.len() {
            let stop = watch.check(0, &[], &answer[..n]);
            // What a streaming reader may be shown never reaches the flag.
            let cleared = watch.cleared(0);
            assert!(cleared <= n);
            if let Some(bad) = bad {
                assert!(cleared <= bad, "token {bad} shown at {n}");
            }
            if stop {
                end = n;
                break;
            }
        }
        let flag = watch.finish(0, &[], &answer[..end]).unwrap();
        (watch.cleared(0), flag)
    }

    #[test]
    fn the_stream_stops_at_the_first_flagged_token_and_clears_nothing_after() {
        let answer = [1, 2, 3, 4, 9, 5, 9, 6, 7, 8];
        for every in [1, 3, 4, 16] {
            let mut guard = Scripted {
                bad: 9,
                every,
                calls: Vec::new(),
                batches: Vec::new(),
            };
            let (cleared, flag) = stream(&mut guard, &answer);
            assert_eq!(flag, Some(4), "every {every}");
            assert_eq!(cleared, 4, "every {every}: shown up to the flag only");
            // Checked every `every` tokens, and once more at the end if need be.
            let want: Vec<usize> = match every {
                1 => vec![1, 2, 3, 4, 5],
                3 => vec![3, 6],
                4 => vec![4, 8],
                _ => vec![10],
            };
            assert_eq!(guard.calls, want, "every {every}");
        }
        // A clean answer is checked to its last token and cleared whole.
        let mut guard = Scripted {
            bad: 9,
            every: 4,
            calls: Vec::new(),
            batches: Vec::new(),
        };
        let (cleared, flag) = stream(&mut guard, &[1, 2, 3, 4, 5, 6]);
        assert_eq!((cleared, flag), (6, None));
        assert_eq!(guard.calls, vec![4, 6]);
    }

    #[test]
    fn a_step_checks_every_due_row_in_one_batch() {
        let mut guard = Scripted {
            bad: 9,
            every: 2,
            calls: Vec::new(),
            batches: Vec::new(),
        };
        let answers: [&[u32]; 3] = [&[1, 9, 3, 4], &[1, 2, 3, 4], &[5, 6, 7, 8]];
        let mut watch = Watch::new(&mut guard, 3);
        for n in 1..=4 {
            let rows: Vec<(usize, &[u32], &[u32])> = answers
                .iter()
                .enumerate()
                .map(|(r, a)| (r, &[][..], &a[..n]))
                .collect();
            watch.step(&rows);
            let stops: Vec<bool> = rows.iter().map(|&(r, p, a)| watch.check(r, p, a)).collect();
            assert_eq!(stops, [n >= 2, false, false], "after {n} tokens");
        }
        assert_eq!(watch.cleared(0), 1);
        assert_eq!(watch.cleared(1), 4);
        // Both checks of three rows, then of the two unflagged ones, batched;
        // `check` found nothing left to do.
        assert_eq!(guard.batches, vec![3, 2]);
        assert_eq!(guard.calls, vec![2, 2, 2, 4, 4]);
    }
}
