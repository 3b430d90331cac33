//! Link fix for binaries and tests that call libtorch (`docs/numerics.md`, "Linking libtorch").
//!
//! rustc links with `--as-needed`, so nothing keeps `libtorch.so` (and through it `libtorch_cuda.so`)
//! in DT_NEEDED and no RUNPATH is recorded: the binary would not start without LD_LIBRARY_PATH and
//! would never see CUDA. Naming `-ltorch` under `--no-as-needed` and baking the venv torch/lib
//! directory as rpath fixes both.
fn main() {
    if let Some(p) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={}", p.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
