//! Synthetic benchmark: determinism, answers right by construction (checked on pixels), parquet round trip.

use std::collections::HashSet;

use horizon_data::bench::{self, OpenOptions};
use horizon_data::synthetic::font::{self, ALPHABET, GLYPH_H, GLYPH_W};
use horizon_data::synthetic::{
    self, generate, generate_split, shape_contains, Category, GenConfig, NamedColor, Rect,
    ShapeKind, SynthSample, TaskKind, DEFAULT_IMAGE_SIZE, RED_BOX_RGB,
};
use image::RgbImage;

fn px(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
    img.get_pixel(x, y).0
}

fn split(cfg: &GenConfig, n: usize, seed: u64) -> Vec<SynthSample> {
    generate_split(cfg, n, seed).unwrap()
}

/// Reads the glyph at `bbox`/`scale` from the pixels: a font pixel is on iff all its scale x scale image pixels
/// have exactly the glyph colour; off pixels must not have it anywhere.
fn read_glyph(img: &RgbImage, bbox: Rect, scale: u32, fg: [u8; 3]) -> Option<char> {
    let mut rows = [0u8; 7];
    for row in 0..GLYPH_H {
        for col in 0..GLYPH_W {
            let block: Vec<bool> = (0..scale * scale)
                .map(|k| {
                    px(
                        img,
                        bbox.x + col * scale + k % scale,
                        bbox.y + row * scale + k / scale,
                    ) == fg
                })
                .collect();
            let on = block.iter().all(|&b| b);
            assert!(
                on || block.iter().all(|&b| !b),
                "partially drawn font pixel"
            );
            if on {
                rows[row as usize] |= 1 << (GLYPH_W - 1 - col);
            }
        }
    }
    font::decode(rows)
}

fn count_color(img: &RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == rgb).count()
}

fn lit_pixels(ch: char) -> usize {
    font::glyph(ch)
        .unwrap()
        .iter()
        .map(|r| r.count_ones() as usize)
        .sum()
}

#[test]
fn font_is_unambiguous() {
    let chars: Vec<char> = ALPHABET.chars().collect();
    assert_eq!(chars.len(), 28);
    for &c in &chars {
        let g = font::glyph(c).unwrap();
        assert_eq!(font::decode(g), Some(c));
        assert!(g.iter().all(|r| *r < 32));
    }
    for (i, &a) in chars.iter().enumerate() {
        for &b in &chars[i + 1..] {
            let (ga, gb) = (font::glyph(a).unwrap(), font::glyph(b).unwrap());
            let d: u32 = ga.iter().zip(gb).map(|(x, y)| (x ^ y).count_ones()).sum();
            assert!(d >= 3, "{a} and {b} differ in only {d} pixels");
        }
    }
    for c in ['O', 'I', 'S', 'Z', 'B', 'a'] {
        assert!(font::glyph(c).is_none());
    }
    assert_eq!(font::text_width(3, 2), 34);
}

#[test]
fn deterministic_per_seed_and_independent_of_order() {
    let cfg = GenConfig::default();
    let a = split(&cfg, 6, 42);
    let b = split(&cfg, 6, 42);
    assert_eq!(a, b);
    let c = split(&cfg, 6, 43);
    assert_ne!(a, c);
    assert_eq!(a.len(), 30);
    // Interleaved order; a sample depends only on (seed, category, index).
    assert_eq!(a[0].category, Category::ShapeColor);
    assert_eq!(a[4].category, Category::BoxedChar);
    assert_eq!(a[7].id, "count_circles/000001");
    assert_eq!(a[7], generate(&cfg, Category::CountCircles, 42, 1).unwrap());
    let only = split(&cfg.clone().with_categories(&[Category::ReadText]), 6, 42);
    assert_eq!(only[5], a[5 * 5 + 3]);

    // Same parquet bytes twice; a different seed gives different bytes.
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, p3) = (
        dir.path().join("a.parquet"),
        dir.path().join("b.parquet"),
        dir.path().join("c.parquet"),
    );
    assert_eq!(synthetic::write_split(&p1, &cfg, 4, 7).unwrap(), 20);
    synthetic::write_split(&p2, &cfg, 4, 7).unwrap();
    synthetic::write_split(&p3, &cfg, 4, 8).unwrap();
    let (b1, b2, b3) = (
        std::fs::read(&p1).unwrap(),
        std::fs::read(&p2).unwrap(),
        std::fs::read(&p3).unwrap(),
    );
    assert_eq!(b1, b2);
    assert_ne!(b1, b3);
}

#[test]
fn read_text_answer_decodes_from_pixels() {
    let cfg = GenConfig::default().with_glyphs(1, 6);
    let mut lengths = HashSet::new();
    let mut scales = HashSet::new();
    for i in 0..300 {
        let s = generate(&cfg, Category::ReadText, 1, i).unwrap();
        assert_eq!(s.question, "What is the text in the image?");
        assert_eq!(s.image.dimensions(), (64, 64));
        let n = s.answer.len();
        assert!((1..=6).contains(&n));
        assert!(s.answer.chars().all(|c| ALPHABET.contains(c)));
        lengths.insert(n);
        assert_eq!(s.meta.text(), s.answer);
        let fg = s.meta.glyphs[0].rgb;
        let mut decoded = String::new();
        let mut expected_lit = 0;
        for g in &s.meta.glyphs {
            scales.insert(g.scale);
            assert!(g.scale >= 1);
            assert!(
                g.bbox.x >= 1
                    && g.bbox.x + g.bbox.w < 64
                    && g.bbox.y >= 1
                    && g.bbox.y + g.bbox.h < 64
            );
            decoded.push(read_glyph(&s.image, g.bbox, g.scale, fg).expect("glyph decodes"));
            expected_lit += lit_pixels(g.ch) * (g.scale * g.scale) as usize;
        }
        assert_eq!(decoded, s.answer);
        // No glyph-coloured pixel anywhere else: nothing else is written.
        assert_eq!(count_color(&s.image, fg), expected_lit);
        // Strong contrast with the background.
        let bg = s.meta.background;
        assert!((0..3).all(|c| (bg[c] as i32 - fg[c] as i32).abs() >= 100));
        assert!(!s.meta.evidence_patches(8).is_empty());
        assert!(s.meta.evidence_patches(8).iter().all(|&p| p < 64));
    }
    assert_eq!(lengths.len(), 6, "all lengths 1..=6 occur");
    assert_eq!(scales, HashSet::from([1, 2]));
}

#[test]
fn curriculum_knob_and_image_size() {
    for n in [1usize, 3, 8] {
        let cfg = GenConfig::default().with_glyphs(n, n);
        for s in split(
            &cfg.with_categories(&[Category::ReadText, Category::BoxedChar]),
            20,
            3,
        ) {
            if s.category == Category::ReadText {
                assert_eq!(s.answer.len(), n);
            }
            assert_eq!(s.meta.glyphs.len(), n);
        }
    }
    assert_eq!(GenConfig::default().max_glyphs_that_fit(), 10);
    assert!(GenConfig::default().with_glyphs(1, 11).validate().is_err());
    assert!(GenConfig::default().with_glyphs(0, 2).validate().is_err());
    assert!(GenConfig::default().with_glyphs(3, 2).validate().is_err());
    assert!(GenConfig::default().with_image_size(16).validate().is_err());
    let e = generate(
        &GenConfig::default().with_glyphs(1, 11),
        Category::ReadText,
        0,
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("max_glyphs 11"), "{e}");

    assert_eq!(DEFAULT_IMAGE_SIZE, 64);
    for size in [32u32, 96] {
        let cfg = GenConfig::default().with_image_size(size).with_glyphs(1, 4);
        for s in split(&cfg, 10, 5) {
            assert_eq!(s.image.dimensions(), (size, size));
            assert_eq!(s.meta.image_size, size);
        }
    }
}

#[test]
fn boxed_char_answer_is_the_glyph_in_the_red_box() {
    let cfg = GenConfig::default().with_glyphs(1, 8);
    for i in 0..300 {
        let s = generate(&cfg, Category::BoxedChar, 2, i).unwrap();
        assert_eq!(s.question, "Which character is inside the red box?");
        assert_eq!(s.answer.chars().count(), 1);
        let rb = s.meta.red_box.unwrap();
        // The outline is red, and red appears nowhere else.
        let perimeter = 2 * (rb.w + rb.h) as usize - 4;
        assert_eq!(count_color(&s.image, RED_BOX_RGB), perimeter);
        for x in rb.x..rb.x + rb.w {
            assert_eq!(px(&s.image, x, rb.y), RED_BOX_RGB);
            assert_eq!(px(&s.image, x, rb.y + rb.h - 1), RED_BOX_RGB);
        }
        // Exactly one glyph lies in the box; it decodes to the answer. All glyphs decode and do not overlap.
        let inside: Vec<_> = s
            .meta
            .glyphs
            .iter()
            .filter(|g| g.bbox.intersects(&rb))
            .collect();
        assert_eq!(inside.len(), 1);
        let g = inside[0];
        assert!(g.bbox.x > rb.x && g.bbox.x + g.bbox.w < rb.x + rb.w - 1);
        assert!(g.bbox.y > rb.y && g.bbox.y + g.bbox.h < rb.y + rb.h - 1);
        assert_eq!(
            read_glyph(&s.image, g.bbox, g.scale, g.rgb)
                .unwrap()
                .to_string(),
            s.answer
        );
        assert_eq!(
            s.meta.glyphs[s.meta.target.unwrap()].ch.to_string(),
            s.answer
        );
        for (a, ga) in s.meta.glyphs.iter().enumerate() {
            assert_eq!(read_glyph(&s.image, ga.bbox, ga.scale, ga.rgb), Some(ga.ch));
            for gb in &s.meta.glyphs[a + 1..] {
                assert!(!ga.bbox.intersects(&gb.bbox));
            }
        }
    }
}

#[test]
fn shape_tasks_answers_match_pixels_and_metadata() {
    let cfg = GenConfig::default();
    let mut answers = HashSet::new();
    for i in 0..200 {
        for cat in [
            Category::ShapeColor,
            Category::ShapeExists,
            Category::CountCircles,
        ] {
            assert_eq!(cat.kind(), TaskKind::Coarse);
            let s = generate(&cfg, cat, 9, i).unwrap();
            let shapes = &s.meta.shapes;
            assert!(!shapes.is_empty());
            for (k, a) in shapes.iter().enumerate() {
                // Centre pixel has the shape's colour; shapes are apart and inside the image.
                assert_eq!(
                    px(&s.image, a.center[0], a.center[1]),
                    a.color.rgb(),
                    "{} {:?}",
                    s.id,
                    a
                );
                assert!(shape_contains(a.kind, a.bbox, a.center[0], a.center[1]));
                assert!(a.bbox.x + a.bbox.w <= 64 && a.bbox.y + a.bbox.h <= 64);
                for b in &shapes[k + 1..] {
                    assert!(!a.bbox.intersects(&b.bbox));
                }
            }
            answers.insert((cat, s.answer.clone()));
            match cat {
                Category::ShapeColor => {
                    let t = &shapes[s.meta.target.unwrap()];
                    assert_eq!(s.question, format!("What color is the {}?", t.kind.name()));
                    assert_eq!(s.answer, t.color.name());
                    assert_eq!(
                        shapes.iter().filter(|x| x.kind == t.kind).count(),
                        1,
                        "the named shape is unique"
                    );
                    let c = t.center;
                    let named = NamedColor::ALL
                        .into_iter()
                        .find(|n| n.name() == s.answer)
                        .unwrap();
                    assert_eq!(px(&s.image, c[0], c[1]), named.rgb());
                }
                Category::ShapeExists => {
                    let kind = ShapeKind::ALL
                        .into_iter()
                        .find(|k| s.question == format!("Is there a {} in the image?", k.name()))
                        .unwrap();
                    let present = shapes.iter().any(|x| x.kind == kind);
                    assert_eq!(s.answer, if present { "yes" } else { "no" });
                    assert_eq!(s.meta.evidence.is_empty(), !present);
                }
                Category::CountCircles => {
                    assert_eq!(s.question, "How many circles are there in the image?");
                    let n = shapes
                        .iter()
                        .filter(|x| x.kind == ShapeKind::Circle)
                        .count();
                    assert_eq!(s.answer, n.to_string());
                    assert!((1..=5).contains(&n));
                    assert_eq!(s.meta.evidence.len(), n);
                }
                _ => unreachable!(),
            }
        }
    }
    // Every answer value occurs: 8 colours, yes/no, counts 1..=5.
    let count = |c: Category| answers.iter().filter(|(k, _)| *k == c).count();
    assert_eq!(count(Category::ShapeColor), 8);
    assert_eq!(count(Category::ShapeExists), 2);
    assert_eq!(count(Category::CountCircles), 5);
}

#[test]
fn background_noise_is_light_and_optional() {
    let cfg = GenConfig::default();
    let samples = split(&cfg, 40, 11);
    let noisy = samples.iter().filter(|s| s.meta.noise > 0).count();
    assert!(noisy > 40 && noisy < 160, "{noisy} noisy of 200");
    for s in &samples {
        let bg = s.meta.background;
        // A corner pixel not covered by anything stays within the noise amplitude of the background.
        let covered = |x: u32, y: u32| {
            s.meta
                .shapes
                .iter()
                .any(|sh| shape_contains(sh.kind, sh.bbox, x, y))
                || s.meta
                    .glyphs
                    .iter()
                    .any(|g| g.bbox.intersects(&Rect::new(x, y, 1, 1)))
                || s.meta
                    .red_box
                    .is_some_and(|r| r.intersects(&Rect::new(x, y, 1, 1)))
        };
        for (x, y) in [(0, 0), (63, 0), (0, 63), (63, 63)] {
            if !covered(x, y) {
                let p = px(&s.image, x, y);
                for c in 0..3 {
                    assert!((p[c] as i32 - bg[c] as i32).abs() <= s.meta.noise as i32);
                }
            }
        }
    }
    let plain = GenConfig {
        noise_prob: 0.0,
        ..GenConfig::default()
    };
    assert!(split(&plain, 10, 1).iter().all(|s| s.meta.noise == 0));
}

#[test]
fn parquet_round_trip_through_bench_reader() {
    let cfg = GenConfig::default().with_glyphs(2, 5);
    let samples = split(&cfg, 60, 2024); // 300 rows: two row groups
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/synthetic.parquet");
    synthetic::write_parquet(&path, &samples).unwrap();
    // Overwrite in place; no temp files left behind.
    synthetic::write_parquet(&path, &samples).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("synthetic.parquet")]);

    let b = bench::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(b.len(), 300);
    let read = b.read_all().unwrap();
    let expected: Vec<bench::Sample> = samples.iter().map(SynthSample::to_bench_sample).collect();
    assert_eq!(read, expected);
    for (r, s) in read.iter().zip(&samples) {
        assert_eq!(r.category, s.category.to_string());
        assert_eq!(r.answer().as_deref(), Some(s.answer.as_str()));
        assert_eq!(r.image.to_rgb8().unwrap(), s.image);
    }
    let metas = synthetic::read_meta(&path).unwrap();
    assert_eq!(metas.len(), 300);
    for ((id, m), s) in metas.iter().zip(&samples) {
        assert_eq!(id, &s.id);
        assert_eq!(m, &s.meta);
    }
    // The lmms-lab `data/` layout and a limit work too.
    let repo = dir.path().join("repo");
    synthetic::write_parquet(
        repo.join("data/test-00000-of-00001.parquet"),
        &samples[..12],
    )
    .unwrap();
    let lim = bench::read_all(&repo, &OpenOptions::with_limit(7)).unwrap();
    assert_eq!(lim, expected[..7]);
    assert_eq!("read_text".parse::<Category>().unwrap(), Category::ReadText);
    assert!("nope".parse::<Category>().is_err());
}
