//! Policy evaluation: two policies answer the same held-out prompts, the AI
//! feedback labeller compares their answers (both orders), and the report
//! gives B's win rate over A with a confidence interval and the Elo
//! difference it implies — the comparison the CAI paper reports for
//! harmlessness (with a harmlessness constitution) and helpfulness (with a
//! helpfulness one).
//!
//! Every intermediate is an ordinary table in the work directory (both
//! policies' responses, the pairs, the labels), so a rerun is cached and a
//! killed run resumes.

use std::path::Path;

use charter_table::{Label, TableFile};
use serde::Serialize;

use crate::constitution::Constitution;
use crate::generate::{GenSettings, StageProgress};
use crate::label::{LabelSettings, label};
use crate::model::Model;
use crate::pair::pair;
use crate::respond::{RespondSettings, respond};
use crate::{Error, Result};

/// What the evaluation does: the `eval policy` command's flags and a build
/// file's `eval` stage.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyEvalSettings {
    /// Answers per prompt from each policy (sample `k` of A meets sample `k` of B).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub samples: u32,
    /// Use only the first N prompts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Score both presentation orders and average them (`--no-swap`: only
    /// the order shown).
    #[arg(long = "no-swap", action = clap::ArgAction::SetFalse)]
    pub swap: bool,
    /// How both policies generate, and the labeller's seed, batch and window.
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl Default for PolicyEvalSettings {
    fn default() -> Self {
        PolicyEvalSettings {
            samples: 1,
            limit: None,
            swap: true,
            generation: GenSettings::DEFAULT,
        }
    }
}

impl PolicyEvalSettings {
    /// How the labeller judges: plain probabilities, unclamped.
    pub fn label(&self) -> LabelSettings {
        LabelSettings {
            swap: self.swap,
            cot: false,
            clamp: (0.0, 1.0),
            generation: self.generation.clone(),
        }
    }

    /// Both policies' respond settings.
    pub fn respond(&self) -> RespondSettings {
        RespondSettings {
            samples: self.samples,
            limit: self.limit,
            generation: self.generation.clone(),
        }
    }

    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        self.respond().validate()?;
        self.label().validate()
    }
}

/// B's record against A.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyEvalReport {
    /// Comparisons labelled.
    pub comparisons: usize,
    /// Mean probability that B's answer is better (the soft win rate).
    pub win_rate: f64,
    /// 95% confidence interval of `win_rate` (normal approximation over comparisons).
    pub win_rate_ci: (f64, f64),
    /// Comparisons B won (P(B better) > 0.5), lost and tied.
    pub wins: usize,
    /// Comparisons B lost.
    pub losses: usize,
    /// Comparisons tied (exactly 0.5).
    pub ties: usize,
    /// Elo of B minus Elo of A implied by `win_rate`: 400·log10(w / (1 − w)).
    pub elo: f64,
    /// The Elo difference at the ends of `win_rate_ci`.
    pub elo_ci: (f64, f64),
    /// Share of comparisons the labeller decided the same way in both
    /// presentation orders (none when only one order was scored).
    pub order_consistency: Option<f64>,
}

/// Elo difference for win rate `w`, kept finite at 0 and 1.
fn elo(w: f64) -> f64 {
    let w = w.clamp(1e-4, 1.0 - 1e-4);
    400.0 * (w / (1.0 - w)).log10()
}

impl PolicyEvalReport {
    /// The report for labels whose A is policy A's answer and B policy B's.
    pub fn from_labels(labels: &[Label]) -> Result<Self> {
        let n = labels.len();
        if n == 0 {
            return Err(Error::Settings(
                "no comparisons: the policies answered no prompt in common".into(),
            ));
        }
        let p_b: Vec<f64> = labels.iter().map(|l| 1.0 - l.p_a).collect();
        let mean = p_b.iter().sum::<f64>() / n as f64;
        let var = match n {
            1 => 0.0,
            _ => p_b.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1) as f64,
        };
        let half = 1.96 * (var / n as f64).sqrt();
        let ci = ((mean - half).max(0.0), (mean + half).min(1.0));
        let wins = p_b.iter().filter(|&&p| p > 0.5).count();
        let losses = p_b.iter().filter(|&&p| p < 0.5).count();
        let both: Vec<(f64, f64)> = labels
            .iter()
            .filter_map(|l| l.p_a_ba.map(|ba| (l.p_a_ab, ba)))
            .collect();
        let order_consistency = (!both.is_empty()).then(|| {
            let same = both
                .iter()
                .filter(|(ab, ba)| (*ab > 0.5) == (*ba > 0.5))
                .count();
            same as f64 / both.len() as f64
        });
        Ok(PolicyEvalReport {
            comparisons: n,
            win_rate: mean,
            win_rate_ci: ci,
            wins,
            losses,
            ties: n - wins - losses,
            elo: elo(mean),
            elo_ci: (elo(ci.0), elo(ci.1)),
            order_consistency,
        })
    }
}

/// Which step of the evaluation is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyEvalStep {
    /// Policy A answers.
    RespondA,
    /// Policy B answers.
    RespondB,
    /// The labeller compares.
    Label,
}

/// The model directories an evaluation runs.
#[derive(Debug, Clone, Copy)]
pub struct Contestants<'a> {
    /// Policy A, the baseline.
    pub a: &'a Path,
    /// Policy B, the one evaluated.
    pub b: &'a Path,
    /// The AI feedback model.
    pub labeller: &'a Path,
}

/// Runs the evaluation of policy B against policy A on `prompts`, judged
/// by the labeller against `constitution`, keeping every table in `work`
/// (`a-responses.parquet`, `b-responses.parquet`, `pairs.parquet`,
/// `labels.parquet`) and writing `report.json` there.
pub fn eval_policy(
    prompts: &TableFile,
    models: Contestants<'_>,
    constitution: &Constitution,
    settings: &PolicyEvalSettings,
    work: &Path,
    progress: &mut dyn FnMut(PolicyEvalStep, StageProgress),
) -> Result<PolicyEvalReport> {
    let Contestants { a, b, labeller } = models;
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let g = &settings.generation;
    let respond_settings = settings.respond();
    let mut tables = Vec::new();
    for (step, dir, name) in [
        (PolicyEvalStep::RespondA, a, "a-responses.parquet"),
        (PolicyEvalStep::RespondB, b, "b-responses.parquet"),
    ] {
        let out = work.join(name);
        let mut model = Model::open(dir, g.threads)?;
        respond(
            prompts,
            &mut model,
            &respond_settings,
            None,
            &out,
            &mut |p| {
                progress(
                    step,
                    StageProgress {
                        rows_done: p.rows_done,
                        rows_total: p.rows_total,
                        tokens: p.tokens,
                    },
                )
            },
        )?;
        tables.push(TableFile::open(&out)?);
    }
    let pairs = work.join("pairs.parquet");
    pair(&tables[0], Some(&tables[1]), &pairs)?;
    let labels = work.join("labels.parquet");
    let label_settings = settings.label();
    let mut judge = Model::open(labeller, g.threads)?;
    label(
        &TableFile::open(&pairs)?,
        &mut judge,
        constitution,
        &label_settings,
        &labels,
        &mut |p| progress(PolicyEvalStep::Label, p),
    )?;
    let rows: Vec<Label> = TableFile::open(&labels)?.rows()?;
    let report = PolicyEvalReport::from_labels(&rows)?;
    let path = work.join("report.json");
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "a": a.display().to_string(),
        "b": b.display().to_string(),
        "labeller": labeller.display().to_string(),
        "constitution": constitution.name,
        "constitution_hash": constitution.hash(),
        "report": report,
    }))
    .map_err(|e| Error::Settings(e.to_string()))?;
    charter_table::write_atomic(&path, (json + "\n").as_bytes())
        .map_err(|e| Error::io(&path, e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(p_a: f64, ab: f64, ba: Option<f64>) -> Label {
        Label {
            id: String::new(),
            pair_id: String::new(),
            prompt_id: String::new(),
            prompt: String::new(),
            response_a_id: String::new(),
            response_b_id: String::new(),
            response_a: String::new(),
            response_b: String::new(),
            principle_id: String::new(),
            principle: String::new(),
            model: String::new(),
            model_hash: String::new(),
            constitution: String::new(),
            constitution_hash: String::new(),
            cot: false,
            swap: ba.is_some(),
            seed: 0,
            p_a,
            p_a_ab: ab,
            p_a_ba: ba,
            cot_ab: None,
            cot_ba: None,
            chosen: String::new(),
            rejected: String::new(),
            chosen_id: String::new(),
            rejected_id: String::new(),
        }
    }

    #[test]
    fn win_rate_interval_and_elo() {
        // B is better with probability 0.8 everywhere: Elo 400·log10(4) ≈ 240.8.
        let labels = vec![label(0.2, 0.2, Some(0.2)); 10];
        let r = PolicyEvalReport::from_labels(&labels).unwrap();
        assert!((r.win_rate - 0.8).abs() < 1e-12);
        assert!(
            r.win_rate_ci.1 - r.win_rate_ci.0 < 1e-9,
            "{:?}",
            r.win_rate_ci
        );
        assert!((r.elo - 240.823996531).abs() < 1e-6, "{}", r.elo);
        assert_eq!((r.wins, r.losses, r.ties), (10, 0, 0));
        assert_eq!(r.order_consistency, Some(1.0));

        // Even: 0.5 on average, interval around it, Elo 0, one tie.
        let labels = vec![
            label(0.9, 0.9, Some(0.2)),
            label(0.1, 0.1, Some(0.8)),
            label(0.5, 0.6, None),
        ];
        let r = PolicyEvalReport::from_labels(&labels).unwrap();
        assert!((r.win_rate - 0.5).abs() < 1e-12);
        assert!(r.win_rate_ci.0 < 0.5 && r.win_rate_ci.1 > 0.5);
        assert!(r.elo.abs() < 1e-9 && r.elo_ci.0 < 0.0 && r.elo_ci.1 > 0.0);
        assert_eq!((r.wins, r.losses, r.ties), (1, 1, 1));
        assert_eq!(r.order_consistency, Some(0.0));

        assert!(PolicyEvalReport::from_labels(&[]).is_err());
    }
}
