//! Benchmark readers: HF parquet (lmms-lab layouts and the bundled synthetic set) and LLaVA question jsonl.
//!
//! Every benchmark is read into one [`Sample`] type. [`Benchmark::open`] detects the layout from the path:
//!
//! * **HF parquet** (see the layout below): a single `.parquet` file, a directory of
//!   them, or an lmms-lab repository checkout with its shards under `data/` (searched recursively, sorted by
//!   path). Files are streamed in batches of rows, so only a batch of images is held in memory at a time.
//! * **LLaVA question jsonl**: a `.jsonl` file (or a directory holding exactly one `.jsonl` and no parquet), with
//!   the images under [`OpenOptions::image_dir`] (default: the jsonl's folder) and an optional ground-truth
//!   file [`OpenOptions::answers`].
//!
//! # HF parquet layout
//!
//! Columns are found by name; others are ignored (only the needed columns are read).
//!
//! | Column | Type | Use |
//! |---|---|---|
//! | `question_id` (else `id`, else `index`) | string or integer | [`Sample::id`] |
//! | `question` | string | [`Sample::question`] |
//! | `image` | struct `{bytes: binary, path: string}` (HF `Image` feature), or plain binary | [`Sample::image`] |
//! | `answer` and/or `answers` | string / `list<string>` | [`Sample::answers`] (`answer` first, then `answers`) |
//! | `category` (optional) | string | [`Sample::category`], `"default"` when absent or null |
//!
//! "String" accepts `Utf8`, `LargeUtf8` and `Utf8View`; "binary" `Binary`, `LargeBinary` and `BinaryView`;
//! lists may be `List` or `LargeList`. This covers MME (`answer`, `category`), TextVQA (int32 `question_id`,
//! `answers` list), POPE (`answer`, `category`) and the synthetic set written by
//! [`crate::synthetic::write_parquet`] (MME columns). A null `answer`/`answers` gives no answers (test
//! splits); a null id, question or image is an error. An image whose `bytes` is null but whose `path` names an
//! existing file (absolute, or relative to the parquet file's folder) is read from that path.
//!
//! # LLaVA question jsonl
//!
//! One JSON object per line (blank lines skipped), as read by LLaVA's `model_vqa_loader.py`:
//! `question_id` (string or integer), `image` (path relative to the image folder), `text` (the prompt, instruction
//! included; `question` is accepted instead) and optionally `category` (default `"default"`). Answers come from
//! the line itself (`answer`, `answers` or `label`, if present) and then from the answers file, if given.
//!
//! The answers file may be jsonl (POPE's `coco_pope_*.json`: lines with `question_id` and `label`), a JSON
//! array, or a JSON object with a `data` array (TextVQA's `TextVQA_0.5.1_val.json`). Each entry needs
//! `question_id` and one of `answer` (string), `answers` (list of strings, or of `{"answer": ..}` objects) or
//! `label`. Ids are compared as strings; an id repeated in the question file (MME's two questions per image)
//! takes the repeated entries of the answers file in order. A question with no entry is an error.
//!
//! # Errors
//!
//! Every bad input (missing file, not parquet, missing column, wrong column type, null image, bad json line,
//! missing image file) is an [`anyhow::Error`] whose message is one line naming the file and the column or
//! row (`file: column `x`: ...`, `file: row 12 (question_id 7): ...`, `file:3: ...` for jsonl lines).

mod hf;
mod jsonl;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// One benchmark question with its image.
#[derive(Clone, PartialEq, Eq)]
pub struct Sample {
    /// `question_id` as a string (integers are printed in decimal).
    pub id: String,
    /// The question or prompt text, as stored (LLaVA jsonl `text` already contains the instruction).
    pub question: String,
    /// Reference answers; the first one is the ground truth used for the target token. May be empty for
    /// splits without answers.
    pub answers: Vec<String>,
    /// Category (`"default"` when the benchmark has none).
    pub category: String,
    /// Where the image comes from.
    pub image: ImageSource,
}

impl Sample {
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
        Sample {
            id: "q".into(),
            question: "?".into(),
            answers: answers.iter().map(|s| s.to_string()).collect(),
            category: "c".into(),
            image: ImageSource::Bytes(Vec::new()),
        }
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
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("id", &self.id)
            .field("question", &self.question)
            .field("answers", &self.answers)
            .field("category", &self.category)
            .field("image", &self.image)
            .finish()
    }
}

/// The encoded image of a [`Sample`]: inline bytes (parquet) or a file (jsonl image folder).
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Encoded image file contents (PNG, JPEG).
    Bytes(Vec<u8>),
    /// Path of an image file.
    Path(PathBuf),
}

impl fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            ImageSource::Path(p) => write!(f, "Path({})", p.display()),
        }
    }
}

impl ImageSource {
    /// The encoded bytes (reads the file for [`ImageSource::Path`]).
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match self {
            ImageSource::Bytes(b) => Ok(Cow::Borrowed(b)),
            ImageSource::Path(p) => std::fs::read(p)
                .map(Cow::Owned)
                .map_err(|e| anyhow!("{}: cannot read image: {e}", p.display())),
        }
    }

    /// Decodes the image (format guessed from its contents).
    pub fn decode(&self) -> Result<image::DynamicImage> {
        let bytes = self.bytes()?;
        image::load_from_memory(&bytes).map_err(|e| match self {
            ImageSource::Bytes(b) => anyhow!("cannot decode image ({} bytes): {e}", b.len()),
            ImageSource::Path(p) => anyhow!("{}: cannot decode image: {e}", p.display()),
        })
    }

    /// Decodes the image and converts it to 8-bit RGB.
    pub fn to_rgb8(&self) -> Result<image::RgbImage> {
        Ok(self.decode()?.to_rgb8())
    }
}

/// On-disk layout of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// HF parquet files (lmms-lab layout or the synthetic set).
    Parquet,
    /// LLaVA question jsonl plus an image folder.
    LlavaJsonl,
}

/// Options of [`Benchmark::open`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Read at most this many samples (in file order).
    pub limit: Option<usize>,
    /// Image folder of a LLaVA jsonl benchmark (default: the jsonl's folder). Ignored for parquet.
    pub image_dir: Option<PathBuf>,
    /// Ground-truth answers file of a LLaVA jsonl benchmark. Ignored for parquet.
    pub answers: Option<PathBuf>,
    /// Rows decoded per parquet batch (default 64).
    pub batch_size: Option<usize>,
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

/// An opened benchmark: layout detected and schemas checked; samples are produced by [`Benchmark::iter`].
pub struct Benchmark {
    inner: Inner,
}

enum Inner {
    Parquet(hf::ParquetSet),
    Jsonl(jsonl::JsonlSet),
}

impl Benchmark {
    /// Opens a benchmark at `path` (file or directory), detecting its layout. Parquet schemas are checked
    /// here; a jsonl file (and its answers file) is parsed here, images are checked to exist.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let inner = match detect(path)? {
            Detected::Parquet(files) => Inner::Parquet(hf::ParquetSet::open(files, opts)?),
            Detected::Jsonl(file) => Inner::Jsonl(jsonl::JsonlSet::open(&file, opts)?),
        };
        Ok(Benchmark { inner })
    }

    /// The detected layout.
    pub fn format(&self) -> Format {
        match &self.inner {
            Inner::Parquet(_) => Format::Parquet,
            Inner::Jsonl(_) => Format::LlavaJsonl,
        }
    }

    /// The data files read (parquet shards in order, or the one jsonl file).
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::Parquet(p) => p.files(),
            Inner::Jsonl(j) => vec![j.file.clone()],
        }
    }

    /// Number of samples [`Benchmark::iter`] yields (the limit applied).
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Parquet(p) => p.len(),
            Inner::Jsonl(j) => j.samples.len(),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams the samples in file order. After the first error the iterator ends.
    pub fn iter(&self) -> Samples<'_> {
        Samples {
            inner: match &self.inner {
                Inner::Parquet(p) => SamplesInner::Parquet(Box::new(p.stream())),
                Inner::Jsonl(j) => SamplesInner::Jsonl(j.samples.iter()),
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
    Jsonl(std::slice::Iter<'a, Sample>),
}

impl Iterator for Samples<'_> {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            SamplesInner::Parquet(s) => s.next(),
            SamplesInner::Jsonl(it) => it.next().cloned().map(Ok),
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
    Parquet(Vec<PathBuf>),
    Jsonl(PathBuf),
}

fn detect(path: &Path) -> Result<Detected> {
    let meta =
        std::fs::metadata(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    if meta.is_dir() {
        let mut parquet = Vec::new();
        collect_files(path, "parquet", 4, &mut parquet)
            .with_context(|| format!("{}: cannot list directory", path.display()))?;
        if !parquet.is_empty() {
            parquet.sort();
            return Ok(Detected::Parquet(parquet));
        }
        let mut jsonl = Vec::new();
        collect_files(path, "jsonl", 1, &mut jsonl)
            .with_context(|| format!("{}: cannot list directory", path.display()))?;
        return match jsonl.len() {
            1 => Ok(Detected::Jsonl(jsonl.pop().unwrap())),
            0 => bail!("{}: no .parquet or .jsonl files found", path.display()),
            n => bail!(
                "{}: no .parquet files and {n} .jsonl files; pass the question file itself",
                path.display()
            ),
        };
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "parquet" => return Ok(Detected::Parquet(vec![path.to_path_buf()])),
        "jsonl" | "json" => return Ok(Detected::Jsonl(path.to_path_buf())),
        _ => {}
    }
    // Unknown extension: sniff the contents.
    let mut head = [0u8; 4];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path)
            .map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
        f.read(&mut head)
            .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?
    };
    if n == 4 && &head == b"PAR1" {
        Ok(Detected::Parquet(vec![path.to_path_buf()]))
    } else if head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Ok(Detected::Jsonl(path.to_path_buf()))
    } else {
        bail!(
            "{}: unknown benchmark format (expected a .parquet file, a LLaVA .jsonl file or a directory)",
            path.display()
        )
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
