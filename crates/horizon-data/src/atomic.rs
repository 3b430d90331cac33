//! Atomic file writes: readers (and resumed runs) never see a partial file.

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Writes `path` by letting `write` fill a temporary file beside it (same directory, so the rename is
/// atomic), then renaming it into place. Creates the parent directory. The temporary name starts with
/// `.` so directory listings of results skip it.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Writes `batch` as a zstd-compressed Parquet file at `path` atomically ([`write_atomic`]), with
/// `metadata` as `key=value` pairs in the file footer.
pub fn write_parquet_atomic(
    path: &Path,
    batch: &RecordBatch,
    metadata: &[(String, String)],
) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ))
        .build();
    write_atomic(path, |tmp| {
        let file =
            File::create(tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        writer.write(batch)?;
        writer
            .close()
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        Ok(())
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_place_and_cleans_up_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/out.txt");
        write_atomic(&target, |tmp| Ok(std::fs::write(tmp, b"hello")?)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        let err = write_atomic(&target, |tmp| {
            std::fs::write(tmp, b"partial")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"hello", "old file kept");
        let leftovers: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "temporary file removed");
    }
}
