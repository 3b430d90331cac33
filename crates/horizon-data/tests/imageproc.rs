//! Bit-exact comparison of `horizon_data::imageproc` with Pillow / transformers references made by
//! `fixtures/make_resize_refs.py` (see `tests/fixtures/imageproc/manifest.json` for the versions).

use std::path::{Path, PathBuf};

use horizon_data::imageproc::{
    clip_preprocess, load_rgb, qwen2vl_preprocess, resize_bicubic, resize_bicubic_with_pass_order,
    smart_resize, ClipImageProcessorConfig, PassOrder, Qwen2VlImageProcessorConfig, ResampleOrder,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Manifest {
    versions: Versions,
    resize: Vec<ResizeCase>,
    clip: Vec<ClipCase>,
    qwen: Vec<QwenCase>,
    convert: Vec<ConvertCase>,
}

#[derive(Deserialize)]
struct Versions {
    pillow: String,
    transformers: String,
}

#[derive(Deserialize)]
struct ResizeCase {
    src: String,
    width: u32,
    height: u32,
    files: ResizeFiles,
}

#[derive(Deserialize)]
struct ResizeFiles {
    /// `Image.resize` in the recorded Pillow.
    pillow: String,
    /// Width-only resize, then height-only resize.
    horizontal: String,
    /// Height-only resize, then width-only resize.
    vertical: String,
}

#[derive(Deserialize)]
struct ClipCase {
    src: String,
    config: String,
    file: String,
    shape: Vec<usize>,
}

#[derive(Deserialize)]
struct QwenCase {
    src: String,
    config: String,
    file: String,
    shape: Vec<usize>,
    grid_thw: [u32; 3],
}

#[derive(Deserialize)]
struct ConvertCase {
    src: String,
    file: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imageproc")
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest.json parses")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read_f32(name: &str) -> Vec<f32> {
    read(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn pillow_order(m: &Manifest) -> ResampleOrder {
    ResampleOrder::from_pillow_version(&m.versions.pillow).expect("pillow version")
}

/// Number of differing bytes and the largest difference.
fn byte_diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .fold((0, 0), |(n, max), (x, y)| (n + 1, max.max(x.abs_diff(*y))))
}

/// Number of elements whose bits differ and the largest absolute difference.
fn f32_diff(a: &[f32], b: &[f32]) -> (usize, f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .fold((0, 0.0), |(n, max), (x, y)| (n + 1, max.max((x - y).abs())))
}

#[test]
fn fixtures_record_the_reference_stack() {
    let m = manifest();
    assert_eq!(m.versions.transformers, "5.17.0");
    assert!(!m.versions.pillow.is_empty());
}

#[test]
fn bicubic_resize_matches_pillow_byte_for_byte() {
    let m = manifest();
    let order = pillow_order(&m);
    let mut failures = Vec::new();
    for case in &m.resize {
        let src = load_rgb(fixtures().join(&case.src)).unwrap();
        let label = format!(
            "{} {}x{} -> {}x{}",
            case.src,
            src.width(),
            src.height(),
            case.width,
            case.height
        );
        let checks = [
            (
                format!("Image.resize (Pillow {}, {order:?})", m.versions.pillow),
                resize_bicubic(&src, case.width, case.height, order).unwrap(),
                &case.files.pillow,
            ),
            (
                "horizontal pass first".to_string(),
                resize_bicubic_with_pass_order(
                    &src,
                    case.width,
                    case.height,
                    PassOrder::HorizontalFirst,
                )
                .unwrap(),
                &case.files.horizontal,
            ),
            (
                "vertical pass first".to_string(),
                resize_bicubic_with_pass_order(
                    &src,
                    case.width,
                    case.height,
                    PassOrder::VerticalFirst,
                )
                .unwrap(),
                &case.files.vertical,
            ),
        ];
        for (what, got, file) in checks {
            assert_eq!(got.dimensions(), (case.width, case.height), "{label}");
            let (n, max) = byte_diff(got.as_raw(), &read(file));
            if n != 0 {
                failures.push(format!("{label}, {what}: {n} bytes differ (max {max})"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Pillow >= 13 picks one of the two pass orders per resize by the rule in its Resample.c; both
/// orders are pinned above, so this checks the choice on the fixture sizes.
#[test]
fn pillow13_order_uses_the_pinned_pass_orders() {
    let m = manifest();
    for case in &m.resize {
        let src = load_rgb(fixtures().join(&case.src)).unwrap();
        let pass =
            ResampleOrder::Pillow13.pass_order(src.width(), src.height(), case.width, case.height);
        let want = match pass {
            PassOrder::HorizontalFirst => &case.files.horizontal,
            PassOrder::VerticalFirst => &case.files.vertical,
        };
        let got = resize_bicubic(&src, case.width, case.height, ResampleOrder::Pillow13).unwrap();
        assert_eq!(
            byte_diff(got.as_raw(), &read(want)).0,
            0,
            "{} {pass:?}",
            case.src
        );
    }
}

#[test]
fn clip_and_llava_pixel_values_match_bitwise() {
    let m = manifest();
    let order = pillow_order(&m);
    let mut failures = Vec::new();
    for case in &m.clip {
        let cfg = ClipImageProcessorConfig::from_file(fixtures().join(&case.config)).unwrap();
        let img = load_rgb(fixtures().join(&case.src)).unwrap();
        let pv = clip_preprocess(&img, &cfg, order).unwrap();
        assert_eq!(
            vec![pv.channels, pv.height, pv.width],
            case.shape,
            "{}",
            case.config
        );
        let (n, max) = f32_diff(&pv.data, &read_f32(&case.file));
        if n != 0 {
            failures.push(format!("{}: {n} values differ (max {max:e})", case.config));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn qwen_patches_and_grid_match_bitwise() {
    let m = manifest();
    let order = pillow_order(&m);
    let mut failures = Vec::new();
    for case in &m.qwen {
        let cfg = Qwen2VlImageProcessorConfig::from_file(fixtures().join(&case.config)).unwrap();
        let img = load_rgb(fixtures().join(&case.src)).unwrap();
        let out = qwen2vl_preprocess(&img, &cfg, order).unwrap();
        assert_eq!(out.grid_thw, case.grid_thw, "{}", case.config);
        assert_eq!(
            vec![out.num_patches, out.patch_dim],
            case.shape,
            "{}",
            case.config
        );
        let (n, max) = f32_diff(&out.data, &read_f32(&case.file));
        if n != 0 {
            failures.push(format!("{}: {n} values differ (max {max:e})", case.config));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn qwen_fixtures_cover_an_odd_merged_grid() {
    let m = manifest();
    assert!(m
        .qwen
        .iter()
        .any(|c| (c.grid_thw[1] / 2) % 2 == 1 || (c.grid_thw[2] / 2) % 2 == 1));
}

#[test]
fn smart_resize_matches_the_notes() {
    let sr = |h, w| smart_resize(h, w, 28, 3136, 12_845_056).unwrap();
    assert_eq!(sr(70, 700), (56, 700));
    assert_eq!(sr(480, 640), (476, 644));
    assert_eq!(sr(1080, 1920), (1092, 1932));
}

#[test]
fn convert_rgb_drops_alpha_like_pil() {
    for case in manifest().convert {
        let img = load_rgb(fixtures().join(&case.src)).unwrap();
        let (n, max) = byte_diff(img.as_raw(), &read(&case.file));
        assert_eq!(n, 0, "{}: {n} bytes differ (max {max})", case.src);
    }
}

#[test]
fn qwen_config_accepts_both_pixel_bound_spellings() {
    let legacy =
        Qwen2VlImageProcessorConfig::from_file(fixtures().join("qwen_square.json")).unwrap();
    assert_eq!((legacy.min_pixels, legacy.max_pixels), (3136, 12544));
    let sized =
        Qwen2VlImageProcessorConfig::from_file(fixtures().join("qwen_max_pixels.json")).unwrap();
    assert_eq!((sized.min_pixels, sized.max_pixels), (3136, 6272));
    let both = Qwen2VlImageProcessorConfig::from_json_str(
        r#"{"size": {"shortest_edge": 1, "longest_edge": 2}, "min_pixels": 3136, "max_pixels": 9000}"#,
        "inline.json",
    )
    .unwrap();
    assert_eq!((both.min_pixels, both.max_pixels), (3136, 9000));
}

#[test]
fn clip_config_defaults_and_int_sizes() {
    let cfg = ClipImageProcessorConfig::from_file(fixtures().join("clip_crop_pad.json")).unwrap();
    assert_eq!(cfg.size.shortest_edge, Some(30));
    assert_eq!(
        (cfg.crop_size.height, cfg.crop_size.width),
        (Some(36), Some(40))
    );
    assert!(cfg.do_rescale && cfg.do_normalize && !cfg.do_pad);
    assert_eq!(cfg.rescale_factor, 1.0 / 255.0);
    let square =
        ClipImageProcessorConfig::from_json_str(r#"{"crop_size": 336}"#, "x.json").unwrap();
    assert_eq!(
        (square.crop_size.height, square.crop_size.width),
        (Some(336), Some(336))
    );
}

#[test]
fn config_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, r#"{"do_resize": "yes"}"#).unwrap();
    let msg = ClipImageProcessorConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("preprocessor_config.json") && msg.contains("do_resize"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    std::fs::write(&path, r#"{"resample": 2}"#).unwrap();
    let msg = Qwen2VlImageProcessorConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("preprocessor_config.json") && msg.contains("resample"),
        "{msg}"
    );

    std::fs::write(&path, r#"{"image_mean": [0.5, 0.5]}"#).unwrap();
    let msg = ClipImageProcessorConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("image_mean"), "{msg}");

    std::fs::write(&path, "{not json").unwrap();
    let msg = ClipImageProcessorConfig::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("preprocessor_config.json"), "{msg}");

    let missing = dir.path().join("absent.json");
    let msg = Qwen2VlImageProcessorConfig::from_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.json"), "{msg}");
}

#[test]
fn missing_or_corrupt_images_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    let msg = format!("{:#}", load_rgb(&missing).unwrap_err());
    assert!(msg.contains("nope.png"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");

    // A PNG cut off in its image data.
    let truncated = dir.path().join("truncated.png");
    let png = read("src_b.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let msg = format!("{:#}", load_rgb(&truncated).unwrap_err());
    assert!(msg.contains("truncated.png"), "{msg}");

    // Not an image at all.
    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, b"this is not an image").unwrap();
    let msg = format!("{:#}", load_rgb(&garbage).unwrap_err());
    assert!(msg.contains("garbage.jpg"), "{msg}");
}
