//! Builds the page's engine: `serval-edge-wasm` for `wasm32-unknown-unknown` (a nested cargo
//! with its own target directory beside this build's, SIMD128 on, the workspace's `wasm`
//! profile), then its JavaScript bindings with wasm-bindgen's library (the same version as the
//! crate, so the two halves always match), and a gzip copy of the module, all into `OUT_DIR`.
//! `cfg(edge_wasm)` tells the crate they are there. Where the target is not installed (`rustup
//! target add wasm32-unknown-unknown`) or `SERVAL_EDGE_WASM=skip`, the server is built without
//! the engine, warns, and the page says why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(edge_wasm)");
    println!("cargo::rerun-if-env-changed=SERVAL_EDGE_WASM");
    // What the module is compiled from (the nested cargo decides what to rebuild).
    for path in [
        "../serval-edge-wasm",
        "../serval-edge/src",
        "../serval-core/src",
        "../serval-wal/src",
        "../serval-client/src",
        "../../Cargo.lock",
        "../../Cargo.toml",
    ] {
        println!("cargo::rerun-if-changed={path}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let why = match build(&out) {
        Ok(()) => {
            println!("cargo::rustc-cfg=edge_wasm");
            String::new()
        }
        Err(why) => {
            println!("cargo::warning=/edge is built without its WebAssembly engine: {why}");
            why
        }
    };
    std::fs::write(out.join("why-no-wasm.txt"), why).expect("OUT_DIR is writable");
}

fn build(out: &Path) -> Result<(), String> {
    if std::env::var("SERVAL_EDGE_WASM").as_deref() == Ok("skip") {
        return Err("SERVAL_EDGE_WASM=skip".into());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        return Err(format!(
            "the {TARGET} target is not installed (rustup target add {TARGET})"
        ));
    }
    // OUT_DIR is <target-dir>/[<triple>/]<profile>/build/<pkg>-<hash>/out: the nested build
    // shares one directory across this build's profiles (debug, clippy, release).
    let target_dir = out
        .ancestors()
        .nth(4)
        .ok_or("OUT_DIR is not inside a target directory")?
        .join("serval-edge-wasm");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args([
            "build",
            "--package",
            "serval-edge-wasm",
            "--lib",
            "--target",
            TARGET,
        ])
        .args(["--profile", "wasm", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // This build's flags and wrappers (clippy's, when it is `cargo clippy`) are for the
        // host; the module gets its own.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+simd128")
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --target {TARGET} -p serval-edge-wasm failed ({status})"
        ));
    }
    let module = target_dir.join(TARGET).join("wasm/serval_edge_wasm.wasm");
    let pkg = out.join("pkg");
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&module)
        .web(true)
        .map_err(|e| e.to_string())?
        .typescript(false)
        .generate(&pkg)
        .map_err(|e| format!("wasm-bindgen: {e:#}"))?;
    let wasm = std::fs::read(pkg.join("serval_edge_wasm_bg.wasm")).map_err(|e| e.to_string())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&wasm).map_err(|e| e.to_string())?;
    let gz = gz.finish().map_err(|e| e.to_string())?;
    std::fs::write(pkg.join("serval_edge_wasm_bg.wasm.gz"), gz).map_err(|e| e.to_string())?;
    Ok(())
}
