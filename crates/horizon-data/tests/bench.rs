//! Benchmark readers: HF-parquet layouts and LLaVA evaluation files (built here and read from
//! fixtures/bench/, written by fixtures/make_bench_fixtures.py), keys, prompts and error messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, LargeBinaryArray, LargeListArray, LargeStringArray,
    ListArray, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use horizon_data::bench::prompts::{OPTION_LETTER, SHORT_ANSWER};
use horizon_data::bench::{
    self, question_hash, question_prompt, BenchmarkKind, Format, ImageSource, OpenOptions,
    PromptStyle, Sample,
};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn write_batch(path: &Path, columns: Vec<(&str, ArrayRef)>, row_group: usize) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn image_struct(
    bytes: Vec<Option<Vec<u8>>>,
    paths: Vec<Option<&str>>,
    nulls: Option<Vec<bool>>,
) -> ArrayRef {
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let b: BinaryArray = bytes.iter().map(|o| o.as_deref()).collect();
    let p: StringArray = paths.into_iter().collect();
    Arc::new(StructArray::new(
        fields,
        vec![Arc::new(b), Arc::new(p)],
        nulls.map(NullBuffer::from),
    ))
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn list_utf8(rows: &[&[&str]]) -> ArrayRef {
    let values: Vec<&str> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.len()));
    Arc::new(ListArray::new(
        Arc::new(Field::new("item", DataType::Utf8, true)),
        offsets,
        Arc::new(StringArray::from(values)),
        None,
    ))
}

/// MME-like file with `n` rows starting at `start`.
fn mme_file(path: &Path, start: usize, n: usize, row_group: usize) -> Vec<Vec<u8>> {
    let ids: Vec<String> = (start..start + n)
        .map(|i| format!("count/{:04}.png", i / 2))
        .collect();
    let qs: Vec<String> = (start..start + n)
        .map(|i| format!("Q{i}? Please answer yes or no."))
        .collect();
    let ans: Vec<&str> = (start..start + n)
        .map(|i| if i % 2 == 0 { "Yes" } else { "No" })
        .collect();
    let imgs: Vec<Vec<u8>> = (start..start + n)
        .map(|i| png(4, 3, [i as u8, 0, 0]))
        .collect();
    write_batch(
        path,
        vec![
            (
                "question_id",
                Arc::new(StringArray::from(ids.clone())) as ArrayRef,
            ),
            (
                "image",
                image_struct(
                    imgs.iter().cloned().map(Some).collect(),
                    vec![None; n],
                    None,
                ),
            ),
            ("question", Arc::new(StringArray::from(qs))),
            ("answer", strings(&ans)),
            ("category", strings(&vec!["count"; n])),
        ],
        row_group,
    );
    imgs
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let e = r.expect_err("expected an error");
    let msg = format!("{e:#}");
    assert!(
        !msg.contains('\n'),
        "error message is not one line: {msg:?}"
    );
    msg
}

fn open_err(path: &Path) -> String {
    err_of(bench::read_all(path, &OpenOptions::default()))
}

#[test]
fn mme_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mme.parquet");
    let imgs = mme_file(&f, 0, 5, 2);
    let b = bench::open(&f, &OpenOptions::default()).unwrap();
    assert_eq!(b.format(), Format::Parquet);
    assert_eq!(b.len(), 5);
    assert_eq!(b.files(), vec![f.clone()]);
    let s = b.read_all().unwrap();
    assert_eq!(s.len(), 5);
    assert_eq!(b.kind(), BenchmarkKind::Mme);
    assert_eq!(s[3].id, "count/0001.png");
    assert_eq!(
        s[3].key,
        format!(
            "count/0001.png#{}",
            question_hash("Q3? Please answer yes or no.")
        )
    );
    assert_ne!(s[2].key, s[3].key, "the two questions of an image differ");
    assert_eq!(s[3].benchmark, BenchmarkKind::Mme);
    assert_eq!(
        b.keys(),
        s.iter().map(|s| s.key.clone()).collect::<Vec<_>>()
    );
    assert_eq!(s[3].question, "Q3? Please answer yes or no.");
    assert_eq!(s[3].answers, vec!["No".to_string()]);
    assert_eq!(s[3].answer().as_deref(), Some("No"));
    assert_eq!(s[3].category, "count");
    assert_eq!(s[3].image, ImageSource::Bytes(imgs[3].clone()));
    let rgb = s[3].image.to_rgb8().unwrap();
    assert_eq!(rgb.dimensions(), (4, 3));
    assert_eq!(rgb.get_pixel(0, 0).0, [3, 0, 0]);
    // Iterating twice gives the same samples.
    let again: Vec<Sample> = b.iter().collect::<anyhow::Result<_>>().unwrap();
    assert_eq!(again, s);
}

#[test]
fn textvqa_int_ids_and_answer_lists() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("textvqa.parquet");
    let img = png(2, 2, [9, 9, 9]);
    write_batch(
        &f,
        vec![
            ("image_id", strings(&["a1", "b2"])),
            (
                "question_id",
                Arc::new(Int32Array::from(vec![34602, 34603])) as ArrayRef,
            ),
            ("question", strings(&["what is the brand?", "what number?"])),
            ("question_tokens", list_utf8(&[&["what", "is"], &["what"]])),
            (
                "image",
                image_struct(
                    vec![Some(img.clone()), Some(img.clone())],
                    vec![None, None],
                    None,
                ),
            ),
            ("image_width", Arc::new(Int32Array::from(vec![2, 2]))),
            (
                "answers",
                list_utf8(&[&["nokia", "nokia", "toshiba"], &["7"]]),
            ),
            ("ocr_tokens", list_utf8(&[&["NOKIA"], &[]])),
        ],
        10,
    );
    let s = bench::read_all(&f, &OpenOptions::default()).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].id, "34602");
    assert_eq!(s[0].key, "34602");
    assert_eq!(s[0].benchmark, BenchmarkKind::TextVqa);
    assert_eq!(s[0].ocr_tokens, vec!["NOKIA"]);
    assert!(s[1].ocr_tokens.is_empty());
    assert_eq!(s[0].answers, vec!["nokia", "nokia", "toshiba"]);
    assert_eq!(s[0].answer().as_deref(), Some("nokia"));
    assert_eq!(s[0].category, "default");
    assert_eq!(s[1].id, "34603");
    assert_eq!(s[1].answers, vec!["7"]);
    assert_eq!(s[1].image, ImageSource::Bytes(img));
}

#[test]
fn pope_repo_layout_shards_limit_and_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(dir.path().join("README.md"), "# POPE").unwrap();
    for (shard, start) in [(0, 0), (1, 7)] {
        let n = 7;
        let f = data.join(format!("test-0000{shard}-of-00002.parquet"));
        let ids: Vec<String> = (start..start + n).map(|i| format!("{i}")).collect();
        let cat: Vec<&str> = (start..start + n)
            .map(|i| if i < 7 { "adversarial" } else { "random" })
            .collect();
        let imgs: Vec<Option<Vec<u8>>> = (start..start + n)
            .map(|i| Some(png(1, 1, [i as u8; 3])))
            .collect();
        write_batch(
            &f,
            vec![
                (
                    "id",
                    Arc::new(StringArray::from(
                        ids.iter().map(|i| format!("x{i}")).collect::<Vec<_>>(),
                    )) as ArrayRef,
                ),
                ("question_id", Arc::new(StringArray::from(ids))),
                (
                    "question",
                    strings(&vec!["Is there a dog in the image?"; n]),
                ),
                ("answer", strings(&vec!["yes"; n])),
                (
                    "image_source",
                    strings(&vec!["COCO_val2014_000000001.jpg"; n]),
                ),
                ("image", image_struct(imgs, vec![Some("x.jpg"); n], None)),
                ("category", Arc::new(StringArray::from(cat))),
            ],
            3,
        );
    }
    let opts = OpenOptions {
        batch_size: Some(2),
        ..Default::default()
    };
    let b = bench::open(dir.path(), &opts).unwrap();
    assert_eq!(b.files().len(), 2);
    assert_eq!(b.len(), 14);
    let all = b.read_all().unwrap();
    let ids: Vec<String> = all.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, (0..14).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(b.kind(), BenchmarkKind::Pope);
    assert_eq!(all[6].category, "adversarial");
    assert_eq!(all[6].key, "adversarial/6");
    assert_eq!(all[7].key, "random/7");
    assert_eq!(all[7].category, "random");
    // question_id wins over id; bytes win over path.
    assert!(matches!(all[0].image, ImageSource::Bytes(_)));

    // Limit across the shard boundary, with small batches.
    let opts = OpenOptions {
        limit: Some(9),
        batch_size: Some(2),
        ..Default::default()
    };
    let b = bench::open(dir.path(), &opts).unwrap();
    assert_eq!(b.len(), 9);
    let lim = b.read_all().unwrap();
    assert_eq!(lim.len(), 9);
    assert_eq!(lim[..], all[..9]);
    assert_eq!(
        bench::read_all(dir.path(), &OpenOptions::with_limit(0))
            .unwrap()
            .len(),
        0
    );
    // A single shard opened directly; a directory of parquet files without `data/`.
    assert_eq!(
        bench::read_all(
            data.join("test-00001-of-00002.parquet"),
            &OpenOptions::default()
        )
        .unwrap()[0]
            .id,
        "7"
    );
    assert_eq!(
        bench::read_all(&data, &OpenOptions::default())
            .unwrap()
            .len(),
        14
    );
}

#[test]
fn large_types_and_plain_binary_image() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("large.parquet");
    let img = png(1, 1, [1, 2, 3]);
    let answers = LargeListArray::new(
        Arc::new(Field::new("item", DataType::LargeUtf8, true)),
        OffsetBuffer::from_lengths([2]),
        Arc::new(LargeStringArray::from(vec!["a", "b"])),
        None,
    );
    write_batch(
        &f,
        vec![
            (
                "question_id",
                Arc::new(arrow::array::Int64Array::from(vec![5i64])) as ArrayRef,
            ),
            ("question", Arc::new(LargeStringArray::from(vec!["q"]))),
            ("answer", Arc::new(LargeStringArray::from(vec!["z"]))),
            ("answers", Arc::new(answers)),
            (
                "image",
                Arc::new(LargeBinaryArray::from(vec![img.as_slice()])),
            ),
        ],
        10,
    );
    let s = bench::read_all(&f, &OpenOptions::default()).unwrap();
    assert_eq!(s[0].id, "5");
    assert_eq!(s[0].answers, vec!["z", "a", "b"]);
    assert_eq!(s[0].image, ImageSource::Bytes(img));
}

#[test]
fn image_path_fallback_and_sniffing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("imgs")).unwrap();
    std::fs::write(dir.path().join("imgs/a.png"), png(1, 1, [0, 0, 0])).unwrap();
    let f = dir.path().join("noext");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["q0"])),
            ("question", strings(&["q"])),
            ("answer", strings(&["a"])),
            (
                "image",
                image_struct(vec![None], vec![Some("imgs/a.png")], None),
            ),
        ],
        10,
    );
    let s = bench::read_all(&f, &OpenOptions::default()).unwrap();
    assert_eq!(s[0].image, ImageSource::Path(dir.path().join("imgs/a.png")));
    assert_eq!(s[0].image.to_rgb8().unwrap().dimensions(), (1, 1));
}

#[test]
fn parquet_errors_name_file_and_column_or_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let missing = d.join("missing.parquet");
    let e = open_err(&missing);
    assert!(
        e.contains("missing.parquet") && e.contains("cannot open"),
        "{e}"
    );

    let junk = d.join("junk.parquet");
    std::fs::write(&junk, b"this is not parquet at all").unwrap();
    let e = open_err(&junk);
    assert!(
        e.contains("junk.parquet") && e.contains("not a readable parquet file"),
        "{e}"
    );

    let img = || image_struct(vec![Some(png(1, 1, [0; 3]))], vec![None], None);

    let f = d.join("noq.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["1"])),
            ("answer", strings(&["a"])),
            ("image", img()),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("noq.parquet") && e.contains("missing column `question`"),
        "{e}"
    );

    let f = d.join("noid.parquet");
    write_batch(
        &f,
        vec![
            ("question", strings(&["q"])),
            ("answer", strings(&["a"])),
            ("image", img()),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("noid.parquet") && e.contains("missing column `question_id`"),
        "{e}"
    );

    let f = d.join("noans.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["1"])),
            ("question", strings(&["q"])),
            ("image", img()),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("noans.parquet") && e.contains("missing column `answer` (or `answers`)"),
        "{e}"
    );

    let f = d.join("noimg.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["1"])),
            ("question", strings(&["q"])),
            ("answer", strings(&["a"])),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("noimg.parquet") && e.contains("missing column `image`"),
        "{e}"
    );

    let f = d.join("qint.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["1"])),
            ("question", Arc::new(Int32Array::from(vec![3])) as ArrayRef),
            ("answer", strings(&["a"])),
            ("image", img()),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("qint.parquet") && e.contains("column `question`: expected string, found Int32"),
        "{e}"
    );

    let f = d.join("imgstr.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["1"])),
            ("question", strings(&["q"])),
            ("answer", strings(&["a"])),
            ("image", strings(&["x.png"])),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("imgstr.parquet")
            && e.contains("column `image`: expected struct<bytes: binary, path: string>"),
        "{e}"
    );

    let f = d.join("ansint.parquet");
    let ints = ListArray::new(
        Arc::new(Field::new("item", DataType::Int32, true)),
        OffsetBuffer::from_lengths([1]),
        Arc::new(Int32Array::from(vec![1])),
        None,
    );
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["1"])),
            ("question", strings(&["q"])),
            ("answers", Arc::new(ints) as ArrayRef),
            ("image", img()),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("ansint.parquet") && e.contains("column `answers`: expected list<string>"),
        "{e}"
    );

    // Null image struct in row 1.
    let f = d.join("nullimg.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["a", "b", "c"])),
            ("question", strings(&["q", "q", "q"])),
            ("answer", strings(&["x", "y", "z"])),
            (
                "image",
                image_struct(
                    vec![
                        Some(png(1, 1, [0; 3])),
                        Some(png(1, 1, [0; 3])),
                        Some(png(1, 1, [0; 3])),
                    ],
                    vec![None, None, None],
                    Some(vec![true, false, true]),
                ),
            ),
        ],
        10,
    );
    let b = bench::open(&f, &OpenOptions::default()).unwrap();
    let mut it = b.iter();
    let e = err_of(it.next().unwrap());
    assert!(
        e.contains("nullimg.parquet")
            && e.contains("row 1 (question_id b)")
            && e.contains("null image"),
        "{e}"
    );
    assert!(it.next().is_none(), "iteration stops after an error");
    // The limit stops before the bad row.
    assert_eq!(
        bench::read_all(&f, &OpenOptions::with_limit(1))
            .unwrap()
            .len(),
        1
    );

    // Null bytes and a path that does not exist; null bytes and null path.
    let f = d.join("nullbytes.parquet");
    write_batch(
        &f,
        vec![
            ("question_id", strings(&["a", "b"])),
            ("question", strings(&["q", "q"])),
            ("answer", strings(&["x", "y"])),
            (
                "image",
                image_struct(
                    vec![Some(png(1, 1, [0; 3])), None],
                    vec![None, Some("nope.png")],
                    None,
                ),
            ),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("nullbytes.parquet") && e.contains("row 1 (question_id b)"),
        "{e}"
    );
    assert!(
        e.contains("nope.png") && e.contains("does not exist"),
        "{e}"
    );
    let f = d.join("nullboth.parquet");
    write_batch(
        &f,
        vec![
            (
                "question_id",
                Arc::new(Int32Array::from(vec![4])) as ArrayRef,
            ),
            ("question", strings(&["q"])),
            ("answer", strings(&["x"])),
            ("image", image_struct(vec![None], vec![None], None)),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("nullboth.parquet") && e.contains("row 0 (question_id 4): null image"),
        "{e}"
    );

    // Null question_id / question.
    let f = d.join("nullq.parquet");
    write_batch(
        &f,
        vec![
            (
                "question_id",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
            (
                "question",
                Arc::new(StringArray::from(vec![None, Some("q")])) as ArrayRef,
            ),
            ("answer", strings(&["x", "y"])),
            (
                "image",
                image_struct(vec![Some(vec![1]), Some(vec![1])], vec![None, None], None),
            ),
        ],
        10,
    );
    let e = open_err(&f);
    assert!(
        e.contains("nullq.parquet") && e.contains("row 0 (question_id a): column `question`: null"),
        "{e}"
    );

    // Empty directory, unknown file type.
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = open_err(&empty);
    assert!(
        e.contains("empty") && e.contains("no .parquet, .jsonl, .tsv or llava_*.json files"),
        "{e}"
    );
    let txt = d.join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let e = open_err(&txt);
    assert!(
        e.contains("notes.txt") && e.contains("unknown benchmark format"),
        "{e}"
    );
}

fn llava_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("count")).unwrap();
    std::fs::write(images.join("count/0001.png"), png(2, 2, [1, 1, 1])).unwrap();
    std::fs::write(images.join("b.jpg"), png(2, 2, [2, 2, 2])).unwrap();
    let q = dir.path().join("llava_mme.jsonl");
    std::fs::write(
        &q,
        concat!(
            r#"{"question_id": "count/0001.png", "image": "count/0001.png", "text": "Are there two dogs?\nAnswer the question using a single word or phrase.", "category": "count"}"#,
            "\n",
            r#"{"question_id": "count/0001.png", "image": "count/0001.png", "text": "Are there three dogs?\nAnswer the question using a single word or phrase.", "category": "count"}"#,
            "\n\n",
            r#"{"question_id": 17, "image": "b.jpg", "text": "Is there a cat in the image?"}"#,
            "\n"
        ),
    )
    .unwrap();
    (dir, q, images)
}

#[test]
fn llava_jsonl_with_answers_file() {
    let (dir, q, images) = llava_dir();
    let answers = dir.path().join("gt.jsonl");
    std::fs::write(
        &answers,
        concat!(
            r#"{"question_id": 17, "label": "no"}"#,
            "\n",
            r#"{"question_id": "count/0001.png", "answer": "Yes"}"#,
            "\n",
            r#"{"question_id": "count/0001.png", "answer": "No"}"#,
            "\n"
        ),
    )
    .unwrap();
    let opts = OpenOptions {
        image_dir: Some(images.clone()),
        answers: Some(answers),
        ..Default::default()
    };
    let b = bench::open(&q, &opts).unwrap();
    assert_eq!(b.format(), Format::LlavaJsonl);
    assert_eq!(b.len(), 3);
    let s = b.read_all().unwrap();
    assert_eq!(s[0].id, "count/0001.png");
    assert!(s[0].question.starts_with("Are there two dogs?\nAnswer"));
    assert_eq!(s[0].answers, vec!["Yes"]);
    assert_eq!(s[1].answers, vec!["No"]);
    assert_eq!(s[0].category, "count");
    assert_eq!(b.kind(), BenchmarkKind::Mme);
    assert!(s.iter().all(|s| s.question_is_prompt));
    assert_ne!(s[0].key, s[1].key);
    assert_eq!(s[2].id, "17");
    assert_eq!(s[2].answers, vec!["no"]);
    assert_eq!(s[2].category, "default");
    assert_eq!(s[2].image, ImageSource::Path(images.join("b.jpg")));
    assert_eq!(s[2].image.to_rgb8().unwrap().get_pixel(0, 0).0, [2, 2, 2]);

    // Without answers; with a limit; TextVQA-style `data` JSON answers.
    let opts2 = OpenOptions {
        image_dir: Some(images.clone()),
        limit: Some(2),
        ..Default::default()
    };
    let s = bench::read_all(&q, &opts2).unwrap();
    assert_eq!(s.len(), 2);
    assert!(s[0].answers.is_empty());
    let tv = dir.path().join("TextVQA_0.5.1_val.json");
    std::fs::write(
        &tv,
        r#"{"dataset_name": "textvqa", "data": [
            {"question_id": "count/0001.png", "answers": ["two", "2"]},
            {"question_id": "count/0001.png", "answers": [{"answer": "three"}]},
            {"question_id": 17, "answers": ["no"]}]}"#,
    )
    .unwrap();
    let opts3 = OpenOptions {
        image_dir: Some(images),
        answers: Some(tv),
        ..Default::default()
    };
    let s = bench::read_all(&q, &opts3).unwrap();
    assert_eq!(s[0].answers, vec!["two", "2"]);
    assert_eq!(s[1].answers, vec!["three"]);
    // Directory holding one jsonl (images relative to it).
    let d2 = dir.path().join("flat");
    std::fs::create_dir(&d2).unwrap();
    std::fs::write(d2.join("x.png"), png(1, 1, [0; 3])).unwrap();
    std::fs::write(
        d2.join("q.jsonl"),
        r#"{"question_id": 1, "image": "x.png", "text": "hi", "answer": "yo"}"#,
    )
    .unwrap();
    let b = bench::open(&d2, &OpenOptions::default()).unwrap();
    assert_eq!(b.kind(), BenchmarkKind::Generic);
    let s = b.read_all().unwrap();
    assert_eq!(s[0].answers, vec!["yo"]);
    assert_eq!(s[0].key, "1");
    assert_eq!(s[0].image, ImageSource::Path(d2.join("x.png")));
}

#[test]
fn llava_jsonl_errors() {
    let (dir, q, images) = llava_dir();
    let with = |answers: Option<PathBuf>| OpenOptions {
        image_dir: Some(images.clone()),
        answers,
        ..Default::default()
    };

    // Answers file lacking the second answer of the MME pair.
    let gt = dir.path().join("gt.jsonl");
    std::fs::write(&gt, "{\"question_id\": \"count/0001.png\", \"answer\": \"Yes\"}\n{\"question_id\": 17, \"label\": \"no\"}\n").unwrap();
    let e = err_of(bench::read_all(&q, &with(Some(gt.clone()))));
    assert!(
        e.contains("gt.jsonl")
            && e.contains("no answer for question_id count/0001.png")
            && e.contains("llava_mme.jsonl:2"),
        "{e}"
    );

    std::fs::write(&gt, "{\"question_id\": 1}\n").unwrap();
    let e = err_of(bench::read_all(&q, &with(Some(gt.clone()))));
    assert!(
        e.contains("gt.jsonl") && e.contains("no `answer`, `answers` or `label`"),
        "{e}"
    );

    let e = err_of(bench::read_all(
        &q,
        &with(Some(dir.path().join("absent.jsonl"))),
    ));
    assert!(e.contains("absent.jsonl"), "{e}");

    let bad = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        err_of(bench::read_all(&p, &with(None)))
    };
    let e = bad(
        "badjson.jsonl",
        "{\"question_id\": 1, \"image\": \"b.jpg\", \"text\": \"q\"}\n{oops\n",
    );
    assert!(e.contains("badjson.jsonl:2: invalid JSON"), "{e}");
    let e = bad("noimage.jsonl", "{\"question_id\": 1, \"text\": \"q\"}\n");
    assert!(
        e.contains("noimage.jsonl:1 (question_id 1): null or missing `image`"),
        "{e}"
    );
    let e = bad(
        "nullimage.jsonl",
        "{\"question_id\": 1, \"image\": null, \"text\": \"q\"}\n",
    );
    assert!(
        e.contains("nullimage.jsonl:1 (question_id 1): null or missing `image`"),
        "{e}"
    );
    let e = bad(
        "nofile.jsonl",
        "{\"question_id\": 1, \"image\": \"zzz.png\", \"text\": \"q\"}\n",
    );
    assert!(
        e.contains("nofile.jsonl:1 (question_id 1): image") && e.contains("zzz.png not found"),
        "{e}"
    );
    let e = bad(
        "notext.jsonl",
        "{\"question_id\": 1, \"image\": \"b.jpg\"}\n",
    );
    assert!(
        e.contains("notext.jsonl:1 (question_id 1): missing `text`"),
        "{e}"
    );
    let e = bad("noid.jsonl", "{\"image\": \"b.jpg\", \"text\": \"q\"}\n");
    assert!(e.contains("noid.jsonl:1: missing `question_id`"), "{e}");
    let e = bad(
        "badid.jsonl",
        "{\"question_id\": [1], \"image\": \"b.jpg\", \"text\": \"q\"}\n",
    );
    assert!(
        e.contains("badid.jsonl:1: `question_id` must be a string or integer"),
        "{e}"
    );

    let opts = OpenOptions {
        image_dir: Some(dir.path().join("no_such_dir")),
        ..Default::default()
    };
    let e = err_of(bench::read_all(&q, &opts));
    assert!(
        e.contains("no_such_dir") && e.contains("image folder not found"),
        "{e}"
    );
}

// ------------------------------------------------------------------------------------------------
// Fixtures: fixtures/bench/ (fixtures/make_bench_fixtures.py), the layouts users download.

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/bench")
        .join(rel)
}

fn read_fixture(rel: &str, opts: &OpenOptions) -> (bench::Benchmark, Vec<Sample>) {
    let b = bench::open(fixture(rel), opts).unwrap_or_else(|e| panic!("{rel}: {e:#}"));
    let s = b.read_all().unwrap_or_else(|e| panic!("{rel}: {e:#}"));
    assert_eq!(s.len(), b.len(), "{rel}");
    assert_eq!(
        b.keys(),
        s.iter().map(|s| s.key.clone()).collect::<Vec<_>>(),
        "{rel}"
    );
    for x in s.iter().filter(|x| x.has_image()) {
        x.image
            .to_rgb8()
            .unwrap_or_else(|e| panic!("{rel} {}: {e:#}", x.key));
    }
    (b, s)
}

fn with(f: impl FnOnce(&mut OpenOptions)) -> OpenOptions {
    let mut o = OpenOptions::default();
    f(&mut o);
    o
}

fn llava(style: &Sample) -> String {
    question_prompt(style, PromptStyle::Llava)
}

fn lmms(style: &Sample) -> String {
    question_prompt(style, PromptStyle::LmmsEval)
}

fn short(q: &str) -> String {
    format!("{q}{SHORT_ANSWER}")
}

fn strings_of(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const CODE_HELLO: &str = "The image shows a python code. Is the output of the code 'Hello'?";

#[test]
fn fixture_hf_mme_shards_shared_ids_and_prompts() {
    let (b, s) = read_fixture("hf/mme", &OpenOptions::default());
    assert_eq!(b.format(), Format::Parquet);
    assert_eq!(b.kind(), BenchmarkKind::Mme);
    assert_eq!(b.files().len(), 2, "the two shards under data/");
    assert_eq!(s.len(), 7);
    assert_eq!(s[0].id, "code_reasoning/0020.png");
    assert_eq!(
        s[1].id, s[0].id,
        "the two questions of an image share the id"
    );
    assert_eq!(
        s[0].key,
        format!("code_reasoning/0020.png#{}", question_hash(CODE_HELLO))
    );
    assert_eq!(
        s[0].key, "code_reasoning/0020.png#8caf5f0e",
        "the documented example"
    );
    assert_ne!(s[0].key, s[1].key);
    assert_eq!(s[0].answers, strings_of(&["Yes"]));
    assert_eq!(s[1].answers, strings_of(&["No"]));
    let cats: Vec<&str> = s.iter().map(|s| s.category.as_str()).collect();
    assert_eq!(
        cats,
        [
            "code_reasoning",
            "code_reasoning",
            "artwork",
            "artwork",
            "existence",
            "existence",
            "OCR"
        ]
    );
    assert!(s
        .iter()
        .all(|s| !s.question_is_prompt && s.choices.is_empty()));
    assert_eq!(llava(&s[0]), short(CODE_HELLO));
    assert_eq!(lmms(&s[0]), short(CODE_HELLO));
    // "?  Please answer yes or no.": LLaVA drops both spaces, lmms-eval's replace keeps one.
    assert_eq!(llava(&s[4]), short("Is there a train in this image?"));
    assert_eq!(lmms(&s[4]), short("Is there a train in this image? "));
    // The same keys in the shard folder itself, and with a limit across the shard boundary.
    let (_, d) = read_fixture("hf/mme/data", &OpenOptions::with_limit(5));
    assert_eq!(d[..], s[..5]);
    // As a generic benchmark the repeated ids are duplicate keys.
    let e = err_of(bench::open(
        fixture("hf/mme"),
        &with(|o| o.benchmark = Some(BenchmarkKind::Generic)),
    ));
    assert!(
        e.contains("test-00000-of-00002.parquet: row 1 (question_id code_reasoning/0020.png)")
            && e.contains("column `question_id`: duplicate key `code_reasoning/0020.png`")
            && e.contains("first at row 0 of"),
        "{e}"
    );
}

#[test]
fn fixture_llava_mme_release_answers_and_keys_match_hf() {
    let rel = fixture("llava/mme/MME_Benchmark_release_version");
    let opts = with(|o| {
        o.image_dir = Some(rel.clone());
        o.answers = Some(rel.clone());
    });
    let (b, s) = read_fixture("llava/mme/llava_mme.jsonl", &opts);
    assert_eq!(b.format(), Format::LlavaJsonl);
    assert_eq!(b.kind(), BenchmarkKind::Mme);
    assert_eq!(s.len(), 4);
    assert!(s.iter().all(|s| s.question_is_prompt));
    let answers: Vec<&str> = s.iter().map(|s| s.answers[0].as_str()).collect();
    assert_eq!(answers, ["Yes", "No", "Yes", "No"]);
    // artwork/10002.jpg lives under artwork/images/ in the release.
    assert_eq!(
        s[2].image,
        ImageSource::Path(rel.join("artwork/images/10002.jpg"))
    );
    assert_eq!(s[0].question, short(CODE_HELLO));
    assert_eq!(
        llava(&s[0]),
        s[0].question,
        "the instruction is not added twice"
    );
    assert_eq!(lmms(&s[0]), s[0].question);
    // The same questions have the same keys and prompts in the HF parquet.
    let (_, hf) = read_fixture("hf/mme", &OpenOptions::default());
    for (l, h) in s.iter().zip(&hf) {
        assert_eq!(l.key, h.key);
        assert_eq!(l.id, h.id);
        assert_eq!(llava(l), llava(h));
        assert_eq!(l.answers, h.answers);
    }
}

const POPE_KEYS: [&str; 6] = [
    "adversarial/1",
    "adversarial/2",
    "popular/1",
    "popular/2",
    "random/1",
    "random/2",
];

#[test]
fn fixture_hf_pope_default_config_full_config_and_split() {
    // The checkout holds data/ (default config) and Full/ (one split per category): data/ is read.
    let (b, s) = read_fixture("hf/pope", &OpenOptions::default());
    assert_eq!(b.kind(), BenchmarkKind::Pope);
    assert_eq!(b.files().len(), 1);
    assert!(b.files()[0].ends_with("data/test-00000-of-00001.parquet"));
    let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, POPE_KEYS);
    assert_eq!(s[0].id, "1", "question_id, not id");
    assert_eq!(s[0].answers, strings_of(&["yes"]));
    assert_eq!(s[1].answers, strings_of(&["no"]));
    assert_eq!(s[0].category, "adversarial");
    assert_eq!(llava(&s[0]), short("Is there a dining table in the image?"));
    assert_eq!(lmms(&s[0]), llava(&s[0]));
    // Full/: the three category splits read whole, same samples.
    let (_, full) = read_fixture("hf/pope/Full", &OpenOptions::default());
    assert_eq!(full, s);
    let (_, pop) = read_fixture("hf/pope/Full", &with(|o| o.split = Some("popular".into())));
    assert_eq!(pop[..], s[2..4]);
    let e = err_of(bench::open(
        fixture("hf/pope/Full"),
        &with(|o| o.split = Some("val".into())),
    ));
    assert!(
        e.contains("no parquet shards of split `val` (splits: adversarial, popular, random)"),
        "{e}"
    );
}

#[test]
fn fixture_llava_pope_label_files_in_order_per_category() {
    let base = fixture("llava/pope");
    let opts = with(|o| {
        o.image_dir = Some(base.join("val2014"));
        o.answers = Some(base.join("coco"));
    });
    let (b, s) = read_fixture("llava/pope/llava_pope_test.jsonl", &opts);
    assert_eq!(b.kind(), BenchmarkKind::Pope);
    let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "adversarial/1",
            "adversarial/2",
            "popular/3",
            "popular/4",
            "random/5",
            "random/6"
        ]
    );
    let answers: Vec<&str> = s.iter().map(|s| s.answers[0].as_str()).collect();
    assert_eq!(answers, ["yes", "no", "yes", "no", "yes", "no"]);
    let (_, hf) = read_fixture("hf/pope", &OpenOptions::default());
    for (l, h) in s.iter().zip(&hf) {
        assert_eq!(llava(l), llava(h));
        assert_eq!(lmms(l), lmms(h));
    }
    // One label file covers only its category.
    let e = err_of(bench::read_all(
        fixture("llava/pope/llava_pope_test.jsonl"),
        &with(|o| {
            o.image_dir = Some(base.join("val2014"));
            o.answers = Some(base.join("coco/coco_pope_random.json"));
        }),
    ));
    assert!(
        e.contains("llava_pope_test.jsonl:1")
            && e.contains("no POPE label file for category `adversarial`"),
        "{e}"
    );
    // A label file read as the question file: labels from its lines, the instruction added once.
    let (b, r) = read_fixture(
        "llava/pope/coco/coco_pope_random.json",
        &with(|o| o.image_dir = Some(base.join("val2014"))),
    );
    assert_eq!(b.format(), Format::LlavaJsonl);
    assert_eq!(b.kind(), BenchmarkKind::Pope);
    assert_eq!(r[0].key, "random/1");
    assert_eq!(r[0].answers, strings_of(&["yes"]));
    assert_eq!(llava(&r[0]), short("Is there a snowboard in the image?"));
}

#[test]
fn fixture_hf_textvqa_validation_split_ocr_and_prompts() {
    // data/ holds train and validation shards: validation is TextVQA's evaluation split.
    let (b, s) = read_fixture("hf/textvqa", &OpenOptions::default());
    assert_eq!(b.kind(), BenchmarkKind::TextVqa);
    assert_eq!(s.len(), 3);
    let ids: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(ids, ["34602", "34603", "34604"]);
    assert_eq!(s[0].id, "34602");
    assert_eq!(s[0].answers.len(), 10);
    assert_eq!(s[0].answer().as_deref(), Some("dakota"));
    assert_eq!(
        s[0].ocr_tokens,
        strings_of(&["DAKOTA", "DIGITAL", "Single-Use", "Camera"])
    );
    assert_eq!(
        llava(&s[0]),
        short("What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera")
    );
    // No OCR tokens: the line stays, empty, as in LLaVA's file.
    assert_eq!(
        llava(&s[2]),
        short("What number is on the player's jersey?\nReference OCR token: ")
    );
    assert_eq!(lmms(&s[0]), short("What is the brand of this camera?"));
    let (_, train) = read_fixture("hf/textvqa", &with(|o| o.split = Some("train".into())));
    assert_eq!(train.len(), 1);
    assert_eq!(train[0].key, "1");
}

#[test]
fn fixture_llava_textvqa_image_ids_annotations_and_prompts() {
    let base = fixture("llava/textvqa");
    let opts = with(|o| {
        o.image_dir = Some(base.join("train_images"));
        o.answers = Some(base.join("TextVQA_0.5.1_val.json"));
    });
    let (b, s) = read_fixture("llava/textvqa/llava_textvqa_val_v051_ocr.jsonl", &opts);
    assert_eq!(b.kind(), BenchmarkKind::TextVqa);
    // question_id is the image id, shared by the image's two questions.
    assert_eq!(s[0].id, "003a8ae2ef43b901");
    assert_eq!(s[1].id, s[0].id);
    assert_eq!(
        s[0].key,
        format!(
            "003a8ae2ef43b901#{}",
            question_hash("what is the brand of this camera?")
        )
    );
    assert_ne!(s[0].key, s[1].key);
    assert_eq!(s[0].answer().as_deref(), Some("dakota"));
    assert_eq!(s[1].answer().as_deref(), Some("copenhagen"));
    assert_eq!(
        s[0].ocr_tokens,
        strings_of(&["DAKOTA", "DIGITAL", "Single-Use", "Camera"])
    );
    assert!(s[2].ocr_tokens.is_empty());
    let (_, hf) = read_fixture("hf/textvqa", &OpenOptions::default());
    for (l, h) in s.iter().zip(&hf) {
        assert_eq!(llava(l), l.question, "the jsonl text is the prompt");
        assert_eq!(llava(l), llava(h));
        assert_eq!(lmms(l), lmms(h), "lmms-eval: no OCR line");
        assert_eq!(l.answers, h.answers);
    }
}

const SQA_NORTH: &str = "Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\nC. Arizona\nD. Oklahoma";
const SQA_PINK: &str = "Context: The diagram below is a model of two solutions. Each pink ball represents one particle of solute.\nWhich solution has a higher concentration of pink particles?\nA. neither; their concentrations are the same\nB. Solution B\nC. Solution A";

#[test]
fn fixture_hf_scienceqa_img_test_split_letters_and_prompts() {
    // ScienceQA-FULL and ScienceQA-IMG configs, test and validation splits: IMG / test is read.
    let (b, s) = read_fixture("hf/scienceqa", &OpenOptions::default());
    assert_eq!(b.kind(), BenchmarkKind::ScienceQa);
    assert!(b.files()[0].ends_with("ScienceQA-IMG/test-00000-of-00001.parquet"));
    assert_eq!(s.len(), 3);
    let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["0", "1", "2"], "no id column: the row number");
    let answers: Vec<&str> = s.iter().map(|s| s.answers[0].as_str()).collect();
    assert_eq!(answers, ["A", "B", "B"]);
    assert_eq!(
        s[1].choices,
        strings_of(&[
            "neither; their concentrations are the same",
            "Solution B",
            "Solution A"
        ])
    );
    assert_eq!(s[0].hint, None, "an empty hint is no hint");
    assert!(s[2].hint.as_deref().unwrap().contains("\n\nBrody"));
    assert_eq!(s[0].category, "Geography");
    assert_eq!(llava(&s[0]), format!("{SQA_NORTH}{OPTION_LETTER}"));
    assert_eq!(llava(&s[1]), format!("{SQA_PINK}{OPTION_LETTER}"));
    assert_eq!(lmms(&s[1]), llava(&s[1]));
    // ScienceQA-FULL's text-only rows (null image) are read without an image, as LLaVA's
    // model_vqa_science.py answers them.
    let full = bench::read_all(
        fixture("hf/scienceqa/ScienceQA-FULL"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(full.len(), 2);
    assert!(full[0].has_image());
    assert!(!full[1].has_image());
    assert_eq!(full[1].image, ImageSource::None);
    assert_eq!(full[1].answers, strings_of(&["A"]));
    assert_eq!(
        llava(&full[1]),
        format!("Which word would you find on a dictionary page?\nA. cake\nB. cute{OPTION_LETTER}")
    );
    // Elsewhere a null image stays an error.
}

#[test]
fn fixture_llava_scienceqa_json_array_and_problems() {
    let base = fixture("llava/scienceqa");
    let img = with(|o| o.image_dir = Some(base.join("images/test")));
    let (b, s) = read_fixture("llava/scienceqa/llava_test_CQM-A.json", &img);
    assert_eq!(b.format(), Format::LlavaScienceQa);
    assert_eq!(b.kind(), BenchmarkKind::ScienceQa);
    let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        ["4", "7", "5", "18499"],
        "the text-only item 7 is read, without an image"
    );
    assert!(!s[1].has_image() && s.iter().filter(|s| s.has_image()).count() == 3);
    assert_eq!(
        llava(&s[1]),
        format!("Which word would you find on a dictionary page?\nA. cake\nB. cute{OPTION_LETTER}")
    );
    let s: Vec<Sample> = s.into_iter().filter(|s| s.has_image()).collect();
    let answers: Vec<&str> = s.iter().map(|s| s.answers[0].as_str()).collect();
    assert_eq!(answers, ["A", "B", "B"]);
    assert_eq!(s[0].question, SQA_NORTH, "<image> removed");
    assert_eq!(
        s[0].choices,
        strings_of(&["West Virginia", "Louisiana", "Arizona", "Oklahoma"])
    );
    assert!(s.iter().all(|s| s.question_is_prompt));
    // model_vqa_science.py --single-pred-prompt appends the letter instruction; it matches the HF prompt.
    let (_, hf) = read_fixture("hf/scienceqa", &OpenOptions::default());
    for (l, h) in s.iter().zip(&hf) {
        assert_eq!(llava(l), llava(h));
        assert_eq!(lmms(l), lmms(h));
        assert_eq!(l.choices, h.choices);
    }
    // problems.json adds the hint.
    let with_problems = with(|o| {
        o.image_dir = Some(base.join("images/test"));
        o.answers = Some(base.join("problems.json"));
    });
    let (_, p) = read_fixture("llava/scienceqa/llava_test_CQM-A.json", &with_problems);
    let p: Vec<Sample> = p.into_iter().filter(|s| s.has_image()).collect();
    assert_eq!(p[0].hint, None);
    assert_eq!(p[1].hint, hf[1].hint);
    assert_eq!(p[1].answers, strings_of(&["B"]));
    // The folder picks llava_test_CQM-A.json (problems.json and pid_splits.json are not question files).
    assert_eq!(
        bench::open(&base, &img).unwrap().format(),
        Format::LlavaScienceQa
    );
}

#[test]
fn fixture_hf_gqa_instructions_joined_with_images() {
    let (b, s) = read_fixture("hf/gqa", &OpenOptions::default());
    assert_eq!(b.kind(), BenchmarkKind::Gqa);
    assert_eq!(b.files().len(), 2, "instructions, then images");
    assert!(b.files()[1].ends_with("testdev_balanced_images/testdev-00000-of-00001.parquet"));
    let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["201307251", "201640614", "20968379", "20968380"]);
    let answers: Vec<&str> = s.iter().map(|s| s.answers[0].as_str()).collect();
    assert_eq!(answers, ["no", "girl", "white", "yes"]);
    assert_eq!(s[0].image, s[1].image, "both questions of image n161313");
    assert_ne!(s[1].image, s[2].image);
    assert_eq!(s[0].image.to_rgb8().unwrap().dimensions(), (6, 5));
    assert_eq!(llava(&s[0]), short("Is it overcast?"));
    assert_eq!(lmms(&s[0]), short("Is it overcast?"));
    // The instructions config alone needs the images config.
    let instr = fixture("hf/gqa/testdev_balanced_instructions");
    let e = err_of(bench::open(&instr, &OpenOptions::default()));
    assert!(
        e.contains("testdev-00000-of-00001.parquet") && e.contains("column `imageId`"),
        "{e}"
    );
    let (_, joined) = read_fixture(
        "hf/gqa/testdev_balanced_instructions",
        &with(|o| o.image_dir = Some(fixture("hf/gqa/testdev_balanced_images"))),
    );
    assert_eq!(joined, s);
    // Or GQA's own image folder of `{imageId}.jpg`.
    let images = fixture("llava/gqa/images");
    let (_, from_jpg) = read_fixture(
        "hf/gqa/testdev_balanced_instructions",
        &with(|o| o.image_dir = Some(images.clone())),
    );
    assert_eq!(
        from_jpg[2].image,
        ImageSource::Path(images.join("n235859.jpg"))
    );
    assert_eq!(from_jpg[2].answers, s[2].answers);
}

#[test]
fn fixture_llava_gqa_keyed_questions_json() {
    let base = fixture("llava/gqa");
    let opts = with(|o| {
        o.image_dir = Some(base.join("images"));
        o.answers = Some(base.join("testdev_balanced_questions.json"));
    });
    let (b, s) = read_fixture("llava/gqa/llava_gqa_testdev_balanced.jsonl", &opts);
    assert_eq!(b.kind(), BenchmarkKind::Gqa);
    let (_, hf) = read_fixture("hf/gqa", &OpenOptions::default());
    for (l, h) in s.iter().zip(&hf) {
        assert_eq!(l.key, h.key);
        assert_eq!(l.answers, h.answers);
        assert_eq!(llava(l), llava(h));
        assert_eq!(lmms(l), lmms(h));
    }
}

const MMB_Q0: &str = "Which of the following captions best describes this image?";
const MMB_HINT: &str = "The picture shows\ttwo objects on a table.\nLook closely.";

#[test]
fn fixture_hf_mmbench_index_dtypes_circular_copies_and_prompts() {
    // hf/mmbench holds the cn and en configs: en is read (string index, `L2-category`).
    let (b, s) = read_fixture("hf/mmbench", &OpenOptions::default());
    assert_eq!(b.kind(), BenchmarkKind::MmBench);
    assert!(b.files()[0].ends_with("en/dev-00000-of-00001.parquet"));
    let index: Vec<i64> = s.iter().map(|s| s.index.unwrap()).collect();
    // Question 1 lacks its third rotation (2000001), as some groups of the real dev file do.
    assert_eq!(index, [0, 1_000_000, 2_000_000, 1, 1_000_001, 3_000_001]);
    let groups: Vec<i64> = s.iter().map(|s| s.circular_group().unwrap()).collect();
    assert_eq!(groups, [0, 0, 0, 1, 1, 1]);
    assert_eq!(s[1].key, "1000000");
    let answers: Vec<&str> = s.iter().map(|s| s.answers[0].as_str()).collect();
    assert_eq!(answers, ["A", "C", "B", "C", "B", "D"]);
    assert_eq!(s[0].choices.len(), 3, "D is null");
    assert_eq!(
        s[4].choices,
        strings_of(&["below", "next to", "inside", "above"])
    );
    assert_eq!(s[0].hint, None);
    assert_eq!(s[3].hint.as_deref(), Some(MMB_HINT));
    assert_eq!(s[0].l2_category.as_deref(), Some("coarse_perception"));
    assert_eq!(s[3].category, "spatial_relationship");
    let opts0 = "A. A group of people playing soccer in a field\nB. A woman walking her dog on a beach\nC. A man riding a bicycle on a mountain trail";
    assert_eq!(llava(&s[0]), format!("{MMB_Q0}\n{opts0}{OPTION_LETTER}"));
    assert_eq!(
        lmms(&s[0]),
        format!("{MMB_Q0} There are several options:\n{opts0}\n{OPTION_LETTER}")
    );
    let q1 = "What is the relation between the two objects?";
    let opts1 = "A. above\nB. below\nC. next to\nD. inside";
    assert_eq!(
        llava(&s[3]),
        format!("{MMB_HINT}\n{q1}\n{opts1}{OPTION_LETTER}")
    );
    assert_eq!(
        lmms(&s[3]),
        format!("{MMB_HINT} {q1} There are several options:\n{opts1}\n{OPTION_LETTER}")
    );
    // MMBench_EN: int64 index and `l2-category`; the same samples.
    let (_, en) = read_fixture("hf/mmbench_en", &OpenOptions::default());
    assert_eq!(en, s);
    // LLaVA's TSV: the same samples again (base64 images, quoted hint with a tab and a newline).
    let (b, tsv) = read_fixture(
        "llava/mmbench/mmbench_dev_20230712.tsv",
        &OpenOptions::default(),
    );
    assert_eq!(b.format(), Format::MmbenchTsv);
    assert_eq!(b.kind(), BenchmarkKind::MmBench);
    assert_eq!(tsv, s);
    assert_eq!(
        bench::open(fixture("llava/mmbench"), &OpenOptions::default())
            .unwrap()
            .format(),
        Format::MmbenchTsv
    );
}

#[test]
fn mmbench_tsv_image_references_and_llava_none_options() {
    let dir = tempfile::tempdir().unwrap();
    let b64 = {
        // Standard base64 of a PNG, written by hand (no encoder in the crate's dependencies).
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = png(2, 2, [5, 6, 7]);
        let mut out = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for k in 0..4 {
                if k <= c.len() {
                    out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let f = dir.path().join("mmb.tsv");
    std::fs::write(
        &f,
        format!(
            "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n\
             0\tWhich?\tnan\tyes\tmaybe\tNone\tno\tA\tc\t{b64}\n\
             1000000\tWhich?\tNULL\tyes\tNA\t\t\tB\tc\t0\n\
             2\tWhich?\tNone\tyes\tNONE\tno\t\tA\tc\t0\n"
        ),
    )
    .unwrap();
    let s = bench::read_all(&f, &OpenOptions::default()).unwrap();
    assert_eq!(
        s[1].image, s[0].image,
        "an all-digit image names the row holding it"
    );
    assert_eq!(s[0].image.to_rgb8().unwrap().get_pixel(0, 0).0, [5, 6, 7]);
    // pandas reads "nan", "NULL", "None", "NA" (and "", "N/A", "null", ...) as missing: no hint,
    // and the options end at the first missing one, in the prompt and in the scorer's choices alike.
    assert!(s.iter().all(|s| s.hint.is_none()));
    assert_eq!(s[0].choices, strings_of(&["yes", "maybe"]));
    assert_eq!(
        llava(&s[0]),
        format!("Which?\nA. yes\nB. maybe{OPTION_LETTER}")
    );
    assert_eq!(
        lmms(&s[0]),
        format!("Which? There are several options:\nA. yes\nB. maybe\n{OPTION_LETTER}")
    );
    assert_eq!(s[1].choices, strings_of(&["yes"]));
    assert_eq!(s[1].answers, strings_of(&["B"]));
    // "NONE" is no pandas null, but LLaVA's is_none (any case) stops there: so do the choices.
    assert_eq!(s[2].choices, strings_of(&["yes"]));
    assert_eq!(llava(&s[2]), format!("Which?\nA. yes{OPTION_LETTER}"));
    // A question left with fewer than two options is refused before any model runs.
    let e = err_of(bench::check_samples(
        &s,
        None,
        horizon_data::bench::PromptStyle::Llava,
    ));
    assert!(
        e.contains("sample 1000000 (position 1): 1 options; a mmbench question needs at least 2"),
        "{e}"
    );
}

#[test]
fn fixture_bad_files_give_one_line_errors_naming_file_row_and_column() {
    let open = |rel: &str| err_of(bench::read_all(fixture(rel), &OpenOptions::default()));
    let e = open("bad/mme_no_answer.parquet");
    assert!(
        e.contains("bad/mme_no_answer.parquet: missing column `answer` (or `answers`)"),
        "{e}"
    );
    let e = open("bad/pope_int_answer.parquet");
    assert!(
        e.contains("bad/pope_int_answer.parquet: column `answer`: expected string, found Int32"),
        "{e}"
    );
    let e = open("bad/sqa_choices_string.parquet");
    assert!(
        e.contains(
            "bad/sqa_choices_string.parquet: column `choices`: expected list<string>, found Utf8"
        ),
        "{e}"
    );
    // Opens, then fails at the bad row.
    let b = bench::open(
        fixture("bad/mme_bad_image.parquet"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(b.len(), 3);
    let e = err_of(b.read_all());
    assert!(
        e.contains("bad/mme_bad_image.parquet: row 2 (question_id count/0003.png): column `image`: cannot decode image"),
        "{e}"
    );
    let e = open("bad/mme_repeated_key.parquet");
    assert!(
        e.contains("bad/mme_repeated_key.parquet: row 2 (question_id count/0001.png): columns `question_id` + `question`: duplicate key `count/0001.png#")
            && e.contains("(first at row 0 of ")
            && e.contains("mme_repeated_key.parquet)"),
        "{e}"
    );
    let e = open("bad/mmbench_bad_index.parquet");
    assert!(
        e.contains("bad/mmbench_bad_index.parquet: row 0 (index q1): column `index`: `q1` is not an integer"),
        "{e}"
    );
    let e = open("bad/llava/llava_pope_repeated.jsonl");
    assert!(
        e.contains("bad/llava/llava_pope_repeated.jsonl:3 (question_id 1): columns `category` + `question_id`: duplicate key `random/1` (first at ")
            && e.contains("llava_pope_repeated.jsonl:1)"),
        "{e}"
    );
    let e = open("bad/llava/llava_gqa_bad_image.jsonl");
    assert!(
        e.contains("bad/llava/llava_gqa_bad_image.jsonl:2 (question_id 2): column `image`: cannot decode image")
            && e.contains("broken.png"),
        "{e}"
    );
    let e = open("bad/mmbench_bad_image.tsv");
    assert!(
        e.contains(
            "bad/mmbench_bad_image.tsv: row 1 (index 1000000): column `image`: cannot decode image"
        ),
        "{e}"
    );
}

#[test]
fn benchmark_kind_and_prompt_style_names() {
    for k in BenchmarkKind::ALL {
        assert_eq!(k.name().parse::<BenchmarkKind>().unwrap(), k);
        assert_eq!(k.to_string(), k.name());
    }
    assert_eq!(
        "lmms-eval".parse::<PromptStyle>().unwrap(),
        PromptStyle::LmmsEval
    );
    assert_eq!("LLaVA".parse::<PromptStyle>().unwrap(), PromptStyle::Llava);
    // Synthetic and generic questions are used as written in both styles.
    let s = Sample::new(
        BenchmarkKind::Synthetic,
        "read_text/000001",
        "What is the text in the image?",
        vec!["K7P".into()],
        "read_text",
        ImageSource::Bytes(Vec::new()),
    );
    assert_eq!(s.key, s.id);
    assert_eq!(llava(&s), "What is the text in the image?");
    assert_eq!(lmms(&s), "What is the text in the image?");
}

/// A VQA file with MME's columns (`question_id`, `question`, `answer`, `category`, `image`).
fn vqa_file(path: &Path, categories: &[&str], answers: &[&str]) {
    let n = categories.len();
    let ids: Vec<String> = (0..n).map(|i| format!("q{i}")).collect();
    write_batch(
        path,
        vec![
            ("question_id", Arc::new(StringArray::from(ids)) as ArrayRef),
            (
                "image",
                image_struct(vec![Some(png(4, 3, [1, 2, 3])); n], vec![None; n], None),
            ),
            ("question", strings(&vec!["What colour is it?"; n])),
            ("answer", strings(answers)),
            ("category", strings(categories)),
        ],
        64,
    );
}

#[test]
fn mme_is_recognised_by_its_subtasks_and_yes_no_answers_not_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let kind = |cats: &[&str], answers: &[&str]| {
        let f = dir.path().join("v.parquet");
        vqa_file(&f, cats, answers);
        bench::open(&f, &OpenOptions::default()).unwrap().kind()
    };
    assert_eq!(
        kind(&["color", "count"], &["Yes", "no."]),
        BenchmarkKind::Mme
    );
    // A generic VQA file: other categories, or answers that are not yes / no.
    assert_eq!(
        kind(&["colour", "shape"], &["Yes", "No"]),
        BenchmarkKind::Generic
    );
    assert_eq!(
        kind(&["color", "count"], &["red", "No"]),
        BenchmarkKind::Generic
    );
    let f = dir.path().join("v.parquet");
    vqa_file(&f, &["color", "count"], &["red", "2"]);
    let s = bench::read_all(&f, &OpenOptions::default()).unwrap();
    // Asked as written (no MME suffix), and no scorer complaint before the model runs.
    assert_eq!(llava(&s[0]), "What colour is it?");
    let plan = bench::check_samples(&s, None, PromptStyle::Llava).unwrap();
    assert_eq!(plan.benchmark, BenchmarkKind::Generic);
    // Scored as MME it is refused before the model runs, naming the sample.
    let e = err_of(bench::check_samples(
        &s,
        Some(horizon_data::score::Benchmark::Mme),
        PromptStyle::Llava,
    ));
    assert!(
        e.contains("sample q0 (position 0): the mme scorer cannot score its reference answer")
            && e.contains("\"red\" is not yes or no"),
        "{e}"
    );
}

#[test]
fn an_mmbench_parquet_without_option_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mmb.parquet");
    write_batch(
        &f,
        vec![
            ("index", strings(&["0"])),
            ("question", strings(&["Which?"])),
            ("hint", strings(&["nan"])),
            ("A", strings(&["cat"])),
            ("answer", strings(&["A"])),
            ("category", strings(&["object"])),
            ("L2-category", strings(&["perception"])),
            (
                "image",
                image_struct(vec![Some(png(2, 2, [1, 1, 1]))], vec![None], None),
            ),
        ],
        64,
    );
    let e = open_err(&f);
    assert!(
        e.contains(
            "mmb.parquet: an MMBench file (columns index, hint, ...) without the option column B"
        ),
        "{e}"
    );
    let tsv = dir.path().join("mmb.tsv");
    std::fs::write(&tsv, "index\tquestion\thint\tanswer\tcategory\timage\n").unwrap();
    let e = open_err(&tsv);
    assert!(
        e.contains("mmb.tsv: missing option columns `A`, `B`"),
        "{e}"
    );
}

#[test]
fn textvqa_llava_prompt_keeps_an_empty_ocr_line() {
    let mut s = Sample::new(
        BenchmarkKind::TextVqa,
        "1",
        "what is written here?",
        vec!["a".into()],
        "default",
        ImageSource::Bytes(png(2, 2, [0, 0, 0])),
    );
    // As on the 115 lines of llava_textvqa_val_v051_ocr.jsonl without OCR tokens.
    assert_eq!(
        llava(&s),
        format!("What is written here?\nReference OCR token: {SHORT_ANSWER}")
    );
    s.ocr_tokens = vec!["STOP".into(), "4".into()];
    assert_eq!(
        llava(&s),
        format!("What is written here?\nReference OCR token: STOP, 4{SHORT_ANSWER}")
    );
    assert_eq!(lmms(&s), format!("What is written here?{SHORT_ANSWER}"));
}
