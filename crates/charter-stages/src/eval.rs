//! `eval labeller`: how well an AI labeller agrees with human preferences
//! (AI-labeller alignment, Lee et al. 2023 §2.3), how calibrated its
//! confidence is, and how often it picks a slot rather than an answer.
//!
//! Input: JSON lines, one comparison each:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `conversation` | string, or a list of `{"role", "content"}` messages | what both answers respond to; a string is shown as it is, messages as `User: …` / `Assistant: …` lines |
//! | `response_a`, `response_b` | string | the two answers |
//! | `preferred` | `"A"` or `"B"` | the answer people preferred |
//! | `principle` | string, optional | the question asked of the labeller; by default a preference principle of the constitution, drawn per comparison from the seed |
//!
//! The labeller scores every comparison as the `label` stage does (both
//! orders unless told otherwise); its choice is the answer with `p_a` on
//! its side of 0.5.

use std::path::Path;

use serde::Serialize;

use crate::constitution::Constitution;
use crate::error::{Error, Result};
use crate::label::{Comparison, LabelSettings, choices, draw, judge};
use crate::model::Model;

/// One human-labelled comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanComparison {
    /// The conversation as shown to the labeller.
    pub conversation: String,
    /// Answer A.
    pub response_a: String,
    /// Answer B.
    pub response_b: String,
    /// Whether people preferred A.
    pub prefers_a: bool,
    /// The question to ask, if the comparison names one.
    pub principle: Option<String>,
}

/// Agreement within one band of the labeller's confidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationBucket {
    /// Lower edge of confidence (the larger of `p_a` and 1 − `p_a`).
    pub from: f64,
    /// Upper edge (exclusive, except the last).
    pub to: f64,
    /// Comparisons in the band.
    pub comparisons: u64,
    /// Share of them where the labeller agreed with people.
    pub agreement: Option<f64>,
    /// Mean confidence in the band.
    pub mean_confidence: Option<f64>,
}

/// The evaluation's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabellerReport {
    /// Comparisons scored.
    pub comparisons: u64,
    /// Share where the labeller's more probable answer is the one people preferred.
    pub alignment: f64,
    /// Agreement by confidence band: a calibrated labeller agrees about as
    /// often as it is confident.
    pub calibration: Vec<CalibrationBucket>,
    /// Share of comparisons where the same slot won in both orders (the
    /// answer changed with its position); `None` when one order is scored.
    pub position_bias: Option<f64>,
    /// Mean `p_a` with A shown first, against 0.5 (a slot preference shows here too).
    pub mean_p_first: f64,
}

/// Reads comparisons from JSON lines, naming the line and field of any error.
pub fn read_comparisons(path: &Path) -> Result<Vec<HumanComparison>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Settings(format!("{}: cannot read: {e}", path.display())))?;
    // A byte-order mark (Windows editors write one) is not part of the first line's JSON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: String| Error::Settings(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let text_field = |name: &str| -> Result<String> {
            v.get(name)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| at(format!("`{name}`: missing or not a string")))
        };
        let conversation = match v.get("conversation") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(messages)) => {
                let mut lines = Vec::with_capacity(messages.len());
                for (k, m) in messages.iter().enumerate() {
                    let role = m.get("role").and_then(|r| r.as_str());
                    let content = m.get("content").and_then(|c| c.as_str());
                    let (Some(role), Some(content)) = (role, content) else {
                        return Err(at(format!(
                            "`conversation[{k}]`: a message needs string `role` and `content`"
                        )));
                    };
                    let speaker = match role {
                        "user" | "human" => "User",
                        "assistant" => "Assistant",
                        "system" => "System",
                        other => other,
                    };
                    lines.push(format!("{speaker}: {content}"));
                }
                lines.join("\n")
            }
            _ => {
                return Err(at(
                    "`conversation`: missing, or neither a string nor a list of messages"
                        .to_string(),
                ));
            }
        };
        let prefers_a = match v.get("preferred").and_then(|p| p.as_str()) {
            Some(p) if p.eq_ignore_ascii_case("a") => true,
            Some(p) if p.eq_ignore_ascii_case("b") => false,
            _ => return Err(at("`preferred`: must be \"A\" or \"B\"".to_string())),
        };
        let principle = match v.get("principle") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(at("`principle`: not a string".to_string())),
        };
        out.push(HumanComparison {
            conversation,
            response_a: text_field("response_a")?,
            response_b: text_field("response_b")?,
            prefers_a,
            principle,
        });
    }
    if out.is_empty() {
        return Err(Error::Settings(format!(
            "{}: no comparisons",
            path.display()
        )));
    }
    Ok(out)
}

/// Scores `comparisons` with the labeller and compares it with people.
pub fn eval_labeller(
    comparisons: &[HumanComparison],
    model: &mut Model,
    constitution: &Constitution,
    settings: &LabelSettings,
) -> Result<LabellerReport> {
    let choices = choices(model, &constitution.templates.label_answer_prefix)?;
    let keys: Vec<String> = comparisons
        .iter()
        .map(|c| {
            blake3::hash(
                format!("{}\0{}\0{}", c.conversation, c.response_a, c.response_b).as_bytes(),
            )
            .to_hex()
            .to_string()
        })
        .collect();
    let mut judgements = Vec::with_capacity(comparisons.len());
    for (chunk, chunk_keys) in comparisons
        .chunks(settings.generation.shard_rows.max(1))
        .zip(keys.chunks(settings.generation.shard_rows.max(1)))
    {
        let items: Vec<Comparison<'_>> = chunk
            .iter()
            .zip(chunk_keys)
            .map(|(c, key)| Comparison {
                key,
                conversation: c.conversation.clone(),
                question: match &c.principle {
                    Some(q) => q,
                    None => &draw(constitution, settings.generation.seed, key).question,
                },
                a: &c.response_a,
                b: &c.response_b,
            })
            .collect();
        judgements.extend(judge(model, constitution, settings, &choices, &items)?.0);
    }

    let n = comparisons.len() as f64;
    let mut agree = 0u64;
    let mut bias = 0u64;
    let edges = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
    let mut buckets: Vec<(u64, u64, f64)> = vec![(0, 0, 0.0); edges.len() - 1];
    for (c, j) in comparisons.iter().zip(&judgements) {
        let p_a = j.p_a_ba.map_or(j.p_a_ab, |ba| (j.p_a_ab + ba) / 2.0);
        let agrees = (p_a >= 0.5) == c.prefers_a;
        agree += u64::from(agrees);
        if let Some(ba) = j.p_a_ba {
            // The first slot won both times, or the second did.
            let first_wins_ab = j.p_a_ab > 0.5;
            let first_wins_ba = ba < 0.5;
            bias += u64::from(first_wins_ab == first_wins_ba);
        }
        let confidence = p_a.max(1.0 - p_a);
        let b = edges
            .windows(2)
            .position(|w| confidence < w[1])
            .unwrap_or(edges.len() - 2);
        buckets[b].0 += 1;
        buckets[b].1 += u64::from(agrees);
        buckets[b].2 += confidence;
    }
    Ok(LabellerReport {
        comparisons: comparisons.len() as u64,
        alignment: agree as f64 / n,
        calibration: edges
            .windows(2)
            .zip(buckets)
            .map(|(w, (count, agreed, conf))| CalibrationBucket {
                from: w[0],
                to: w[1],
                comparisons: count,
                agreement: (count > 0).then(|| agreed as f64 / count as f64),
                mean_confidence: (count > 0).then(|| conf / count as f64),
            })
            .collect(),
        position_bias: settings.swap.then(|| bias as f64 / n),
        mean_p_first: judgements.iter().map(|j| j.p_a_ab).sum::<f64>() / n,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn comparisons_may_start_with_a_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let line = r#"{"conversation": "User: hi", "response_a": "a", "response_b": "b", "preferred": "B"}"#;
        std::fs::write(&path, format!("\u{feff}{line}\n")).unwrap();
        let read = read_comparisons(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].conversation, "User: hi");
        assert!(!read[0].prefers_a);
    }
}
