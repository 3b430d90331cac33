//! Reading a checkpoint keeps one copy of it in memory: neither loading its tensors nor
//! fingerprinting it leaves the shard file's pages in the process's resident set (`RssFile` of
//! /proc/self/status counts the pages of mapped files; the page cache outside any mapping is not
//! counted). Before, every tensor was copied out of a memory map and every shard hashed through
//! one, so a 7B bf16 checkpoint stayed resident beside the loaded model (BENCHMARKS.md, "Peak
//! memory"). One test in this binary, so no other test moves the counters while it runs.
#![cfg(target_os = "linux")]

use std::path::Path;
use tch::{Device, Kind, Tensor};

use horizon_runner::checkpoint::fingerprint;
use horizon_runner::weights::{CheckpointLayout, KeyRename, Weights};

const AS_STORED: CheckpointLayout = CheckpointLayout {
    name: "as stored",
    renames: &[KeyRename {
        on_disk: "",
        in_model: "",
    }],
};

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the resident-set high-water mark (VmHWM) to the present resident set.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Writes `tensors` as `dir/model.safetensors`.
fn write(dir: &Path, tensors: &[(&str, &Tensor)]) {
    Tensor::write_safetensors(tensors, dir.join("model.safetensors")).unwrap();
}

/// Loads every tensor of `dir` in `kind`, checks each against `expected` converted to `kind`, bit
/// for bit, and fingerprints `dir`. Returns the fingerprint, the growth of the file pages in the
/// resident set (KiB) with every tensor loaded and the weights still open, and the peak growth of the
/// resident set (KiB) while fingerprinting.
fn load_and_fingerprint(
    dir: &Path,
    expected: &[(&str, &Tensor)],
    kind: Kind,
) -> (String, i64, i64) {
    let files_before = status_kib("RssFile:");
    let weights = Weights::open(dir, &[AS_STORED], Device::Cpu, kind).unwrap();
    for (name, t) in expected {
        let got = weights.get(name, &t.size()).unwrap();
        assert_eq!(got.kind(), kind, "{name}");
        assert!(got.equal(&t.to_kind(kind)), "{name} read back differs");
    }
    let files_grown = status_kib("RssFile:") - files_before;
    drop(weights);
    reset_peak();
    let before = status_kib("VmRSS:");
    let fp = fingerprint(dir).unwrap();
    let peak_grown = status_kib("VmHWM:") - before;
    (fp, files_grown, peak_grown)
}

/// The fingerprint's definition for a directory holding only `model.safetensors`: SHA-256 over the
/// name, the size and the one-shot XXH3-128 of every byte of the file.
fn expected_fingerprint(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut hash = Sha256::new();
    hash.update(b"model.safetensors");
    hash.update((bytes.len() as u64).to_le_bytes());
    hash.update(twox_hash::XxHash3_128::oneshot(&bytes).to_le_bytes());
    format!("{:x}", hash.finalize())
}

#[test]
fn loading_and_fingerprinting_leave_no_checkpoint_pages_resident() {
    tch::manual_seed(0);
    // A small checkpoint first, so that the code pages these calls need are already resident.
    let warm = tempfile::tempdir().unwrap();
    let small = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
    write(warm.path(), &[("small", &small)]);
    load_and_fingerprint(warm.path(), &[("small", &small)], Kind::Float);

    // 128 MiB of bf16 in two tensors (each spans many 8 MiB hashing blocks), an odd-size f32 tensor
    // and an empty one.
    let dir = tempfile::tempdir().unwrap();
    let a = Tensor::randn([4096, 8192], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let b = Tensor::randn([8192, 4096], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let c = Tensor::randn([7, 13], (Kind::Float, Device::Cpu));
    let e = Tensor::zeros([0, 5], (Kind::Float, Device::Cpu));
    let tensors = [("a", &a), ("b", &b), ("c", &c), ("e", &e)];
    write(dir.path(), &tensors);
    let file_mib = std::fs::metadata(dir.path().join("model.safetensors"))
        .unwrap()
        .len() as i64
        >> 20;
    assert!(file_mib >= 128);

    // Within 16 MiB (the hashing buffer is 8 MiB): a mapped-and-read checkpoint adds its 128 MiB.
    // The second pass's fingerprint comes from the in-process cache.
    for kind in [Kind::BFloat16, Kind::Float] {
        let (fp, files_grown, peak_grown) = load_and_fingerprint(dir.path(), &tensors, kind);
        assert!(
            files_grown >> 10 < 16,
            "{kind:?}: loading a {file_mib} MiB checkpoint left {} MiB of its pages resident",
            files_grown >> 10
        );
        assert!(
            peak_grown >> 10 < 16,
            "fingerprinting a {file_mib} MiB checkpoint raised the resident set by {} MiB",
            peak_grown >> 10
        );
        assert_eq!(fp, expected_fingerprint(dir.path()));
    }
}
