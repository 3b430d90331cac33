//! Benchmark readers: the lmms-lab HF parquet datasets, LLaVA's evaluation files and the bundled synthetic set.
//!
//! Every benchmark is read into one [`Sample`] type; [`prompts::question_prompt`] turns a sample into the
//! text that goes where the question goes in the model's chat template. [`Benchmark::open`] detects the
//! layout from the path and the benchmark ([`BenchmarkKind`]) from the columns or files; both readers
//! stream or hold the samples in file order.
//!
//! # Layouts
//!
//! | Path | [`Format`] | How it is recognised |
//! |---|---|---|
//! | a `.parquet` file, a folder of them, or an lmms-lab repository checkout | [`Format::Parquet`] | extension, or the `PAR1` magic; a folder holding any `.parquet` (searched 4 levels deep) |
//! | a `.jsonl` question file (LLaVA `llava_*.jsonl`, POPE's `coco_pope_*.json`) | [`Format::LlavaJsonl`] | extension `.jsonl`, or a `.json` / other file whose text starts with `{` |
//! | ScienceQA's `llava_test_CQM-A.json` | [`Format::LlavaScienceQa`] | a `.json` file whose text starts with `[` |
//! | MMBench's `mmbench_dev_20230712.tsv` (base64 images) | [`Format::MmbenchTsv`] | extension `.tsv` |
//!
//! A folder without parquet files reads its one top-level `.jsonl` file (several: the one named `llava_*`),
//! else its one `.tsv`, else its one `llava_*.json` array.
//!
//! # HF parquet (lmms-lab)
//!
//! Columns are found by name and their types read from the file's schema; other columns are ignored (only
//! the needed ones are read). "String" accepts `Utf8`, `LargeUtf8` and `Utf8View`; "binary" `Binary`,
//! `LargeBinary` and `BinaryView`; "integer" any signed or unsigned width; lists may be `List` or `LargeList`.
//!
//! | Column | Type | Use |
//! |---|---|---|
//! | `question_id`, else `id`, else `index` | string or integer | [`Sample::id`] (ScienceQA, which has none: the row number) |
//! | `question` | string | [`Sample::question`] |
//! | `image` | struct `{bytes: binary, path: string}` (HF `Image` feature), or binary | [`Sample::image`] (GQA questions: joined, below) |
//! | `answer` | string; integer index into `choices` (ScienceQA's int8) | [`Sample::answers`]: the answer, or the letter `A` + index |
//! | `answers` | `list<string>` | appended to [`Sample::answers`] (TextVQA's 10 annotator answers) |
//! | `category` | string | [`Sample::category`], `"default"` when absent or null |
//! | `choices` | `list<string>` | [`Sample::choices`] (ScienceQA) |
//! | `A`, `B`, `C`, `D`, `E` | string | [`Sample::choices`] (MMBench), in letter order up to the first null / empty / `"nan"` |
//! | `hint` | string | [`Sample::hint`]; null, empty, `nan` and `none` (any case) give `None` |
//! | `ocr_tokens` | `list<string>` | [`Sample::ocr_tokens`] (TextVQA) |
//! | `l2-category` or `L2-category` | string | [`Sample::l2_category`] (MMBench) |
//! | `imageId` | string | GQA: the `id` of the image row to join |
//!
//! The benchmark is detected from the column names of the first file (every file must agree):
//! `meta` → [`BenchmarkKind::Synthetic`] (written by [`crate::synthetic::write_parquet`]); `choices` →
//! ScienceQA; `A` and `B` → MMBench; `imageId` → GQA; `ocr_tokens` → TextVQA; `image_source` → POPE;
//! `question_id` + `answer` + `category` → MME (POPE when every category is adversarial / popular / random);
//! otherwise [`BenchmarkKind::Generic`]. MMBench's `index` may be a string or an integer (both occur); it must
//! parse as an integer ([`Sample::index`]).
//!
//! A null `answer`/`answers` gives no answers (test splits); a null id or question is an error, and so is a
//! null image except in ScienceQA (ScienceQA-FULL's text-only questions: [`ImageSource::None`]). An image
//! whose `bytes` is null but whose `path` names an existing file (absolute, or relative to the parquet file's
//! folder) is read from that path. Every image is checked to decode as far as its header (format and size).
//!
//! **Folders, configs and splits.** A folder is read as one benchmark: its parquet shards in path order. When
//! the shards lie in several folders (a repository checkout with several configs), the first of these is
//! used: `testdev_balanced_instructions` + `testdev_balanced_images` (GQA), `data` (the default config of
//! MME, POPE, TextVQA, MMBench_EN), `ScienceQA-IMG`, `en` (MMBench); else it must be one folder of
//! question shards plus image-only shards (GQA). When the shards' names (`{split}-00000-of-00004….parquet`)
//! show several splits, [`OpenOptions::split`] picks one; without it the benchmark's evaluation split:
//! MME / POPE / ScienceQA `test`, TextVQA `validation`, GQA `testdev`, MMBench `dev` (POPE's `Full` config,
//! whose splits are adversarial / popular / random, is read whole). Any other mix is an error naming the
//! splits.
//!
//! **GQA.** The questions (`testdev_balanced_instructions`: `id`, `imageId`, `question`, `answer`, …) and the
//! images (`testdev_balanced_images`: `id`, `image`) are separate configs, joined on
//! `instructions.imageId == images.id` as lmms-eval's `gqa_process_docs` does. Pass the repository checkout
//! (or any folder holding both configs' shards; image-only shards are recognised by having `id` and `image`
//! but no `question`), or the instructions file/folder with [`OpenOptions::image_dir`] naming the images
//! config (a parquet file or folder) or a folder of GQA's `{imageId}.jpg` files. The image shards are read
//! into memory at open (testdev: 398 images).
//!
//! # LLaVA evaluation files
//!
//! **Question jsonl** (`model_vqa_loader.py`): one JSON object per line (blank lines skipped):
//! `question_id` (string or integer), `image` (path under the image folder), `text` (the prompt, instruction
//! included; `question` is accepted instead) and optionally `category` (default `"default"`; for POPE's
//! `coco_pope_{cat}.json` the `{cat}` of its name). Images are under [`OpenOptions::image_dir`] (default:
//! the jsonl's folder); an MME path `cat/x.png` missing there is also looked up as `cat/images/x.png` (the
//! release's layout). Answers come from the line itself
//! (`answer`, `answers` or `label`) and then from [`OpenOptions::answers`]. The benchmark is detected from
//! the file name (a `_`-separated word `mme`, `pope`, `textvqa`, `gqa`, `scienceqa`/`sqa`, `mmbench`), else
//! from the contents (a `Reference OCR token:` line → TextVQA; categories all adversarial / popular / random
//! → POPE; all MME categories → MME). TextVQA's OCR tokens are parsed from the `Reference OCR token: a, b`
//! line into [`Sample::ocr_tokens`]. [`Sample::question_is_prompt`] is set: the text is used as the prompt.
//!
//! **Answers** ([`OpenOptions::answers`]), by what the path holds:
//! * POPE label files `coco_pope_{adversarial,popular,random}.json` (the file, or the `pope/coco` folder):
//!   jsonl lines with `label` (and `text`), matched **in order within each category**, as `eval_pope.py`
//!   zips them; a label whose `text` is not the question is an error.
//! * TextVQA's `TextVQA_0.5.1_val.json` (`{"data": [...]}` with `image_id`, `question`, `answers`): matched on
//!   (`image_id`, lower-cased question), as `eval_textvqa.py` does (LLaVA's `question_id` is the image id);
//!   entries matching by `question_id` are used otherwise.
//! * ScienceQA's `problems.json` (object of problems with `choices`, int `answer`, `hint`): by id; gives
//!   the answer letter, [`Sample::choices`] and [`Sample::hint`].
//! * The MME release folder (`MME_Benchmark_release_version`): per-image `cat/x.txt` or
//!   `cat/questions_answers_YN/x.txt` files of `question<TAB>answer` lines, matched on the question without
//!   its instruction.
//! * Anything else: jsonl, a JSON array, an object with a `data` array, or an object keyed by question id
//!   (GQA's `testdev_balanced_questions.json`). Each entry needs `question_id` (unless keyed) and one of
//!   `answer` (string or number), `answers` (strings, or `{"answer": ..}` objects) or `label`. Ids are
//!   compared as strings; an id repeated in the question file (MME's two questions per image) takes the
//!   repeated entries in order.
//!
//! A question with no answer entry is an error.
//!
//! **ScienceQA** `llava_test_CQM-A.json` (`model_vqa_science.py`): a JSON array of
//! `{"id", "image"?, "conversations": [{"from": "human", "value"}, {"from": "gpt", "value"}]}`. The human
//! value, `<image>` removed and trimmed, is [`Sample::question`] ("Context: …\n" when there is a hint, the
//! question, then `A. …` option lines, which are parsed into [`Sample::choices`]); the gpt value is the
//! answer letter (`B`, `B. …` or `The answer is B.`). [`Sample::hint`] is `None` (the file does not
//! separate hint and question) unless `problems.json` is given as [`OpenOptions::answers`]. Items without
//! `image` (text-only questions, 2,224 of 4,241) are read with [`ImageSource::None`] and answered from
//! the text alone, as `model_vqa_science.py` does, so that the overall accuracy covers all 4,241 and
//! the IMG accuracy the 2,017 with an image.
//!
//! **MMBench TSV** (`model_vqa_mmbench.py`): tab-separated with a header row, double-quoted fields allowed:
//! `index`, `question`, `hint`, `A`..`D`, `answer`, `category`, `image` (base64; a short all-digit value
//! names the `index` of the row holding the image, as in the circular copies of some releases),
//! `l2-category`. Empty cells and `nan` are null.
//!
//! # The sample key
//!
//! [`Sample::key`] identifies a sample uniquely and stably within its benchmark (see the rule there); the
//! same key twice is an error naming the file, both rows and the key columns.
//!
//! # Errors
//!
//! Every bad input (missing file, not parquet, missing column, wrong column type, null or undecodable image,
//! bad json line, missing image file, repeated key) is an [`anyhow::Error`] whose message is one line naming
//! the file and the column and/or row: `file: column `x`: ...` (schema), `file: row 12 (question_id 7):
//! column `image`: ...` (parquet and TSV rows count from 0), `file:3 (question_id 7): ...` (jsonl line
//! numbers count from 1), `file: item 4 (id 17): ...` (JSON arrays, from 0).

pub mod check;
mod hf;
mod jsonl;
mod llava_sqa;
pub mod prompts;
mod tsv;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};

pub use check::{check_samples, default_scorer, RunPlan};
pub use prompts::{bare_question, question_prompt, PromptStyle};

/// Which benchmark a sample belongs to: decides the key rule, the prompt and the scorer.
///
/// Detected by [`Benchmark::open`] from the columns or files (see the module docs); set
/// [`OpenOptions::benchmark`] to override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BenchmarkKind {
    /// MME (yes/no, 14 categories, two questions per image sharing one `question_id`).
    Mme,
    /// POPE (yes/no; categories adversarial / popular / random).
    Pope,
    /// TextVQA (10 annotator answers, OCR tokens).
    TextVqa,
    /// ScienceQA-IMG (multiple choice; answers are letters).
    ScienceQa,
    /// GQA testdev-balanced (short answers).
    Gqa,
    /// MMBench (multiple choice A–D, circular copies; answers are letters).
    MmBench,
    /// The bundled synthetic set ([`crate::synthetic`]).
    Synthetic,
    /// Anything else: the question is used as written.
    Generic,
}

impl BenchmarkKind {
    /// Every kind, in declaration order.
    pub const ALL: [BenchmarkKind; 8] = [
        BenchmarkKind::Mme,
        BenchmarkKind::Pope,
        BenchmarkKind::TextVqa,
        BenchmarkKind::ScienceQa,
        BenchmarkKind::Gqa,
        BenchmarkKind::MmBench,
        BenchmarkKind::Synthetic,
        BenchmarkKind::Generic,
    ];

    /// Lower-case name: `mme`, `pope`, `textvqa`, `scienceqa`, `gqa`, `mmbench`, `synthetic`, `generic`.
    pub fn name(self) -> &'static str {
        match self {
            BenchmarkKind::Mme => "mme",
            BenchmarkKind::Pope => "pope",
            BenchmarkKind::TextVqa => "textvqa",
            BenchmarkKind::ScienceQa => "scienceqa",
            BenchmarkKind::Gqa => "gqa",
            BenchmarkKind::MmBench => "mmbench",
            BenchmarkKind::Synthetic => "synthetic",
            BenchmarkKind::Generic => "generic",
        }
    }

    /// The split read when a folder holds several (see the module docs).
    fn eval_split(self) -> Option<&'static str> {
        match self {
            BenchmarkKind::Mme | BenchmarkKind::Pope | BenchmarkKind::ScienceQa => Some("test"),
            BenchmarkKind::TextVqa => Some("validation"),
            BenchmarkKind::Gqa => Some("testdev"),
            BenchmarkKind::MmBench => Some("dev"),
            BenchmarkKind::Synthetic | BenchmarkKind::Generic => None,
        }
    }
}

impl fmt::Display for BenchmarkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BenchmarkKind {
    type Err = anyhow::Error;

    /// A [`BenchmarkKind::name`] (any case), or `sqa`, `scienceqa-img`, `mmb`, `text-vqa`.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let alias = match lower.as_str() {
            "sqa" | "scienceqa-img" | "scienceqa_img" => "scienceqa",
            "mmb" | "mmbench-en" | "mmbench_en" => "mmbench",
            "text-vqa" | "text_vqa" => "textvqa",
            other => other,
        };
        BenchmarkKind::ALL
            .into_iter()
            .find(|k| k.name() == alias)
            .ok_or_else(|| {
                anyhow!(
                    "unknown benchmark `{s}` (expected one of: {})",
                    BenchmarkKind::ALL.map(|k| k.name()).join(", ")
                )
            })
    }
}

/// One benchmark question with its image.
///
/// # The key
///
/// [`Sample::key`] identifies the sample uniquely and stably (the same file gives the same keys on every
/// run; info rows, predictions and resume use it):
///
/// * **the id alone** where ids are unique by design: TextVQA (HF `question_id`), ScienceQA (HF: the row
///   number; LLaVA: the problem id), GQA (question id), MMBench (`index` in decimal; circular copies have
///   their own index), the synthetic set, and generic files;
/// * **MME** (both layouts; the two questions of an image share one `question_id`) and **LLaVA's TextVQA
///   jsonl** (whose `question_id` is the image id, shared by the image's questions): `"{question_id}#{h}"`,
///   e.g. `code_reasoning/0020.png#8caf5f0e` for "The image shows a python code. Is the output of the code
///   'Hello'?", where `h` is [`question_hash`] of the question: the first 8 hex digits of the 64-bit FNV-1a
///   hash of the UTF-8 of [`bare_question`]`(question)` lower-cased (so an MME question has the same key in
///   the HF parquet, whose question ends "Please answer yes or no.", and in `llava_mme.jsonl`, whose text
///   ends with the short-answer instruction);
/// * **POPE** (both layouts): `"{category}/{question_id}"`, e.g. `adversarial/17`, since the three
///   categories are separate question sets (each label file numbers its questions from 1).
///
/// A key that occurs twice in one benchmark (a true duplicate) is an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Sample {
    /// Unique, stable identifier within the benchmark (rule above).
    pub key: String,
    /// The benchmark's own question id as a string (integers in decimal); may repeat (MME).
    pub id: String,
    /// Which benchmark this is (decides [`prompts::question_prompt`] and the scorer).
    pub benchmark: BenchmarkKind,
    /// The question as stored: HF `question`; LLaVA files: the prompt text (see
    /// [`Sample::question_is_prompt`]).
    pub question: String,
    /// Whether [`Sample::question`] is already laid out as a prompt by a LLaVA evaluation file (hint, options,
    /// OCR line and, for the jsonl files, the instruction included); [`prompts::question_prompt`] then uses
    /// it as written and adds only what LLaVA's runner appends itself.
    pub question_is_prompt: bool,
    /// Reference answers; the first one is the ground truth used for the target token. ScienceQA / MMBench:
    /// the correct letter; TextVQA: the 10 annotator answers. May be empty for splits without answers.
    pub answers: Vec<String>,
    /// Answer options in letter order (A, B, …): ScienceQA `choices`, MMBench `A`..`D`. Empty otherwise.
    pub choices: Vec<String>,
    /// ScienceQA / MMBench hint (context); `None` when absent or empty.
    pub hint: Option<String>,
    /// TextVQA OCR tokens (HF `ocr_tokens`, or parsed from LLaVA's `Reference OCR token:` line).
    pub ocr_tokens: Vec<String>,
    /// MMBench `index`; circular copies have `index >= 1_000_000` and the same [`Sample::circular_group`].
    pub index: Option<i64>,
    /// Category (`"default"` when the benchmark has none).
    pub category: String,
    /// MMBench's second-level category (`l2-category` / `L2-category`).
    pub l2_category: Option<String>,
    /// Where the image comes from.
    pub image: ImageSource,
}

impl Sample {
    /// A sample with the id as key and no choices, hint, OCR tokens or index (what simple layouts give).
    pub fn new(
        benchmark: BenchmarkKind,
        id: impl Into<String>,
        question: impl Into<String>,
        answers: Vec<String>,
        category: impl Into<String>,
        image: ImageSource,
    ) -> Sample {
        let id = id.into();
        Sample {
            key: id.clone(),
            id,
            benchmark,
            question: question.into(),
            question_is_prompt: false,
            answers,
            choices: Vec::new(),
            hint: None,
            ocr_tokens: Vec::new(),
            index: None,
            category: category.into(),
            l2_category: None,
            image,
        }
    }

    /// Whether the sample has an image (`false` for text-only ScienceQA questions).
    pub fn has_image(&self) -> bool {
        self.image != ImageSource::None
    }

    /// MMBench: `index % 1_000_000`, shared by a question and its circular (option-shifted) copies.
    pub fn circular_group(&self) -> Option<i64> {
        self.index.map(|i| i % 1_000_000)
    }

    /// The ground-truth answer whose first token is the label y of `--target gt`.
    ///
    /// One answer (MME, POPE, the synthetic set): that answer as written, so MME's `Yes` gives the
    /// reference's `▁Yes`. Several annotator answers (TextVQA, VQAv2): the most frequent one after VQA
    /// normalization (lower case, punctuation and articles dropped, number words as digits), ties to the
    /// first seen, as the reference's `best_answer` picks the normalized answer with the highest soft
    /// VQA score (which grows with its count); so y is `▁dakota` even for `Dakota`.
    pub fn answer(&self) -> Option<String> {
        match self.answers.len() {
            0 => None,
            1 => Some(self.answers[0].clone()),
            _ => {
                let normalized: Vec<String> =
                    self.answers.iter().map(|a| vqa_normalize(a)).collect();
                let mut best: Option<(&String, usize)> = None;
                for a in normalized.iter().filter(|a| !a.is_empty()) {
                    let n = normalized.iter().filter(|b| *b == a).count();
                    if best.is_none_or(|(_, m)| n > m) {
                        best = Some((a, n));
                    }
                }
                best.map(|(a, _)| a.clone())
                    .or_else(|| Some(self.answers[0].clone()))
            }
        }
    }
}

/// The hash part `h` of an MME / LLaVA-TextVQA key (see [`Sample`]): the first 8 of the 16 lower-case hex
/// digits of the 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) of the
/// UTF-8 bytes of [`bare_question`]`(question).to_lowercase()`.
pub fn question_hash(question: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bare_question(question).to_lowercase().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")[..8].to_string()
}

/// The key of a sample (rule on [`Sample`]); `id_repeats`: the layout's ids are shared by several
/// questions by design (MME, LLaVA's TextVQA jsonl).
pub(crate) fn sample_key(
    kind: BenchmarkKind,
    id: &str,
    question: &str,
    category: &str,
    id_repeats: bool,
) -> String {
    match kind {
        BenchmarkKind::Mme => format!("{id}#{}", question_hash(question)),
        BenchmarkKind::TextVqa if id_repeats => format!("{id}#{}", question_hash(question)),
        BenchmarkKind::Pope => format!("{category}/{id}"),
        _ => id.to_string(),
    }
}

/// The columns a key is made of, for error messages.
pub(crate) fn key_columns(kind: BenchmarkKind, id_col: &str, id_repeats: bool) -> String {
    match kind {
        BenchmarkKind::Mme => format!("columns `{id_col}` + `question`"),
        BenchmarkKind::TextVqa if id_repeats => format!("columns `{id_col}` + `question`"),
        BenchmarkKind::Pope => format!("columns `category` + `{id_col}`"),
        _ => format!("column `{id_col}`"),
    }
}

/// Remembers keys and where they were seen; the second sighting of a key is an error.
pub(crate) struct KeySet {
    seen: HashMap<String, String>,
}

impl KeySet {
    pub(crate) fn new() -> Self {
        KeySet {
            seen: HashMap::new(),
        }
    }

    /// `here`: the location prefix of the error (`file: row 3 (question_id x)`); `short`: how the first
    /// sighting is named (`row 1 of file`).
    pub(crate) fn insert(
        &mut self,
        key: &str,
        here: impl FnOnce() -> String,
        short: impl FnOnce() -> String,
        columns: impl FnOnce() -> String,
    ) -> Result<()> {
        if let Some(first) = self.seen.get(key) {
            bail!(
                "{}: {}: duplicate key `{key}` (first at {first})",
                here(),
                columns()
            );
        }
        self.seen.insert(key.to_string(), short());
        Ok(())
    }
}

/// The VQA answer normalization (lower case, punctuation removed except in numbers, articles dropped,
/// number words as digits), a compact form of the EvalAI answer processor the reference uses.
pub fn vqa_normalize(answer: &str) -> String {
    let lower = answer.trim().to_lowercase().replace(['\n', '\t'], " ");
    let chars: Vec<char> = lower.chars().collect();
    let mut cleaned = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let in_number = |j: Option<usize>| {
            j.and_then(|j| chars.get(j))
                .is_some_and(char::is_ascii_digit)
        };
        if c == '.' || c == ',' {
            // Keep decimal points and thousands separators between digits.
            if in_number(i.checked_sub(1)) && in_number(Some(i + 1)) {
                cleaned.push(if c == '.' { '.' } else { ',' });
            }
        } else if c.is_alphanumeric() || c.is_whitespace() {
            cleaned.push(c);
        } else if c == '\'' || c == '-' || c == '/' {
            // "don't" stays one word; "a-b" and "a/b" become two, as EvalAI splits them.
            if c != '\'' {
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        } else {
            cleaned.push(' ');
        }
    }
    const NUMBERS: [(&str, &str); 11] = [
        ("none", "0"),
        ("zero", "0"),
        ("one", "1"),
        ("two", "2"),
        ("three", "3"),
        ("four", "4"),
        ("five", "5"),
        ("six", "6"),
        ("seven", "7"),
        ("eight", "8"),
        ("nine", "9"),
    ];
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| {
            NUMBERS
                .iter()
                .find(|(word, _)| *word == w)
                .map_or(w, |(_, digit)| *digit)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    fn sample(answers: &[&str]) -> Sample {
        Sample::new(
            BenchmarkKind::Generic,
            "q",
            "?",
            answers.iter().map(|s| s.to_string()).collect(),
            "c",
            ImageSource::Bytes(Vec::new()),
        )
    }

    #[test]
    fn single_answers_are_kept_as_written() {
        assert_eq!(sample(&["Yes"]).answer().as_deref(), Some("Yes"));
        assert_eq!(sample(&[]).answer(), None);
    }

    #[test]
    fn several_answers_give_the_most_frequent_normalized_one() {
        let s = sample(&[
            "Dakota",
            "dakota.",
            "The Dakota",
            "nike",
            "nike",
            "unanswerable",
        ]);
        assert_eq!(s.answer().as_deref(), Some("dakota"));
        assert_eq!(sample(&["Two", "2", "3"]).answer().as_deref(), Some("2"));
        assert_eq!(vqa_normalize("  It's 3.5 kg, the end! "), "it's 3.5 kg end");
    }

    #[test]
    fn keys_and_hashes() {
        // FNV-1a 64 of "" is the offset basis.
        assert_eq!(question_hash(""), "cbf29ce4");
        // The MME instruction variants hash alike.
        let a = question_hash("Is the code output 'Hello'? Please answer yes or no.");
        let b = question_hash(
            "Is the code output 'Hello'?\nAnswer the question using a single word or phrase.",
        );
        assert_eq!(a, b);
        assert_eq!(
            sample_key(BenchmarkKind::Pope, "3", "q", "random", false),
            "random/3"
        );
        assert_eq!(
            sample_key(BenchmarkKind::TextVqa, "34602", "q", "default", false),
            "34602"
        );
        assert_eq!(
            "MMB".parse::<BenchmarkKind>().unwrap(),
            BenchmarkKind::MmBench
        );
        assert!("nope".parse::<BenchmarkKind>().is_err());
    }
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("benchmark", &self.benchmark)
            .field("question", &self.question)
            .field("question_is_prompt", &self.question_is_prompt)
            .field("answers", &self.answers)
            .field("choices", &self.choices)
            .field("hint", &self.hint)
            .field("ocr_tokens", &self.ocr_tokens)
            .field("index", &self.index)
            .field("category", &self.category)
            .field("l2_category", &self.l2_category)
            .field("image", &self.image)
            .finish()
    }
}

/// The encoded image of a [`Sample`]: inline bytes (parquet, TSV) or a file (LLaVA image folder), or
/// none (a text-only ScienceQA question).
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Encoded image file contents (PNG, JPEG).
    Bytes(Vec<u8>),
    /// Path of an image file.
    Path(PathBuf),
    /// No image: a text-only question (ScienceQA-FULL's null images, `llava_test_CQM-A.json` items
    /// without `image`), answered from the text alone as LLaVA's `model_vqa_science.py` does.
    None,
}

impl fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            ImageSource::Path(p) => write!(f, "Path({})", p.display()),
            ImageSource::None => f.write_str("None"),
        }
    }
}

impl ImageSource {
    /// The encoded bytes (reads the file for [`ImageSource::Path`]; empty for [`ImageSource::None`]).
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match self {
            ImageSource::Bytes(b) => Ok(Cow::Borrowed(b)),
            ImageSource::Path(p) => std::fs::read(p)
                .map(Cow::Owned)
                .map_err(|e| anyhow!("{}: cannot read image: {e}", p.display())),
            ImageSource::None => Ok(Cow::Borrowed(&[])),
        }
    }

    /// Decodes the image (format guessed from its contents).
    pub fn decode(&self) -> Result<image::DynamicImage> {
        if *self == ImageSource::None {
            bail!("no image (a text-only question)");
        }
        let bytes = self.bytes()?;
        image::load_from_memory(&bytes).map_err(|e| match self {
            ImageSource::Bytes(b) => anyhow!("cannot decode image ({} bytes): {e}", b.len()),
            ImageSource::Path(p) => anyhow!("{}: cannot decode image: {e}", p.display()),
            ImageSource::None => anyhow!("no image (a text-only question)"),
        })
    }

    /// Decodes the image and converts it to 8-bit RGB.
    pub fn to_rgb8(&self) -> Result<image::RgbImage> {
        Ok(self.decode()?.to_rgb8())
    }

    /// Checks that the image's format is known and its header gives a size (no pixel decoding).
    pub(crate) fn check_header(&self) -> std::result::Result<(), String> {
        let reader = match self {
            ImageSource::Bytes(b) => image::ImageReader::new(std::io::Cursor::new(b.as_slice()))
                .with_guessed_format()
                .map_err(|e| e.to_string())?
                .into_dimensions(),
            ImageSource::Path(p) => image::ImageReader::open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .with_guessed_format()
                .map_err(|e| e.to_string())?
                .into_dimensions(),
            ImageSource::None => return Ok(()),
        };
        match reader {
            Ok((w, h)) if w > 0 && h > 0 => Ok(()),
            Ok((w, h)) => Err(format!("empty image ({w}x{h})")),
            Err(e) => Err(one_line(&e.to_string())),
        }
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// On-disk layout of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// HF parquet files (lmms-lab layout or the synthetic set).
    Parquet,
    /// LLaVA question jsonl plus an image folder.
    LlavaJsonl,
    /// LLaVA's ScienceQA JSON array (`llava_test_CQM-A.json`) plus an image folder.
    LlavaScienceQa,
    /// MMBench TSV with base64 images (`mmbench_dev_20230712.tsv`).
    MmbenchTsv,
}

/// Options of [`Benchmark::open`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Read at most this many samples (in file order). Keys are checked for duplicates among these.
    pub limit: Option<usize>,
    /// Image folder of a LLaVA jsonl / ScienceQA json benchmark (default: the file's folder). For GQA
    /// parquet: the images config (parquet file or folder) or a folder of `{imageId}.jpg`. Otherwise ignored.
    pub image_dir: Option<PathBuf>,
    /// Ground-truth file or folder of a LLaVA benchmark (see the module docs). Ignored for parquet and TSV.
    pub answers: Option<PathBuf>,
    /// Rows decoded per parquet batch (default 64).
    pub batch_size: Option<usize>,
    /// The benchmark, overriding detection (decides keys and prompts).
    pub benchmark: Option<BenchmarkKind>,
    /// The parquet split to read when a folder holds several (default: the benchmark's evaluation split).
    pub split: Option<String>,
}

impl OpenOptions {
    /// Options with a sample limit.
    pub fn with_limit(limit: usize) -> Self {
        OpenOptions {
            limit: Some(limit),
            ..Default::default()
        }
    }
}

/// An opened benchmark: layout and benchmark detected, schemas and keys checked; samples are produced by
/// [`Benchmark::iter`].
pub struct Benchmark {
    inner: Inner,
    kind: BenchmarkKind,
}

impl fmt::Debug for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Benchmark")
            .field("format", &self.format())
            .field("kind", &self.kind)
            .field("files", &self.files())
            .field("len", &self.len())
            .finish()
    }
}

enum Inner {
    Parquet(hf::ParquetSet),
    Memory {
        format: Format,
        files: Vec<PathBuf>,
        samples: Vec<Sample>,
    },
}

impl Benchmark {
    /// Opens a benchmark at `path` (file or directory), detecting its layout and benchmark. Parquet schemas
    /// and keys are checked here (the id columns are read); jsonl / json / TSV files and answers files are
    /// parsed here, and images are checked to exist.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let (inner, kind) = match detect(path)? {
            Detected::Parquet { root, files } => {
                let set = hf::ParquetSet::open(root.as_deref(), files, opts)?;
                let kind = set.kind();
                (Inner::Parquet(set), kind)
            }
            Detected::Jsonl(file) => {
                let (samples, kind) = jsonl::read(&file, opts)?;
                (
                    Inner::Memory {
                        format: Format::LlavaJsonl,
                        files: vec![file],
                        samples,
                    },
                    kind,
                )
            }
            Detected::ScienceQa(file) => {
                let samples = llava_sqa::read(&file, opts)?;
                let kind = opts.benchmark.unwrap_or(BenchmarkKind::ScienceQa);
                (
                    Inner::Memory {
                        format: Format::LlavaScienceQa,
                        files: vec![file],
                        samples,
                    },
                    kind,
                )
            }
            Detected::Tsv(file) => {
                let samples = tsv::read(&file, opts)?;
                let kind = opts.benchmark.unwrap_or(BenchmarkKind::MmBench);
                (
                    Inner::Memory {
                        format: Format::MmbenchTsv,
                        files: vec![file],
                        samples,
                    },
                    kind,
                )
            }
        };
        Ok(Benchmark { inner, kind })
    }

    /// The detected layout.
    pub fn format(&self) -> Format {
        match &self.inner {
            Inner::Parquet(_) => Format::Parquet,
            Inner::Memory { format, .. } => *format,
        }
    }

    /// The benchmark (detected, or [`OpenOptions::benchmark`]).
    pub fn kind(&self) -> BenchmarkKind {
        self.kind
    }

    /// The data files read (parquet question shards in order, then GQA image shards; or the one file).
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::Parquet(p) => p.files(),
            Inner::Memory { files, .. } => files.clone(),
        }
    }

    /// Number of samples [`Benchmark::iter`] yields (the limit applied).
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Parquet(p) => p.len(),
            Inner::Memory { samples, .. } => samples.len(),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample keys in iteration order (known at open, without reading images).
    pub fn keys(&self) -> Vec<String> {
        match &self.inner {
            Inner::Parquet(p) => p.keys().to_vec(),
            Inner::Memory { samples, .. } => samples.iter().map(|s| s.key.clone()).collect(),
        }
    }

    /// Streams the samples in file order. After the first error the iterator ends.
    pub fn iter(&self) -> Samples<'_> {
        Samples {
            inner: match &self.inner {
                Inner::Parquet(p) => SamplesInner::Parquet(Box::new(p.stream())),
                Inner::Memory { samples, .. } => SamplesInner::Memory(samples.iter()),
            },
        }
    }

    /// Reads every sample into memory.
    pub fn read_all(&self) -> Result<Vec<Sample>> {
        self.iter().collect()
    }
}

/// Iterator over the samples of a [`Benchmark`].
pub struct Samples<'a> {
    inner: SamplesInner<'a>,
}

enum SamplesInner<'a> {
    Parquet(Box<hf::ParquetStream<'a>>),
    Memory(std::slice::Iter<'a, Sample>),
}

impl Iterator for Samples<'_> {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            SamplesInner::Parquet(s) => s.next(),
            SamplesInner::Memory(it) => it.next().cloned().map(Ok),
        }
    }
}

/// Opens a benchmark (see [`Benchmark::open`]).
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Benchmark> {
    Benchmark::open(path, opts)
}

/// Opens a benchmark and reads all its samples (the limit applied).
pub fn read_all(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Vec<Sample>> {
    Benchmark::open(path, opts)?.read_all()
}

enum Detected {
    Parquet {
        root: Option<PathBuf>,
        files: Vec<PathBuf>,
    },
    Jsonl(PathBuf),
    ScienceQa(PathBuf),
    Tsv(PathBuf),
}

fn ext_of(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn file_name_starts_with(path: &Path, prefix: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix))
}

/// The first non-whitespace byte of a file (reads at most 64 KiB).
fn first_byte(path: &Path) -> Result<Option<u8>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = f
        .read(&mut buf)
        .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let skip = if buf[..n].starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    Ok(buf[skip..n]
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace()))
}

fn detect(path: &Path) -> Result<Detected> {
    let meta =
        std::fs::metadata(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    let list_err = || format!("{}: cannot list directory", path.display());
    if meta.is_dir() {
        let mut parquet = Vec::new();
        collect_files(path, "parquet", 4, &mut parquet).with_context(list_err)?;
        if !parquet.is_empty() {
            parquet.sort();
            return Ok(Detected::Parquet {
                root: Some(path.to_path_buf()),
                files: parquet,
            });
        }
        let pick = |mut v: Vec<PathBuf>, what: &str| -> Result<Option<PathBuf>> {
            if v.len() > 1 {
                v.retain(|p| file_name_starts_with(p, "llava_"));
            }
            match v.len() {
                0 => Ok(None),
                1 => Ok(v.pop()),
                n => bail!(
                    "{}: no .parquet files and {n} {what} files; pass the question file itself",
                    path.display()
                ),
            }
        };
        let mut jsonl = Vec::new();
        collect_files(path, "jsonl", 0, &mut jsonl).with_context(list_err)?;
        if let Some(f) = pick(jsonl, ".jsonl")? {
            return Ok(Detected::Jsonl(f));
        }
        let mut tsv = Vec::new();
        collect_files(path, "tsv", 0, &mut tsv).with_context(list_err)?;
        if let Some(f) = pick(tsv, ".tsv")? {
            return Ok(Detected::Tsv(f));
        }
        let mut json = Vec::new();
        collect_files(path, "json", 0, &mut json).with_context(list_err)?;
        json.retain(|p| file_name_starts_with(p, "llava_"));
        if let Some(f) = pick(json, "llava_*.json")? {
            return Ok(if first_byte(&f)? == Some(b'[') {
                Detected::ScienceQa(f)
            } else {
                Detected::Jsonl(f)
            });
        }
        bail!(
            "{}: no .parquet, .jsonl, .tsv or llava_*.json files found",
            path.display()
        );
    }
    match ext_of(path).as_str() {
        "parquet" => {
            return Ok(Detected::Parquet {
                root: None,
                files: vec![path.to_path_buf()],
            })
        }
        "jsonl" => return Ok(Detected::Jsonl(path.to_path_buf())),
        "tsv" => return Ok(Detected::Tsv(path.to_path_buf())),
        _ => {}
    }
    // Other extensions (.json included): sniff the contents.
    let mut head = [0u8; 4];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path)
            .map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
        f.read(&mut head)
            .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?
    };
    if n == 4 && &head == b"PAR1" {
        return Ok(Detected::Parquet {
            root: None,
            files: vec![path.to_path_buf()],
        });
    }
    match first_byte(path)? {
        Some(b'{') => Ok(Detected::Jsonl(path.to_path_buf())),
        Some(b'[') => Ok(Detected::ScienceQa(path.to_path_buf())),
        _ => bail!(
            "{}: unknown benchmark format (expected a .parquet file, a LLaVA .jsonl / .json file, an MMBench .tsv file or a directory)",
            path.display()
        ),
    }
}

/// Files with extension `ext` under `dir`, descending at most `depth` levels; hidden entries skipped.
fn collect_files(
    dir: &Path,
    ext: &str,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            if depth > 0 {
                collect_files(&p, ext, depth - 1, out)?;
            }
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case(ext))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Benchmark from `_`/`-`/`.`-separated words of a file name (`llava_mme.jsonl` → MME).
pub(crate) fn kind_from_name(path: &Path) -> Option<BenchmarkKind> {
    let stem = path.file_stem()?.to_str()?.to_ascii_lowercase();
    for word in stem.split(|c: char| !c.is_ascii_alphanumeric()) {
        let kind = match word {
            "mme" => BenchmarkKind::Mme,
            "pope" => BenchmarkKind::Pope,
            "textvqa" => BenchmarkKind::TextVqa,
            "gqa" => BenchmarkKind::Gqa,
            "scienceqa" | "sqa" => BenchmarkKind::ScienceQa,
            "mmbench" => BenchmarkKind::MmBench,
            _ => continue,
        };
        return Some(kind);
    }
    None
}

/// POPE's three categories.
pub const POPE_CATEGORIES: [&str; 3] = ["adversarial", "popular", "random"];

/// Benchmark from the category values: POPE if all are POPE's, MME if all are MME's; in both cases
/// only with at least two distinct categories, so that a user's own file with one category named
/// like one of theirs (`color`, `random`) is not taken for a benchmark it is not (the file name,
/// `--benchmark` or more categories decide then).
pub(crate) fn kind_from_categories<'a>(
    cats: impl Iterator<Item = &'a str> + Clone,
) -> Option<BenchmarkKind> {
    let distinct: std::collections::BTreeSet<&str> = cats.clone().collect();
    if distinct.len() < 2 {
        return None;
    }
    if distinct.iter().all(|c| POPE_CATEGORIES.contains(c)) {
        Some(BenchmarkKind::Pope)
    } else if distinct.iter().all(|c| {
        crate::score::mme::PERCEPTION.contains(c) || crate::score::mme::COGNITION.contains(c)
    }) {
        Some(BenchmarkKind::Mme)
    } else {
        None
    }
}

/// A hint as LLaVA's `is_none` and lmms-eval's `pd.notna(hint) and hint != "nan"` see it: null, empty,
/// `nan` and `none` (any case) are no hint.
pub(crate) fn clean_hint(h: Option<&str>) -> Option<String> {
    h.filter(|h| {
        let t = h.trim();
        !t.is_empty() && !t.eq_ignore_ascii_case("nan") && !t.eq_ignore_ascii_case("none")
    })
    .map(str::to_string)
}

/// An option value that counts as present (non-null, non-empty, not `nan`).
pub(crate) fn option_present(v: Option<&str>) -> Option<String> {
    v.filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("nan"))
        .map(str::to_string)
}

/// The letter of option `i` (`A` + i).
pub fn option_letter(i: usize) -> char {
    char::from(b'A' + (i % 26) as u8)
}

/// Which samples of a benchmark a run uses, applied in this order: shuffle with `seed` (benchmark
/// order without one), at most `per_category` of each category, at most `limit` in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    pub seed: Option<u64>,
    pub per_category: Option<usize>,
    pub limit: Option<usize>,
}

impl Selection {
    /// The selected samples, in run order.
    pub fn apply(&self, mut samples: Vec<Sample>) -> Vec<Sample> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        if let Some(seed) = self.seed {
            samples.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        }
        if let Some(n) = self.per_category {
            let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
            samples.retain(|s| {
                let c = seen.entry(s.category.clone()).or_default();
                *c += 1;
                *c <= n
            });
        }
        if let Some(limit) = self.limit {
            samples.truncate(limit);
        }
        samples
    }
}
