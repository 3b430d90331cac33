//! LLaVA question-jsonl reader (format documented in the parent module).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::{ImageSource, OpenOptions, Sample};

pub(super) struct JsonlSet {
    pub(super) file: PathBuf,
    pub(super) samples: Vec<Sample>,
}

fn id_string(v: &Value) -> Option<String> {
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

/// Ground truth: question id -> answer lists in file order.
fn read_answers(path: &Path) -> Result<HashMap<String, Vec<Vec<String>>>> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{file}: cannot read answers file: {e}"))?;
    // Whole-file JSON (array, or object with `data`), else jsonl.
    let entries: Vec<(usize, Value)> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => items.into_iter().enumerate().collect(),
        Ok(Value::Object(mut o)) if o.contains_key("data") => match o.remove("data") {
            Some(Value::Array(items)) => items.into_iter().enumerate().collect(),
            _ => bail!("{file}: answers file field `data` is not an array"),
        },
        _ => {
            let mut v = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let val: Value = serde_json::from_str(line)
                    .map_err(|e| anyhow!("{file}:{}: invalid JSON: {e}", n + 1))?;
                v.push((n + 1, val));
            }
            v
        }
    };
    let mut map: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for (n, v) in entries {
        let Value::Object(o) = v else {
            bail!("{file}: entry {n}: not a JSON object");
        };
        let id = o
            .get("question_id")
            .and_then(id_string)
            .ok_or_else(|| anyhow!("{file}: entry {n}: missing or bad `question_id`"))?;
        let answers = answers_of(&o)
            .map_err(|e| anyhow!("{file}: entry {n} (question_id {id}): {e}"))?
            .ok_or_else(|| {
                anyhow!("{file}: entry {n} (question_id {id}): no `answer`, `answers` or `label`")
            })?;
        map.entry(id).or_default().push(answers);
    }
    Ok(map)
}

impl JsonlSet {
    pub(super) fn open(path: &Path, opts: &OpenOptions) -> Result<Self> {
        let file = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow!("{file}: cannot read: {e}"))?;
        let image_dir = match &opts.image_dir {
            Some(d) => d.clone(),
            None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        };
        if !image_dir.is_dir() {
            bail!(
                "{}: image folder not found (for {file})",
                image_dir.display()
            );
        }
        let answers = opts.answers.as_deref().map(read_answers).transpose()?;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if samples.len() >= limit {
                break;
            }
            let ln = n + 1;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| anyhow!("{file}:{ln}: invalid JSON: {e}"))?;
            let Value::Object(o) = v else {
                bail!("{file}:{ln}: not a JSON object");
            };
            let id = match o.get("question_id") {
                None | Some(Value::Null) => bail!("{file}:{ln}: missing `question_id`"),
                Some(v) => id_string(v).ok_or_else(|| {
                    anyhow!("{file}:{ln}: `question_id` must be a string or integer")
                })?,
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
            let image_path = image_dir.join(&image);
            if !image_path.is_file() {
                bail!(
                    "{file}:{ln} (question_id {id}): image {} not found",
                    image_path.display()
                );
            }
            let category = match o.get("category") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => "default".to_string(),
                Some(_) => bail!("{file}:{ln} (question_id {id}): `category` must be a string"),
            };
            let mut ans = answers_of(&o)
                .map_err(|e| anyhow!("{file}:{ln} (question_id {id}): {e}"))?
                .unwrap_or_default();
            if let (Some(map), Some(afile)) = (&answers, &opts.answers) {
                let k = seen.entry(id.clone()).or_insert(0);
                let entry = map.get(&id).and_then(|v| v.get(*k)).ok_or_else(|| {
                    anyhow!(
                        "{}: no answer for question_id {id} (occurrence {} in {file}:{ln})",
                        afile.display(),
                        *k + 1
                    )
                })?;
                *k += 1;
                ans.extend(entry.iter().cloned());
            }
            samples.push(Sample {
                id,
                question,
                answers: ans,
                category,
                image: ImageSource::Path(image_path),
            });
        }
        Ok(JsonlSet {
            file: path.to_path_buf(),
            samples,
        })
    }
}
