//! The build report: one self-contained HTML page (inline CSS and SVG, no
//! script, nothing fetched) showing what a build made and how good it is.
//!
//! It reads a build's output directory: `build-report.json` for the graph
//! and each stage's status, rows, tokens and seconds, then the stages'
//! outputs: quality flags of every responses, critiques and revisions table
//! ([`charter_stages::quality`]), critique → revision chains with word
//! diffs, revision metrics per round, label quality (the distribution of
//! `p_a`, the agreement of the two presentation orders, position bias, per
//! principle confidence), training curves from `metrics.parquet` and
//! policy evaluations. The page depends only on those files: the same
//! build gives the same bytes.

mod html;
mod svg;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use charter_stages::quality::{FilterSettings, Flag, repeated_ngram_share, word_ngram_jaccard};
use charter_table::{
    CRITIQUES, Critique, KEY_SETTINGS, LABELS, Label, RESPONSES, REVISIONS, Response, Revision,
    TableFile, Value, column_cells,
};
use serde::Deserialize;

use crate::html::{esc, num, pct, table, word_diff};

/// The page's name in a build's output directory.
pub const REPORT_FILE: &str = "report.html";

/// Chains of critiques and revisions shown.
const CHAINS: usize = 3;
/// Characters of an example row shown.
const EXCERPT: usize = 400;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the report reads is missing or malformed.
    #[error("{path}: {problem}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A table could not be read.
    #[error(transparent)]
    Table(#[from] charter_table::Error),
}

/// The report's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Deserialize)]
struct BuildReport {
    build_file: String,
    ok: bool,
    failed_stage: Option<String>,
    stages: Vec<StageRecord>,
}

#[derive(Debug, Deserialize)]
struct StageRecord {
    stage: String,
    kind: String,
    status: String,
    rows: u64,
    tokens: u64,
    seconds: f64,
    output: PathBuf,
    content_hash: String,
    /// The stages it reads (absent from reports of older builds).
    #[serde(default)]
    inputs: Vec<String>,
    /// Seconds per row when it last ran (kept while it is cached).
    #[serde(default)]
    seconds_per_row: Option<f64>,
}

/// A build's stages with their outputs found on disk.
struct Build {
    report: BuildReport,
    outputs: Vec<PathBuf>,
}

impl Build {
    fn load(dir: &Path) -> Result<Build> {
        let path = dir.join("build-report.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Input {
            path: path.clone(),
            problem: format!("{e} (run `charter build` first: it writes this file)"),
        })?;
        let report: BuildReport = serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        // Outputs are recorded as the build saw them, relative to where it
        // ran; a build's own outputs are also found beside its report.
        let outputs = report
            .stages
            .iter()
            .map(|s| match s.output.file_name() {
                Some(name) if !s.output.exists() && dir.join(name).exists() => dir.join(name),
                _ => s.output.clone(),
            })
            .collect();
        Ok(Build { report, outputs })
    }

    /// The stages of `kind` with their outputs.
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a StageRecord, &'a Path)> {
        self.report
            .stages
            .iter()
            .zip(&self.outputs)
            .filter(move |(s, _)| s.kind == kind)
            .map(|(s, p)| (s, p.as_path()))
    }

    /// The tables the stages wrote, by stage, in build order, and a
    /// finding for each one that cannot be read.
    fn tables(&self, findings: &mut Vec<String>) -> Vec<(&StageRecord, TableFile)> {
        let mut tables = Vec::new();
        for (s, p) in self.report.stages.iter().zip(&self.outputs) {
            if p.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            match TableFile::open(p) {
                Ok(t) => tables.push((s, t)),
                Err(e) => findings.push(format!(
                    "<b>{}</b>: its table cannot be read, so the page leaves it out: {}",
                    esc(&s.stage),
                    esc(&e.to_string())
                )),
            }
        }
        tables
    }
}

/// The report of the build whose output directory is `dir`, as HTML.
pub fn render(dir: &Path) -> Result<String> {
    let build = Build::load(dir)?;
    let mut findings = Vec::new();
    let tables = build.tables(&mut findings);
    let named = |name: &str| -> Vec<(&StageRecord, &TableFile)> {
        tables
            .iter()
            .filter(|(_, t)| t.table_name() == Some(name))
            .map(|(s, t)| (*s, t))
            .collect()
    };
    let mut body = String::new();
    let mut flags = BTreeMap::new();
    body.push_str(&flags_section(
        &[
            named(RESPONSES.name),
            named(CRITIQUES.name),
            named(REVISIONS.name),
        ]
        .concat(),
        &mut findings,
        &mut flags,
    )?);
    body.push_str(&rounds_section(&named(REVISIONS.name), &flags)?);
    body.push_str(&chains_section(
        &named(RESPONSES.name),
        &named(CRITIQUES.name),
        &named(REVISIONS.name),
    )?);
    let mut labels: Vec<(String, TableFile)> = Vec::new();
    for (s, t) in named(LABELS.name) {
        labels.push((s.stage.clone(), TableFile::open(t.path())?));
    }
    for (s, dir) in build.of_kind("eval") {
        if let Ok(t) = TableFile::open(&dir.join("labels.parquet")) {
            labels.push((format!("{} (evaluation)", s.stage), t));
        }
    }
    body.push_str(&labels_section(&labels, &mut findings)?);
    body.push_str(&training_section(&build)?);
    body.push_str(&evals_section(&build)?);
    let findings = if findings.is_empty() {
        "<p>Nothing stands out: no table has a quarter of its rows flagged, and the labels are \
         decided and consistent across presentation orders.</p>"
            .to_string()
    } else {
        let items: String = findings.iter().map(|f| format!("<li>{f}</li>")).collect();
        format!("<ul class=\"findings\">{items}</ul>")
    };
    let body = format!("{}{body}", overview(&build, &tables, &findings));
    let title = format!("charter build report: {}", build.report.build_file);
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        esc(&title)
    ))
}

/// Writes the report of the build in `dir` to `out`, atomically.
pub fn write(dir: &Path, out: &Path) -> Result<()> {
    let page = render(dir)?;
    charter_table::write_atomic(out, page.as_bytes()).map_err(|e| Error::Input {
        path: out.to_path_buf(),
        problem: format!("writing the report: {e}"),
    })
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;\
color:#1f2937;padding:0 16px}h1{font-size:22px}h2{font-size:18px;margin-top:36px;\
border-bottom:1px solid #ddd}h3{font-size:15px}table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #e5e7eb;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f9fafb}td:has(>.n){text-align:right;font-variant-numeric:tabular-nums}\
code{font-size:12px}.charts{display:flex;flex-wrap:wrap;gap:16px}.chain{border:1px solid #e5e7eb;\
padding:8px 12px;margin:12px 0;border-radius:6px}.round{display:grid;grid-template-columns:1fr 1fr;\
gap:12px;border-top:1px dashed #ddd;padding-top:6px;margin-top:6px}ins{background:#dcfce7;\
text-decoration:none}del{background:#fee2e2}.flag{background:#fef3c7;border-radius:3px;\
padding:0 4px;font-size:12px}.bad{color:#b91c1c}.muted{color:#6b7280}pre{white-space:pre-wrap;\
font-size:12px;margin:0}.wide{overflow-x:auto}.findings li{margin:4px 0}";

fn n(x: impl std::fmt::Display) -> String {
    format!("<span class=\"n\">{x}</span>")
}

fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(EXCERPT).collect();
    if cut.len() < text.len() {
        format!("{}…", esc(&cut))
    } else {
        esc(&cut)
    }
}

fn overview(build: &Build, tables: &[(&StageRecord, TableFile)], findings: &str) -> String {
    let r = &build.report;
    let index: BTreeMap<&str, usize> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.stage.as_str(), i))
        .collect();
    let nodes: Vec<svg::Node<'_>> = r
        .stages
        .iter()
        .map(|s| svg::Node {
            name: &s.stage,
            kind: &s.kind,
            status: &s.status,
            inputs: s
                .inputs
                .iter()
                .filter_map(|i| index.get(i.as_str()).copied())
                .collect(),
        })
        .collect();
    let settings: BTreeMap<&str, String> = tables
        .iter()
        .filter_map(|(s, t)| {
            let json: serde_json::Value =
                serde_json::from_str(t.metadata().get(KEY_SETTINGS)?).ok()?;
            Some((s.stage.as_str(), serde_json::to_string_pretty(&json).ok()?))
        })
        .collect();
    let rows: Vec<Vec<String>> = r
        .stages
        .iter()
        .map(|s| {
            vec![
                esc(&s.stage),
                esc(&s.kind),
                esc(&s.status),
                n(s.rows),
                n(s.tokens),
                n(match (s.status.as_str(), s.seconds_per_row) {
                    ("cached", Some(rate)) => format!(
                        "{:.1} <span class=\"muted\">(last run {:.1})</span>",
                        s.seconds,
                        rate * s.rows as f64
                    ),
                    _ => format!("{:.1}", s.seconds),
                }),
                format!(
                    "<code>{}</code>",
                    esc(&s.content_hash[..s.content_hash.len().min(16)])
                ),
                esc(&s.inputs.join(", ")),
                settings.get(s.stage.as_str()).map_or(String::new(), |j| {
                    format!(
                        "<details><summary>settings</summary><pre>{}</pre></details>",
                        esc(j)
                    )
                }),
            ]
        })
        .collect();
    let seconds: f64 = r.stages.iter().map(|s| s.seconds).sum();
    let status = match (&r.failed_stage, r.ok) {
        (Some(stage), _) => format!("<span class=\"bad\">failed at stage {}</span>", esc(stage)),
        (None, true) => "finished".to_string(),
        (None, false) => "<span class=\"bad\">failed</span>".to_string(),
    };
    format!(
        "<h1>Build report</h1><p><code>{}</code>: {status}, {} stages, {:.1} s of stage time.</p>\
         <h2>What to look at</h2>{findings}<h2>Build graph</h2><p class=\"muted\">Blue: ran; yellow: resumed; grey: cached or a source table.</p><div class=\"charts\"><div class=\"wide\">{}</div>{}</div>",
        esc(&r.build_file),
        r.stages.len(),
        seconds,
        svg::graph(&nodes),
        table(
            &[
                "stage",
                "kind",
                "status",
                "rows",
                "tokens",
                "seconds",
                "content hash",
                "inputs",
                ""
            ],
            &rows
        )
    )
}

/// A generated text with what the quality flags need.
struct Text {
    text: String,
    finish_reason: String,
    /// The text a revision revises.
    parent: Option<String>,
}

/// The generated texts of a responses, critiques or revisions table, and
/// whether they should be answers.
fn texts(table: &TableFile) -> Result<(Vec<Text>, bool)> {
    let text = |text, finish_reason, parent| Text {
        text,
        finish_reason,
        parent,
    };
    Ok(match table.table_name() {
        Some(n) if n == RESPONSES.name => (
            (table.rows::<Response>()?.into_iter())
                .map(|r| text(r.text, r.finish_reason, None))
                .collect(),
            true,
        ),
        Some(n) if n == CRITIQUES.name => (
            (table.rows::<Critique>()?.into_iter())
                .map(|r| text(r.text, r.finish_reason, None))
                .collect(),
            false,
        ),
        _ => (
            (table.rows::<Revision>()?.into_iter())
                .map(|r| text(r.text, r.finish_reason, Some(r.response)))
                .collect(),
            true,
        ),
    })
}

/// The quality flags section; `by_stage` gets each table's flags, row by row.
fn flags_section(
    stages: &[(&StageRecord, &TableFile)],
    findings: &mut Vec<String>,
    by_stage: &mut BTreeMap<String, Vec<Vec<Flag>>>,
) -> Result<String> {
    if stages.is_empty() {
        return Ok(String::new());
    }
    let settings = FilterSettings::default();
    let judge = settings.judge();
    let mut out = String::from(
        "<h2>Quality flags</h2><p class=\"muted\">Each generated row judged by <code>charter filter</code>'s \
         default settings; a <code>filter</code> stage drops the flags it is told to \
         (by default all but <code>refusal</code>).</p>",
    );
    let mut header = vec!["stage", "table", "rows"];
    header.extend(Flag::ALL.iter().map(|f| f.as_str()));
    header.push("any dropping flag");
    let mut rows = Vec::new();
    let mut examples = String::new();
    for (stage, t) in stages {
        let (all, answer) = texts(t)?;
        let flags: Vec<Vec<Flag>> = all
            .iter()
            .map(|t| judge.flags(&t.text, Some(&t.finish_reason), t.parent.as_deref(), answer))
            .collect();
        let total = flags.len().max(1) as f64;
        let mut row = vec![
            esc(&stage.stage),
            esc(t.table_name().unwrap_or("")),
            n(flags.len()),
        ];
        for f in Flag::ALL {
            let count = flags.iter().filter(|fl| fl.contains(&f)).count();
            row.push(n(format!("{count} ({})", pct(count as f64 / total))));
        }
        let dropped = flags
            .iter()
            .filter(|fl| fl.iter().any(|f| settings.drop.contains(f)))
            .count();
        row.push(n(format!("{dropped} ({})", pct(dropped as f64 / total))));
        if dropped as f64 / total >= 0.25 {
            let mut worst: Vec<(usize, Flag)> = Flag::ALL
                .iter()
                .map(|f| (flags.iter().filter(|fl| fl.contains(f)).count(), *f))
                .filter(|(c, f)| *c > 0 && settings.drop.contains(f))
                .collect();
            worst.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let named: Vec<String> = worst.iter().map(|(c, f)| format!("{c} {f}")).collect();
            findings.push(format!(
                "<b>{}</b>: {} of {} rows would be dropped by <code>charter filter</code> ({}).",
                esc(&stage.stage),
                dropped,
                flags.len(),
                named.join(", ")
            ));
        }
        rows.push(row);
        let mut shown = Vec::new();
        for f in Flag::ALL {
            if let Some(i) = flags.iter().position(|fl| fl.contains(&f)) {
                let text = &all[i];
                shown.push(vec![
                    format!("<span class=\"flag\">{f}</span>"),
                    n(i),
                    esc(&text.finish_reason),
                    format!(
                        "{}{}",
                        excerpt(&text.text),
                        text.parent.as_deref().map_or(String::new(), |p| format!(
                            "<div class=\"muted\">revising: {}</div>",
                            excerpt(p)
                        ))
                    ),
                ]);
            }
        }
        if !shown.is_empty() {
            let _ = write!(
                examples,
                "<details><summary>examples from <b>{}</b></summary>{}</details>",
                esc(&stage.stage),
                table(&["flag", "row", "finish", "text"], &shown)
            );
        }
        by_stage.insert(stage.stage.clone(), flags);
    }
    out.push_str(&table(&header, &rows));
    out.push_str(&examples);
    Ok(out)
}

/// Revision metrics per round; `flags` are each table's, from [`flags_section`].
fn rounds_section(
    stages: &[(&StageRecord, &TableFile)],
    flags: &BTreeMap<String, Vec<Vec<Flag>>>,
) -> Result<String> {
    if stages.is_empty() {
        return Ok(String::new());
    }
    let mut rows = Vec::new();
    for (stage, t) in stages {
        let revisions = t.rows::<Revision>()?;
        if revisions.is_empty() {
            continue;
        }
        let count = revisions.len() as f64;
        let mean = |f: &dyn Fn(&Revision) -> f64| revisions.iter().map(f).sum::<f64>() / count;
        let round = revisions
            .first()
            .map_or(String::new(), |r| r.round.to_string());
        let flags = flags.get(&stage.stage).map_or(&[][..], Vec::as_slice);
        let flagged =
            |flag: Flag| flags.iter().filter(|f| f.contains(&flag)).count() as f64 / count;
        rows.push(vec![
            esc(&stage.stage),
            n(round),
            n(revisions.len()),
            n(format!(
                "{:.1}",
                mean(&|r| r.text.split_whitespace().count() as f64)
            )),
            n(num(mean(&|r| repeated_ngram_share(&r.text, 5)))),
            n(pct(flagged(Flag::Repetition))),
            n(pct(flagged(Flag::Meta))),
            n(pct(flagged(Flag::Refusal))),
            n(pct(flagged(Flag::Truncated))),
            n(num(mean(&|r| {
                1.0 - word_ngram_jaccard(&r.text, &r.response, 3)
            }))),
        ]);
    }
    Ok(format!(
        "<h2>Revisions by round</h2><p class=\"muted\">Change: 1 − Jaccard similarity of word 3-grams \
         between a revision and the text it revises (0: unchanged, 1: rewritten). Repeated: mean share \
         of characters in repeated word 5-grams.</p>{}",
        table(
            &[
                "stage",
                "round",
                "rows",
                "words",
                "repeated",
                "repetition",
                "meta",
                "refusal",
                "truncated",
                "change"
            ],
            &rows
        )
    ))
}

fn chains_section(
    responses: &[(&StageRecord, &TableFile)],
    critiques: &[(&StageRecord, &TableFile)],
    revisions: &[(&StageRecord, &TableFile)],
) -> Result<String> {
    let mut by_parent: BTreeMap<String, Critique> = BTreeMap::new();
    for (_, t) in critiques {
        for c in t.rows::<Critique>()? {
            by_parent.entry(c.parent_id.clone()).or_insert(c);
        }
    }
    let mut by_critique: BTreeMap<String, Revision> = BTreeMap::new();
    for (_, t) in revisions {
        for r in t.rows::<Revision>()? {
            by_critique.entry(r.critique_id.clone()).or_insert(r);
        }
    }
    let mut out = String::new();
    let mut shown = 0;
    for (_, t) in responses {
        for response in t.rows::<Response>()? {
            if shown == CHAINS || !by_parent.contains_key(&response.id) {
                continue;
            }
            shown += 1;
            let _ = write!(
                out,
                "<div class=\"chain\"><p><b>Prompt:</b> {}</p><p><b>Answer</b> <span class=\"muted\">({})</span>: {}</p>",
                esc(&response.prompt),
                esc(&response.finish_reason),
                esc(&response.text)
            );
            let (mut parent, mut previous) = (response.id.clone(), response.text.clone());
            while let Some(c) = by_parent.get(&parent) {
                let Some(r) = by_critique.get(&c.id) else {
                    break;
                };
                let _ = write!(
                    out,
                    "<div class=\"round\"><div><b>Round {} critique</b> <span class=\"muted\">principle <code>{}</code></span><br>{}</div>\
                     <div><b>Revision</b> <span class=\"muted\">(changes from the text before)</span><br>{}</div></div>",
                    c.round,
                    esc(&c.principle_id),
                    esc(&c.text),
                    word_diff(&previous, &r.text)
                );
                parent.clone_from(&r.id);
                previous.clone_from(&r.text);
            }
            out.push_str("</div>");
        }
    }
    if shown == 0 {
        return Ok(String::new());
    }
    Ok(format!(
        "<h2>Critique → revision chains</h2><p class=\"muted\">The first {shown} answers with critiques; \
         each revision marks the words it adds <ins>like this</ins> and drops <del>like this</del>.</p>{out}"
    ))
}

fn labels_section(tables: &[(String, TableFile)], findings: &mut Vec<String>) -> Result<String> {
    if tables.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from(
        "<h2>Label quality</h2><p class=\"muted\"><code>p_a</code>: the labeller's probability that \
         answer A is better. Order consistency: share of pairs preferred the same way in both \
         presentation orders. Position bias: the mean probability given to whichever answer was \
         shown first (0.5: none). Confidence: mean |2·p_a − 1|.</p>",
    );
    for (name, t) in tables {
        let labels = t.rows::<Label>()?;
        let count = labels.len().max(1) as f64;
        let p: Vec<f64> = labels.iter().map(|l| l.p_a).collect();
        let both: Vec<(f64, f64)> = labels
            .iter()
            .filter_map(|l| l.p_a_ba.map(|ba| (l.p_a_ab, ba)))
            .collect();
        let near = p.iter().filter(|x| (*x - 0.5).abs() < 0.1).count() as f64 / count;
        let mut stats = vec![
            vec!["pairs".to_string(), n(labels.len())],
            vec!["mean p_a".into(), n(num(p.iter().sum::<f64>() / count))],
            vec!["share with |p_a − 0.5| < 0.1".into(), n(pct(near))],
        ];
        if !both.is_empty() {
            let same = both
                .iter()
                .filter(|(ab, ba)| (*ab > 0.5) == (*ba > 0.5))
                .count();
            let first: f64 = both
                .iter()
                .map(|(ab, ba)| (ab + (1.0 - ba)) / 2.0)
                .sum::<f64>()
                / both.len() as f64;
            stats.push(vec![
                "order consistency".into(),
                n(pct(same as f64 / both.len() as f64)),
            ]);
            stats.push(vec!["position bias (P(first shown))".into(), n(num(first))]);
            let consistency = same as f64 / both.len() as f64;
            if consistency < 0.6 || (first - 0.5).abs() > 0.1 {
                findings.push(format!(
                    "<b>{}</b>: the labeller decides {} of pairs the same way in both orders and \
                     gives the answer shown {} a probability of {} on average: its labels follow position more than content.",
                    esc(name),
                    pct(consistency),
                    if first < 0.5 { "second" } else { "first" },
                    num(first.max(1.0 - first))
                ));
            }
        }
        if near >= 0.5 {
            findings.push(format!(
                "<b>{}</b>: {} of labels are within 0.1 of 0.5: close to a coin flip.",
                esc(name),
                pct(near)
            ));
        }
        let mut principles: BTreeMap<&str, (usize, f64, usize)> = BTreeMap::new();
        for l in &labels {
            let e = principles.entry(&l.principle_id).or_default();
            e.0 += 1;
            e.1 += (2.0 * l.p_a - 1.0).abs();
            e.2 += usize::from(l.p_a > 0.5);
        }
        let per_principle: Vec<Vec<String>> = principles
            .iter()
            .map(|(id, (c, conf, a))| {
                vec![
                    format!("<code>{}</code>", esc(id)),
                    n(c),
                    n(num(conf / *c as f64)),
                    n(pct(*a as f64 / *c as f64)),
                ]
            })
            .collect();
        let mut charts = svg::histogram(&p, 0.0, 1.0, 20, "p_a");
        if !both.is_empty() {
            charts.push_str(&svg::scatter(
                &both,
                "P(A better), A shown first",
                "P(A better), B shown first",
            ));
        }
        let _ = write!(
            out,
            "<h3>{}</h3><div class=\"charts\">{charts}{}{}</div>",
            esc(name),
            table(&["", "value"], &stats),
            table(
                &["principle", "pairs", "confidence", "prefers A"],
                &per_principle
            )
        );
    }
    Ok(out)
}

/// The numeric columns of a Parquet file, by name, in file order.
fn numeric_columns(path: &Path) -> Result<Vec<(String, Vec<f64>)>> {
    let t = TableFile::open(path)?;
    let names: Vec<String> = t
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut columns: Vec<(String, Vec<f64>)> =
        names.iter().map(|n| (n.clone(), Vec::new())).collect();
    for batch in t.batches()? {
        let batch = batch?;
        for (i, (_, values)) in columns.iter_mut().enumerate() {
            for v in column_cells(&batch, i).unwrap_or_default() {
                values.push(match v {
                    Value::Float(x) => x,
                    Value::UInt(x) => x as f64,
                    Value::Int(x) => x as f64,
                    _ => f64::NAN,
                });
            }
        }
    }
    columns.retain(|(_, v)| !v.is_empty() && v.iter().all(|x| x.is_finite()));
    Ok(columns)
}

/// Online RL's own charts, when `dir` holds them: per iteration (reward,
/// KL, entropy, answer length, clip fraction) and the held-out curve
/// (reward against the judge's win rate over the starting policy), with
/// every point where the reward rose while the win rate fell named.
fn online_rl(dir: &Path) -> Result<String> {
    let mut out = String::new();
    let parts: [(&str, &str, &[&str]); 2] = [
        (
            "iterations.parquet",
            "per iteration",
            &["reward", "kl", "entropy", "answer_tokens", "clip_fraction"],
        ),
        (
            "curve.parquet",
            "held-out prompts",
            &["reward", "win_rate", "kl", "refusal_rate"],
        ),
    ];
    for (file, what, wanted) in parts {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        let columns = numeric_columns(&path)?;
        let get = |name: &str| columns.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let Some(xs) = get("iteration") else {
            continue;
        };
        let mut charts = String::new();
        for name in wanted {
            if let Some(ys) = get(name) {
                charts.push_str(&svg::line(xs, ys, "iteration", name));
            }
        }
        let mut notes = String::new();
        if let (Some(reward), Some(win)) = (get("reward"), get("win_rate")) {
            for i in over_optimised(reward, win) {
                let _ = write!(
                    notes,
                    "<p class=\"bad\">over-optimisation at iteration {}: the reward rose \
                     ({} → {}) while the win rate against the start fell ({} → {})</p>",
                    xs[i],
                    num(reward[i - 1]),
                    num(reward[i]),
                    num(win[i - 1]),
                    num(win[i])
                );
            }
        }
        let _ = write!(
            out,
            "<h4>online RL, {what}</h4>{notes}<div class=\"charts\">{charts}</div>"
        );
    }
    Ok(out)
}

/// The points of a curve where the reward rose since the point before
/// while the win rate fell.
fn over_optimised(reward: &[f64], win: &[f64]) -> Vec<usize> {
    (1..reward.len().min(win.len()))
        .filter(|&i| reward[i] > reward[i - 1] && win[i] < win[i - 1])
        .collect()
}

fn training_section(build: &Build) -> Result<String> {
    let mut out = String::new();
    for (stage, dir) in build.of_kind("train") {
        let path = dir.join("metrics.parquet");
        if !path.exists() {
            continue;
        }
        let columns = numeric_columns(&path)?;
        let Some((_, steps)) = columns.iter().find(|(n, _)| n == "step") else {
            continue;
        };
        let mut charts = String::new();
        for (name, values) in &columns {
            if matches!(name.as_str(), "step" | "epoch" | "tokens" | "elapsed_s") {
                continue;
            }
            charts.push_str(&svg::line(steps, values, "step", name));
        }
        let _ = write!(
            out,
            "<h3>{} <span class=\"muted\">({} steps)</span></h3><div class=\"charts\">{charts}</div>",
            esc(&stage.stage),
            steps.len()
        );
        out.push_str(&online_rl(dir)?);
    }
    if out.is_empty() {
        return Ok(out);
    }
    Ok(format!("<h2>Training</h2>{out}"))
}

fn evals_section(build: &Build) -> Result<String> {
    let mut rows = Vec::new();
    for (stage, dir) in build.of_kind("eval") {
        let path = dir.join("report.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let r = &json["report"];
        let f = |v: &serde_json::Value| v.as_f64().map_or("—".to_string(), num);
        let interval = |v: &serde_json::Value| format!("[{}, {}]", f(&v[0]), f(&v[1]));
        rows.push(vec![
            esc(&stage.stage),
            esc(json["b"].as_str().unwrap_or("")),
            esc(json["a"].as_str().unwrap_or("")),
            esc(json["constitution"].as_str().unwrap_or("")),
            n(r["comparisons"].as_u64().unwrap_or(0)),
            n(format!(
                "{} {}",
                f(&r["win_rate"]),
                interval(&r["win_rate_ci"])
            )),
            n(format!("{} {}", f(&r["elo"]), interval(&r["elo_ci"]))),
            n(format!(
                "{} / {} / {}",
                r["wins"].as_u64().unwrap_or(0),
                r["losses"].as_u64().unwrap_or(0),
                r["ties"].as_u64().unwrap_or(0)
            )),
            n(r["order_consistency"].as_f64().map_or("—".to_string(), pct)),
        ]);
    }
    if rows.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "<h2>Policy evaluations</h2><p class=\"muted\">Win rate of policy B over policy A as judged by \
         the labeller, with its 95% interval, and the Elo difference it implies.</p>{}",
        table(
            &[
                "stage",
                "policy B",
                "policy A",
                "constitution",
                "comparisons",
                "win rate of B",
                "Elo of B",
                "wins / losses / ties",
                "order consistency"
            ],
            &rows
        )
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_optimisation_is_the_reward_rising_while_the_win_rate_falls() {
        // Both rise, then the reward rises alone, then both fall.
        let reward = [0.1, 0.3, 0.6, 0.5];
        let win = [0.5, 0.56, 0.52, 0.5];
        assert_eq!(over_optimised(&reward, &win), [2]);
        assert!(over_optimised(&[0.1], &[0.5]).is_empty());
    }
}
