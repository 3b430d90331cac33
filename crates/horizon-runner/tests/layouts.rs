//! Checkpoints in every layout users have: the published names, what transformers 5.x
//! `save_pretrained` writes (the `hf5_*` parity cases), and HF's in-memory module-tree names
//! (`model.state_dict()` saved as is). The module-tree names are HF's own
//! (`fixtures/*/reference/module_tree_names.json`, from `fixtures/make_module_tree_names.py`).
//! A checkpoint whose names mix layouts, or fit none, is a one-line error naming the first such tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use horizon_runner::models::llava::model::{LLAVA_LAYOUTS, LLAVA_MODULE_TREE, LLAVA_PUBLISHED};
use horizon_runner::models::qwen2_5_vl::model::{
    QWEN2_5_VL_LAYOUTS, QWEN2_5_VL_MODULE_TREE, QWEN2_5_VL_PUBLISHED,
};
use horizon_runner::processor::{Processor, PromptTemplate};
use horizon_runner::weights::CheckpointLayout;
use horizon_runner::{Intervention, VlModel};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Family {
    dir: &'static str,
    model: &'static str,
    image: &'static str,
    published: CheckpointLayout,
    module_tree: CheckpointLayout,
    all: &'static [CheckpointLayout],
}

const FAMILIES: [Family; 2] = [
    Family {
        dir: "fixtures/llava",
        model: "models/llava-tiny",
        image: "images/square.png",
        published: LLAVA_PUBLISHED,
        module_tree: LLAVA_MODULE_TREE,
        all: LLAVA_LAYOUTS,
    },
    Family {
        dir: "fixtures/qwen2_5_vl",
        model: "models/qwen-tiny",
        image: "images/square.png",
        published: QWEN2_5_VL_PUBLISHED,
        module_tree: QWEN2_5_VL_MODULE_TREE,
        all: QWEN2_5_VL_LAYOUTS,
    },
];

fn hf_names(f: &Family) -> BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(f.dir).join("reference/module_tree_names.json"))
            .unwrap(),
    )
    .unwrap();
    serde_json::from_value(v["disk_to_module_tree"].clone()).unwrap()
}

/// The checkpoint directory `src` copied to `dst` with its weights in one file, each tensor stored
/// under `rename(stored name)`.
fn rewrite(src: &Path, dst: &Path, rename: impl Fn(&str) -> String) {
    std::fs::create_dir_all(dst).unwrap();
    let mut tensors = Vec::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") {
            tensors.extend(Tensor::read_safetensors(&path).unwrap());
        } else if name != "model.safetensors.index.json" {
            std::fs::copy(&path, dst.join(&name)).unwrap();
        }
    }
    let renamed: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(n, t)| (rename(&n), t)).collect();
    let refs: Vec<(&str, &Tensor)> = renamed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, dst.join("model.safetensors")).unwrap();
}

fn logits(dir: &Path, image: &Path) -> Tensor {
    let model = VlModel::load(dir, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::load(dir, &model).unwrap();
    let inputs = processor
        .prepare(
            &model,
            "What color is the circle?",
            image,
            PromptTemplate::Auto,
        )
        .unwrap();
    let out = model
        .prefill(&inputs, &mut Intervention::none(), None, None)
        .unwrap();
    model.lm_head(&out.hidden)
}

#[test]
fn layout_rules_are_hfs_own_renames() {
    for f in &FAMILIES {
        for (disk, module_tree) in hf_names(f) {
            assert_eq!(
                f.published.to_model(&disk).as_deref(),
                Some(module_tree.as_str()),
                "{disk}"
            );
            assert_eq!(
                f.module_tree.to_model(&module_tree).as_deref(),
                Some(module_tree.as_str())
            );
            assert_eq!(
                f.published.to_disk(&module_tree).as_deref(),
                Some(disk.as_str())
            );
        }
    }
}

#[test]
fn module_tree_checkpoint_loads_with_equal_logits() {
    for f in &FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let src = root().join(f.dir).join(f.model);
        let names = hf_names(f);
        let dst = tmp.path().join("module-tree");
        rewrite(&src, &dst, |n| names[n].clone());
        let image = root().join(f.dir).join(f.image);
        assert!(
            logits(&dst, &image).equal(&logits(&src, &image)),
            "{}",
            f.dir
        );
    }
}

#[test]
fn mixed_or_unknown_names_are_one_line_errors() {
    for f in &FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let src = root().join(f.dir).join(f.model);
        let names = hf_names(f);
        // One tensor in the module-tree layout, the rest as published.
        let odd = names.keys().nth(3).unwrap().clone();
        let mixed = tmp.path().join("mixed");
        rewrite(&src, &mixed, |n| {
            if n == odd {
                names[n].clone()
            } else {
                n.to_string()
            }
        });
        let err = VlModel::load(&mixed, Device::Cpu, Kind::Float)
            .err()
            .expect("a mixed layout is refused");
        let msg = format!("{err:#}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(&names[&odd]), "{msg}");
        assert!(msg.contains("mixes checkpoint layouts"), "{msg}");
        assert!(msg.contains(f.all[0].name), "{msg}");
        // A tensor no layout has.
        let unknown = tmp.path().join("unknown");
        rewrite(&src, &unknown, |n| {
            if n == odd {
                format!("extra.{n}")
            } else {
                n.to_string()
            }
        });
        let msg = format!(
            "{:#}",
            VlModel::load(&unknown, Device::Cpu, Kind::Float)
                .err()
                .expect("an unknown name is refused")
        );
        assert!(msg.contains(&format!("extra.{odd}")), "{msg}");
        assert!(msg.contains("fits no known checkpoint layout"), "{msg}");
    }
}
