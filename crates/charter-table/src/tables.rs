//! charter's core tables, from prompts to preference labels.
//!
//! Each table is declared once here; the declaration produces its row struct,
//! its [`TableSpec`](crate::TableSpec) and the conversions to and from Arrow.
//! `schemas/<table>.toml` at the repository root documents each column's
//! meaning, and a test keeps those files and these declarations identical.
//!
//! `key` columns make up the row id: the row's parents and everything that
//! determines its output (model hash, constitution hash, sampling settings,
//! seed). `data` columns are the outputs and conveniences carried along.

use crate::record::table;

table! {
    /// One prompt, as imported.
    pub struct Prompt in PROMPTS = "prompts", version 1 {
        /// Row id: blake3 of the text.
        id: String => Id,
        /// The prompt exactly as imported (normalised only for dedup hashing).
        text: String => Key,
        /// Where it came from: the `--source` name, or the input file's stem.
        source: String => Data,
        /// 1-based line (JSONL, text, CSV record) or row (Parquet) in the source file.
        source_row: u64 => Data,
        /// Labels carried over from the input (e.g. `intents:S004lewd`).
        tags: Vec<String> => Data,
    }
}

table! {
    /// One sampled answer to a prompt.
    pub struct Response in RESPONSES = "responses", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The prompt answered.
        prompt_id: String => Key,
        /// The prompt's text, copied so the table stands alone.
        prompt: String => Data,
        /// System prompt given to the model, if any.
        system: Option<String> => Key,
        /// Sample index among the prompt's samples (0-based).
        sample: u32 => Key,
        /// Model name.
        model: String => Data,
        /// Content hash of the model directory.
        model_hash: String => Key,
        /// Sampling temperature (0 = greedy).
        temperature: f32 => Key,
        /// Nucleus sampling mass (1 = off).
        top_p: f32 => Key,
        /// Top-k cut-off (0 = off).
        top_k: u32 => Key,
        /// Cap on generated tokens.
        max_new_tokens: u32 => Key,
        /// The row's seed, derived from the build seed and the row's other keys.
        seed: u64 => Key,
        /// The generated answer.
        text: String => Data,
        /// Tokens in the rendered prompt; the context window for a prompt too long in bytes to tokenise.
        prompt_tokens: u32 => Data,
        /// Tokens generated.
        completion_tokens: u32 => Data,
        /// Why generation stopped: `stop`, `length`, or `context` (prompt too long).
        finish_reason: String => Data,
    }
}

table! {
    /// A critique of a response (or an earlier revision) against one principle.
    pub struct Critique in CRITIQUES = "critiques", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The prompt at the root of the chain.
        prompt_id: String => Key,
        /// The response or revision critiqued.
        parent_id: String => Key,
        /// The initial response the chain of rounds started from.
        response_id: String => Data,
        /// Critique/revision round, 1-based.
        round: u32 => Key,
        /// The prompt's text.
        prompt: String => Data,
        /// The text critiqued.
        response: String => Data,
        /// Id of the principle drawn for this row and round.
        principle_id: String => Data,
        /// The principle's critique request, as shown to the model.
        critique_request: String => Data,
        /// The generated critique.
        text: String => Data,
        /// Model name.
        model: String => Data,
        /// Content hash of the model directory.
        model_hash: String => Key,
        /// Constitution name.
        constitution: String => Data,
        /// Content hash of the constitution.
        constitution_hash: String => Key,
        /// Sampling temperature (0 = greedy).
        temperature: f32 => Key,
        /// Nucleus sampling mass (1 = off).
        top_p: f32 => Key,
        /// Top-k cut-off (0 = off).
        top_k: u32 => Key,
        /// Cap on generated tokens.
        max_new_tokens: u32 => Key,
        /// The row's seed.
        seed: u64 => Key,
        /// Tokens in the rendered prompt; the context window for a prompt too long in bytes to tokenise.
        prompt_tokens: u32 => Data,
        /// Tokens generated.
        completion_tokens: u32 => Data,
        /// Why generation stopped.
        finish_reason: String => Data,
    }
}

table! {
    /// A revision of a response following a critique.
    pub struct Revision in REVISIONS = "revisions", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The prompt at the root of the chain.
        prompt_id: String => Key,
        /// The critique this revision follows.
        critique_id: String => Key,
        /// The initial response the chain of rounds started from.
        response_id: String => Data,
        /// Critique/revision round, 1-based.
        round: u32 => Key,
        /// The prompt's text.
        prompt: String => Data,
        /// The text revised (the response, or the previous round's revision).
        response: String => Data,
        /// Id of the principle drawn for this row and round.
        principle_id: String => Data,
        /// The critique being acted on.
        critique: String => Data,
        /// The principle's revision request, as shown to the model.
        revision_request: String => Data,
        /// The revised answer: SL-CAI training data.
        text: String => Data,
        /// Model name.
        model: String => Data,
        /// Content hash of the model directory.
        model_hash: String => Key,
        /// Constitution name.
        constitution: String => Data,
        /// Content hash of the constitution.
        constitution_hash: String => Key,
        /// Sampling temperature (0 = greedy).
        temperature: f32 => Key,
        /// Nucleus sampling mass (1 = off).
        top_p: f32 => Key,
        /// Top-k cut-off (0 = off).
        top_k: u32 => Key,
        /// Cap on generated tokens.
        max_new_tokens: u32 => Key,
        /// The row's seed.
        seed: u64 => Key,
        /// Tokens in the rendered prompt; the context window for a prompt too long in bytes to tokenise.
        prompt_tokens: u32 => Data,
        /// Tokens generated.
        completion_tokens: u32 => Data,
        /// Why generation stopped.
        finish_reason: String => Data,
    }
}

table! {
    /// Two answers to the same prompt, to be compared.
    pub struct Pair in PAIRS = "pairs", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The prompt both answer.
        prompt_id: String => Key,
        /// The prompt's text.
        prompt: String => Data,
        /// Id of answer A.
        response_a_id: String => Key,
        /// Id of answer B.
        response_b_id: String => Key,
        /// Table answer A came from (`responses`, `revisions`, …).
        source_a: String => Data,
        /// Table answer B came from.
        source_b: String => Data,
        /// Answer A's text.
        response_a: String => Data,
        /// Answer B's text.
        response_b: String => Data,
    }
}

table! {
    /// An AI-feedback preference label for a pair, against one principle.
    pub struct Label in LABELS = "labels", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The pair labelled.
        pair_id: String => Key,
        /// The prompt both answers respond to.
        prompt_id: String => Data,
        /// The prompt's text.
        prompt: String => Data,
        /// Id of answer A.
        response_a_id: String => Data,
        /// Id of answer B.
        response_b_id: String => Data,
        /// Answer A's text.
        response_a: String => Data,
        /// Answer B's text.
        response_b: String => Data,
        /// Id of the preference principle drawn for this pair.
        principle_id: String => Data,
        /// The principle's question, as asked of the labeller.
        principle: String => Data,
        /// Model name of the labeller.
        model: String => Data,
        /// Content hash of the labeller's model directory.
        model_hash: String => Key,
        /// Constitution name.
        constitution: String => Data,
        /// Content hash of the constitution.
        constitution_hash: String => Key,
        /// Whether the labeller reasoned (chain of thought) before answering.
        cot: bool => Key,
        /// Whether both presentation orders were scored.
        swap: bool => Key,
        /// The row's seed.
        seed: u64 => Key,
        /// Probability that A is better: the mean over the orders scored, clamped when `cot`.
        p_a: f64 => Data,
        /// P(A better) with A shown first: normalised probability of the "(A)" answer token.
        p_a_ab: f64 => Data,
        /// P(A better) with B shown first; null without `swap`.
        p_a_ba: Option<f64> => Data,
        /// The labeller's reasoning with A shown first, with `cot`.
        cot_ab: Option<String> => Data,
        /// The labeller's reasoning with B shown first, with `cot` and `swap`.
        cot_ba: Option<String> => Data,
        /// The preferred answer's text (A when `p_a` ≥ 0.5).
        chosen: String => Data,
        /// The other answer's text.
        rejected: String => Data,
        /// The preferred answer's id.
        chosen_id: String => Data,
        /// The other answer's id.
        rejected_id: String => Data,
    }
}

table! {
    /// One synthetic user message for training a classifier: generated for
    /// a category of a classifier constitution, or an augmented copy of one.
    pub struct Query in QUERIES = "queries", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The category of the classifier constitution it was generated for.
        category: String => Key,
        /// The category's label: `harmful` or `harmless`.
        label: String => Data,
        /// Sample index among the category's queries (0-based).
        sample: u32 => Key,
        /// The query this one was augmented from; null for a generated query.
        parent_id: Option<String> => Key,
        /// The augmentations applied to the parent, in order (`base64`, `template:dev-mode`, …).
        transforms: Vec<String> => Key,
        /// Generator model name.
        model: String => Data,
        /// Content hash of the generator's model directory.
        model_hash: String => Key,
        /// Classifier constitution name.
        constitution: String => Data,
        /// Content hash of the classifier constitution.
        constitution_hash: String => Key,
        /// Sampling temperature of the generator.
        temperature: f32 => Key,
        /// Nucleus sampling mass (1 = off).
        top_p: f32 => Key,
        /// Top-k cut-off (0 = off).
        top_k: u32 => Key,
        /// Cap on generated tokens.
        max_new_tokens: u32 => Key,
        /// The row's seed, derived from the build seed and the row's other keys.
        seed: u64 => Key,
        /// The user message.
        text: String => Data,
        /// Why generation stopped (`stop`, `length`); an augmented query keeps its parent's.
        finish_reason: String => Data,
    }
}

table! {
    /// A labeller's soft verdict on a query (input guard) or on a query and
    /// an answer (output guard): a classifier's training target.
    pub struct Target in TARGETS = "targets", version 1 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The query, or the response, judged.
        item_id: String => Key,
        /// The user message.
        text: String => Data,
        /// The assistant's answer judged, for an output guard; null for an input guard.
        answer: Option<String> => Data,
        /// The category the query was generated for.
        category: String => Data,
        /// The category's label: `harmful` or `harmless`.
        label: String => Data,
        /// The augmentations applied to the query.
        transforms: Vec<String> => Data,
        /// Model name of the labeller.
        model: String => Data,
        /// Content hash of the labeller's model directory.
        model_hash: String => Key,
        /// Classifier constitution name.
        constitution: String => Data,
        /// Content hash of the classifier constitution.
        constitution_hash: String => Key,
        /// Whether both presentation orders were scored.
        swap: bool => Key,
        /// Probability that the content is blocked: the mean over the orders scored.
        p_harmful: f64 => Data,
        /// P(blocked) with the blocked option shown as (A).
        p_harmful_ab: f64 => Data,
        /// P(blocked) with the blocked option shown as (B); null without `swap`.
        p_harmful_ba: Option<f64> => Data,
    }
}

table! {
    /// An AI-feedback rating of one answer against one principle: the
    /// reward of direct RLAIF (Lee et al. 2023), read from the rater's
    /// probabilities of the rating digits.
    pub struct Rating in RATINGS = "ratings", version 2 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// The response or revision rated.
        item_id: String => Key,
        /// The table it came from (`responses`, `revisions`).
        source: String => Data,
        /// The prompt answered.
        prompt_id: String => Data,
        /// The prompt's text.
        prompt: String => Data,
        /// The answer rated.
        response: String => Data,
        /// Id of the preference principle drawn for this row.
        principle_id: String => Data,
        /// The principle's question, as put to the rater.
        principle: String => Data,
        /// Model name of the rater.
        model: String => Data,
        /// Content hash of the rater's model directory.
        model_hash: String => Key,
        /// Constitution name.
        constitution: String => Data,
        /// Content hash of the constitution.
        constitution_hash: String => Key,
        /// Whether the rater reasoned (chain of thought) before rating.
        cot: bool => Key,
        /// The row's seed.
        seed: u64 => Key,
        /// Expected rating, 1 to 9, over the rater's normalised probabilities of the digits.
        score: f64 => Data,
        /// The score mapped to [-1, 1]: (score - 5) / 4.
        reward: f64 => Data,
        /// The rater's probability of answering with any digit 1–9 at all:
        /// how much of its next-token mass the score is read from.
        rating_mass: f64 => Data,
        /// The rater's reasoning before the rating, with `cot`.
        reasoning: Option<String> => Data,
    }
}

table! {
    /// One sampled answer of online RL (`charter train rl`): its reward,
    /// its KL from the starting policy and the advantage it was trained
    /// with.
    pub struct Rollout in ROLLOUTS = "rollouts", version 2 {
        /// Row id: blake3 of the key columns.
        id: String => Id,
        /// Fingerprint of the training run (base model, prompts, reward, settings).
        run: String => Key,
        /// The iteration that sampled the answer, 1-based.
        iteration: u64 => Key,
        /// The prompt answered.
        prompt_id: String => Key,
        /// Which of the prompt's samples in the iteration, 0-based.
        sample: u64 => Key,
        /// The row's sampling seed.
        seed: u64 => Data,
        /// Content hash of the policy that sampled the answer (the iteration's export).
        policy_hash: String => Data,
        /// The prompt's text.
        prompt: String => Data,
        /// The sampled answer.
        response: String => Data,
        /// Tokens sampled, the end-of-turn token included when it ended the answer.
        answer_tokens: u64 => Data,
        /// `stop` (end of turn) or `length` (the token cap).
        finish_reason: String => Data,
        /// The reward model's or rater's reward for the answer.
        reward: f64 => Data,
        /// The rater's reasoning before its rating, for a labeller reward with chain of thought.
        reward_reasoning: Option<String> => Data,
        /// Sum over the answer's tokens of log π(token) − log π_ref(token): the sampled estimate of KL(π ‖ π_ref) for this answer.
        kl: f64 => Data,
        /// reward − kl_coef · kl: what the advantage is computed from.
        shaped_reward: f64 => Data,
        /// Leave-one-out advantage: the shaped reward minus the mean of the prompt's other samples'.
        advantage: f64 => Data,
        /// Log-probability of the answer under the policy that sampled it (the trainer's f32 weights).
        policy_logp: f64 => Data,
        /// Log-probability of the answer under the starting policy.
        reference_logp: f64 => Data,
    }
}

/// Every core table, in pipeline order.
pub const ALL_TABLES: [&crate::schema::TableSpec; 10] = [
    &PROMPTS, &RESPONSES, &CRITIQUES, &REVISIONS, &PAIRS, &LABELS, &RATINGS, &QUERIES, &TARGETS,
    &ROLLOUTS,
];

/// The core table with this name.
pub fn table_spec(name: &str) -> Option<&'static crate::schema::TableSpec> {
    ALL_TABLES.into_iter().find(|t| t.name == name)
}
