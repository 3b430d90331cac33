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
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("{}: cannot rename into place ({e})", path.display())
    })
}

/// Fails when `path` cannot become a file because a directory is there: called before the work
/// whose result would go to `path`, so that the error comes first and nothing is left behind.
pub fn check_file_target(path: &Path) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("{}: is a directory, not a file to write", path.display());
    }
    Ok(())
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

/// Replaces the directory `dir` by one that `fill` writes whole, so that a kill at any moment leaves
/// either the old directory or the new one complete (after [`recover_dir`]), never a mix of the two.
/// `fill` writes into `{dir}.tmp`; the old directory is renamed to `{dir}.prev`, the new one into
/// place, and the old one removed. The only moment with no `dir` is between the two renames, and
/// [`recover_dir`] puts `{dir}.prev` back then. Unlike [`write_atomic`] the staging names are fixed
/// (not per process), because a later process has to find what a killed one left.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    recover_dir(dir)?;
    let (tmp, prev) = (sibling(dir, "tmp"), sibling(dir, "prev"));
    std::fs::create_dir_all(&tmp)
        .with_context(|| format!("{}: cannot create directory", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::rename(dir, &prev)
            .with_context(|| format!("{}: cannot move aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("{}: cannot rename into place", dir.display()))?;
    if prev.exists() {
        std::fs::remove_dir_all(&prev)
            .with_context(|| format!("{}: cannot remove", prev.display()))?;
    }
    Ok(())
}

/// Brings `dir` back to a complete state after a [`write_dir_atomic`] was killed: a missing `dir`
/// with a `{dir}.prev` (killed between the renames) gets the previous directory back; a leftover
/// `{dir}.tmp` (killed while filling, or before the swap) and `{dir}.prev` (killed after the swap)
/// are removed. Does nothing when no write was interrupted.
pub fn recover_dir(dir: &Path) -> Result<()> {
    let (tmp, prev) = (sibling(dir, "tmp"), sibling(dir, "prev"));
    if !dir.exists() && prev.exists() {
        std::fs::rename(&prev, dir).with_context(|| {
            format!("{}: cannot restore from {}", dir.display(), prev.display())
        })?;
    }
    for leftover in [tmp, prev] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover)
                .with_context(|| format!("{}: cannot remove", leftover.display()))?;
        }
    }
    Ok(())
}

/// `{dir}.{suffix}` beside `dir` (appended, so a name with dots keeps them).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    beside(dir, |name| format!("{name}.{suffix}"))
}

/// Removes what killed writers left in `dir`: temporary files of [`write_atomic`]
/// (`.{name}.tmp{pid}`). Called before a run resumes in `dir`; a missing `dir` is fine.
pub fn remove_orphans(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_orphan = name.starts_with('.')
            && name
                .rsplit_once(".tmp")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_orphan {
            std::fs::remove_file(entry.path()).with_context(|| {
                format!(
                    "{}: cannot remove a leftover temporary file",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    beside(path, |name| format!(".{name}.tmp{}", std::process::id()))
}

/// The path in the same directory as `path` whose file name `rename` makes from `path`'s.
fn beside(path: &Path, rename: impl FnOnce(&str) -> String) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(rename(&name))
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

    /// `root` holds only the directory `ckpt` (no staging or previous directory), whose file `f`
    /// reads `text`.
    fn assert_only_ckpt_with(root: &Path, text: &str) {
        let names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ckpt"]);
        assert_eq!(std::fs::read_to_string(root.join("ckpt/f")).unwrap(), text);
    }

    #[test]
    fn directory_is_replaced_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let fill = |text: &'static str| {
            move |tmp: &Path| -> Result<()> { Ok(std::fs::write(tmp.join("f"), text)?) }
        };
        write_dir_atomic(&dir, fill("one")).unwrap();
        write_dir_atomic(&dir, fill("two")).unwrap();
        assert_only_ckpt_with(root.path(), "two");
        // A failing fill keeps the old directory and leaves nothing behind.
        let err = write_dir_atomic(&dir, |tmp| {
            std::fs::write(tmp.join("f"), "half")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_only_ckpt_with(root.path(), "two");
    }

    /// Each point where a kill can stop `write_dir_atomic`, laid out by hand: recovery yields a
    /// complete directory (the old one, or the new one once it is in place) and no leftovers.
    #[test]
    fn recovery_after_a_kill_at_each_point_of_the_write() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let (tmp, prev) = (root.path().join("ckpt.tmp"), root.path().join("ckpt.prev"));
        let make = |d: &Path, text: &str| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("f"), text).unwrap();
        };
        // Killed while filling: the old directory stays.
        make(&dir, "old");
        make(&tmp, "ne");
        recover_dir(&dir).unwrap();
        assert_only_ckpt_with(root.path(), "old");
        // Killed between the two renames: the old directory comes back.
        std::fs::rename(&dir, &prev).unwrap();
        make(&tmp, "new");
        recover_dir(&dir).unwrap();
        assert_only_ckpt_with(root.path(), "old");
        // Killed after the swap, before the old one was removed: the new directory stays.
        std::fs::rename(&dir, &prev).unwrap();
        make(&dir, "new");
        recover_dir(&dir).unwrap();
        assert_only_ckpt_with(root.path(), "new");
        // A later write starts from whatever a kill left.
        make(&tmp, "ne");
        write_dir_atomic(&dir, |t| Ok(std::fs::write(t.join("f"), "next")?)).unwrap();
        assert_only_ckpt_with(root.path(), "next");
    }
}
