//! Stop strings: text that ends a generation when it appears, cut from the
//! recorded answer (`finish_reason` = `stop`).

use charter_model::TextTokenizer;

/// A set of stop strings and how many trailing tokens to decode to find one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStrings {
    strings: Vec<String>,
    window: usize,
}

impl StopStrings {
    /// Stop strings; empty strings are ignored.
    pub fn new(strings: &[String]) -> Self {
        let strings: Vec<String> = strings.iter().filter(|s| !s.is_empty()).cloned().collect();
        // Every token decodes to at least one byte, so a string of n bytes
        // that ends in the newest token lies within its last n + 1 tokens
        // (one more for a token that straddles its start).
        let window = strings.iter().map(String::len).max().map_or(0, |n| n + 1);
        StopStrings { strings, window }
    }

    /// The strings, as given.
    pub fn strings(&self) -> &[String] {
        &self.strings
    }

    /// Whether the decoded tail of `tokens` contains a stop string.
    pub fn hit(&self, tokenizer: &TextTokenizer, tokens: &[u32]) -> bool {
        if self.strings.is_empty() {
            return false;
        }
        let tail = &tokens[tokens.len().saturating_sub(self.window)..];
        tokenizer
            .decode(tail, true)
            .is_ok_and(|text| self.strings.iter().any(|s| text.contains(s.as_str())))
    }

    /// `text` up to the first stop string, and whether one was found.
    pub fn truncate<'a>(&self, text: &'a str) -> (&'a str, bool) {
        match self
            .strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            Some(at) => (&text[..at], true),
            None => (text, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_the_earliest_stop_string() {
        let stop = StopStrings::new(&["\nUser:".to_string(), "###".to_string(), String::new()]);
        assert_eq!(stop.strings().len(), 2);
        assert_eq!(stop.truncate("a ### b\nUser: c"), ("a ", true));
        assert_eq!(stop.truncate("a\nUser: b ### c"), ("a", true));
        assert_eq!(stop.truncate("nothing here"), ("nothing here", false));
    }
}
