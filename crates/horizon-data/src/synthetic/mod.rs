//! Seeded synthetic benchmark generator (coarse perception and fine text-reading tasks).
//!
//! Every sample is a small RGB image (default 64x64, [`GenConfig::image_size`]), a question and a one-word
//! answer, generated from a ChaCha8 stream keyed by `(seed, category, index)`: the same arguments always
//! give the same sample, whatever else is generated, on any platform.
//!
//! # Categories
//!
//! | Category | Kind | Question | Answer |
//! |---|---|---|---|
//! | `shape_color` | coarse | `What color is the {circle,square,triangle}?` (1–3 shapes of distinct kinds) | colour name: `red`, `green`, `blue`, `yellow`, `orange`, `purple`, `white`, `black` |
//! | `shape_exists` | coarse | `Is there a {circle,square,triangle} in the image?` (POPE-like, 50 % yes) | `yes` / `no` |
//! | `count_circles` | coarse | `How many circles are there in the image?` (1..=[`GenConfig::max_circles`] circles, 0–2 other shapes) | a number, e.g. `3` |
//! | `read_text` | fine | `What is the text in the image?` | the exact glyph string, e.g. `K7P` |
//! | `boxed_char` | fine | `Which character is inside the red box?` (several scattered glyphs, one boxed in red) | one glyph, e.g. `7` |
//!
//! Shapes are large (a third to a sixth of the image) on a mid-grey background. Glyphs come from the 5x7 font
//! in [`font`] (digits and 18 unambiguous capitals), drawn at an integer scale in
//! `1..=`[`GenConfig::max_glyph_scale`] (limited to what fits), in a colour that contrasts with a light or dark
//! background. The number of glyphs in `read_text` and `boxed_char` is drawn from
//! [`GenConfig::min_glyphs`]`..=`[`GenConfig::max_glyphs`], the curriculum knob. About half the images
//! ([`GenConfig::noise_prob`]) get uniform per-pixel noise of amplitude [`GenConfig::noise`] on the
//! background; shapes, glyphs and the box are drawn afterwards in exact colours.
//!
//! # In memory and on disk
//!
//! [`generate`] / [`generate_split`] return [`SynthSample`]s: the [`image::RgbImage`], question, answer,
//! category and ground-truth [`SampleMeta`] (shape and glyph boxes, the red box, the evidence regions).
//! [`write_parquet`] writes them in the lmms-lab HF-parquet layout (MME's columns plus a JSON `meta` column),
//! which [`crate::bench`] reads like MME:
//!
//! | Column | Arrow type | Content |
//! |---|---|---|
//! | `question_id` | `Utf8` | `"{category}/{index:06}"`, e.g. `read_text/000012` |
//! | `image` | `Struct{bytes: Binary, path: Utf8}` | PNG bytes (8-bit RGB); path `"{question_id}.png"` |
//! | `question` | `Utf8` | question text |
//! | `answer` | `Utf8` | the answer |
//! | `category` | `Utf8` | category name |
//! | `meta` | `Utf8` | [`SampleMeta`] as JSON |
//!
//! The file carries the `huggingface` schema metadata (so 🤗 `datasets` sees `image` as an `Image` feature),
//! row groups of 256 rows and snappy compression.

pub mod font;
mod render;
mod write;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use render::shape_contains;
pub use write::{encode_png, read_meta, write_parquet, write_split};

use font::{text_width, ALPHABET, GLYPH_H, GLYPH_W};

/// Default image side in pixels.
pub const DEFAULT_IMAGE_SIZE: u32 = 64;
/// Colour of the box in `boxed_char`.
pub const RED_BOX_RGB: [u8; 3] = [230, 20, 20];

/// Broad kind of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Answerable from a glance at large shapes.
    Coarse,
    /// Needs reading small glyphs.
    Fine,
}

/// Task category (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    ShapeColor,
    ShapeExists,
    CountCircles,
    ReadText,
    BoxedChar,
}

impl Category {
    /// All categories, coarse first.
    pub const ALL: [Category; 5] = [
        Category::ShapeColor,
        Category::ShapeExists,
        Category::CountCircles,
        Category::ReadText,
        Category::BoxedChar,
    ];

    /// Snake-case name, used in `question_id` and the `category` column.
    pub fn name(self) -> &'static str {
        match self {
            Category::ShapeColor => "shape_color",
            Category::ShapeExists => "shape_exists",
            Category::CountCircles => "count_circles",
            Category::ReadText => "read_text",
            Category::BoxedChar => "boxed_char",
        }
    }

    /// Coarse or fine.
    pub fn kind(self) -> TaskKind {
        match self {
            Category::ShapeColor | Category::ShapeExists | Category::CountCircles => {
                TaskKind::Coarse
            }
            Category::ReadText | Category::BoxedChar => TaskKind::Fine,
        }
    }

    /// Stable code mixed into the per-sample RNG key.
    fn code(self) -> u64 {
        match self {
            Category::ShapeColor => 1,
            Category::ShapeExists => 2,
            Category::CountCircles => 3,
            Category::ReadText => 4,
            Category::BoxedChar => 5,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Category {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Category::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown synthetic category `{s}`"))
    }
}

/// Shape kinds of the coarse tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }
}

/// Named shape colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedColor {
    Red,
    Green,
    Blue,
    Yellow,
    Orange,
    Purple,
    White,
    Black,
}

impl NamedColor {
    pub const ALL: [NamedColor; 8] = [
        NamedColor::Red,
        NamedColor::Green,
        NamedColor::Blue,
        NamedColor::Yellow,
        NamedColor::Orange,
        NamedColor::Purple,
        NamedColor::White,
        NamedColor::Black,
    ];

    /// Lower-case name (the answer of `shape_color`).
    pub fn name(self) -> &'static str {
        match self {
            NamedColor::Red => "red",
            NamedColor::Green => "green",
            NamedColor::Blue => "blue",
            NamedColor::Yellow => "yellow",
            NamedColor::Orange => "orange",
            NamedColor::Purple => "purple",
            NamedColor::White => "white",
            NamedColor::Black => "black",
        }
    }

    /// The exact RGB value drawn.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            NamedColor::Red => [220, 30, 30],
            NamedColor::Green => [30, 170, 50],
            NamedColor::Blue => [30, 70, 220],
            NamedColor::Yellow => [240, 220, 30],
            NamedColor::Orange => [245, 140, 20],
            NamedColor::Purple => [140, 50, 190],
            NamedColor::White => [250, 250, 250],
            NamedColor::Black => [10, 10, 10],
        }
    }
}

/// Axis-aligned pixel rectangle: columns `x..x+w`, rows `y..y+h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Rect { x, y, w, h }
    }

    /// Whether the two rectangles share a pixel.
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    /// Row-major indices of the `patch`x`patch` patches of an `image_size`-wide square image that this
    /// rectangle overlaps (the visual tokens that see it).
    pub fn patches(&self, patch: u32, image_size: u32) -> Vec<usize> {
        if self.w == 0 || self.h == 0 || patch == 0 {
            return Vec::new();
        }
        let per_row = image_size.div_ceil(patch);
        let (c0, c1) = (
            self.x / patch,
            ((self.x + self.w - 1) / patch).min(per_row - 1),
        );
        let (r0, r1) = (
            self.y / patch,
            ((self.y + self.h - 1) / patch).min(per_row - 1),
        );
        let mut out = Vec::new();
        for r in r0..=r1 {
            for c in c0..=c1 {
                out.push((r * per_row + c) as usize);
            }
        }
        out
    }
}

/// A drawn shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeInfo {
    pub kind: ShapeKind,
    pub color: NamedColor,
    /// Bounding box (square).
    pub bbox: Rect,
    /// A pixel guaranteed to be inside the shape (the centre; the centroid for triangles).
    pub center: [u32; 2],
}

/// A drawn glyph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlyphInfo {
    pub ch: char,
    /// Box of the 5x7 cell at its scale: `w = 5*scale`, `h = 7*scale`.
    pub bbox: Rect,
    pub scale: u32,
    pub rgb: [u8; 3],
}

/// Ground truth of one sample, as the generator drew it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleMeta {
    pub image_size: u32,
    /// Background colour before noise.
    pub background: [u8; 3],
    /// Amplitude of the background noise (0: plain background).
    pub noise: u8,
    /// Shapes in drawing order.
    pub shapes: Vec<ShapeInfo>,
    /// Glyphs in reading order (`read_text`) or scattered (`boxed_char`).
    pub glyphs: Vec<GlyphInfo>,
    /// The red box of `boxed_char`.
    pub red_box: Option<Rect>,
    /// Index of the asked-about shape (`shape_color`) or boxed glyph (`boxed_char`).
    pub target: Option<usize>,
    /// Regions holding the evidence for the answer (target shape, matching shapes, all glyphs, the box);
    /// empty for a `no` of `shape_exists`.
    pub evidence: Vec<Rect>,
}

impl SampleMeta {
    /// The glyph string in stored order.
    pub fn text(&self) -> String {
        self.glyphs.iter().map(|g| g.ch).collect()
    }

    /// Sorted, de-duplicated row-major indices of the patches that overlap [`SampleMeta::evidence`].
    pub fn evidence_patches(&self, patch: u32) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .evidence
            .iter()
            .flat_map(|r| r.patches(patch, self.image_size))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A generated sample, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSample {
    /// `"{category}/{index:06}"`.
    pub id: String,
    pub category: Category,
    pub question: String,
    pub answer: String,
    pub image: RgbImage,
    pub meta: SampleMeta,
}

impl SynthSample {
    /// PNG encoding of the image (what [`write_parquet`] stores).
    pub fn png(&self) -> Vec<u8> {
        encode_png(&self.image)
    }

    /// The sample as the benchmark reader would return it from the written parquet.
    pub fn to_bench_sample(&self) -> crate::bench::Sample {
        crate::bench::Sample::new(
            crate::bench::BenchmarkKind::Synthetic,
            self.id.clone(),
            self.question.clone(),
            vec![self.answer.clone()],
            self.category.name(),
            crate::bench::ImageSource::Bytes(self.png()),
        )
    }
}

/// Generator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Image side in pixels (square images). Default [`DEFAULT_IMAGE_SIZE`]; at least 24.
    pub image_size: u32,
    /// Fewest glyphs in `read_text` / `boxed_char` (>= 1).
    pub min_glyphs: usize,
    /// Most glyphs in `read_text` / `boxed_char` (curriculum knob; default 4). Must fit at scale 1.
    pub max_glyphs: usize,
    /// Largest glyph scale (default 2; scale 1 = 5x7 px glyphs). The scale is also capped by what fits.
    pub max_glyph_scale: u32,
    /// Most circles in `count_circles` (1..=7, default 5).
    pub max_circles: usize,
    /// Background noise amplitude (default 12).
    pub noise: u8,
    /// Probability that an image gets background noise (default 0.5).
    pub noise_prob: f64,
    /// Categories produced by [`generate_split`] (default: all).
    pub categories: Vec<Category>,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            image_size: DEFAULT_IMAGE_SIZE,
            min_glyphs: 1,
            max_glyphs: 4,
            max_glyph_scale: 2,
            max_circles: 5,
            noise: 12,
            noise_prob: 0.5,
            categories: Category::ALL.to_vec(),
        }
    }
}

impl GenConfig {
    /// Sets the glyph-count range (curriculum).
    pub fn with_glyphs(mut self, min: usize, max: usize) -> Self {
        self.min_glyphs = min;
        self.max_glyphs = max;
        self
    }

    /// Sets the image size.
    pub fn with_image_size(mut self, size: u32) -> Self {
        self.image_size = size;
        self
    }

    /// Keeps only these categories.
    pub fn with_categories(mut self, cats: &[Category]) -> Self {
        self.categories = cats.to_vec();
        self
    }

    /// The most glyphs that fit one line at scale 1 (with a 1 px margin each side).
    pub fn max_glyphs_that_fit(&self) -> usize {
        let line = ((self.image_size.saturating_sub(2) + 1) / (GLYPH_W + 1)) as usize;
        let (gx, gy) = boxed_grid(self.image_size, 1);
        line.min((gx * gy) as usize)
    }

    /// Checks that every category can be generated.
    pub fn validate(&self) -> Result<()> {
        if self.image_size < 24 {
            bail!(
                "synthetic: image_size {} is below the minimum of 24",
                self.image_size
            );
        }
        if self.min_glyphs == 0 || self.min_glyphs > self.max_glyphs {
            bail!(
                "synthetic: glyph range {}..={} is empty or starts at 0",
                self.min_glyphs,
                self.max_glyphs
            );
        }
        let fit = self.max_glyphs_that_fit();
        if self.max_glyphs > fit {
            bail!(
                "synthetic: max_glyphs {} does not fit a {}px image (at most {fit})",
                self.max_glyphs,
                self.image_size
            );
        }
        if self.max_glyph_scale == 0 {
            bail!("synthetic: max_glyph_scale must be at least 1");
        }
        if !(1..=7).contains(&self.max_circles) {
            bail!(
                "synthetic: max_circles {} is outside 1..=7",
                self.max_circles
            );
        }
        if !(0.0..=1.0).contains(&self.noise_prob) {
            bail!(
                "synthetic: noise_prob {} is outside [0, 1]",
                self.noise_prob
            );
        }
        if self.categories.is_empty() {
            bail!("synthetic: no categories");
        }
        Ok(())
    }
}

/// The per-sample RNG: ChaCha8 keyed by (seed, category, index).
fn sample_rng(seed: u64, category: Category, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&category.code().to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..].copy_from_slice(b"hzn-syn1");
    ChaCha8Rng::from_seed(key)
}

/// Generates sample `index` of `category` for `seed`.
pub fn generate(cfg: &GenConfig, category: Category, seed: u64, index: u64) -> Result<SynthSample> {
    cfg.validate()?;
    Ok(generate_unchecked(cfg, category, seed, index))
}

/// Generates `per_category` samples of each of `cfg.categories`, interleaved (sample 0 of every category,
/// then sample 1, ...), so that any prefix is balanced.
pub fn generate_split(cfg: &GenConfig, per_category: usize, seed: u64) -> Result<Vec<SynthSample>> {
    cfg.validate()?;
    let mut out = Vec::with_capacity(per_category * cfg.categories.len());
    for i in 0..per_category as u64 {
        for &c in &cfg.categories {
            out.push(generate_unchecked(cfg, c, seed, i));
        }
    }
    Ok(out)
}

fn generate_unchecked(cfg: &GenConfig, category: Category, seed: u64, index: u64) -> SynthSample {
    let mut rng = sample_rng(seed, category, index);
    let size = cfg.image_size;
    let (question, answer, meta, image) = match category {
        Category::ShapeColor | Category::ShapeExists | Category::CountCircles => {
            shapes_task(cfg, category, &mut rng)
        }
        Category::ReadText => read_text(cfg, &mut rng),
        Category::BoxedChar => boxed_char(cfg, &mut rng),
    };
    debug_assert_eq!(image.width(), size);
    SynthSample {
        id: format!("{}/{index:06}", category.name()),
        category,
        question,
        answer,
        image,
        meta,
    }
}

/// Background image: `bg`, plus uniform noise with probability `cfg.noise_prob`.
fn background(cfg: &GenConfig, rng: &mut ChaCha8Rng, bg: [u8; 3]) -> (RgbImage, u8) {
    let size = cfg.image_size;
    let noisy = cfg.noise > 0 && rng.gen_bool(cfg.noise_prob);
    let mut img = RgbImage::from_pixel(size, size, Rgb(bg));
    if noisy {
        let a = cfg.noise as i16;
        for p in img.pixels_mut() {
            for c in p.0.iter_mut() {
                *c = (*c as i16 + rng.gen_range(-a..=a)).clamp(0, 255) as u8;
            }
        }
    }
    (img, if noisy { cfg.noise } else { 0 })
}

type Task = (String, String, SampleMeta, RgbImage);

/// Picks `k` distinct cells of a 3x3 grid and a random square inside each.
fn place_shapes(size: u32, k: usize, rng: &mut ChaCha8Rng) -> Vec<Rect> {
    let cell = size / 3;
    let ox = rng.gen_range(0..=size - 3 * cell);
    let oy = rng.gen_range(0..=size - 3 * cell);
    let mut cells: Vec<u32> = (0..9).collect();
    cells.shuffle(rng);
    let smin = (cell / 2).max(4);
    let smax = cell - 2;
    cells[..k]
        .iter()
        .map(|&c| {
            let s = rng.gen_range(smin..=smax);
            let x = ox + (c % 3) * cell + 1 + rng.gen_range(0..=cell - 2 - s);
            let y = oy + (c / 3) * cell + 1 + rng.gen_range(0..=cell - 2 - s);
            Rect::new(x, y, s, s)
        })
        .collect()
}

fn shape_center(kind: ShapeKind, r: Rect) -> [u32; 2] {
    match kind {
        ShapeKind::Triangle => [r.x + r.w / 2, r.y + (2 * r.h) / 3],
        _ => [r.x + r.w / 2, r.y + r.h / 2],
    }
}

fn shapes_task(cfg: &GenConfig, category: Category, rng: &mut ChaCha8Rng) -> Task {
    let grey = rng.gen_range(100..=160u8);
    let bg = [grey, grey, grey];
    let (mut img, noise) = background(cfg, rng, bg);
    let random_color = |rng: &mut ChaCha8Rng| *NamedColor::ALL.choose(rng).unwrap();

    // (kinds, colours) of the shapes to draw, then question/answer/target.
    let mut kinds: Vec<ShapeKind>;
    let mut colors: Vec<NamedColor>;
    let question;
    let answer;
    let mut target = None;
    let mut asked = ShapeKind::Circle;
    match category {
        Category::ShapeColor => {
            let n = rng.gen_range(1..=3);
            kinds = ShapeKind::ALL.to_vec();
            kinds.shuffle(rng);
            kinds.truncate(n);
            colors = NamedColor::ALL.to_vec();
            colors.shuffle(rng);
            colors.truncate(n);
            let t = rng.gen_range(0..n);
            target = Some(t);
            question = format!("What color is the {}?", kinds[t].name());
            answer = colors[t].name().to_string();
        }
        Category::ShapeExists => {
            asked = *ShapeKind::ALL.choose(rng).unwrap();
            let present = rng.gen_bool(0.5);
            let others: Vec<ShapeKind> =
                ShapeKind::ALL.into_iter().filter(|k| *k != asked).collect();
            let n_other = rng.gen_range(if present { 0 } else { 1 }..=3);
            kinds = (0..n_other).map(|_| *others.choose(rng).unwrap()).collect();
            if present {
                let n_asked = rng.gen_range(1..=2);
                kinds.extend(std::iter::repeat_n(asked, n_asked));
            }
            kinds.shuffle(rng);
            colors = kinds.iter().map(|_| random_color(rng)).collect();
            question = format!("Is there a {} in the image?", asked.name());
            answer = if present { "yes" } else { "no" }.to_string();
        }
        Category::CountCircles => {
            let count = rng.gen_range(1..=cfg.max_circles);
            let n_other = rng.gen_range(0..=2.min(9 - count));
            kinds = vec![ShapeKind::Circle; count];
            kinds.extend((0..n_other).map(|_| {
                *[ShapeKind::Square, ShapeKind::Triangle]
                    .choose(rng)
                    .unwrap()
            }));
            kinds.shuffle(rng);
            colors = kinds.iter().map(|_| random_color(rng)).collect();
            question = "How many circles are there in the image?".to_string();
            answer = count.to_string();
        }
        _ => unreachable!("not a shape task"),
    }

    let boxes = place_shapes(cfg.image_size, kinds.len(), rng);
    let shapes: Vec<ShapeInfo> = kinds
        .iter()
        .zip(&colors)
        .zip(&boxes)
        .map(|((&kind, &color), &bbox)| ShapeInfo {
            kind,
            color,
            bbox,
            center: shape_center(kind, bbox),
        })
        .collect();
    for s in &shapes {
        render::draw_shape(&mut img, s.kind, s.bbox, s.color.rgb());
    }
    let evidence = match category {
        Category::ShapeColor => vec![shapes[target.unwrap()].bbox],
        // `asked` is Circle for count_circles.
        _ => shapes
            .iter()
            .filter(|s| s.kind == asked)
            .map(|s| s.bbox)
            .collect(),
    };
    let meta = SampleMeta {
        image_size: cfg.image_size,
        background: bg,
        noise,
        shapes,
        glyphs: Vec::new(),
        red_box: None,
        target,
        evidence,
    };
    (question, answer, meta, img)
}

/// Background and glyph colours with strong contrast: light grey background and dark glyphs, or the reverse.
fn text_colors(rng: &mut ChaCha8Rng) -> ([u8; 3], [u8; 3]) {
    let light = rng.gen_bool(0.5);
    let (bg_range, fg_range) = if light {
        (185..=255u8, 0..=70u8)
    } else {
        (0..=70u8, 185..=255u8)
    };
    let g = rng.gen_range(bg_range);
    let fg = [
        rng.gen_range(fg_range.clone()),
        rng.gen_range(fg_range.clone()),
        rng.gen_range(fg_range),
    ];
    ([g, g, g], fg)
}

fn random_glyphs(cfg: &GenConfig, rng: &mut ChaCha8Rng) -> Vec<char> {
    let n = rng.gen_range(cfg.min_glyphs..=cfg.max_glyphs);
    let alphabet: Vec<char> = ALPHABET.chars().collect();
    (0..n).map(|_| *alphabet.choose(rng).unwrap()).collect()
}

fn read_text(cfg: &GenConfig, rng: &mut ChaCha8Rng) -> Task {
    let size = cfg.image_size;
    let chars = random_glyphs(cfg, rng);
    let n = chars.len();
    let (bg, fg) = text_colors(rng);
    let (mut img, noise) = background(cfg, rng, bg);
    let fits = |s: u32| text_width(n, s) + 2 <= size && GLYPH_H * s + 2 <= size;
    let smax = (1..=cfg.max_glyph_scale)
        .rev()
        .find(|&s| fits(s))
        .unwrap_or(1);
    let scale = rng.gen_range(1..=smax);
    let (w, h) = (text_width(n, scale), GLYPH_H * scale);
    let x0 = rng.gen_range(1..=size - 1 - w);
    let y0 = rng.gen_range(1..=size - 1 - h);
    let glyphs: Vec<GlyphInfo> = chars
        .iter()
        .enumerate()
        .map(|(i, &ch)| GlyphInfo {
            ch,
            bbox: Rect::new(
                x0 + i as u32 * (GLYPH_W + 1) * scale,
                y0,
                GLYPH_W * scale,
                h,
            ),
            scale,
            rgb: fg,
        })
        .collect();
    for g in &glyphs {
        render::draw_glyph(&mut img, g.ch, g.bbox.x, g.bbox.y, scale, fg);
    }
    let answer: String = chars.iter().collect();
    let meta = SampleMeta {
        image_size: size,
        background: bg,
        noise,
        evidence: vec![Rect::new(x0, y0, w, h)],
        shapes: Vec::new(),
        glyphs,
        red_box: None,
        target: None,
    };
    (
        "What is the text in the image?".to_string(),
        answer,
        meta,
        img,
    )
}

/// Glyph cell of `boxed_char`: the glyph, a 3 px frame (1 px gap, the 1 px box, 1 px clearance) and 2 px of
/// jitter. Returns the grid (columns, rows) that fits the image.
fn boxed_cell(scale: u32) -> (u32, u32) {
    (GLYPH_W * scale + 8, GLYPH_H * scale + 8)
}

fn boxed_grid(size: u32, scale: u32) -> (u32, u32) {
    let (cw, ch) = boxed_cell(scale);
    (size / cw, size / ch)
}

fn boxed_char(cfg: &GenConfig, rng: &mut ChaCha8Rng) -> Task {
    let size = cfg.image_size;
    let chars = random_glyphs(cfg, rng);
    let n = chars.len();
    let (bg, fg) = text_colors(rng);
    let (mut img, noise) = background(cfg, rng, bg);
    let fits = |s: u32| {
        let (gx, gy) = boxed_grid(size, s);
        (gx * gy) as usize >= n
    };
    let smax = (1..=cfg.max_glyph_scale)
        .rev()
        .find(|&s| fits(s))
        .unwrap_or(1);
    let scale = rng.gen_range(1..=smax);
    let (cw, chh) = boxed_cell(scale);
    let (gx, gy) = boxed_grid(size, scale);
    let ox = rng.gen_range(0..=size - gx * cw);
    let oy = rng.gen_range(0..=size - gy * chh);
    let mut cells: Vec<u32> = (0..gx * gy).collect();
    cells.shuffle(rng);
    let (w, h) = (GLYPH_W * scale, GLYPH_H * scale);
    let glyphs: Vec<GlyphInfo> = chars
        .iter()
        .zip(&cells)
        .map(|(&ch, &c)| {
            let x = ox + (c % gx) * cw + 3 + rng.gen_range(0..=2);
            let y = oy + (c / gx) * chh + 3 + rng.gen_range(0..=2);
            GlyphInfo {
                ch,
                bbox: Rect::new(x, y, w, h),
                scale,
                rgb: fg,
            }
        })
        .collect();
    for g in &glyphs {
        render::draw_glyph(&mut img, g.ch, g.bbox.x, g.bbox.y, scale, fg);
    }
    let t = rng.gen_range(0..n);
    let tb = glyphs[t].bbox;
    let red_box = Rect::new(tb.x - 2, tb.y - 2, tb.w + 4, tb.h + 4);
    render::draw_rect_outline(&mut img, red_box, RED_BOX_RGB);
    let meta = SampleMeta {
        image_size: size,
        background: bg,
        noise,
        shapes: Vec::new(),
        glyphs,
        red_box: Some(red_box),
        target: Some(t),
        evidence: vec![red_box],
    };
    (
        "Which character is inside the red box?".to_string(),
        chars[t].to_string(),
        meta,
        img,
    )
}
