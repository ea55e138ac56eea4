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
//! when it is opened.

use crate::error::Result;

/// The one answer a guarded policy gives when a guard fires.
pub const REFUSAL: &str = "I'm sorry, but I can't help with that.";

/// Classifiers a policy's generation runs beside.
pub trait StreamGuard {
    /// Whether the input guard blocks the rendered prompt (false without one).
    fn blocks_prompt(&mut self, prompt: &[u32]) -> Result<bool>;
    /// The first token of `answer` whose prefix the output guard flags
    /// (`None` without one).
    fn first_flagged(&mut self, prompt: &[u32], answer: &[u32]) -> Result<Option<usize>>;
    /// Tokens generated between two checks of the output guard.
    fn every(&self) -> usize;
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

    /// Checks row `row` when `every` tokens have come since its last
    /// check; true when it is flagged (the engine then stops it). An error
    /// stops the row and is returned by [`Watch::finish`].
    pub fn check(&mut self, row: usize, prompt: &[u32], answer: &[u32]) -> bool {
        if self.flagged[row].is_some() || self.error.is_some() {
            return true;
        }
        if answer.len() - self.checked[row] < self.guard.every() {
            return false;
        }
        self.run(row, prompt, answer)
    }

    fn run(&mut self, row: usize, prompt: &[u32], answer: &[u32]) -> bool {
        match self.guard.first_flagged(prompt, answer) {
            Ok(flag) => {
                self.checked[row] = answer.len();
                self.flagged[row] = flag;
                flag.is_some()
            }
            Err(e) => {
                self.error = Some(e);
                true
            }
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
    }

    impl StreamGuard for Scripted {
        fn blocks_prompt(&mut self, _: &[u32]) -> Result<bool> {
            Ok(false)
        }
        fn first_flagged(&mut self, _: &[u32], answer: &[u32]) -> Result<Option<usize>> {
            self.calls.push(answer.len());
            Ok(answer.iter().position(|&t| t == self.bad))
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
        };
        let (cleared, flag) = stream(&mut guard, &[1, 2, 3, 4, 5, 6]);
        assert_eq!((cleared, flag), (6, None));
        assert_eq!(guard.calls, vec![4, 6]);
    }
}
