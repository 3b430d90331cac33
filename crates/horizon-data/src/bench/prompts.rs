//! The question text of each benchmark as LLaVA-1.5's evaluation scripts and lmms-eval build it.
//!
//! [`question_prompt`] gives the text that goes where the question goes in the model's chat template
//! (after the image token; the template itself, `<image>\n` and the conversation wrapper, are the model
//! family's business). Sources: LLaVA = `haotian-liu/LLaVA`
//! (`llava/eval/model_vqa_loader.py`, `model_vqa_science.py`, `model_vqa_mmbench.py` and the eval.zip
//! question files), lmms-eval = `EvolvingLMMs-Lab/lmms-eval` `lmms_eval/tasks/<task>/` (default
//! `lmms_eval_specific_kwargs`) of lmms-eval 0.7.3 (the PyPI release).
//!
//! | Benchmark | [`PromptStyle::Llava`] | [`PromptStyle::LmmsEval`] |
//! |---|---|---|
//! | MME | question without its trailing "Please answer yes or no." (and the spaces before it) + [`SHORT_ANSWER`] (the text of `llava_mme.jsonl`, undone by `convert_answer_to_mme.py`) | `question.strip()` with `" Please answer yes or no."` replaced by "" + [`SHORT_ANSWER`] (`mme/utils.py` `mme_doc_to_text`, `mme.yaml`); differs only where the release has two spaces before "Please" |
//! | POPE | `question.strip()` + [`SHORT_ANSWER`] (`llava_pope_test.jsonl`) | the same (`pope/utils.py` `pope_doc_to_text`, `pope.yaml`) |
//! | GQA | question + [`SHORT_ANSWER`] (`llava_gqa_testdev_balanced.jsonl`) | the same (`gqa/utils.py` `gqa_doc_to_text`, `gqa.yaml`) |
//! | TextVQA | capitalized question + "\nReference OCR token: " + tokens joined by ", " (the line kept, empty, without tokens, as on 115 of the file's 5,000 lines) + [`SHORT_ANSWER`] (`llava_textvqa_val_v051_ocr.jsonl`) | capitalized question + [`SHORT_ANSWER`], no OCR line (`textvqa/utils.py` `textvqa_doc_to_text`; `_default_template_textvqa_yaml` has `ocr: false`) |
//! | ScienceQA | "Context: {hint}\n" when there is a hint, the question, "\nA. {choice}" per choice, then [`OPTION_LETTER`] (the layout of `llava_test_CQM-A.json`'s image questions + `model_vqa_science.py --single-pred-prompt`) | the same (`scienceqa/utils.py` `sqa_doc_to_text`, `scienceqa_img.yaml`) |
//! | MMBench | "{hint}\n" when there is a hint, the question, "\n{L}. {option}" for A–D up to the first missing one (LLaVA's `is_none`: also an option reading `none`/`nan`), then [`OPTION_LETTER`] (`model_vqa_mmbench.py --single-pred-prompt`, English) | "{hint} " when there is a hint, the question, " There are several options:", "\n{L}. {option}" per option A–E, then "\n" + [`OPTION_LETTER`] (`mmbench/en_utils.py` `mmbench_doc_to_text`, `mmbench_evals.py` `create_options_prompt`, `sys_prompt` of `mmbench.yaml`, post prompt of `_default_template_mmbench_en_yaml`) |
//! | synthetic, generic | the question as stored | the same |
//!
//! "Capitalized" is Python's `str.capitalize()` (first character upper-cased, the rest lower-cased), as
//! lmms-eval applies it; LLaVA's TextVQA file shows the upper-case first letter ("What is the brand of this
//! camera?"), the lower-casing of the rest is taken from lmms-eval (unverified for LLaVA).
//!
//! **LLaVA files** ([`Sample::question_is_prompt`]): their text already is the prompt (MME, POPE, GQA and
//! TextVQA jsonl: instruction and OCR line included; ScienceQA json: hint and options included). Both styles
//! use it as written and add only what is missing at its end: [`SHORT_ANSWER`] for MME / POPE / GQA /
//! TextVQA (so POPE's label files `coco_pope_*.json`, read as question files, get it once), and
//! [`OPTION_LETTER`] for ScienceQA (which `model_vqa_science.py` appends). One exception: the lmms-eval
//! TextVQA prompt of a LLaVA jsonl line is rebuilt from its question ([`bare_question`]) without the OCR
//! line. The lmms-eval MME / POPE / GQA / ScienceQA prompts coincide with LLaVA's text, so nothing else
//! needs rebuilding.

use super::{BenchmarkKind, Sample};

/// LLaVA-1.5's short-answer instruction (MME, POPE, GQA, TextVQA), with its leading newline.
pub const SHORT_ANSWER: &str = "\nAnswer the question using a single word or phrase.";
/// The option-letter instruction (ScienceQA, MMBench), with its leading newline.
pub const OPTION_LETTER: &str =
    "\nAnswer with the option's letter from the given choices directly.";
/// The OCR-token line of LLaVA's TextVQA prompt (followed by the tokens joined by ", ").
pub const OCR_PREFIX: &str = "\nReference OCR token: ";
/// MME's own instruction at the end of each HF question.
pub const MME_YES_NO: &str = "Please answer yes or no.";
/// lmms-eval's MMBench option header (`mmbench.yaml` `metadata.sys_prompt`).
pub const MMBENCH_OPTIONS_HEADER: &str = "There are several options:";

/// Which evaluation harness's prompt to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PromptStyle {
    /// LLaVA-1.5's evaluation scripts and question files (the numbers of the LLaVA Model Zoo).
    #[default]
    Llava,
    /// lmms-eval's task defaults, as of lmms-eval 0.7.3 (`lmms_eval/tasks/<task>/*.yaml` and `utils.py`).
    LmmsEval,
}

impl PromptStyle {
    /// `llava` or `lmms-eval`.
    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::Llava => "llava",
            PromptStyle::LmmsEval => "lmms-eval",
        }
    }
}

impl std::fmt::Display for PromptStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PromptStyle {
    type Err = anyhow::Error;

    /// `llava`, or `lmms-eval` (also `lmms_eval`, `lmmseval`), any case.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "llava" => Ok(PromptStyle::Llava),
            "lmms-eval" | "lmms_eval" | "lmmseval" => Ok(PromptStyle::LmmsEval),
            _ => anyhow::bail!("unknown prompt style `{s}` (expected llava or lmms-eval)"),
        }
    }
}

/// The text that goes where the question goes in the model's chat template (rules in the module docs).
pub fn question_prompt(sample: &Sample, style: PromptStyle) -> String {
    let q = sample.question.as_str();
    match sample.benchmark {
        BenchmarkKind::Mme => {
            if sample.question_is_prompt {
                with_suffix(q, SHORT_ANSWER)
            } else {
                match style {
                    PromptStyle::Llava => {
                        let t = q.trim();
                        let t = t.strip_suffix(MME_YES_NO).unwrap_or(t).trim_end();
                        format!("{t}{SHORT_ANSWER}")
                    }
                    PromptStyle::LmmsEval => {
                        let t = q.trim().replace(" Please answer yes or no.", "");
                        format!("{t}{SHORT_ANSWER}")
                    }
                }
            }
        }
        BenchmarkKind::Pope => {
            if sample.question_is_prompt {
                with_suffix(q, SHORT_ANSWER)
            } else {
                format!("{}{SHORT_ANSWER}", q.trim())
            }
        }
        BenchmarkKind::Gqa => {
            if sample.question_is_prompt {
                with_suffix(q, SHORT_ANSWER)
            } else {
                format!("{q}{SHORT_ANSWER}")
            }
        }
        BenchmarkKind::TextVqa => match style {
            PromptStyle::Llava if sample.question_is_prompt => with_suffix(q, SHORT_ANSWER),
            PromptStyle::Llava => {
                // The OCR line stays, empty, when there are no tokens, as in LLaVA's
                // llava_textvqa_val_v051_ocr.jsonl.
                let mut out = capitalize(q);
                out.push_str(OCR_PREFIX);
                out.push_str(&sample.ocr_tokens.join(", "));
                out.push_str(SHORT_ANSWER);
                out
            }
            PromptStyle::LmmsEval => {
                let bare = if sample.question_is_prompt {
                    bare_question(q)
                } else {
                    q
                };
                format!("{}{SHORT_ANSWER}", capitalize(bare))
            }
        },
        BenchmarkKind::ScienceQa => {
            if sample.question_is_prompt {
                return with_suffix(q, OPTION_LETTER);
            }
            let mut out = String::new();
            if let Some(h) = &sample.hint {
                out.push_str("Context: ");
                out.push_str(h);
                out.push('\n');
            }
            out.push_str(q);
            for (i, c) in sample.choices.iter().enumerate() {
                out.push_str(&format!("\n{}. {c}", super::option_letter(i)));
            }
            out.push_str(OPTION_LETTER);
            out
        }
        BenchmarkKind::MmBench => {
            if sample.question_is_prompt {
                return with_suffix(q, OPTION_LETTER);
            }
            match style {
                PromptStyle::Llava => {
                    let mut out = String::new();
                    if let Some(h) = &sample.hint {
                        out.push_str(h);
                        out.push('\n');
                    }
                    out.push_str(q);
                    for (i, c) in sample.choices.iter().take(4).enumerate() {
                        let t = c.trim().to_ascii_lowercase();
                        if t == "nan" || t == "none" {
                            break;
                        }
                        out.push_str(&format!("\n{}. {c}", super::option_letter(i)));
                    }
                    out.push_str(OPTION_LETTER);
                    out
                }
                PromptStyle::LmmsEval => {
                    let mut out = String::new();
                    if let Some(h) = &sample.hint {
                        out.push_str(h);
                        out.push(' ');
                    }
                    out.push_str(q);
                    out.push(' ');
                    out.push_str(MMBENCH_OPTIONS_HEADER);
                    for (i, c) in sample.choices.iter().take(5).enumerate() {
                        out.push_str(&format!("\n{}. {c}", super::option_letter(i)));
                    }
                    out.push('\n');
                    out.push_str(OPTION_LETTER);
                    out
                }
            }
        }
        BenchmarkKind::Synthetic | BenchmarkKind::Generic => q.to_string(),
    }
}

/// The question without the instructions the harnesses add: surrounding whitespace, a trailing
/// [`SHORT_ANSWER`] / [`OPTION_LETTER`] line, a trailing "Reference OCR token: …" line and MME's trailing
/// "Please answer yes or no." are removed (in that order). Used for MME / LLaVA-TextVQA keys, answer
/// matching and the lmms-eval TextVQA prompt of LLaVA files.
pub fn bare_question(question: &str) -> &str {
    let mut q = question.trim();
    for suffix in [SHORT_ANSWER, OPTION_LETTER] {
        if let Some(s) = q.strip_suffix(suffix.trim_start()) {
            q = s.trim_end();
        }
    }
    // `trim`: an empty OCR line ("Reference OCR token: ", no tokens) has lost its space by now.
    if let Some(i) = q.rfind(OCR_PREFIX.trim()) {
        // The OCR line is a line of its own after the question (or, in LLaVA's other layout, before it).
        let before = q[..i].trim_end();
        if !before.is_empty() {
            q = before;
        } else if let Some((_, rest)) = q[i..].split_once('\n') {
            q = rest.trim();
        }
    }
    if let Some(s) = q.strip_suffix(MME_YES_NO) {
        q = s.trim_end();
    }
    q
}

/// OCR tokens of a LLaVA TextVQA prompt (`…\nReference OCR token: a, b, c\n…`), split on ", ".
pub(crate) fn parse_ocr_tokens(text: &str) -> Vec<String> {
    let marker = OCR_PREFIX.trim_start();
    let Some(i) = text.find(marker) else {
        return Vec::new();
    };
    let line = text[i + marker.len()..].split('\n').next().unwrap_or("");
    if line.trim().is_empty() {
        return Vec::new();
    }
    line.split(", ").map(str::to_string).collect()
}

fn with_suffix(text: &str, suffix: &str) -> String {
    if text.trim_end().ends_with(suffix.trim_start()) {
        text.to_string()
    } else {
        format!("{text}{suffix}")
    }
}

/// Python's `str.capitalize()`: first character upper-cased, the rest lower-cased.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_questions() {
        assert_eq!(
            bare_question("Is it red? Please answer yes or no."),
            "Is it red?"
        );
        assert_eq!(
            bare_question("Is it red?  Please answer yes or no."),
            "Is it red?"
        );
        assert_eq!(
            bare_question(&format!("Is it red?{SHORT_ANSWER}")),
            "Is it red?"
        );
        assert_eq!(
            bare_question(&format!("what brand?{OCR_PREFIX}NOKIA, 3{SHORT_ANSWER}")),
            "what brand?"
        );
        assert_eq!(
            bare_question("Reference OCR token: a, b\nwhat brand?\nAnswer the question using a single word or phrase."),
            "what brand?"
        );
        assert_eq!(
            parse_ocr_tokens(&format!("what brand?{OCR_PREFIX}NOKIA, 3{SHORT_ANSWER}")),
            vec!["NOKIA", "3"]
        );
        assert!(parse_ocr_tokens("what brand?").is_empty());
        assert_eq!(capitalize("what is NASA?"), "What is nasa?");
        assert_eq!(capitalize(""), "");
    }
}
