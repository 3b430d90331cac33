//! Benchmark readers: HF-parquet layouts (MME, TextVQA, POPE) and LLaVA question jsonl, with error messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, LargeBinaryArray, LargeListArray, LargeStringArray,
    ListArray, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use horizon_data::bench::{self, Format, ImageSource, OpenOptions, Sample};
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
    assert_eq!(s[3].id, "count/0001.png");
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
    assert_eq!(all[6].category, "adversarial");
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
                    vec![Some(vec![1]), None],
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
        e.contains("nullq.parquet") && e.contains("row 0 (question_id a): null `question`"),
        "{e}"
    );

    // Empty directory, unknown file type.
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = open_err(&empty);
    assert!(
        e.contains("empty") && e.contains("no .parquet or .jsonl files"),
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
    let s = bench::read_all(&d2, &OpenOptions::default()).unwrap();
    assert_eq!(s[0].answers, vec!["yo"]);
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
