//! The metadata of a part-file run (`horizon info`, `horizon eval`): the settings that decide its
//! rows, the fingerprints of the checkpoint and of the selected samples, and the shard. One typed
//! [`RunMetadata`] is written into every part file's Parquet footer (as `horizon.<field>` key/value
//! pairs, readable by any Parquet tool) and into `DONE.json` ([`DoneMarker`]); resume, merge and
//! score read it back with [`RunMetadata::read_part`] and compare whole values.
//!
//! `horizon.run_format` is [`RUN_FORMAT`]; part files without it were written by an earlier
//! horizon whose fingerprints covered less (a sampled checkpoint, fewer sample fields), and are
//! refused with a message saying so rather than compared field by field.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::info_rows::{Estimate, InfoMode, KlEstimate, Target};

/// The layout version of run metadata this horizon writes and reads.
pub const RUN_FORMAT: u32 = 2;

/// The prefix of every key in a part file's footer.
pub const KEY_PREFIX: &str = "horizon.";

/// Everything that decides a run's rows, and which share of the selection it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetadata {
    #[serde(with = "as_text")]
    pub run_format: u32,
    /// Content fingerprint of the checkpoint's files (horizon-runner's `checkpoint::fingerprint`).
    pub model_fingerprint: String,
    /// Fingerprint of the whole selection, every field that shapes a prompt, a target or a score.
    pub selection_fingerprint: String,
    /// Samples in the whole selection (all shards).
    #[serde(with = "as_text")]
    pub selected: usize,
    /// `i/n` of `--shard`; `0-(n-1)/n merged` for merged shards.
    pub shard: String,
    /// Label of the model in the rows.
    pub model: String,
    /// The checkpoint directory (recorded, not compared: a copy may move).
    pub model_path: String,
    pub model_type: String,
    pub dtype: String,
    pub template: String,
    pub prompt_style: String,
    /// The benchmark path (recorded, not compared).
    pub bench: String,
    /// Processor pixel bounds (Qwen2.5-VL `--min-pixels` / `--max-pixels`) when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pixels: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<String>,
    /// What kind of run, with its own settings (`horizon.run` = `info` or `eval`).
    #[serde(flatten)]
    pub run: RunKind,
}

/// The settings of one kind of run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "run", rename_all = "lowercase")]
pub enum RunKind {
    Info(InfoSettings),
    Eval(EvalSettings),
}

impl RunKind {
    /// `info` or `eval`, as `horizon.run` says.
    pub fn name(&self) -> &'static str {
        match self {
            RunKind::Info(_) => "info",
            RunKind::Eval(_) => "eval",
        }
    }
}

/// What decides `horizon info` rows besides the model and the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoSettings {
    /// The batch rule (`N` variants, or `auto, M MiB`): batched GEMMs round differently with the
    /// batch shape, so the rule decides the bits.
    pub batch: String,
    #[serde(with = "as_text")]
    pub num_layers: usize,
    /// Cut layers K, 0-based, sorted (`[1, 3]`).
    #[serde(with = "layer_list")]
    pub layers: Vec<usize>,
    #[serde(with = "as_text")]
    pub window_size: usize,
    pub mode: InfoMode,
    pub target: Target,
    /// Exact cuts or one-pass estimates; parts written before the field existed are exact.
    #[serde(default)]
    pub estimate: Estimate,
    /// The estimator's method where `estimate` alone does not name it
    /// ([`InfoSettings::estimator_of`]). Earlier gradient estimates (linearised in the key weights)
    /// have none, so a run of them is never continued with these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimator: Option<String>,
}

/// `horizon.estimator` of keep-only `--estimate gradient` runs: linearised in each layer's
/// attention with AtP*'s QK fix, log p(y) following linearly, the visual queries on their own
/// window's keys.
pub const KEEP_ONLY_ESTIMATOR: &str = "attention-qk-fix-own-window";

/// `horizon.estimator` of leave-out `--estimate gradient` runs: the same linearisation, the change
/// extrapolated along the target's log-odds.
pub const LEAVE_OUT_ESTIMATOR: &str = "attention-qk-fix-log-odds";

/// `horizon.estimator` of leave-out `--estimate gradient --estimate-kl answer` runs: p and log p
/// as [`LEAVE_OUT_ESTIMATOR`]'s, the KL that of the answer-versus-rest split.
pub const LEAVE_OUT_ANSWER_KL_ESTIMATOR: &str = "attention-qk-fix-log-odds-answer-kl";

/// What both modes' gradient runs recorded before [`KEEP_ONLY_ESTIMATOR`] and
/// [`LEAVE_OUT_ESTIMATOR`] (keep-only's visual queries on the text, leave-out linear in log p(y)):
/// parts of it are not continued with either.
pub const EARLIER_GRADIENT_ESTIMATOR: &str = "attention-qk-fix";

impl InfoSettings {
    /// The `estimator` field that `estimate` records in `mode` with leave-out's KL scored by
    /// `kl` (keep-only has one KL estimate).
    pub fn estimator_of(estimate: Estimate, mode: InfoMode, kl: KlEstimate) -> Option<String> {
        (estimate == Estimate::Gradient).then(|| {
            match (mode, kl) {
                (InfoMode::KeepOnly, _) => KEEP_ONLY_ESTIMATOR,
                (InfoMode::LeaveOut, KlEstimate::Fisher) => LEAVE_OUT_ESTIMATOR,
                (InfoMode::LeaveOut, KlEstimate::Answer) => LEAVE_OUT_ANSWER_KL_ESTIMATOR,
            }
            .to_string()
        })
    }
}

/// What decides `horizon eval` predictions besides the model and the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    #[serde(with = "as_text")]
    pub max_new_tokens: usize,
    /// `from the benchmark`, or the `--scorer` name.
    pub scorer: String,
    /// The pruning spec (`none` for the plain model).
    pub prune: String,
    pub prune_options: String,
    /// The `horizon info` rows the information oracle read, when it read any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_rows: Option<String>,
}

/// Fields that may differ between the shards of one run, or between a run and its resumption: the
/// shard, and paths (a copy of the checkpoint or the benchmark may move).
pub const LOCATION_FIELDS: [&str; 3] = ["shard", "model_path", "bench"];

impl RunMetadata {
    /// The footer pairs, `horizon.<field>` → value, sorted by key.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.to_map()
            .into_iter()
            .map(|(k, v)| (format!("{KEY_PREFIX}{k}"), v))
            .collect()
    }

    /// Field → value, every value as text (what the footer holds).
    fn to_map(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).expect("run metadata serializes");
        let serde_json::Value::Object(fields) = value else {
            unreachable!("a struct serializes to an object")
        };
        fields
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect()
    }

    /// Reads the `horizon.*` pairs of a footer back; `source` names the file in errors.
    pub fn from_pairs(
        source: &Path,
        pairs: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let fields: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(KEY_PREFIX)
                    .map(|k| (k.to_string(), serde_json::Value::String(v)))
            })
            .collect();
        match fields.get("run_format").and_then(|v| v.as_str()) {
            None => bail!(
                "{}: written by an earlier horizon (no {KEY_PREFIX}run_format; its fingerprints \
                 covered less): rerun it into a new --out",
                source.display()
            ),
            Some(f) if f != RUN_FORMAT.to_string() => bail!(
                "{}: run format {f}, this horizon reads format {RUN_FORMAT}: rerun it into a new --out",
                source.display()
            ),
            Some(_) => {}
        }
        serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| anyhow!("{}: invalid {KEY_PREFIX}* metadata ({e})", source.display()))
    }

    /// The run metadata in the footer of the Parquet file `path`.
    pub fn read_part(path: &Path) -> Result<Self> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", path.display()))?;
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        Self::from_pairs(
            path,
            kv.into_iter().filter_map(|k| k.value.map(|v| (k.key, v))),
        )
    }

    /// The first field (by key) whose value differs from `other`'s, fields in `ignore` aside:
    /// `(horizon.<field>, value here, value there)`, `None` for a field one side lacks.
    pub fn first_difference(
        &self,
        other: &Self,
        ignore: &[&str],
    ) -> Option<(String, Option<String>, Option<String>)> {
        let (a, b) = (self.to_map(), other.to_map());
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let found = keys
            .into_iter()
            .filter(|k| !ignore.contains(&k.as_str()))
            .find(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                (
                    format!("{KEY_PREFIX}{k}"),
                    a.get(k).cloned(),
                    b.get(k).cloned(),
                )
            });
        found
    }

    /// An error when `other` (what `at` holds) is not a part of the same run as `self`, naming the
    /// first setting that differs; `what` says what `at` was expected to match. Location fields
    /// (shard, paths) are not compared.
    pub fn check_same_run(&self, other: &Self, at: &Path, what: &str) -> Result<()> {
        if self.run.name() != other.run.name() {
            bail!(
                "{}: a `horizon {}` run, {what} is a `horizon {}` run",
                at.display(),
                other.run.name(),
                self.run.name()
            );
        }
        if let Some((k, here, there)) = other.first_difference(self, &LOCATION_FIELDS) {
            let hint = continue_hint(&k, here.as_deref());
            bail!(
                "{}: {k} is {}, {what} has {}{hint}",
                at.display(),
                here.as_deref().unwrap_or("unset"),
                there.as_deref().unwrap_or("unset")
            );
        }
        Ok(())
    }
}

/// What continues parts whose metadata field `field` holds `value`, where an option alone
/// decides it, as `" (--option value continues it)"`; otherwise empty. Leave-out's two KL
/// estimates differ by `--estimate-kl` only, whose default changed from fisher to answer.
pub fn continue_hint(field: &str, value: Option<&str>) -> &'static str {
    match (field, value) {
        ("horizon.estimator", Some(LEAVE_OUT_ESTIMATOR)) => " (--estimate-kl fisher continues it)",
        ("horizon.estimator", Some(LEAVE_OUT_ANSWER_KL_ESTIMATOR)) => {
            " (--estimate-kl answer continues it)"
        }
        _ => "",
    }
}

/// The name of the marker a finished run writes into its output directory.
pub const DONE_FILE: &str = "DONE.json";

/// What `DONE.json` records: the run's settings (as in its part files) and exactly what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneMarker {
    pub settings: RunMetadata,
    /// Selection positions this run (shard) held.
    pub positions: Vec<usize>,
    /// Of those, the sample keys excluded for want of a ground-truth answer (under `--target gt`).
    pub skipped: Vec<String>,
    /// Every part file of the finished run, by name, with the sample keys it holds.
    pub parts: BTreeMap<String, Vec<String>>,
}

impl DoneMarker {
    /// The marker of the finished run in `dir`; `None` when there is none (the run has not
    /// finished). An unreadable marker, or one of an earlier horizon, is an error naming it.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(DONE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("{}: cannot read ({e})", path.display()),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))?;
        let format = value
            .pointer("/settings/run_format")
            .and_then(|v| v.as_str());
        if format != Some(RUN_FORMAT.to_string().as_str()) {
            bail!(
                "{}: written by an earlier horizon (run format {}, this horizon reads {RUN_FORMAT}): \
                 rerun the shard into a new --out",
                path.display(),
                format.unwrap_or("unrecorded")
            );
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| anyhow!("{}: not a valid {DONE_FILE} ({e})", path.display()))
    }

    /// Writes the marker into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(DONE_FILE);
        let text = serde_json::to_string_pretty(self)?;
        crate::atomic::write_atomic(&path, |tmp| {
            std::fs::write(tmp, &text).with_context(|| format!("{}: cannot write", tmp.display()))
        })
    }
}

/// Numbers stored as decimal text (footer values are strings).
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("'{text}': {e}")))
    }
}

/// A layer list stored as `[1, 3]`.
mod layer_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[usize], s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("'{text}' is not a layer list like [1, 3]"));
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(bad)?;
        if inner.trim().is_empty() {
            return Ok(Vec::new());
        }
        inner
            .split(',')
            .map(|x| x.trim().parse().map_err(|_| bad()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_meta() -> RunMetadata {
        RunMetadata {
            run_format: RUN_FORMAT,
            model_fingerprint: "abc".into(),
            selection_fingerprint: "def".into(),
            selected: 5,
            shard: "0/1".into(),
            model: "m".into(),
            model_path: "/m".into(),
            model_type: "llava".into(),
            dtype: "f32".into(),
            template: "Auto".into(),
            prompt_style: "llava".into(),
            bench: "/b".into(),
            min_pixels: None,
            max_pixels: Some("50000".into()),
            run: RunKind::Info(InfoSettings {
                batch: "auto, 2048 MiB".into(),
                num_layers: 4,
                layers: vec![1, 3],
                window_size: 2,
                mode: InfoMode::KeepOnly,
                target: Target::Gt,
                estimate: Estimate::Exact,
                estimator: None,
            }),
        }
    }

    #[test]
    fn footer_pairs_round_trip_and_keep_the_flat_keys() {
        let m = info_meta();
        let pairs = m.to_pairs();
        let map: BTreeMap<_, _> = pairs.iter().cloned().collect();
        assert_eq!(map["horizon.layers"], "[1, 3]");
        assert_eq!(map["horizon.window_size"], "2");
        assert_eq!(map["horizon.mode"], "keep-only");
        assert_eq!(map["horizon.run"], "info");
        assert_eq!(map["horizon.max_pixels"], "50000");
        assert!(!map.contains_key("horizon.min_pixels"));
        let mut sorted = pairs.clone();
        sorted.sort();
        assert_eq!(pairs, sorted, "sorted by key");
        assert_eq!(RunMetadata::from_pairs(Path::new("p"), pairs).unwrap(), m);
    }

    #[test]
    fn differences_name_the_field_and_old_footers_are_refused() {
        let a = info_meta();
        let mut b = a.clone();
        if let RunKind::Info(s) = &mut b.run {
            s.window_size = 3;
        }
        b.bench = "/elsewhere".into();
        let e = a
            .check_same_run(&b, Path::new("part-000002.parquet"), "the run")
            .unwrap_err()
            .to_string();
        assert!(e.contains("horizon.window_size is 3"), "{e}");
        let mut c = a.clone();
        c.run = RunKind::Eval(EvalSettings {
            max_new_tokens: 16,
            scorer: "from the benchmark".into(),
            prune: "none".into(),
            prune_options: "".into(),
            info_rows: None,
        });
        let e = a.check_same_run(&c, Path::new("x"), "y").unwrap_err();
        assert!(e.to_string().contains("`horizon eval` run"), "{e}");
        let old = vec![("horizon.window_size".to_string(), "2".to_string())];
        let e = RunMetadata::from_pairs(Path::new("old.parquet"), old).unwrap_err();
        assert!(e.to_string().contains("earlier horizon"), "{e}");
    }

    #[test]
    fn the_estimator_is_recorded_and_a_mixed_resume_is_refused() {
        let exact = info_meta();
        let mut gradient = exact.clone();
        if let RunKind::Info(s) = &mut gradient.run {
            s.estimate = Estimate::Gradient;
        }
        let pairs: BTreeMap<_, _> = gradient.to_pairs().into_iter().collect();
        assert_eq!(pairs["horizon.estimate"], "gradient");
        let e = exact
            .check_same_run(&gradient, Path::new("part-000001.parquet"), "the run")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "part-000001.parquet: horizon.estimate is gradient, the run has exact"
        );
        // Parts written before the field existed hold exact rows.
        let old: Vec<_> = exact
            .to_pairs()
            .into_iter()
            .filter(|(k, _)| k != "horizon.estimate")
            .collect();
        assert_eq!(RunMetadata::from_pairs(Path::new("p"), old).unwrap(), exact);
        assert!(!pairs.contains_key("horizon.estimator"));
        // Gradient estimates name their method; earlier ones, without it, are not continued.
        let mut named = gradient.clone();
        if let RunKind::Info(s) = &mut named.run {
            s.estimator = InfoSettings::estimator_of(s.estimate, s.mode, KlEstimate::Fisher);
        }
        let pairs: BTreeMap<_, _> = named.to_pairs().into_iter().collect();
        assert_eq!(pairs["horizon.estimator"], KEEP_ONLY_ESTIMATOR);
        let e = named
            .check_same_run(&gradient, Path::new("part-000000.parquet"), "the run")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "part-000000.parquet: horizon.estimator is unset, the run has attention-qk-fix-own-window"
        );
        assert_eq!(
            RunMetadata::from_pairs(Path::new("p"), named.to_pairs()).unwrap(),
            named
        );
        // Parts of the earlier estimators, in either mode, are not continued with the current ones.
        for (mode, current) in [
            (InfoMode::KeepOnly, KEEP_ONLY_ESTIMATOR),
            (InfoMode::LeaveOut, LEAVE_OUT_ESTIMATOR),
        ] {
            let mut earlier = named.clone();
            if let RunKind::Info(s) = &mut earlier.run {
                s.mode = mode;
                s.estimator = Some(EARLIER_GRADIENT_ESTIMATOR.to_string());
            }
            let mut now = earlier.clone();
            if let RunKind::Info(s) = &mut now.run {
                s.estimator = InfoSettings::estimator_of(s.estimate, s.mode, KlEstimate::Fisher);
            }
            assert_eq!(
                now.to_pairs().into_iter().collect::<BTreeMap<_, _>>()["horizon.estimator"],
                current
            );
            let e = now
                .check_same_run(&earlier, Path::new("part-000003.parquet"), "the run")
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "part-000003.parquet: horizon.estimator is attention-qk-fix, the run has {current}"
                )
            );
        }
        // Leave-out's answer-versus-rest KL is another estimator; keep-only has one KL estimate.
        let mut answer_kl = named.clone();
        if let RunKind::Info(s) = &mut answer_kl.run {
            s.mode = InfoMode::LeaveOut;
            s.estimator =
                InfoSettings::estimator_of(s.estimate, InfoMode::LeaveOut, KlEstimate::Answer);
        }
        let mut fisher = answer_kl.clone();
        if let RunKind::Info(s) = &mut fisher.run {
            s.estimator = InfoSettings::estimator_of(s.estimate, s.mode, KlEstimate::Fisher);
        }
        let e = fisher
            .check_same_run(&answer_kl, Path::new("part-000002.parquet"), "the run")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "part-000002.parquet: horizon.estimator is attention-qk-fix-log-odds-answer-kl, the run has attention-qk-fix-log-odds (--estimate-kl answer continues it)"
        );
        let e = answer_kl
            .check_same_run(&fisher, Path::new("part-000002.parquet"), "the run")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "part-000002.parquet: horizon.estimator is attention-qk-fix-log-odds, the run has attention-qk-fix-log-odds-answer-kl (--estimate-kl fisher continues it)"
        );
        assert_eq!(
            InfoSettings::estimator_of(Estimate::Gradient, InfoMode::KeepOnly, KlEstimate::Answer),
            Some(KEEP_ONLY_ESTIMATOR.to_string())
        );
        for mode in [InfoMode::KeepOnly, InfoMode::LeaveOut] {
            for kl in [KlEstimate::Fisher, KlEstimate::Answer] {
                assert_eq!(InfoSettings::estimator_of(Estimate::Exact, mode, kl), None);
            }
        }
    }
}
