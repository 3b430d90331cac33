//! The information oracle's window scores read from `horizon info` rows instead of computed: per
//! sample and cut layer, p(answer) with only window w kept, from a run of the same checkpoint over
//! the same selection (keep-only, target gt, the same window size), checked to cover every sample
//! and layer an evaluation will ask for before it starts.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use horizon_analysis::{read_info_rows_many, ReadOptions};
use horizon_data::bench::Sample;
use horizon_data::info_rows::{part_files, InfoMode, RowVariant, Target};
use horizon_data::run_meta::{RunKind, RunMetadata};

use super::{Method, PruneSpec};
use crate::evaluate::InfoRowScores;

/// The window scores of the part files in `dir`, which must be rows of a `horizon info` run of the
/// checkpoint `model_dir` over the selection `samples`, keep-only, target gt, with windows of
/// `window`×`window` tokens (every part file's metadata is checked); errors start with
/// `--info-rows DIR` or name the part file.
pub fn read_info_row_scores(
    dir: &Path,
    model_dir: &Path,
    window: usize,
    samples: &[Sample],
) -> Result<InfoRowScores> {
    let name = format!("--info-rows {}", dir.display());
    let files = part_files(dir).with_context(|| name.clone())?;
    if files.is_empty() {
        bail!("{name}: no part-*.parquet files");
    }
    let fingerprint = crate::checkpoint::fingerprint(model_dir)?;
    let selection = crate::parts::selection_fingerprint(samples)?;
    for file in &files {
        let meta = RunMetadata::read_part(file).with_context(|| name.clone())?;
        let RunKind::Info(info) = &meta.run else {
            bail!("{}: not a `horizon info` part file", file.display());
        };
        if meta.model_fingerprint != fingerprint {
            bail!(
                "{}: rows of another checkpoint than {} (fingerprint differs)",
                file.display(),
                model_dir.display()
            );
        }
        if meta.selection_fingerprint != selection {
            bail!(
                "{}: rows of another selection of samples (its benchmark, --limit, --per-category or \
                 --seed differ: the selection fingerprint differs)",
                file.display()
            );
        }
        if info.window_size != window {
            bail!(
                "{name}: rows of {0}x{0} windows, --info-window is {window}",
                info.window_size
            );
        }
        if info.mode != InfoMode::KeepOnly || info.target != Target::Gt {
            bail!(
                "{}: {} rows of target {}; the oracle ranks keep-only windows by the ground-truth answer",
                file.display(),
                info.mode,
                info.target
            );
        }
    }
    let table =
        read_info_rows_many(&files, &ReadOptions::default()).with_context(|| name.clone())?;
    let p = table
        .p
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{name}: no p column"))?;
    let mut by_sample: HashMap<String, BTreeMap<usize, Vec<f64>>> = HashMap::new();
    for (i, &p_i) in p.iter().enumerate() {
        let at = |column: &str| format!("{name}: row {i}: {column}");
        let variant: RowVariant = table
            .variant
            .get(i)
            .parse()
            .with_context(|| at("variant"))?;
        if variant != RowVariant::Window {
            continue;
        }
        let mode: InfoMode = table.mode.get(i).parse().with_context(|| at("mode"))?;
        let target: Target = table.target.get(i).parse().with_context(|| at("target"))?;
        if mode != InfoMode::KeepOnly || target != Target::Gt {
            bail!(
                "{name}: row {i} is {mode} / target {target}; the oracle ranks keep-only windows by the ground-truth answer"
            );
        }
        let (layer, w) = (table.layer[i], table.window[i]);
        if layer < 0 || w < 0 {
            bail!("{name}: row {i}: window row with layer {layer}, window {w}");
        }
        let v = by_sample
            .entry(table.sample_id.get(i).to_string())
            .or_default()
            .entry(layer as usize)
            .or_default();
        if v.len() <= w as usize {
            v.resize(w as usize + 1, f64::NAN);
        }
        v[w as usize] = p_i;
    }
    Ok(InfoRowScores {
        source: dir.display().to_string(),
        by_sample,
    })
}

/// Checks that `rows` hold, for every sample of `samples`, finite window scores at the layer of
/// every `info` stage of `specs`: what the evaluation would otherwise find missing at that sample.
pub fn check_info_rows_cover(
    rows: &InfoRowScores,
    samples: &[Sample],
    specs: &[PruneSpec],
) -> Result<()> {
    let mut layers: Vec<usize> = specs
        .iter()
        .flat_map(|s| s.stages.iter())
        .filter(|s| s.method == Method::Info)
        .map(|s| s.layer)
        .collect();
    layers.sort_unstable();
    layers.dedup();
    if layers.is_empty() {
        return Ok(());
    }
    let name = format!("--info-rows {}", rows.source);
    let missing: Vec<&str> = samples
        .iter()
        .filter(|s| !rows.by_sample.contains_key(&s.key))
        .map(|s| s.key.as_str())
        .collect();
    if let Some(first) = missing.first() {
        bail!(
            "{name}: no rows for sample {first} ({} of the {} samples have none)",
            missing.len(),
            samples.len()
        );
    }
    for sample in samples {
        let by_layer = &rows.by_sample[&sample.key];
        for &layer in &layers {
            match by_layer.get(&layer) {
                None => bail!(
                    "{name}: sample {} has no layer {layer} in its rows (it has {:?}), which an info stage needs",
                    sample.key,
                    by_layer.keys().collect::<Vec<_>>()
                ),
                Some(p) if p.is_empty() || p.iter().any(|v| !v.is_finite()) => bail!(
                    "{name}: sample {} at layer {layer}: {} of {} window values are missing or not finite",
                    sample.key,
                    p.iter().filter(|v| !v.is_finite()).count(),
                    p.len()
                ),
                Some(_) => {}
            }
        }
    }
    Ok(())
}
