//! The scorers against values computed by hand from the official formulas, on the small prediction
//! sets of `tests/fixtures/score/` (JSONL, one `Prediction` a line; each set goes through a Parquet
//! predictions file before it is scored). Each expected value shows its arithmetic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};

use horizon_data::atomic::write_parquet_atomic;
use horizon_data::predictions::{read_predictions, write_predictions, Prediction};
use horizon_data::score::{
    detect, score, score_detected, textvqa::vqa_accuracy, Benchmark, ScoreTable,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/score")
        .join(name)
}

/// The fixture's rows, written to a predictions file and read back.
fn load(name: &str) -> Vec<Prediction> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let rows: Vec<Prediction> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pred.parquet");
    write_predictions(&path, &rows, &[]).unwrap();
    let back = read_predictions(&path).unwrap();
    assert_eq!(
        back, rows,
        "{name}: the Parquet round trip keeps every field"
    );
    back
}

#[track_caller]
fn expect(table: &ScoreTable, metric: &str, convention: &str, value: f64, n: usize) {
    let row = table
        .get(metric, convention)
        .unwrap_or_else(|| panic!("no row {metric} / {convention} in\n{}", table.to_markdown()));
    assert!(
        (row.value - value).abs() < 1e-9,
        "{metric} / {convention}: {} != {value}",
        row.value
    );
    assert_eq!(row.n, n, "{metric} / {convention}: n");
}

#[test]
fn mme_official_and_lmms_eval_parsing_acc_and_acc_plus() {
    let rows = load("mme.jsonl");
    assert_eq!(detect(&rows).unwrap(), Benchmark::Mme);
    let t = score(Benchmark::Mme, &rows).unwrap();
    // existence, per question (official | lmms-eval):
    //   e1 "Yes"/Yes ✓|✓, "No"/No ✓|✓
    //   e2 "Yes, it is"/Yes ✓|✓ ("yes," holds yes), "yesterday"/No ✗|✗ ("yest" holds yes)
    //   e3 "Y"/Yes ✗|✓ (official: "y" is other), "N."/No ✗|✓ (lmms-eval drops '.', "n" is no)
    //   e4 "I think yes"/Yes ✗|✗ ("i th" is other), "Not at all"/No ✓|✓ ("not " holds no)
    // official: acc = 100 * 4/8 = 50, acc+ = 100 * 1/4 (e1) = 25, score = 75
    expect(&t, "acc/existence", "official", 50.0, 8);
    expect(&t, "acc+/existence", "official", 25.0, 4);
    expect(&t, "score/existence", "official", 75.0, 8);
    // lmms-eval: acc = 100 * 6/8 = 75, acc+ = 100 * 2/4 (e1, e3) = 50, score = 125
    expect(&t, "acc/existence", "lmms-eval 0.7.3", 75.0, 8);
    expect(&t, "acc+/existence", "lmms-eval 0.7.3", 50.0, 4);
    expect(&t, "score/existence", "lmms-eval 0.7.3", 125.0, 8);
    // code_reasoning (both): c1 "yes"/Yes ✓, "no"/No ✓; c2 "no"/Yes ✗, "know"/No ✓ ("know" holds
    // no): acc = 100 * 3/4 = 75, acc+ = 100 * 1/2 = 50, score = 125
    for conv in ["official", "lmms-eval 0.7.3"] {
        expect(&t, "acc/code_reasoning", conv, 75.0, 4);
        expect(&t, "acc+/code_reasoning", conv, 50.0, 2);
        expect(&t, "score/code_reasoning", conv, 125.0, 4);
        expect(&t, "cognition", conv, 125.0, 4);
    }
    // Totals: perception = existence's score, cognition = code_reasoning's, and their sum.
    expect(&t, "perception", "official", 75.0, 8);
    expect(&t, "perception+cognition", "official", 75.0 + 125.0, 12);
    expect(&t, "perception", "lmms-eval 0.7.3", 125.0, 8);
    expect(
        &t,
        "perception+cognition",
        "lmms-eval 0.7.3",
        125.0 + 125.0,
        12,
    );
    let notes = t.notes.join("\n");
    assert!(
        notes.contains("perception sums 1 of 10 subtasks"),
        "{notes}"
    );
    assert!(notes.contains("cognition sums 1 of 4 subtasks"), "{notes}");
}

#[test]
fn mme_acc_plus_groups_by_question_id_not_by_order() {
    // The two questions of image x are not adjacent; acc+ still pairs them by question_id.
    let row = |key: &str, qid: &str, gt: &str, pred: &str| Prediction {
        sample_key: key.into(),
        question_id: qid.into(),
        benchmark: "mme".into(),
        category: "color".into(),
        answers: vec![gt.into()],
        prediction: pred.into(),
        ..Prediction::default()
    };
    let rows = vec![
        row("1", "x", "Yes", "Yes"),
        row("2", "y", "Yes", "No"),
        row("3", "x", "No", "No"),
        row("4", "y", "No", "No"),
    ];
    let t = score(Benchmark::Mme, &rows).unwrap();
    // acc = 100 * 3/4 = 75; acc+ = 100 * 1/2 (x only) = 50; score = 125
    expect(&t, "acc/color", "official", 75.0, 4);
    expect(&t, "acc+/color", "official", 50.0, 2);
    expect(&t, "score/color", "official", 125.0, 4);
}

#[test]
fn mme_refuses_a_reference_that_is_not_yes_or_no() {
    let rows = vec![Prediction {
        sample_key: "k9".into(),
        category: "count".into(),
        answers: vec!["maybe".into()],
        ..Prediction::default()
    }];
    let err = score(Benchmark::Mme, &rows).unwrap_err().to_string();
    assert_eq!(
        err,
        "mme: row 0 (sample \"k9\"): column answers: \"maybe\" is not yes or no"
    );
}

#[test]
fn pope_llava_first_sentence_parsing_and_lmms_eval_exact_match() {
    let rows = load("pope.jsonl");
    let t = score(Benchmark::Pope, &rows).unwrap();
    // LLaVA, adversarial:
    //   1 yes "Yes, there is a dog."            -> yes  TP
    //   2 no  "There is not a cat in the image." -> no   TN ("not")
    //   3 no  "Yes. But it is not clear."        -> yes  FP ("not" is after the first '.')
    //   4 yes "No"                               -> no   FN
    //   5 yes "NO"                               -> yes  TP (only "No", "not", "no" count)
    //   6 no  "Nothing, no."                     -> no   TN ("Nothing no": the word "no")
    // TP 2, FP 1, TN 2, FN 1: acc = 4/6, P = 2/3, R = 2/3, F1 = 2/3, yes-ratio = 3/6
    let two_thirds = 200.0 / 3.0;
    expect(&t, "accuracy/adversarial", "llava", two_thirds, 6);
    expect(&t, "precision/adversarial", "llava", two_thirds, 6);
    expect(&t, "recall/adversarial", "llava", two_thirds, 6);
    expect(&t, "f1/adversarial", "llava", two_thirds, 6);
    expect(&t, "yes_ratio/adversarial", "llava", 50.0, 6);
    // LLaVA, random: 7 yes "Yes" TP, 8 yes "yes" TP, 9 no "No" TN, 10 no "Yes" FP
    // TP 2, FP 1, TN 1, FN 0: acc = 3/4, P = 2/3, R = 2/2, F1 = 2 (2/3)(1) / (5/3) = 4/5,
    // yes-ratio = 3/4
    expect(&t, "accuracy/random", "llava", 75.0, 4);
    expect(&t, "precision/random", "llava", two_thirds, 4);
    expect(&t, "recall/random", "llava", 100.0, 4);
    expect(&t, "f1/random", "llava", 80.0, 4);
    expect(&t, "yes_ratio/random", "llava", 75.0, 4);
    // Means over the 2 categories.
    expect(&t, "f1/mean", "llava", (two_thirds + 80.0) / 2.0, 10); // 73.33
    expect(&t, "accuracy/mean", "llava", (two_thirds + 75.0) / 2.0, 10); // 70.83
    expect(&t, "precision/mean", "llava", two_thirds, 10);
    expect(&t, "recall/mean", "llava", (two_thirds + 100.0) / 2.0, 10); // 83.33
    expect(&t, "yes_ratio/mean", "llava", (50.0 + 75.0) / 2.0, 10);
    // lmms-eval, adversarial: lower-cased and stripped, only 4 ("no") and 5 ("no") are exactly
    // yes/no, both FN; none equals its reference: acc 0, TP 0 -> P = 0 (no yes), R = 0/2, F1 = 0
    expect(&t, "accuracy/adversarial", "lmms-eval 0.7.3", 0.0, 6);
    expect(&t, "precision/adversarial", "lmms-eval 0.7.3", 0.0, 6);
    expect(&t, "recall/adversarial", "lmms-eval 0.7.3", 0.0, 6);
    expect(&t, "f1/adversarial", "lmms-eval 0.7.3", 0.0, 6);
    // lmms-eval, random: 7 ✓ TP, 8 ✓ TP, 9 ✓ TN, 10 ✗ FP: acc 3/4, P 2/3, R 2/2, F1 4/5
    expect(&t, "accuracy/random", "lmms-eval 0.7.3", 75.0, 4);
    expect(&t, "f1/random", "lmms-eval 0.7.3", 80.0, 4);
    // lmms-eval pooled over all 10: acc = 3/10; TP 2, FP 1, FN 2 (4, 5): P = 2/3, R = 2/4,
    // F1 = 2 (2/3)(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    expect(&t, "accuracy/all", "lmms-eval 0.7.3", 30.0, 10);
    expect(&t, "precision/all", "lmms-eval 0.7.3", two_thirds, 10);
    expect(&t, "recall/all", "lmms-eval 0.7.3", 50.0, 10);
    expect(&t, "f1/all", "lmms-eval 0.7.3", 400.0 / 7.0, 10);
    assert!(
        t.get("yes_ratio/all", "lmms-eval 0.7.3").is_none(),
        "lmms-eval's GT-based ratio not copied"
    );
}

#[test]
fn textvqa_leave_one_out_with_eval_ai_normalization() {
    let rows = load("textvqa.jsonl");
    // Each question's accuracy, acc = (1/10) Σ_i min(1, #{j ≠ i : gt_j = pred} / 3):
    // 1. "two" -> "2"; answers normalise to 2, 2 ("two"), 2, and seven 3s: 3 match.
    //    The 3 matching annotators see 2 others: 2/3 each; the 7 others see 3: 1 each.
    //    (3 * 2/3 + 7 * 1) / 10 = 9/10
    let q1 = 0.9;
    assert!((vqa_accuracy(&rows[0].prediction, &rows[0].answers) - q1).abs() < 1e-12);
    // 2. "A dog." -> "dog"; "a dog", "a dog", "dog", "the dog" -> 4 x "dog" (articles dropped):
    //    each annotator sees >= 3 matching others: (4 * 1 + 6 * 1) / 10 = 1
    let q2 = 1.0;
    // 3. "Red" -> "red", 1 match: that annotator sees 0 (0), the 9 others 1 (1/3):
    //    9 * (1/3) / 10 = 3/10
    let q3 = 0.3;
    // 4. "dont" -> "don't" (contractions), 10 matches: 1
    let q4 = 1.0;
    // 5. "coca-cola" -> "coca cola" ('-' without spaces around becomes a space), 5 matches:
    //    the 5 see 4 others, the 5 "coke" annotators see 5: 1
    let q5 = 1.0;
    // 6. "12.5." -> "12.5" (a '.' before a digit stays, the final one goes), 2 matches:
    //    the 2 see 1 (1/3), the 8 others see 2 (2/3): (2/3 + 16/3) / 10 = 6/10
    let q6 = 0.6;
    for (row, want) in rows.iter().zip([q1, q2, q3, q4, q5, q6]) {
        let got = vqa_accuracy(&row.prediction, &row.answers);
        assert!(
            (got - want).abs() < 1e-12,
            "{}: {got} != {want}",
            row.sample_key
        );
    }
    let t = score(Benchmark::TextVqa, &rows).unwrap();
    // 100 * (0.9 + 1 + 0.3 + 1 + 1 + 0.6) / 6 = 100 * 4.8 / 6 = 80
    expect(&t, "accuracy", "official", 80.0, 6);
}

#[test]
fn textvqa_answers_differing_by_articles_or_number_words_match() {
    let ten = |a: &str| vec![a.to_string(); 10];
    // "two" vs "2": 10 matches -> 1
    assert_eq!(vqa_accuracy("two", &ten("2")), 1.0);
    assert_eq!(vqa_accuracy("2", &ten("two")), 1.0);
    // "a dog" vs "dog", "the dog" vs "Dog"
    assert_eq!(vqa_accuracy("a dog", &ten("dog")), 1.0);
    assert_eq!(vqa_accuracy("the dog", &ten("Dog")), 1.0);
    // but "dogs" is another answer
    assert_eq!(vqa_accuracy("dogs", &ten("dog")), 0.0);
}

#[test]
fn scienceqa_llava_and_lmms_eval_letters_on_img_and_overall() {
    let rows = load("scienceqa.jsonl");
    let t = score(Benchmark::ScienceQa, &rows).unwrap();
    // row (image) reference prediction       llava                     lmms-eval
    // 1 (img)  B  "B"                ✓                          ✓
    // 2 (img)  B  "The answer is B." ✓ (the regex)              ✗
    // 3 (img)  A  "A. dog"           ✓ ("X. ")                  ✓ ("X." prefix)
    // 4 (img)  C  "c"                ✗ (case)                   ✓ (ignores case)
    // 5 (text) A  "C"                ✗ (C is no option of 2)    ✗
    // 6 (text) B  "B."               ✗ (too short for "X. ")    ✓
    // 7 (text) A  "A"                ✓                          ✓
    // 8 (img)  B  "The answer is B"  ✗ (nothing after B)        ✗
    // llava: IMG 3/5 (1, 2, 3 of 1, 2, 3, 4, 8) = 60; overall 4/8 (1, 2, 3, 7) = 50
    expect(&t, "img_accuracy", "llava", 60.0, 5);
    expect(&t, "accuracy", "llava", 50.0, 8);
    // lmms-eval: IMG 3/5 (1, 3, 4) = 60; overall 5/8 (1, 3, 4, 6, 7) = 62.5
    expect(&t, "img_accuracy", "lmms-eval 0.7.3", 60.0, 5);
    expect(&t, "accuracy", "lmms-eval 0.7.3", 62.5, 8);
}

#[test]
fn gqa_llava_and_lmms_eval_exact_match() {
    let rows = load("gqa.jsonl");
    let t = score(Benchmark::Gqa, &rows).unwrap();
    // reference  prediction  llava (rstrip '.', lower, ==)   lmms-eval (lower, no punctuation, ==)
    // yes        "Yes."      "yes" ✓                          "yes" ✓
    // table      "the table" ✗                                ✗ (articles stay)
    // t-shirt    "T-shirt"   "t-shirt" ✓                      "tshirt" = "tshirt" ✓
    // t-shirt    "tshirt"    ✗                                ✓
    // no         "No!"       "no!" ✗                          "no" ✓
    // llava 2/5 = 40; lmms-eval 4/5 = 80
    expect(&t, "accuracy", "llava", 40.0, 5);
    expect(&t, "accuracy", "lmms-eval 0.7.3", 80.0, 5);
}

#[test]
fn mmbench_single_round_and_circular_over_every_original_row() {
    let rows = load("mmbench.jsonl");
    let t = score(Benchmark::MmBench, &rows).unwrap();
    let c = "heuristic (no GPT)";
    // group 1 (4 options, rows 1, 1000001, 2000001, 3000001: complete):
    //   "A" -> A ✓; "D. cat" -> D ("X." form) ✓; "The answer is C" -> C (one letter word) ✓;
    //   "cat" -> B (option text) ✓                                  => circular ✓
    // group 2 (2 options, rows 2, 1000002: complete): "B" ✓; "B" for A ✗  => circular ✗
    // group 3 (4 options, rows 3, 1000003 only: a rotation short, counted as lmms-eval does):
    //   "C" ✓; "A three is drawn" -> not A (a quantifier in > 3 words), option text "three"
    //   -> B ✓                                                       => circular ✓
    // group 4 (3 options, row 4 only): "I am not sure" -> nothing ✗  => circular ✗
    // single round (index < 1e6: 1, 2, 3, 4): 3/4 = 75
    expect(&t, "accuracy/single-round", c, 75.0, 4);
    // circular over the 4 original rows: groups 1 and 3 right, 2/4 = 50
    expect(&t, "accuracy/circular", c, 50.0, 4);
    // lmms-eval 0.7.3 static: "I am not sure" has no letter by extract_mcq_answer either (no
    // A-C as a word, at the start or end; "I" is not a choice letter), the same numbers
    expect(&t, "accuracy/circular", "lmms-eval 0.7.3 static", 50.0, 4);
    let md = t.to_markdown();
    assert!(md.contains("2 groups lack some rotation"), "{md}");
    assert!(md.contains("NOT reproduced"), "{md}");
}

#[test]
fn mmbench_without_circular_copies_has_no_circular_row() {
    let rows: Vec<_> = load("mmbench.jsonl")
        .into_iter()
        .filter(|r| r.index.is_some_and(|i| i < 1_000_000))
        .collect();
    let t = score(Benchmark::MmBench, &rows).unwrap();
    assert!(t.get("accuracy/circular", "heuristic (no GPT)").is_none());
    // 1 ✓, 2 ✓, 3 ✓, 4 ✗: 3/4
    expect(&t, "accuracy/single-round", "heuristic (no GPT)", 75.0, 4);
}

#[test]
fn other_benchmarks_score_exact_match_not_the_stored_correct_column() {
    // (category, prediction, answer, stored correct): the stored value is ignored
    let row = |cat: &str, pred: &str, answer: &str, correct: bool, i: usize| Prediction {
        sample_key: format!("s{i}"),
        category: cat.into(),
        prediction: pred.into(),
        answers: vec![answer.into()],
        correct,
        ..Prediction::default()
    };
    let rows = vec![
        row("colour", "Red.", "red", false, 0), // right: trimmed, '.' dropped, any case
        row("colour", "zzz", "red", true, 1),   // wrong, whatever `correct` says
        row("count", " 3 ", "3", false, 2),     // right
    ];
    assert_eq!(detect(&rows).unwrap(), Benchmark::Other);
    let t = score_detected(&rows).unwrap();
    expect(&t, "accuracy/all", "exact match", 200.0 / 3.0, 3); // 2/3
    expect(&t, "accuracy/colour", "exact match", 50.0, 2); // 1/2
    expect(&t, "accuracy/count", "exact match", 100.0, 1);
}

#[test]
fn detection_scores_each_benchmark_of_a_mixed_file_and_scorer_names_parse() {
    let mut rows = load("gqa.jsonl");
    rows.extend(load("pope.jsonl"));
    let err = detect(&rows).unwrap_err().to_string();
    assert!(
        err.contains("gqa: 5 rows") && err.contains("pope: 10 rows"),
        "{err}"
    );
    let t = score_detected(&rows).unwrap();
    expect(&t, "accuracy", "llava", 40.0, 5);
    expect(&t, "f1/mean", "llava", (200.0 / 3.0 + 80.0) / 2.0, 10);
    // An override scores every row by one rule: the POPE rows as GQA answers.
    let all_gqa = score(Benchmark::from_name("GQA").unwrap(), &rows).unwrap();
    assert_eq!(all_gqa.get("accuracy", "llava").unwrap().n, 15);
    // An unknown benchmark name names its row.
    rows[3].benchmark = "vqav2".into();
    let err = score_detected(&rows).unwrap_err().to_string();
    assert!(
        err.starts_with("row 3 (sample \"gqa/4\"), column benchmark: unknown benchmark \"vqav2\""),
        "{err}"
    );
    assert!(score_detected(&[]).is_err());
    assert!(score(Benchmark::Gqa, &[]).is_err());
}

#[test]
fn tables_serialize_to_json_and_markdown() {
    let t = score(Benchmark::Gqa, &load("gqa.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
    assert_eq!(v["rows"][0]["benchmark"], "gqa");
    assert_eq!(v["rows"][0]["metric"], "accuracy");
    assert_eq!(v["rows"][0]["convention"], "llava");
    assert_eq!(v["rows"][0]["value"], 40.0);
    assert_eq!(v["rows"][0]["n"], 5);
    let back: ScoreTable = serde_json::from_str(&t.to_json()).unwrap();
    assert_eq!(back, t);
    let md = t.to_markdown();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines[0], "| benchmark | metric | convention | value | n |");
    assert_eq!(lines[2], "| gqa | accuracy | llava | 40.00 | 5 |");
    assert_eq!(lines[3], "| gqa | accuracy | lmms-eval 0.7.3 | 80.00 | 5 |");
    assert!(lines[5].starts_with("- gqa: llava: "), "{md}");
}

// --- Bad prediction files: one-line errors naming the file, the row and the column. ---

fn utf8(n: &str) -> Field {
    Field::new(n, DataType::Utf8, false)
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn lists(n: usize) -> ArrayRef {
    let item = Arc::new(Field::new("item", DataType::Utf8, false));
    Arc::new(ListArray::new(
        item,
        OffsetBuffer::from_lengths(vec![1; n]),
        Arc::new(StringArray::from(vec!["yes"; n])),
        None,
    ))
}

/// A file of two rows with the given columns (name, field, array).
fn write_file(dir: &Path, name: &str, cols: Vec<(Field, ArrayRef)>) -> PathBuf {
    let (fields, arrays): (Vec<_>, Vec<_>) = cols.into_iter().unzip();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let path = dir.join(name);
    write_parquet_atomic(&path, &batch, &[]).unwrap();
    path
}

fn base_columns() -> Vec<(Field, ArrayRef)> {
    let list = |n: &str| {
        Field::new(
            n,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
            false,
        )
    };
    vec![
        (utf8("sample_key"), strings(&["a", "b"])),
        (utf8("question_id"), strings(&["a", "b"])),
        (utf8("benchmark"), strings(&["pope", "pope"])),
        (utf8("category"), strings(&["random", "random"])),
        (utf8("question"), strings(&["q", "q"])),
        (list("answers"), lists(2)),
        (list("choices"), lists(2)),
        (
            Field::new("index", DataType::Int64, true),
            Arc::new(Int64Array::from(vec![None, Some(3)])),
        ),
        (
            Field::new("has_image", DataType::Boolean, false),
            Arc::new(BooleanArray::from(vec![true, true])),
        ),
        (utf8("prediction"), strings(&["yes", "no"])),
        (
            Field::new("correct", DataType::Boolean, false),
            Arc::new(BooleanArray::from(vec![true, false])),
        ),
    ]
}

#[track_caller]
fn assert_one_line_error(path: &Path, want: &str) {
    let err = format!("{:#}", read_predictions(path).unwrap_err());
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.contains(path.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(err.ends_with(want), "{err}\n  does not end with\n{want}");
}

#[test]
fn the_base_columns_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "ok.parquet", base_columns());
    let rows = read_predictions(&path).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].index, Some(3));
    assert_eq!(rows[0].index, None);
}

#[test]
fn a_missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cols = base_columns();
    cols.retain(|(f, _)| f.name() != "prediction");
    let path = write_file(dir.path(), "no_prediction.parquet", cols);
    assert_one_line_error(
        &path,
        "no_prediction.parquet: row 0, column prediction: missing (expected utf8)",
    );
}

#[test]
fn a_column_of_the_wrong_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cols = base_columns();
    for c in cols.iter_mut().filter(|(f, _)| f.name() == "correct") {
        *c = (utf8("correct"), strings(&["true", "false"]));
    }
    let path = write_file(dir.path(), "correct_utf8.parquet", cols);
    assert_one_line_error(
        &path,
        "correct_utf8.parquet: row 0, column correct: type Utf8, expected bool",
    );

    let mut cols = base_columns();
    for c in cols.iter_mut().filter(|(f, _)| f.name() == "answers") {
        *c = (utf8("answers"), strings(&["yes", "no"]));
    }
    let path = write_file(dir.path(), "answers_utf8.parquet", cols);
    assert_one_line_error(
        &path,
        "answers_utf8.parquet: row 0, column answers: type Utf8, expected list<utf8>",
    );

    let mut cols = base_columns();
    for c in cols.iter_mut().filter(|(f, _)| f.name() == "index") {
        *c = (utf8("index"), strings(&["1", "2"]));
    }
    let path = write_file(dir.path(), "index_utf8.parquet", cols);
    assert_one_line_error(
        &path,
        "index_utf8.parquet: row 0, column index: type Utf8, expected int64",
    );
}

#[test]
fn a_null_names_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut cols = base_columns();
    for c in cols.iter_mut().filter(|(f, _)| f.name() == "prediction") {
        *c = (
            Field::new("prediction", DataType::Utf8, true),
            Arc::new(StringArray::from(vec![Some("yes"), None])),
        );
    }
    let path = write_file(dir.path(), "null_prediction.parquet", cols);
    assert_one_line_error(
        &path,
        "null_prediction.parquet: row 1, column prediction: null",
    );
}

#[test]
fn large_strings_and_other_integer_types_read() {
    // As polars writes them: large_utf8 strings, int32 index.
    let dir = tempfile::tempdir().unwrap();
    let mut cols = base_columns();
    for c in cols.iter_mut() {
        if c.0.name() == "question" {
            *c = (
                Field::new("question", DataType::LargeUtf8, false),
                Arc::new(arrow::array::LargeStringArray::from(vec!["q1", "q2"])),
            );
        } else if c.0.name() == "index" {
            *c = (
                Field::new("index", DataType::Int32, true),
                Arc::new(arrow::array::Int32Array::from(vec![Some(1_000_001), None])),
            );
        }
    }
    let path = write_file(dir.path(), "polars.parquet", cols);
    let rows = read_predictions(&path).unwrap();
    assert_eq!(rows[1].question, "q2");
    assert_eq!(rows[0].index, Some(1_000_001));
    assert_eq!(rows[1].index, None);
}
