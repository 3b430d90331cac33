//! MMBench TSV (`mmbench_dev_20230712.tsv`, read by LLaVA's `model_vqa_mmbench.py`; format documented in
//! the parent module).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use super::{clean_hint, key_columns, BenchmarkKind, ImageSource, KeySet, OpenOptions, Sample};

/// Splits tab-separated text into records of fields, pandas-style: a field starting with `"` is quoted
/// (tabs and newlines inside, `""` for a quote). Returns `(line number of the record's start, fields)`.
fn records(text: &str) -> std::result::Result<Vec<(usize, Vec<String>)>, String> {
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut start = 1usize;
    let mut at_field_start = true;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            '\t' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\n' | '\r' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].is_empty()) {
                    out.push((start, std::mem::take(&mut fields)));
                } else {
                    fields.clear();
                }
                line += 1;
                start = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(format!("line {start}: unterminated quoted field"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
}

/// Standard base64 (`+/`, `=` padding optional, whitespace ignored).
pub(super) fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for (i, c) in s.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return Err(format!("invalid base64 byte {c:#04x} at {i}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn cell(r: &[String], c: usize) -> &str {
    r.get(c).map(String::as_str).unwrap_or("")
}

/// pandas' default missing-value strings (`pandas.read_csv`'s `na_values`, which LLaVA's
/// `pd.read_table` uses), compared exactly as pandas does; `""` included.
const PANDAS_NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// A cell pandas reads as missing.
fn null_cell(s: &str) -> bool {
    PANDAS_NA.contains(&s)
}

/// An option LLaVA's `model_vqa_mmbench.py` shows: not missing to pandas, and not what its
/// `is_none` also takes for none (`nan` / `none`, any case).
fn option_cell(s: &str) -> Option<String> {
    let t = s.to_ascii_lowercase();
    (!null_cell(s) && t != "nan" && t != "none").then(|| s.to_string())
}

pub(super) fn read(path: &Path, opts: &OpenOptions) -> Result<Vec<Sample>> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{file}: cannot read: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let recs = records(text).map_err(|e| anyhow!("{file}: {e}"))?;
    let Some(((_, header), rows)) = recs.split_first() else {
        bail!("{file}: empty TSV file");
    };
    let col = |name: &str| header.iter().position(|h| h == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            anyhow!(
                "{file}: missing column `{name}` (columns: {})",
                header.join(", ")
            )
        })
    };
    let c_index = need("index")?;
    let c_question = need("question")?;
    let c_image = need("image")?;
    let missing: Vec<&str> = ["A", "B"]
        .into_iter()
        .filter(|n| col(n).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{file}: missing option column{} `{}` (MMBench needs A and B at least; columns: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join("`, `"),
            header.join(", ")
        );
    }
    let c_a = need("A")?;
    let mut c_options = vec![c_a];
    for name in ["B", "C", "D", "E"] {
        match col(name) {
            Some(c) => c_options.push(c),
            None => break,
        }
    }
    let c_hint = col("hint");
    let c_answer = col("answer");
    let c_category = col("category");
    let c_l2 = col("l2-category").or_else(|| col("L2-category"));
    let kind = opts.benchmark.unwrap_or(BenchmarkKind::MmBench);

    // Images of rows whose `image` cell holds base64 (for the all-digit references of circular copies).
    let mut by_index: HashMap<&str, &str> = HashMap::new();
    for (_, r) in rows {
        let img = cell(r, c_image);
        if img.len() > 16 {
            by_index.entry(cell(r, c_index)).or_insert(img);
        }
    }

    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut keys = KeySet::new();
    let mut samples = Vec::new();
    for (row, (line, r)) in rows.iter().enumerate() {
        if samples.len() >= limit {
            break;
        }
        if r.len() != header.len() {
            bail!(
                "{file}: row {row} (line {line}): {} fields, the header has {}",
                r.len(),
                header.len()
            );
        }
        let raw_index = cell(r, c_index).trim();
        let at = format!("{file}: row {row} (index {raw_index})");
        let index: i64 = raw_index
            .parse::<i64>()
            .or_else(|_| {
                raw_index
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0)
                    .map(|f| f as i64)
                    .ok_or(())
            })
            .map_err(|_| anyhow!("{at}: column `index`: `{raw_index}` is not an integer"))?;
        let id = index.to_string();
        let question = cell(r, c_question);
        if null_cell(question) {
            bail!("{at}: column `question`: null question");
        }
        let mut img = cell(r, c_image).trim();
        if img.len() <= 16 && !img.is_empty() && img.bytes().all(|b| b.is_ascii_digit()) {
            img = by_index.get(img).copied().ok_or_else(|| {
                anyhow!("{at}: column `image`: refers to index {img}, which has no image")
            })?;
        }
        if img.is_empty() {
            bail!("{at}: column `image`: null image");
        }
        let bytes =
            base64_decode(img).map_err(|e| anyhow!("{at}: column `image`: bad base64: {e}"))?;
        let image = ImageSource::Bytes(bytes);
        if let Err(e) = image.check_header() {
            bail!("{at}: column `image`: cannot decode image: {e}");
        }
        let mut choices = Vec::new();
        for &c in &c_options {
            match option_cell(cell(r, c)) {
                Some(v) => choices.push(v),
                None => break,
            }
        }

        let answers = c_answer
            .map(|c| cell(r, c).trim())
            .filter(|a| !null_cell(a))
            .map(|a| vec![a.to_string()])
            .unwrap_or_default();
        keys.insert(
            &id,
            || at.clone(),
            || format!("row {}", row),
            || key_columns(kind, "index", false),
        )?;
        samples.push(Sample {
            key: id.clone(),
            id,
            benchmark: kind,
            question: question.to_string(),
            question_is_prompt: false,
            answers,
            choices,
            hint: clean_hint(c_hint.map(|c| cell(r, c)).filter(|h| !null_cell(h))),
            ocr_tokens: Vec::new(),
            index: Some(index),
            category: c_category
                .map(|c| cell(r, c))
                .filter(|c| !null_cell(c))
                .unwrap_or("default")
                .to_string(),
            l2_category: c_l2
                .map(|c| cell(r, c))
                .filter(|c| !null_cell(c))
                .map(str::to_string),
            image,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_records_and_base64() {
        let r = records("a\tb\n1\t\"x\ty\n\"\"z\"\"\"\n\n2\t3").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].1, vec!["1", "x\ty\n\"z\""]);
        assert_eq!(r[2], (5, vec!["2".to_string(), "3".to_string()]));
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode("a*b").is_err());
    }
}
