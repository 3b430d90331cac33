//! LLaVA's ScienceQA question file `llava_test_CQM-A.json` (format documented in the parent module).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::jsonl::{id_string, image_dir_of, load_answers, resolve_image, Matcher, Query};
use super::{key_columns, option_letter, BenchmarkKind, ImageSource, KeySet, OpenOptions, Sample};

/// The answer letter of a gpt turn: `B`, `B. text` or `The answer is B.`; else the text as written.
pub(super) fn answer_letter(text: &str) -> String {
    let t = text.trim();
    let is_letter = |c: u8| c.is_ascii_uppercase();
    let b = t.as_bytes();
    if b.len() == 1 && is_letter(b[0]) {
        return t.to_string();
    }
    if b.len() >= 2 && is_letter(b[0]) && b[1] == b'.' && (b.len() == 2 || b[2] == b' ') {
        return t[..1].to_string();
    }
    if let Some(rest) = t.strip_prefix("The answer is ") {
        let r = rest.as_bytes();
        if !r.is_empty() && is_letter(r[0]) && (r.len() == 1 || r[1] == b'.') {
            return rest[..1].to_string();
        }
    }
    t.to_string()
}

/// The trailing `A. …`, `B. …` option lines of a LLaVA multiple-choice prompt.
pub(super) fn parse_options(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    for start in (0..lines.len()).rev() {
        if !lines[start].starts_with("A. ") {
            continue;
        }
        let tail = &lines[start..];
        let ok = tail.iter().enumerate().all(|(j, l)| {
            j < 26
                && l.strip_prefix(option_letter(j))
                    .is_some_and(|r| r.starts_with(". "))
        });
        if ok {
            return tail.iter().map(|l| l[3..].to_string()).collect();
        }
        break;
    }
    Vec::new()
}

pub(super) fn read(path: &Path, opts: &OpenOptions) -> Result<Vec<Sample>> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{file}: cannot read: {e}"))?;
    let items: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => items,
        Ok(_) => bail!("{file}: expected a JSON array of ScienceQA items"),
        Err(e) => bail!("{file}: invalid JSON: {e}"),
    };
    let image_dir = image_dir_of(path, opts)?;
    let kind = opts.benchmark.unwrap_or(BenchmarkKind::ScienceQa);
    let mut matcher = opts
        .answers
        .as_deref()
        .map(|a| load_answers(a, kind))
        .transpose()?
        .map(Matcher::new);
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut keys = KeySet::new();
    let mut samples = Vec::new();
    for (n, item) in items.into_iter().enumerate() {
        if samples.len() >= limit {
            break;
        }
        let Value::Object(o) = item else {
            bail!("{file}: item {n}: not a JSON object");
        };
        let id = match o.get("id") {
            None | Some(Value::Null) => bail!("{file}: item {n}: missing `id`"),
            Some(v) => id_string(v)
                .ok_or_else(|| anyhow!("{file}: item {n}: `id` must be a string or integer"))?,
        };
        let at = format!("{file}: item {n} (id {id})");
        let image = match o.get("image") {
            // Text-only questions: answered without an image, as model_vqa_science.py does.
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => bail!("{at}: `image` must be a non-empty string"),
        };
        let turns = match o.get("conversations") {
            Some(Value::Array(t)) => t,
            _ => bail!("{at}: missing `conversations` list"),
        };
        let turn = |from: &str| {
            turns
                .iter()
                .filter_map(Value::as_object)
                .find(|t| t.get("from").and_then(Value::as_str) == Some(from))
                .and_then(|t| t.get("value"))
                .and_then(Value::as_str)
        };
        let Some(human) = turn("human") else {
            bail!("{at}: column `conversations`: no `human` turn with a string `value`");
        };
        let question = human.replace("<image>", "").trim().to_string();
        let mut answers: Vec<String> = turn("gpt").map(answer_letter).into_iter().collect();
        let mut choices = parse_options(&question);
        let mut hint = None;
        let image = match image {
            Some(image) => ImageSource::Path(
                resolve_image(&image_dir, &image, kind).map_err(|e| anyhow!("{at}: {e}"))?,
            ),
            None => ImageSource::None,
        };
        if let Some(m) = &mut matcher {
            let found = m.find(&Query {
                id: &id,
                question: &question,
                category: "default",
                at: &at,
            })?;
            if !found.answers.is_empty() {
                answers = found.answers;
            }
            if let Some(c) = found.choices {
                choices = c;
            }
            if let Some(h) = found.hint {
                hint = h;
            }
        }
        keys.insert(
            &id,
            || at.clone(),
            || format!("item {n}"),
            || key_columns(kind, "id", false),
        )?;
        samples.push(Sample {
            key: id.clone(),
            id,
            benchmark: kind,
            question,
            question_is_prompt: true,
            answers,
            choices,
            hint,
            ocr_tokens: Vec::new(),
            index: None,
            category: "default".to_string(),
            l2_category: None,
            image,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_and_options() {
        assert_eq!(answer_letter("B"), "B");
        assert_eq!(answer_letter("C. Solution A"), "C");
        assert_eq!(answer_letter("The answer is A."), "A");
        assert_eq!(answer_letter("maybe"), "maybe");
        assert_eq!(
            parse_options("Context: x\nWhich?\nA. one\nB. two"),
            vec!["one", "two"]
        );
        assert!(parse_options("Which?\nB. two").is_empty());
    }
}
