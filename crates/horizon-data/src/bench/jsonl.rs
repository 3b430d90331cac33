//! LLaVA question-jsonl reader and the ground-truth files of LLaVA's evaluation (formats documented in the
//! parent module).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::prompts::{bare_question, parse_ocr_tokens};
use super::{
    key_columns, kind_from_categories, kind_from_name, option_letter, sample_key, BenchmarkKind,
    ImageSource, KeySet, OpenOptions, Sample,
};

pub(super) fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Answers carried by one JSON object (`answer`, `answers`, `label`); `Err` names the bad field.
fn answers_of(
    obj: &serde_json::Map<String, Value>,
) -> std::result::Result<Option<Vec<String>>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_string()),
        _ => None,
    };
    let mut out: Option<Vec<String>> = None;
    for key in ["answer", "label"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => out
                .get_or_insert_with(Vec::new)
                .push(scalar(v).ok_or_else(|| format!("`{key}` must be a string or number"))?),
        }
    }
    match obj.get("answers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let list = out.get_or_insert_with(Vec::new);
            for item in items {
                let a = match item {
                    Value::Object(o) => o.get("answer").and_then(scalar),
                    v => scalar(v),
                };
                list.push(a.ok_or_else(|| {
                    "`answers` must be a list of strings or of {\"answer\": ..} objects".to_string()
                })?);
            }
        }
        Some(_) => return Err("`answers` must be a list".to_string()),
    }
    Ok(out)
}

/// One ground-truth entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    answers: Vec<String>,
    /// The entry's question text, where it has one (POPE labels, TextVQA annotations).
    text: Option<String>,
    /// Line (jsonl, from 1) or item (JSON, from 0) in the answers file.
    at: String,
}

/// A ScienceQA problem of `problems.json`.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    pub(super) letter: String,
    pub(super) choices: Vec<String>,
    pub(super) hint: Option<String>,
}

/// A loaded ground-truth source ([`OpenOptions::answers`]).
pub(super) enum Answers {
    /// By question id; a repeated id takes the repeated entries in order.
    ById {
        file: PathBuf,
        map: HashMap<String, Vec<Entry>>,
    },
    /// `TextVQA_0.5.1_val.json`: by (image id, lower-cased question), else by question id.
    TextVqa {
        file: PathBuf,
        by_pair: HashMap<(String, String), Entry>,
        by_id: HashMap<String, Vec<Entry>>,
    },
    /// POPE label files: category -> (file, labels in order).
    Pope(HashMap<String, (PathBuf, Vec<Entry>)>),
    /// The MME release folder.
    Mme {
        dir: PathBuf,
        cache: HashMap<PathBuf, Vec<(String, String)>>,
    },
    /// ScienceQA `problems.json`.
    Problems {
        file: PathBuf,
        map: HashMap<String, Problem>,
    },
}

/// What a ground-truth source gives for one question.
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) answers: Vec<String>,
    pub(super) choices: Option<Vec<String>>,
    pub(super) hint: Option<Option<String>>,
}

/// The question a lookup is for.
pub(super) struct Query<'a> {
    pub(super) id: &'a str,
    pub(super) question: &'a str,
    pub(super) category: &'a str,
    /// `file:line` of the question, for errors.
    pub(super) at: &'a str,
}

fn pope_category(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let cat = name.strip_prefix("coco_pope_")?.strip_suffix(".json")?;
    Some(cat.to_string())
}

/// Reads jsonl lines (blank lines skipped) as `(line number, value)`.
fn jsonl_values(path: &Path, text: &str) -> Result<Vec<(usize, Value)>> {
    let mut v = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let val: Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{}: invalid JSON: {e}", path.display(), n + 1))?;
        v.push((n + 1, val));
    }
    Ok(v)
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{}: cannot read {what}: {e}", path.display()))
}

fn pope_labels(
    path: &Path,
    category: String,
    out: &mut HashMap<String, (PathBuf, Vec<Entry>)>,
) -> Result<()> {
    let file = path.display();
    let text = read_text(path, "answers file")?;
    let mut labels = Vec::new();
    for (ln, v) in jsonl_values(path, &text)? {
        let Value::Object(o) = v else {
            bail!("{file}:{ln}: not a JSON object");
        };
        let answers = answers_of(&o)
            .map_err(|e| anyhow!("{file}:{ln}: {e}"))?
            .ok_or_else(|| anyhow!("{file}:{ln}: no `label`"))?;
        let text = o
            .get("text")
            .or_else(|| o.get("question"))
            .and_then(Value::as_str)
            .map(str::to_string);
        labels.push(Entry {
            answers,
            text,
            at: format!("{file}:{ln}"),
        });
    }
    out.insert(category, (path.to_path_buf(), labels));
    Ok(())
}

/// Loads [`OpenOptions::answers`] for a benchmark of kind `kind`.
pub(super) fn load_answers(path: &Path, kind: BenchmarkKind) -> Result<Answers> {
    let file = path.display();
    if path.is_dir() {
        let mut json = Vec::new();
        super::collect_files(path, "json", 0, &mut json)
            .map_err(|e| anyhow!("{file}: cannot list directory: {e}"))?;
        let mut labels = HashMap::new();
        for p in json {
            if let Some(cat) = pope_category(&p) {
                pope_labels(&p, cat, &mut labels)?;
            }
        }
        if !labels.is_empty() {
            return Ok(Answers::Pope(labels));
        }
        if kind == BenchmarkKind::Mme {
            return Ok(Answers::Mme {
                dir: path.to_path_buf(),
                cache: HashMap::new(),
            });
        }
        bail!("{file}: answers folder holds no coco_pope_*.json label files (and the benchmark is {kind}, not MME)");
    }
    if let Some(cat) = pope_category(path) {
        let mut labels = HashMap::new();
        pope_labels(path, cat, &mut labels)?;
        return Ok(Answers::Pope(labels));
    }
    let text = read_text(path, "answers file")?;
    let whole = serde_json::from_str::<Value>(&text);
    let (entries, textvqa): (Vec<(String, Value)>, bool) = match whole {
        Ok(Value::Array(items)) => (
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("{file}: item {i}"), v))
                .collect(),
            false,
        ),
        Ok(Value::Object(mut o)) if o.contains_key("data") => match o.remove("data") {
            Some(Value::Array(items)) => {
                let tv = items
                    .first()
                    .and_then(Value::as_object)
                    .is_some_and(|e| e.contains_key("image_id") && e.contains_key("question"));
                (
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (format!("{file}: data item {i}"), v))
                        .collect(),
                    tv,
                )
            }
            _ => bail!("{file}: answers file field `data` is not an array"),
        },
        Ok(Value::Object(o))
            if !o.contains_key("question_id") && o.values().all(Value::is_object) =>
        {
            return keyed(path, o);
        }
        _ => (
            jsonl_values(path, &text)?
                .into_iter()
                .map(|(n, v)| (format!("{file}:{n}"), v))
                .collect(),
            false,
        ),
    };
    let mut by_id: HashMap<String, Vec<Entry>> = HashMap::new();
    let mut by_pair = HashMap::new();
    for (at, v) in entries {
        let Value::Object(o) = v else {
            bail!("{at}: not a JSON object");
        };
        let id = o
            .get("question_id")
            .and_then(id_string)
            .ok_or_else(|| anyhow!("{at}: missing or bad `question_id`"))?;
        let answers = answers_of(&o)
            .map_err(|e| anyhow!("{at} (question_id {id}): {e}"))?
            .ok_or_else(|| anyhow!("{at} (question_id {id}): no `answer`, `answers` or `label`"))?;
        let question = o
            .get("question")
            .and_then(Value::as_str)
            .map(str::to_string);
        let entry = Entry {
            answers,
            text: question.clone(),
            at,
        };
        if textvqa {
            if let (Some(image), Some(q)) = (o.get("image_id").and_then(id_string), &question) {
                by_pair.insert((image, q.to_lowercase()), entry.clone());
            }
        }
        by_id.entry(id).or_default().push(entry);
    }
    Ok(if textvqa {
        Answers::TextVqa {
            file: path.to_path_buf(),
            by_pair,
            by_id,
        }
    } else {
        Answers::ById {
            file: path.to_path_buf(),
            map: by_id,
        }
    })
}

/// An object keyed by question id: ScienceQA's `problems.json`, GQA's `*_questions.json`.
fn keyed(path: &Path, o: serde_json::Map<String, Value>) -> Result<Answers> {
    let file = path.display();
    let is_problems = o
        .values()
        .next()
        .and_then(Value::as_object)
        .is_some_and(|p| {
            p.get("choices").is_some_and(Value::is_array)
                && p.get("answer").is_some_and(Value::is_u64)
        });
    if is_problems {
        let mut map = HashMap::new();
        for (id, v) in o {
            let p = v.as_object().unwrap();
            let choices: Vec<String> = match p.get("choices") {
                Some(Value::Array(c)) => c
                    .iter()
                    .map(|c| match c {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(anyhow!("{file}: problem {id}: `choices` must hold strings")),
                    })
                    .collect::<Result<_>>()?,
                _ => bail!("{file}: problem {id}: `choices` must be a list"),
            };
            let k = p
                .get("answer")
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow!("{file}: problem {id}: `answer` must be an index"))?;
            if k as usize >= choices.len() {
                bail!(
                    "{file}: problem {id}: `answer` {k} outside the {} choices",
                    choices.len()
                );
            }
            let hint = super::clean_hint(p.get("hint").and_then(Value::as_str));
            map.insert(
                id,
                Problem {
                    letter: option_letter(k as usize).to_string(),
                    choices,
                    hint,
                },
            );
        }
        return Ok(Answers::Problems {
            file: path.to_path_buf(),
            map,
        });
    }
    let mut map = HashMap::new();
    for (id, v) in o {
        let at = format!("{file}: entry {id}");
        let answers = answers_of(v.as_object().unwrap())
            .map_err(|e| anyhow!("{at}: {e}"))?
            .ok_or_else(|| anyhow!("{at}: no `answer`, `answers` or `label`"))?;
        let text = v
            .get("question")
            .and_then(Value::as_str)
            .map(str::to_string);
        map.insert(id, vec![Entry { answers, text, at }]);
    }
    Ok(Answers::ById {
        file: path.to_path_buf(),
        map,
    })
}

/// Looks answers up for questions in file order (occurrence counters live here).
pub(super) struct Matcher {
    answers: Answers,
    seen: HashMap<String, usize>,
}

impl Matcher {
    pub(super) fn new(answers: Answers) -> Self {
        Matcher {
            answers,
            seen: HashMap::new(),
        }
    }

    pub(super) fn find(&mut self, q: &Query<'_>) -> Result<Found> {
        let id = q.id;
        let mut next_of = |map: &HashMap<String, Vec<Entry>>, key: &str| -> Option<Entry> {
            let k = self.seen.entry(key.to_string()).or_insert(0);
            let e = map.get(key).and_then(|v| v.get(*k)).cloned();
            if e.is_some() {
                *k += 1;
            }
            e
        };
        let occurrence =
            |seen: &HashMap<String, usize>, key: &str| seen.get(key).copied().unwrap_or(0) + 1;
        match &mut self.answers {
            Answers::ById { file, map } => {
                let map = &*map;
                match next_of(map, id) {
                    Some(e) => Ok(Found {
                        answers: e.answers,
                        ..Default::default()
                    }),
                    None => bail!(
                        "{}: no answer for question_id {id} (occurrence {} in {})",
                        file.display(),
                        occurrence(&self.seen, id),
                        q.at
                    ),
                }
            }
            Answers::TextVqa {
                file,
                by_pair,
                by_id,
            } => {
                let pair = (id.to_string(), bare_question(q.question).to_lowercase());
                if let Some(e) = by_pair.get(&pair) {
                    return Ok(Found {
                        answers: e.answers.clone(),
                        ..Default::default()
                    });
                }
                let by_id = &*by_id;
                match next_of(by_id, id) {
                    Some(e) => Ok(Found {
                        answers: e.answers,
                        ..Default::default()
                    }),
                    None => bail!(
                        "{}: no annotation with image_id {id} and question `{}`, nor with question_id {id} (for {})",
                        file.display(),
                        pair.1,
                        q.at
                    ),
                }
            }
            Answers::Pope(labels) => {
                let Some((lfile, list)) = labels.get(q.category) else {
                    bail!(
                        "{}: no POPE label file for category `{}` (coco_pope_{}.json; have: {})",
                        q.at,
                        q.category,
                        q.category,
                        {
                            let mut c: Vec<&str> = labels.keys().map(String::as_str).collect();
                            c.sort_unstable();
                            c.join(", ")
                        }
                    );
                };
                let k = self.seen.entry(format!("\0{}", q.category)).or_insert(0);
                let Some(e) = list.get(*k) else {
                    bail!(
                        "{}: no label for {} question {} of category `{}` ({} labels)",
                        lfile.display(),
                        q.at,
                        *k + 1,
                        q.category,
                        list.len()
                    );
                };
                *k += 1;
                if let Some(t) = &e.text {
                    if bare_question(t) != bare_question(q.question) {
                        bail!(
                            "{}: label text `{}` is not the question of {} (`{}`); labels are matched in order within a category, as eval_pope.py does",
                            e.at,
                            t.trim(),
                            q.at,
                            bare_question(q.question)
                        );
                    }
                }
                Ok(Found {
                    answers: e.answers.clone(),
                    ..Default::default()
                })
            }
            Answers::Mme { dir, cache } => {
                let (cat, name) = id.split_once('/').unwrap_or((q.category, id));
                let stem = Path::new(name)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(name);
                let candidates = [
                    dir.join(cat).join(format!("{stem}.txt")),
                    dir.join(cat)
                        .join("questions_answers_YN")
                        .join(format!("{stem}.txt")),
                ];
                let Some(txt) = candidates.iter().find(|p| p.is_file()) else {
                    bail!(
                        "{}: no answer file {} (or {}) for question_id {id} ({})",
                        dir.display(),
                        candidates[0].display(),
                        candidates[1].display(),
                        q.at
                    );
                };
                if !cache.contains_key(txt) {
                    let text = read_text(txt, "MME answer file")?;
                    let mut lines = Vec::new();
                    for (n, line) in text.lines().enumerate() {
                        if line.trim().is_empty() {
                            continue;
                        }
                        let Some((qq, a)) = line.rsplit_once('\t') else {
                            bail!(
                                "{}:{}: expected `question<TAB>answer`",
                                txt.display(),
                                n + 1
                            );
                        };
                        lines.push((bare_question(qq).to_string(), a.trim().to_string()));
                    }
                    cache.insert(txt.clone(), lines);
                }
                let want = bare_question(q.question);
                match cache[txt].iter().find(|(qq, _)| qq == want) {
                    Some((_, a)) => Ok(Found {
                        answers: vec![a.clone()],
                        ..Default::default()
                    }),
                    None => bail!(
                        "{}: no line for the question `{want}` of {}",
                        txt.display(),
                        q.at
                    ),
                }
            }
            Answers::Problems { file, map } => match map.get(id) {
                Some(p) => Ok(Found {
                    answers: vec![p.letter.clone()],
                    choices: Some(p.choices.clone()),
                    hint: Some(p.hint.clone()),
                }),
                None => bail!("{}: no problem {id} (for {})", file.display(), q.at),
            },
        }
    }
}

/// The image of a LLaVA question: `image_dir/rel`, or for MME `cat/images/x` (the release's layout);
/// checked to exist and to have a readable image header.
pub(super) fn resolve_image(
    image_dir: &Path,
    rel: &str,
    kind: BenchmarkKind,
) -> std::result::Result<PathBuf, String> {
    let mut path = image_dir.join(rel);
    if !path.is_file() && kind == BenchmarkKind::Mme {
        if let Some((cat, name)) = rel.split_once('/') {
            let alt = image_dir.join(cat).join("images").join(name);
            if alt.is_file() {
                path = alt;
            }
        }
    }
    if !path.is_file() {
        return Err(format!("image {} not found", path.display()));
    }
    ImageSource::Path(path.clone())
        .check_header()
        .map_err(|e| {
            format!(
                "column `image`: cannot decode image {}: {e}",
                path.display()
            )
        })?;
    Ok(path)
}

pub(super) fn image_dir_of(path: &Path, opts: &OpenOptions) -> Result<PathBuf> {
    let image_dir = match &opts.image_dir {
        Some(d) => d.clone(),
        None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    if !image_dir.is_dir() {
        bail!(
            "{}: image folder not found (for {})",
            image_dir.display(),
            path.display()
        );
    }
    Ok(image_dir)
}

/// One question line, before answers and keys.
struct Line {
    ln: usize,
    id: String,
    question: String,
    image: String,
    category: String,
    answers: Vec<String>,
}

pub(super) fn read(path: &Path, opts: &OpenOptions) -> Result<(Vec<Sample>, BenchmarkKind)> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{file}: cannot read: {e}"))?;
    let image_dir = image_dir_of(path, opts)?;
    let limit = opts.limit.unwrap_or(usize::MAX);
    // POPE's label files carry their category in the name only.
    let default_category = pope_category(path).unwrap_or_else(|| "default".to_string());
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if lines.len() >= limit {
            break;
        }
        let ln = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| anyhow!("{file}:{ln}: invalid JSON: {e}"))?;
        let Value::Object(o) = v else {
            bail!("{file}:{ln}: not a JSON object");
        };
        let id = match o.get("question_id") {
            None | Some(Value::Null) => bail!("{file}:{ln}: missing `question_id`"),
            Some(v) => id_string(v)
                .ok_or_else(|| anyhow!("{file}:{ln}: `question_id` must be a string or integer"))?,
        };
        let question = match o.get("text").or_else(|| o.get("question")) {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => bail!("{file}:{ln} (question_id {id}): missing `text`"),
            Some(_) => bail!("{file}:{ln} (question_id {id}): `text` must be a string"),
        };
        let image = match o.get("image") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) => {
                bail!("{file}:{ln} (question_id {id}): null or missing `image`")
            }
            Some(_) => {
                bail!("{file}:{ln} (question_id {id}): `image` must be a non-empty string")
            }
        };
        let category = match o.get("category") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => default_category.clone(),
            Some(_) => bail!("{file}:{ln} (question_id {id}): `category` must be a string"),
        };
        let answers = answers_of(&o)
            .map_err(|e| anyhow!("{file}:{ln} (question_id {id}): {e}"))?
            .unwrap_or_default();
        lines.push(Line {
            ln,
            id,
            question,
            image,
            category,
            answers,
        });
    }

    let kind = opts
        .benchmark
        .or_else(|| kind_from_name(path))
        .or_else(|| {
            lines
                .iter()
                .any(|l| l.question.contains("\nReference OCR token:"))
                .then_some(BenchmarkKind::TextVqa)
        })
        .or_else(|| kind_from_categories(lines.iter().map(|l| l.category.as_str())))
        .unwrap_or(BenchmarkKind::Generic);
    // LLaVA's TextVQA `question_id` is the image id, shared by the image's questions.
    let id_repeats = kind == BenchmarkKind::TextVqa;

    let mut matcher = opts
        .answers
        .as_deref()
        .map(|a| load_answers(a, kind))
        .transpose()?
        .map(Matcher::new);
    let mut keys = KeySet::new();
    let mut samples = Vec::with_capacity(lines.len());
    for l in lines {
        let ln = l.ln;
        let id = l.id;
        let image = resolve_image(&image_dir, &l.image, kind)
            .map_err(|e| anyhow!("{file}:{ln} (question_id {id}): {e}"))?;
        let mut answers = l.answers;
        let mut choices = Vec::new();
        let mut hint = None;
        if let Some(m) = &mut matcher {
            let at = format!("{file}:{ln}");
            let found = m.find(&Query {
                id: &id,
                question: &l.question,
                category: &l.category,
                at: &at,
            })?;
            answers.extend(found.answers);
            if let Some(c) = found.choices {
                choices = c;
            }
            if let Some(h) = found.hint {
                hint = h;
            }
        }
        let key = sample_key(kind, &id, &l.question, &l.category, id_repeats);
        keys.insert(
            &key,
            || format!("{file}:{ln} (question_id {id})"),
            || format!("{file}:{ln}"),
            || key_columns(kind, "question_id", id_repeats).replace("`question`", "`text`"),
        )?;
        let ocr_tokens = if kind == BenchmarkKind::TextVqa {
            parse_ocr_tokens(&l.question)
        } else {
            Vec::new()
        };
        samples.push(Sample {
            key,
            id,
            benchmark: kind,
            question: l.question,
            question_is_prompt: true,
            answers,
            choices,
            hint,
            ocr_tokens,
            index: None,
            category: l.category,
            l2_category: None,
            image: ImageSource::Path(image),
        });
    }
    Ok((samples, kind))
}
