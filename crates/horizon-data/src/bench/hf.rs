//! HF-parquet reader (layout documented in the parent module).

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::{ImageSource, OpenOptions, Sample};

const DEFAULT_BATCH: usize = 64;
const ID_COLUMNS: [&str; 3] = ["question_id", "id", "index"];

/// Where the needed columns are in one file.
#[derive(Debug, Clone)]
struct Columns {
    id: String,
    question: String,
    answer: Option<String>,
    answers: Option<String>,
    category: Option<String>,
    image: String,
    image_kind: ImageKind,
    /// Root column indices to read.
    projection: Vec<usize>,
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
    num_rows: usize,
}

pub(super) struct ParquetSet {
    files: Vec<FileInfo>,
    limit: Option<usize>,
    batch_size: usize,
}

impl ParquetSet {
    pub(super) fn open(paths: Vec<PathBuf>, opts: &OpenOptions) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let builder = builder(&path)?;
            let cols = check_schema(&path, builder.schema(), builder.parquet_schema())?;
            let num_rows =
                usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            files.push(FileInfo {
                path,
                cols,
                num_rows,
            });
        }
        Ok(ParquetSet {
            files,
            limit: opts.limit,
            batch_size: opts.batch_size.unwrap_or(DEFAULT_BATCH).max(1),
        })
    }

    pub(super) fn files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    pub(super) fn len(&self) -> usize {
        let total: usize = self.files.iter().map(|f| f.num_rows).sum();
        self.limit.map_or(total, |l| total.min(l))
    }

    pub(super) fn stream(&self) -> ParquetStream<'_> {
        ParquetStream {
            set: self,
            next_file: 0,
            current: None,
            row_in_file: 0,
            buf: VecDeque::new(),
            remaining: self.limit.unwrap_or(usize::MAX),
            done: false,
        }
    }
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

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

    let id = ID_COLUMNS
        .iter()
        .find(|n| field(n).is_some())
        .ok_or_else(|| missing("`question_id`"))?
        .to_string();
    let dt = field(&id).unwrap().data_type();
    if !(is_string(dt) || dt.is_integer()) {
        return Err(wrong(&id, "string or integer", dt));
    }

    let question = "question".to_string();
    let dt = field(&question)
        .ok_or_else(|| missing("`question`"))?
        .data_type();
    if !is_string(dt) {
        return Err(wrong(&question, "string", dt));
    }

    let answer = field("answer").map(|f| {
        if is_string(f.data_type()) {
            Ok("answer".to_string())
        } else {
            Err(wrong("answer", "string", f.data_type()))
        }
    });
    let answer = answer.transpose()?;
    let answers = field("answers").map(|f| match list_item(f.data_type()) {
        Some(item) if is_string(item) => Ok("answers".to_string()),
        _ => Err(wrong("answers", "list<string>", f.data_type())),
    });
    let answers = answers.transpose()?;
    if answer.is_none() && answers.is_none() {
        return Err(missing("`answer` (or `answers`)"));
    }

    let category = match field("category") {
        Some(f) if is_string(f.data_type()) => Some("category".to_string()),
        Some(f) => return Err(wrong("category", "string", f.data_type())),
        None => None,
    };

    let image = "image".to_string();
    let dt = field(&image).ok_or_else(|| missing("`image`"))?.data_type();
    let image_kind = match dt {
        DataType::Struct(fields) => {
            let bytes = fields.iter().find(|f| f.name() == "bytes");
            let path_f = fields.iter().find(|f| f.name() == "path");
            match (bytes, path_f) {
                (Some(b), p)
                    if is_binary(b.data_type()) && p.is_none_or(|p| is_string(p.data_type())) =>
                {
                    ImageKind::Struct {
                        has_path: p.is_some(),
                    }
                }
                _ => return Err(wrong(&image, "struct<bytes: binary, path: string>", dt)),
            }
        }
        dt if is_binary(dt) => ImageKind::Binary,
        dt => return Err(wrong(&image, "struct<bytes: binary, path: string>", dt)),
    };

    // Root column indices in the parquet schema, by name.
    let roots = pq.root_schema().get_fields();
    let wanted: Vec<&str> = [
        Some(&id),
        Some(&question),
        answer.as_ref(),
        answers.as_ref(),
        category.as_ref(),
        Some(&image),
    ]
    .into_iter()
    .flatten()
    .map(String::as_str)
    .collect();
    let mut projection = Vec::new();
    for name in &wanted {
        let idx = roots
            .iter()
            .position(|t| t.name() == *name)
            .ok_or_else(|| {
                anyhow!(
                    "{file}: column `{name}` is in the arrow schema but not in the parquet schema"
                )
            })?;
        projection.push(idx);
    }

    Ok(Columns {
        id,
        question,
        answer,
        answers,
        category,
        image,
        image_kind,
        projection,
    })
}

pub(super) struct ParquetStream<'a> {
    set: &'a ParquetSet,
    next_file: usize,
    current: Option<(usize, ParquetRecordBatchReader)>,
    row_in_file: usize,
    buf: VecDeque<Sample>,
    remaining: usize,
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
            if self.done || self.remaining == 0 {
                self.done = true;
                return None;
            }
            if let Some(s) = self.buf.pop_front() {
                self.remaining -= 1;
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
                let reader = builder(&info.path).and_then(|b| {
                    let mask = ProjectionMask::roots(
                        b.parquet_schema(),
                        info.cols.projection.iter().copied(),
                    );
                    let mut b = b.with_projection(mask).with_batch_size(self.set.batch_size);
                    if self.remaining != usize::MAX {
                        b = b.with_limit(self.remaining);
                    }
                    b.build().map_err(|e| {
                        anyhow!(
                            "{}: cannot read: {}",
                            info.path.display(),
                            one_line(&e.to_string())
                        )
                    })
                });
                match reader {
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
                    match convert_batch(&batch, info, self.row_in_file) {
                        Ok(samples) => self.buf.extend(samples),
                        Err(e) => return self.fail(e),
                    }
                    self.row_in_file += n;
                }
            }
        }
    }
}

fn column(batch: &RecordBatch, info: &FileInfo, name: &str, to: &DataType) -> Result<ArrayRef> {
    let col = batch.column_by_name(name).ok_or_else(|| {
        anyhow!(
            "{}: column `{name}` missing from a batch",
            info.path.display()
        )
    })?;
    cast(col, to).map_err(|e| {
        anyhow!(
            "{}: column `{name}`: cannot convert to {to}: {e}",
            info.path.display()
        )
    })
}

fn convert_batch(batch: &RecordBatch, info: &FileInfo, first_row: usize) -> Result<Vec<Sample>> {
    let file = info.path.display();
    let cols = &info.cols;
    let list_utf8 = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));

    let ids = column(batch, info, &cols.id, &DataType::Utf8)?;
    let ids = ids.as_string::<i32>();
    let questions = column(batch, info, &cols.question, &DataType::Utf8)?;
    let questions = questions.as_string::<i32>();
    let answer = cols
        .answer
        .as_ref()
        .map(|c| column(batch, info, c, &DataType::Utf8))
        .transpose()?;
    let answer = answer.as_ref().map(|a| a.as_string::<i32>());
    let answers = cols
        .answers
        .as_ref()
        .map(|c| column(batch, info, c, &list_utf8))
        .transpose()?;
    let answers = answers.as_ref().map(|a| a.as_list::<i32>());
    let category = cols
        .category
        .as_ref()
        .map(|c| column(batch, info, c, &DataType::Utf8))
        .transpose()?;
    let category = category.as_ref().map(|a| a.as_string::<i32>());

    let image_col = batch
        .column_by_name(&cols.image)
        .ok_or_else(|| anyhow!("{file}: column `{}` missing from a batch", cols.image))?;
    let (image_valid, image_bytes, image_path): (Option<&dyn Array>, ArrayRef, Option<ArrayRef>) =
        match cols.image_kind {
            ImageKind::Struct { has_path } => {
                let s = image_col.as_struct();
                let conv = |name: &str, to: &DataType| {
                    cast(s.column_by_name(name).unwrap(), to).map_err(|e| {
                        anyhow!(
                            "{file}: column `{}.{name}`: cannot convert to {to}: {e}",
                            cols.image
                        )
                    })
                };
                let bytes = conv("bytes", &DataType::Binary)?;
                let path = if has_path {
                    Some(conv("path", &DataType::Utf8)?)
                } else {
                    None
                };
                (Some(image_col.as_ref()), bytes, path)
            }
            ImageKind::Binary => (
                None,
                column(batch, info, &cols.image, &DataType::Binary)?,
                None,
            ),
        };
    let image_bytes = image_bytes.as_binary::<i32>();
    let image_path = image_path.as_ref().map(|a| a.as_string::<i32>());
    let base = info.path.parent().unwrap_or(Path::new("."));

    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let row = first_row + i;
        if ids.is_null(i) {
            bail!("{file}: row {row}: null `{}`", cols.id);
        }
        let id = ids.value(i).to_string();
        if questions.is_null(i) {
            bail!("{file}: row {row} ({} {id}): null `question`", cols.id);
        }
        let mut ans = Vec::new();
        if let Some(a) = answer {
            if a.is_valid(i) {
                ans.push(a.value(i).to_string());
            }
        }
        if let Some(l) = answers {
            if l.is_valid(i) {
                let v = l.value(i);
                let v = v.as_string::<i32>();
                ans.extend(v.iter().flatten().map(str::to_string));
            }
        }
        let category = match category {
            Some(c) if c.is_valid(i) => c.value(i).to_string(),
            _ => "default".to_string(),
        };
        let struct_null = image_valid.is_some_and(|s| s.is_null(i));
        let image = if !struct_null && image_bytes.is_valid(i) {
            ImageSource::Bytes(image_bytes.value(i).to_vec())
        } else {
            match image_path.filter(|p| !struct_null && p.is_valid(i) && !p.value(i).is_empty()) {
                Some(p) => {
                    let rel = Path::new(p.value(i));
                    let full = if rel.is_absolute() {
                        rel.to_path_buf()
                    } else {
                        base.join(rel)
                    };
                    if !full.is_file() {
                        bail!(
                            "{file}: row {row} ({} {id}): column `{}` has null bytes and its path {} does not exist",
                            cols.id,
                            cols.image,
                            full.display()
                        );
                    }
                    ImageSource::Path(full)
                }
                None => bail!(
                    "{file}: row {row} ({} {id}): null image in column `{}`",
                    cols.id,
                    cols.image
                ),
            }
        };
        out.push(Sample {
            id,
            question: questions.value(i).to_string(),
            answers: ans,
            category,
            image,
        });
    }
    Ok(out)
}
