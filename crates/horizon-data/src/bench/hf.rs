//! HF-parquet reader (layout documented in the parent module).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::{
    clean_hint, key_columns, kind_from_categories, one_line, option_letter, option_present,
    sample_key, BenchmarkKind, ImageSource, KeySet, OpenOptions, Sample, POPE_CATEGORIES,
};

const DEFAULT_BATCH: usize = 64;
const ID_COLUMNS: [&str; 3] = ["question_id", "id", "index"];
const OPTION_COLUMNS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// Where the needed columns are in one file.
#[derive(Debug, Clone)]
struct Columns {
    /// `None`: the row number is the id (ScienceQA).
    id: Option<String>,
    question: String,
    answer: Option<String>,
    /// `answer` is an integer index into `choices` (ScienceQA).
    answer_is_index: bool,
    answers: Option<String>,
    category: Option<String>,
    l2_category: Option<String>,
    choices: Option<String>,
    options: Vec<String>,
    hint: Option<String>,
    ocr_tokens: Option<String>,
    /// `None`: joined through `image_id` (GQA).
    image: Option<(String, ImageKind)>,
    image_id: Option<String>,
    /// Root column indices read while streaming.
    projection: Vec<usize>,
    /// Root column indices read for the keys at open.
    key_projection: Vec<usize>,
}

impl Columns {
    fn id_name(&self) -> &str {
        self.id.as_deref().unwrap_or("id")
    }
}

#[derive(Debug, Clone, Copy)]
enum ImageKind {
    /// HF `Image`: struct {bytes, path?}.
    Struct { has_path: bool },
    /// Plain binary column.
    Binary,
}

struct FileInfo {
    path: PathBuf,
    cols: Columns,
    /// Rows read from this file (the limit applied).
    rows: usize,
    /// Index of this file's first row in the whole set.
    first: usize,
}

/// GQA images, joined on `imageId`.
enum JoinedImages {
    /// `id` -> encoded bytes, from the images config's shards.
    Map(HashMap<String, Vec<u8>>),
    /// A folder of `{imageId}.jpg` files.
    Folder(PathBuf),
}

pub(super) struct ParquetSet {
    kind: BenchmarkKind,
    files: Vec<FileInfo>,
    image_files: Vec<PathBuf>,
    keys: Vec<String>,
    joined: Option<JoinedImages>,
    batch_size: usize,
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        anyhow!(
            "{}: not a readable parquet file: {}",
            path.display(),
            one_line(&e.to_string())
        )
    })
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_binary(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

fn list_item(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

fn names_of(schema: &Schema) -> HashSet<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

/// Benchmark from the column names (module docs).
fn detect_kind(schema: &Schema) -> BenchmarkKind {
    let n = names_of(schema);
    if n.contains("meta") {
        BenchmarkKind::Synthetic
    } else if n.contains("choices") {
        BenchmarkKind::ScienceQa
    } else if n.contains("A") && n.contains("B") {
        BenchmarkKind::MmBench
    } else if n.contains("imageId") {
        BenchmarkKind::Gqa
    } else if n.contains("ocr_tokens") {
        BenchmarkKind::TextVqa
    } else if n.contains("image_source") {
        BenchmarkKind::Pope
    } else if n.contains("question_id") && n.contains("answer") && n.contains("category") {
        BenchmarkKind::Mme
    } else {
        BenchmarkKind::Generic
    }
}

/// What a file with MME's columns (`question_id`, `answer`, `category`) is: POPE when its categories
/// are POPE's, MME when every category is an MME subtask and every answer is yes or no (ignoring
/// case, surrounding space and `.`), else a generic benchmark (its questions as written, exact
/// match).
fn mme_or_pope_or_generic(rows: &[KeyRow]) -> BenchmarkKind {
    if kind_from_categories(rows.iter().map(|r| r.category.as_str())) == Some(BenchmarkKind::Pope) {
        return BenchmarkKind::Pope;
    }
    let subtasks = rows.iter().all(|r| {
        crate::score::mme::PERCEPTION.contains(&r.category.as_str())
            || crate::score::mme::COGNITION.contains(&r.category.as_str())
    });
    let yes_no = rows.iter().all(|r| {
        r.answer.as_deref().is_none_or(|a| {
            matches!(
                a.to_lowercase().trim().replace('.', "").as_str(),
                "yes" | "no"
            )
        })
    });
    if subtasks && yes_no && !rows.is_empty() {
        BenchmarkKind::Mme
    } else {
        BenchmarkKind::Generic
    }
}

/// An MMBench file (`index`, `hint` and an option or `l2-category` column) must have the option
/// columns `A` and `B`: without them its questions would be read as a generic benchmark and scored
/// by exact match against a letter.
fn check_mmbench_options(path: &Path, schema: &Schema) -> Result<()> {
    let n = names_of(schema);
    let mmbench_like = n.contains("index")
        && n.contains("hint")
        && ["A", "B", "C", "D", "l2-category", "L2-category"]
            .iter()
            .any(|c| n.contains(c));
    let missing: Vec<&str> = ["A", "B"].into_iter().filter(|c| !n.contains(c)).collect();
    if mmbench_like && !missing.is_empty() {
        bail!(
            "{}: an MMBench file (columns index, hint, ...) without the option column{} {}; \
             MMBench needs A and B at least",
            path.display(),
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        );
    }
    Ok(())
}

/// A GQA images-config shard: `id` and `image`, no `question`.
fn is_image_only(schema: &Schema) -> bool {
    let n = names_of(schema);
    !n.contains("question") && n.contains("id") && n.contains("image")
}

/// The split of an HF shard name `{split}-00000-of-00004[-hash].parquet`.
fn shard_split(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    for (i, _) in stem.match_indices('-') {
        let rest = &stem[i + 1..];
        if rest.len() >= 14
            && digits(&rest[..5])
            && &rest[5..9] == "-of-"
            && digits(&rest[9..14])
            && (rest.len() == 14 || rest.as_bytes()[14] == b'-')
            && i > 0
        {
            return Some(stem[..i].to_string());
        }
    }
    None
}

fn folder_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn folder_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Keeps the preferred config folder(s) of a repository checkout (module docs); other layouts unchanged.
fn select_folders(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = files.iter().map(|p| folder_of(p)).collect();
    folders.sort();
    folders.dedup();
    if folders.len() <= 1 {
        return files;
    }
    let find = |n: &str| folders.iter().find(|f| folder_name(f) == n).cloned();
    let keep = match (
        find("testdev_balanced_instructions"),
        find("testdev_balanced_images"),
    ) {
        (Some(a), Some(b)) => Some(vec![a, b]),
        _ => ["data", "ScienceQA-IMG", "en"]
            .iter()
            .find_map(|n| find(n))
            .map(|f| vec![f]),
    };
    match keep {
        Some(k) => files
            .into_iter()
            .filter(|p| k.contains(&folder_of(p)))
            .collect(),
        None => files,
    }
}

/// Keeps one split of HF shards (module docs).
fn select_split(
    where_: &str,
    files: Vec<(PathBuf, Arc<Schema>)>,
    split: Option<&str>,
    default: Option<&str>,
    pope: bool,
) -> Result<Vec<(PathBuf, Arc<Schema>)>> {
    let splits: Vec<Option<String>> = files.iter().map(|(p, _)| shard_split(p)).collect();
    if splits.iter().any(Option::is_none) {
        return Ok(files);
    }
    let mut names: Vec<&str> = splits.iter().flatten().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let chosen = if let Some(s) = split {
        if !names.contains(&s) {
            bail!(
                "{where_}: no parquet shards of split `{s}` (splits: {})",
                names.join(", ")
            );
        }
        s.to_string()
    } else if names.len() <= 1 || (pope && names.iter().all(|n| POPE_CATEGORIES.contains(n))) {
        return Ok(files);
    } else if let Some(d) = default.filter(|d| names.contains(d)) {
        d.to_string()
    } else {
        bail!(
            "{where_}: parquet shards of several splits ({}); choose one (OpenOptions::split) or pass its files",
            names.join(", ")
        );
    };
    Ok(files
        .into_iter()
        .zip(splits)
        .filter(|(_, s)| s.as_deref() == Some(chosen.as_str()))
        .map(|(f, _)| f)
        .collect())
}

impl ParquetSet {
    pub(super) fn open(
        root: Option<&Path>,
        paths: Vec<PathBuf>,
        opts: &OpenOptions,
    ) -> Result<Self> {
        let where_ = root
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| paths[0].display().to_string());
        let paths = if root.is_some() {
            select_folders(paths)
        } else {
            paths
        };
        // Schemas, and question shards apart from image-only (GQA images) shards.
        let mut questions = Vec::new();
        let mut images = Vec::new();
        for path in paths {
            let b = builder(&path)?;
            let schema = b.schema().clone();
            if is_image_only(&schema) {
                images.push((path, schema));
            } else {
                questions.push((path, schema));
            }
        }
        if questions.is_empty() {
            // Only image-only files: report the missing question column of the first.
            let (p, s) = &images[0];
            bail!(
                "{}: missing column `question` (columns: {})",
                p.display(),
                s.fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let detected = detect_kind(&questions[0].1);
        if opts.benchmark.is_none() || opts.benchmark == Some(BenchmarkKind::MmBench) {
            check_mmbench_options(&questions[0].0, &questions[0].1)?;
        }
        let mut kind = opts.benchmark.unwrap_or(detected);
        let split = opts.split.as_deref();
        let questions = select_split(
            &where_,
            questions,
            split,
            kind.eval_split(),
            kind == BenchmarkKind::Pope,
        )?;
        let images = if images.is_empty() {
            images
        } else {
            select_split(&where_, images, split, Some("testdev"), false)?
        };
        let mut folders: Vec<PathBuf> = questions.iter().map(|(p, _)| folder_of(p)).collect();
        folders.sort();
        folders.dedup();
        if folders.len() > 1 {
            bail!(
                "{where_}: parquet files in several folders ({}); pass one of them",
                folders
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }

        let mut files = Vec::with_capacity(questions.len());
        for (path, schema) in &questions {
            let other = detect_kind(schema);
            if other != detected {
                bail!(
                    "{}: columns of a {other} file, but {} has those of a {detected} file",
                    path.display(),
                    questions[0].0.display()
                );
            }
            let b = builder(path)?;
            let cols = check_schema(path, schema, b.parquet_schema())?;
            files.push(FileInfo {
                path: path.clone(),
                cols,
                rows: 0,
                first: 0,
            });
        }

        // GQA: the images to join.
        let needs_join = files.iter().any(|f| f.cols.image.is_none());
        let joined = if needs_join {
            Some(if !images.is_empty() {
                load_images(&images)?
            } else {
                match &opts.image_dir {
                    Some(dir) => joined_from_dir(dir, split)?,
                    None => bail!(
                        "{}: no `image` column and no GQA images config found (column `imageId`: pass a folder holding testdev_balanced_images too, or OpenOptions::image_dir)",
                        files[0].path.display()
                    ),
                }
            })
        } else {
            None
        };

        // Keys: read the id / question / category columns of the rows within the limit.
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut rows: Vec<KeyRow> = Vec::new();
        for (fi, info) in files.iter_mut().enumerate() {
            info.first = rows.len();
            if rows.len() >= limit {
                continue;
            }
            read_key_rows(info, fi, limit - rows.len(), joined.as_ref(), &mut rows)?;
            info.rows = rows.len() - info.first;
        }
        if opts.benchmark.is_none() && kind == BenchmarkKind::Mme {
            kind = mme_or_pope_or_generic(&rows);
        }
        let mut seen = KeySet::new();
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let info = &files[r.file];
            let key = sample_key(kind, &r.id, &r.question, &r.category, false);
            let file = info.path.display();
            seen.insert(
                &key,
                || format!("{file}: row {} ({} {})", r.row, info.cols.id_name(), r.id),
                || format!("row {} of {file}", r.row),
                || key_columns(kind, info.cols.id_name(), false),
            )?;
            keys.push(key);
        }

        Ok(ParquetSet {
            kind,
            files,
            image_files: images.into_iter().map(|(p, _)| p).collect(),
            keys,
            joined,
            batch_size: opts.batch_size.unwrap_or(DEFAULT_BATCH).max(1),
        })
    }

    pub(super) fn kind(&self) -> BenchmarkKind {
        self.kind
    }

    pub(super) fn files(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|f| f.path.clone())
            .chain(self.image_files.iter().cloned())
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn keys(&self) -> &[String] {
        &self.keys
    }

    pub(super) fn stream(&self) -> ParquetStream<'_> {
        ParquetStream {
            set: self,
            next_file: 0,
            current: None,
            row_in_file: 0,
            buf: VecDeque::new(),
            done: false,
        }
    }
}

/// The id part of one row, read at open.
struct KeyRow {
    file: usize,
    row: usize,
    id: String,
    question: String,
    category: String,
    /// The `answer` column when it is a string (to tell MME from a generic file).
    answer: Option<String>,
}

fn reader(
    path: &Path,
    projection: &[usize],
    batch_size: usize,
    limit: usize,
) -> Result<ParquetRecordBatchReader> {
    let b = builder(path)?;
    let mask = ProjectionMask::roots(b.parquet_schema(), projection.iter().copied());
    b.with_projection(mask)
        .with_batch_size(batch_size)
        .with_limit(limit)
        .build()
        .map_err(|e| {
            anyhow!(
                "{}: cannot read: {}",
                path.display(),
                one_line(&e.to_string())
            )
        })
}

fn read_key_rows(
    info: &FileInfo,
    fi: usize,
    limit: usize,
    joined: Option<&JoinedImages>,
    out: &mut Vec<KeyRow>,
) -> Result<()> {
    let file = info.path.display();
    let cols = &info.cols;
    let mut row = 0usize;
    for batch in reader(&info.path, &cols.key_projection, 1024, limit)? {
        let batch = batch.map_err(|e| {
            anyhow!(
                "{file}: cannot read rows from {row}: {}",
                one_line(&e.to_string())
            )
        })?;
        let ids = cols
            .id
            .as_ref()
            .map(|c| column(&batch, &info.path, c, &DataType::Utf8))
            .transpose()?;
        let questions = column(&batch, &info.path, &cols.question, &DataType::Utf8)?;
        let cats = cols
            .category
            .as_ref()
            .map(|c| column(&batch, &info.path, c, &DataType::Utf8))
            .transpose()?;
        let image_ids = cols
            .image_id
            .as_ref()
            .filter(|_| cols.image.is_none())
            .map(|c| column(&batch, &info.path, c, &DataType::Utf8))
            .transpose()?;
        let answers = cols
            .answer
            .as_ref()
            .filter(|_| !cols.answer_is_index)
            .map(|c| column(&batch, &info.path, c, &DataType::Utf8))
            .transpose()?;
        for i in 0..batch.num_rows() {
            let global = out.len();
            let id = match &ids {
                Some(a) => match str_at(a, i) {
                    Some(s) => s.to_string(),
                    None => bail!("{file}: row {row}: column `{}`: null id", cols.id_name()),
                },
                None => global.to_string(),
            };
            let question = match str_at(&questions, i) {
                Some(q) => q.to_string(),
                None => bail!(
                    "{file}: row {row} ({} {id}): column `question`: null `question`",
                    cols.id_name()
                ),
            };
            let category = cats
                .as_ref()
                .and_then(|c| str_at(c, i))
                .unwrap_or("default")
                .to_string();
            if let (Some(a), Some(j)) = (&image_ids, joined) {
                let col = cols.image_id.as_deref().unwrap_or("imageId");
                let Some(image_id) = str_at(a, i) else {
                    bail!(
                        "{file}: row {row} ({} {id}): column `{col}`: null image id",
                        cols.id_name()
                    );
                };
                let known = match j {
                    JoinedImages::Map(m) => m.contains_key(image_id),
                    JoinedImages::Folder(d) => d.join(format!("{image_id}.jpg")).is_file(),
                };
                if !known {
                    bail!(
                        "{file}: row {row} ({} {id}): column `{col}`: no image with id `{image_id}` in the images config",
                        cols.id_name()
                    );
                }
            }
            out.push(KeyRow {
                file: fi,
                row,
                id,
                question,
                category,
                answer: answers
                    .as_ref()
                    .and_then(|a| str_at(a, i))
                    .map(str::to_string),
            });
            row += 1;
        }
    }
    Ok(())
}

/// Reads GQA's images config (`id`, `image`) into memory.
fn load_images(files: &[(PathBuf, Arc<Schema>)]) -> Result<JoinedImages> {
    let mut map = HashMap::new();
    for (path, schema) in files {
        let file = path.display();
        let b = builder(path)?;
        let roots = b.parquet_schema().root_schema().get_fields();
        let idx = |name: &str| {
            roots
                .iter()
                .position(|t| t.name() == name)
                .ok_or_else(|| anyhow!("{file}: missing column `{name}`"))
        };
        let dt = schema.field_with_name("id").unwrap().data_type();
        if !(is_string(dt) || dt.is_integer()) {
            bail!("{file}: column `id`: expected string or integer, found {dt}");
        }
        let kind = image_kind(path, schema.field_with_name("image").unwrap().data_type())?;
        let proj = [idx("id")?, idx("image")?];
        let mut row = 0usize;
        for batch in reader(path, &proj, 64, usize::MAX)? {
            let batch = batch.map_err(|e| {
                anyhow!(
                    "{file}: cannot read rows from {row}: {}",
                    one_line(&e.to_string())
                )
            })?;
            let ids = column(&batch, path, "id", &DataType::Utf8)?;
            let img = image_arrays(&batch, path, "image", kind)?;
            for i in 0..batch.num_rows() {
                let Some(id) = str_at(&ids, i) else {
                    bail!("{file}: row {row}: column `id`: null id");
                };
                if img.is_null(i) || !img.bytes.is_valid(i) {
                    bail!("{file}: row {row} (id {id}): column `image`: null image");
                }
                let bytes = img.bytes.as_binary::<i32>().value(i).to_vec();
                if let Err(e) = ImageSource::Bytes(bytes.clone()).check_header() {
                    bail!("{file}: row {row} (id {id}): column `image`: cannot decode image: {e}");
                }
                map.entry(id.to_string()).or_insert(bytes);
                row += 1;
            }
        }
    }
    Ok(JoinedImages::Map(map))
}

/// GQA images from [`OpenOptions::image_dir`]: a parquet file / folder of the images config, or a folder
/// of `{imageId}.jpg`.
fn joined_from_dir(dir: &Path, split: Option<&str>) -> Result<JoinedImages> {
    let mut files = Vec::new();
    if dir.is_file() {
        files.push(dir.to_path_buf());
    } else if dir.is_dir() {
        super::collect_files(dir, "parquet", 4, &mut files)
            .map_err(|e| anyhow!("{}: cannot list directory: {e}", dir.display()))?;
        files.sort();
    } else {
        bail!("{}: image folder not found", dir.display());
    }
    if files.is_empty() {
        return Ok(JoinedImages::Folder(dir.to_path_buf()));
    }
    let mut with_schema = Vec::new();
    for p in select_folders(files) {
        let schema = builder(&p)?.schema().clone();
        if !is_image_only(&schema) {
            bail!(
                "{}: not a GQA images file (expected columns `id` and `image`, no `question`)",
                p.display()
            );
        }
        with_schema.push((p, schema));
    }
    let with_schema = select_split(
        &dir.display().to_string(),
        with_schema,
        split,
        Some("testdev"),
        false,
    )?;
    load_images(&with_schema)
}

fn image_kind(path: &Path, dt: &DataType) -> Result<ImageKind> {
    let wrong = || {
        anyhow!(
            "{}: column `image`: expected struct<bytes: binary, path: string>, found {dt}",
            path.display()
        )
    };
    match dt {
        DataType::Struct(fields) => {
            let bytes = fields.iter().find(|f| f.name() == "bytes");
            let path_f = fields.iter().find(|f| f.name() == "path");
            match (bytes, path_f) {
                (Some(b), p)
                    if is_binary(b.data_type()) && p.is_none_or(|p| is_string(p.data_type())) =>
                {
                    Ok(ImageKind::Struct {
                        has_path: p.is_some(),
                    })
                }
                _ => Err(wrong()),
            }
        }
        dt if is_binary(dt) => Ok(ImageKind::Binary),
        _ => Err(wrong()),
    }
}

fn check_schema(
    path: &Path,
    schema: &Schema,
    pq: &parquet::schema::types::SchemaDescriptor,
) -> Result<Columns> {
    let file = path.display();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let field = |name: &str| schema.field_with_name(name).ok();
    let missing = |what: &str| {
        anyhow!(
            "{file}: missing column {what} (columns: {})",
            names.join(", ")
        )
    };
    let wrong = |name: &str, expected: &str, dt: &DataType| {
        anyhow!("{file}: column `{name}`: expected {expected}, found {dt}")
    };
    let string_col = |name: &str| -> Result<Option<String>> {
        match field(name) {
            Some(f) if is_string(f.data_type()) => Ok(Some(name.to_string())),
            Some(f) => Err(wrong(name, "string", f.data_type())),
            None => Ok(None),
        }
    };
    let list_col = |name: &str| -> Result<Option<String>> {
        match field(name) {
            Some(f) => match list_item(f.data_type()) {
                Some(item) if is_string(item) => Ok(Some(name.to_string())),
                _ => Err(wrong(name, "list<string>", f.data_type())),
            },
            None => Ok(None),
        }
    };

    let choices = list_col("choices")?;
    let id = ID_COLUMNS
        .iter()
        .find(|n| field(n).is_some())
        .map(|s| s.to_string());
    let id = match id {
        Some(id) => {
            let dt = field(&id).unwrap().data_type();
            if !(is_string(dt) || dt.is_integer()) {
                return Err(wrong(&id, "string or integer", dt));
            }
            Some(id)
        }
        // ScienceQA has no id column: the row number stands in.
        None if choices.is_some() => None,
        None => return Err(missing("`question_id`")),
    };

    let question = "question".to_string();
    let dt = field(&question)
        .ok_or_else(|| missing("`question`"))?
        .data_type();
    if !is_string(dt) {
        return Err(wrong(&question, "string", dt));
    }

    let mut answer_is_index = false;
    let answer = match field("answer") {
        Some(f) if is_string(f.data_type()) => Some("answer".to_string()),
        Some(f) if choices.is_some() && f.data_type().is_integer() => {
            answer_is_index = true;
            Some("answer".to_string())
        }
        Some(f) if choices.is_some() => {
            return Err(wrong(
                "answer",
                "integer (index into `choices`) or string",
                f.data_type(),
            ))
        }
        Some(f) => return Err(wrong("answer", "string", f.data_type())),
        None => None,
    };
    let answers = list_col("answers")?;
    if answer.is_none() && answers.is_none() {
        return Err(missing("`answer` (or `answers`)"));
    }

    let category = string_col("category")?;
    let l2_category = match string_col("l2-category")? {
        Some(c) => Some(c),
        None => string_col("L2-category")?,
    };
    let hint = string_col("hint")?;
    let ocr_tokens = list_col("ocr_tokens")?;
    let mut options = Vec::new();
    if field("A").is_some() && field("B").is_some() {
        for name in OPTION_COLUMNS {
            match string_col(name)? {
                Some(c) => options.push(c),
                None => break,
            }
        }
    }

    let image_id = string_col("imageId")?;
    let image = match field("image") {
        Some(f) => Some(("image".to_string(), image_kind(path, f.data_type())?)),
        None if image_id.is_some() => None,
        None => return Err(missing("`image`")),
    };

    // Root column indices in the parquet schema, by name.
    let roots = pq.root_schema().get_fields();
    let index_of = |name: &str| -> Result<usize> {
        roots.iter().position(|t| t.name() == name).ok_or_else(|| {
            anyhow!("{file}: column `{name}` is in the arrow schema but not in the parquet schema")
        })
    };
    let mut wanted: Vec<&str> = [
        id.as_ref(),
        Some(&question),
        answer.as_ref(),
        answers.as_ref(),
        category.as_ref(),
        l2_category.as_ref(),
        choices.as_ref(),
        hint.as_ref(),
        ocr_tokens.as_ref(),
        image_id.as_ref(),
        image.as_ref().map(|(n, _)| n),
    ]
    .into_iter()
    .flatten()
    .map(String::as_str)
    .collect();
    wanted.extend(options.iter().map(String::as_str));
    let projection = wanted
        .iter()
        .map(|n| index_of(n))
        .collect::<Result<Vec<_>>>()?;
    let key_projection = [
        id.as_ref(),
        Some(&question),
        category.as_ref(),
        image_id.as_ref(),
        answer.as_ref().filter(|_| !answer_is_index),
    ]
    .into_iter()
    .flatten()
    .map(|n| index_of(n))
    .collect::<Result<Vec<_>>>()?;

    Ok(Columns {
        id,
        question,
        answer,
        answer_is_index,
        answers,
        category,
        l2_category,
        choices,
        options,
        hint,
        ocr_tokens,
        image,
        image_id,
        projection,
        key_projection,
    })
}

pub(super) struct ParquetStream<'a> {
    set: &'a ParquetSet,
    next_file: usize,
    current: Option<(usize, ParquetRecordBatchReader)>,
    row_in_file: usize,
    buf: VecDeque<Sample>,
    done: bool,
}

impl ParquetStream<'_> {
    fn fail(&mut self, e: anyhow::Error) -> Option<Result<Sample>> {
        self.done = true;
        self.buf.clear();
        self.current = None;
        Some(Err(e))
    }
}

impl Iterator for ParquetStream<'_> {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Result<Sample>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(s) = self.buf.pop_front() {
                return Some(Ok(s));
            }
            if self.current.is_none() {
                let idx = self.next_file;
                let Some(info) = self.set.files.get(idx) else {
                    self.done = true;
                    return None;
                };
                self.next_file += 1;
                self.row_in_file = 0;
                if info.rows == 0 {
                    continue;
                }
                match reader(
                    &info.path,
                    &info.cols.projection,
                    self.set.batch_size,
                    info.rows,
                ) {
                    Ok(r) => self.current = Some((idx, r)),
                    Err(e) => return self.fail(e),
                }
            }
            let (idx, reader) = self.current.as_mut().unwrap();
            let info = &self.set.files[*idx];
            match reader.next() {
                None => self.current = None,
                Some(Err(e)) => {
                    let e = anyhow!(
                        "{}: cannot read rows from {}: {}",
                        info.path.display(),
                        self.row_in_file,
                        one_line(&e.to_string())
                    );
                    return self.fail(e);
                }
                Some(Ok(batch)) => {
                    let n = batch.num_rows();
                    match convert_batch(&batch, self.set, info, self.row_in_file) {
                        Ok(samples) => self.buf.extend(samples),
                        Err(e) => return self.fail(e),
                    }
                    self.row_in_file += n;
                }
            }
        }
    }
}

fn column(batch: &RecordBatch, path: &Path, name: &str, to: &DataType) -> Result<ArrayRef> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("{}: column `{name}` missing from a batch", path.display()))?;
    cast(col, to).map_err(|e| {
        anyhow!(
            "{}: column `{name}`: cannot convert to {to}: {e}",
            path.display()
        )
    })
}

fn str_at(a: &ArrayRef, i: usize) -> Option<&str> {
    let s = a.as_string::<i32>();
    s.is_valid(i).then(|| s.value(i))
}

fn list_at(a: &ArrayRef, i: usize) -> Option<Vec<String>> {
    let l = a.as_list::<i32>();
    if !l.is_valid(i) {
        return None;
    }
    let v = l.value(i);
    Some(
        v.as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect(),
    )
}

/// The image column of a batch: validity of the struct, bytes, paths.
struct ImageArrays {
    validity: Option<ArrayRef>,
    bytes: ArrayRef,
    path: Option<ArrayRef>,
}

impl ImageArrays {
    fn is_null(&self, i: usize) -> bool {
        self.validity.as_ref().is_some_and(|s| s.is_null(i))
    }
}

fn image_arrays(
    batch: &RecordBatch,
    path: &Path,
    name: &str,
    kind: ImageKind,
) -> Result<ImageArrays> {
    let file = path.display();
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("{file}: column `{name}` missing from a batch"))?;
    Ok(match kind {
        ImageKind::Struct { has_path } => {
            let s = col.as_struct();
            let conv = |field: &str, to: &DataType| {
                cast(s.column_by_name(field).unwrap(), to).map_err(|e| {
                    anyhow!("{file}: column `{name}.{field}`: cannot convert to {to}: {e}")
                })
            };
            ImageArrays {
                validity: Some(col.clone()),
                bytes: conv("bytes", &DataType::Binary)?,
                path: if has_path {
                    Some(conv("path", &DataType::Utf8)?)
                } else {
                    None
                },
            }
        }
        ImageKind::Binary => ImageArrays {
            validity: None,
            bytes: column(batch, path, name, &DataType::Binary)?,
            path: None,
        },
    })
}

fn convert_batch(
    batch: &RecordBatch,
    set: &ParquetSet,
    info: &FileInfo,
    first_row: usize,
) -> Result<Vec<Sample>> {
    let path = info.path.as_path();
    let file = path.display();
    let cols = &info.cols;
    let list_utf8 = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let utf8 = |c: &Option<String>| {
        c.as_ref()
            .map(|c| column(batch, path, c, &DataType::Utf8))
            .transpose()
    };
    let list = |c: &Option<String>| {
        c.as_ref()
            .map(|c| column(batch, path, c, &list_utf8))
            .transpose()
    };

    let ids = utf8(&cols.id)?;
    let questions = column(batch, path, &cols.question, &DataType::Utf8)?;
    let answer = if cols.answer_is_index {
        cols.answer
            .as_ref()
            .map(|c| column(batch, path, c, &DataType::Int64))
            .transpose()?
    } else {
        utf8(&cols.answer)?
    };
    let answers = list(&cols.answers)?;
    let category = utf8(&cols.category)?;
    let l2 = utf8(&cols.l2_category)?;
    let hint = utf8(&cols.hint)?;
    let choices = list(&cols.choices)?;
    let ocr = list(&cols.ocr_tokens)?;
    let options = cols
        .options
        .iter()
        .map(|c| column(batch, path, c, &DataType::Utf8))
        .collect::<Result<Vec<_>>>()?;
    let image_ids = utf8(&cols.image_id)?;
    let image = cols
        .image
        .as_ref()
        .map(|(name, kind)| image_arrays(batch, path, name, *kind))
        .transpose()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let id_col = cols.id_name();

    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let row = first_row + i;
        let global = info.first + row;
        let key = set.keys[global].clone();
        let id = match &ids {
            Some(a) => match str_at(a, i) {
                Some(s) => s.to_string(),
                None => bail!("{file}: row {row}: column `{id_col}`: null id"),
            },
            None => global.to_string(),
        };
        let at = || format!("{file}: row {row} ({id_col} {id})");
        let Some(question) = str_at(&questions, i) else {
            bail!("{}: column `question`: null `question`", at());
        };

        let choice_list = choices
            .as_ref()
            .and_then(|c| list_at(c, i))
            .unwrap_or_default();
        let mut option_list = Vec::new();
        for o in &options {
            match option_present(str_at(o, i)) {
                Some(v) => option_list.push(v),
                None => break,
            }
        }
        let choices_out = if cols.choices.is_some() {
            choice_list
        } else {
            option_list
        };

        let mut ans = Vec::new();
        if let Some(a) = &answer {
            if cols.answer_is_index {
                let ints = a.as_primitive::<Int64Type>();
                if ints.is_valid(i) {
                    let k = ints.value(i);
                    if k < 0 || (!choices_out.is_empty() && k as usize >= choices_out.len()) {
                        bail!(
                            "{}: column `answer`: index {k} outside the {} choices",
                            at(),
                            choices_out.len()
                        );
                    }
                    ans.push(option_letter(k as usize).to_string());
                }
            } else if let Some(s) = str_at(a, i) {
                ans.push(s.to_string());
            }
        }
        if let Some(l) = &answers {
            ans.extend(list_at(l, i).unwrap_or_default());
        }

        let index = if set.kind == BenchmarkKind::MmBench && cols.id.as_deref() == Some("index") {
            Some(
                id.trim()
                    .parse::<i64>()
                    .map_err(|_| anyhow!("{}: column `index`: `{id}` is not an integer", at()))?,
            )
        } else {
            None
        };

        let image_src = match &image {
            Some(img) => {
                let struct_null = img.is_null(i);
                let bytes = img.bytes.as_binary::<i32>();
                if !struct_null && bytes.is_valid(i) {
                    ImageSource::Bytes(bytes.value(i).to_vec())
                } else {
                    let p = img
                        .path
                        .as_ref()
                        .and_then(|p| str_at(p, i))
                        .filter(|p| !struct_null && !p.is_empty());
                    match p {
                        Some(p) => {
                            let rel = Path::new(p);
                            let full = if rel.is_absolute() {
                                rel.to_path_buf()
                            } else {
                                base.join(rel)
                            };
                            if !full.is_file() {
                                bail!(
                                    "{}: column `image` has null bytes and its path {} does not exist",
                                    at(),
                                    full.display()
                                );
                            }
                            ImageSource::Path(full)
                        }
                        // ScienceQA-FULL's text-only questions, answered without an image as
                        // LLaVA's model_vqa_science.py does.
                        None if set.kind == BenchmarkKind::ScienceQa => ImageSource::None,
                        None => bail!("{}: null image in column `image`", at()),
                    }
                }
            }
            None => {
                let image_id = image_ids.as_ref().and_then(|a| str_at(a, i)).unwrap_or("");
                match set.joined.as_ref() {
                    Some(JoinedImages::Map(m)) => match m.get(image_id) {
                        Some(b) => ImageSource::Bytes(b.clone()),
                        None => bail!("{}: column `imageId`: no image with id `{image_id}`", at()),
                    },
                    Some(JoinedImages::Folder(d)) => {
                        ImageSource::Path(d.join(format!("{image_id}.jpg")))
                    }
                    None => bail!("{}: no image column", at()),
                }
            }
        };
        let image_col = if cols.image.is_some() {
            "image"
        } else {
            "imageId"
        };
        if let Err(e) = image_src.check_header() {
            bail!("{}: column `{image_col}`: cannot decode image: {e}", at());
        }

        out.push(Sample {
            key,
            id,
            benchmark: set.kind,
            question: question.to_string(),
            question_is_prompt: false,
            answers: ans,
            choices: choices_out,
            hint: clean_hint(hint.as_ref().and_then(|h| str_at(h, i))),
            ocr_tokens: ocr.as_ref().and_then(|o| list_at(o, i)).unwrap_or_default(),
            index,
            category: category
                .as_ref()
                .and_then(|c| str_at(c, i))
                .unwrap_or("default")
                .to_string(),
            l2_category: l2.as_ref().and_then(|c| str_at(c, i)).map(str::to_string),
            image: image_src,
        });
    }
    Ok(out)
}
