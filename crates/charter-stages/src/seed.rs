//! Per-row seeds: a function of the build seed and the row's identity only,
//! so a row's random draws never depend on its batch, its shard or how many
//! rows ran before it.

/// The seed of one unit of work: blake3 over a domain tag, the build seed and
/// the parts that identify the row (prompt id, sample index, round, …).
pub fn row_seed(stage: &str, build_seed: u64, parts: &[&str]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"charter.seed.v1\0");
    h.update(stage.as_bytes());
    h.update(&[0]);
    h.update(&build_seed.to_le_bytes());
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_separate_every_part() {
        let a = row_seed("respond", 0, &["p1", "0"]);
        assert_eq!(a, row_seed("respond", 0, &["p1", "0"]));
        assert_ne!(a, row_seed("respond", 1, &["p1", "0"]));
        assert_ne!(a, row_seed("respond", 0, &["p1", "1"]));
        assert_ne!(a, row_seed("critique", 0, &["p1", "0"]));
        // Length prefixes keep ("ab", "c") apart from ("a", "bc").
        assert_ne!(
            row_seed("s", 0, &["ab", "c"]),
            row_seed("s", 0, &["a", "bc"])
        );
    }
}
