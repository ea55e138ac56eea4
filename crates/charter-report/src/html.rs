//! HTML pieces: escaping, tables and a word-level diff.

use std::fmt::Write as _;

/// `text` escaped for HTML text and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table with a header row; cells are HTML already.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// `new` as HTML with the words it adds to `old` marked `<ins>` and the
/// words it drops shown `<del>`: a longest-common-subsequence diff over
/// whitespace-separated words.
pub(crate) fn word_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.split_whitespace().collect();
    let b: Vec<&str> = new.split_whitespace().collect();
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    let mut push = |tag: Option<&str>, w: &str| match tag {
        Some(t) => out.push(format!("<{t}>{}</{t}>", esc(w))),
        None => out.push(esc(w)),
    };
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            push(None, b[j]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            push(Some("ins"), b[j]);
            j += 1;
        } else {
            push(Some("del"), a[i]);
            i += 1;
        }
    }
    out.join(" ")
}

/// A share as a percentage with one decimal.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// A number with three decimals.
pub(crate) fn num(x: f64) -> String {
    format!("{x:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_mark_words_added_and_dropped() {
        assert_eq!(
            word_diff("it is not safe", "it is safe <now>"),
            "it is <del>not</del> safe <ins>&lt;now&gt;</ins>"
        );
        assert_eq!(word_diff("", "new"), "<ins>new</ins>");
        assert_eq!(word_diff("old", ""), "<del>old</del>");
    }
}
