//! Build facts for `/api/v1/status/buildinfo` (Prometheus's `PrometheusVersion`):
//! revision, branch, build user, build date and the compiler's version, as
//! `TIMBALA_BUILD_*` compile-time variables. A variable already set in the environment
//! wins (a packager sets its own); otherwise they come from git and rustc, and a fact
//! that cannot be found (a source tarball without git) is "unknown" rather than empty,
//! so a client can tell "not recorded" from "field missing".
//!
//! The build date is the commit's date, not the wall clock, so the same commit builds
//! the same binary (and cargo does not rebuild on every run).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for (name, fact) in [
        ("TIMBALA_BUILD_REVISION", git(&["rev-parse", "HEAD"])),
        (
            "TIMBALA_BUILD_BRANCH",
            git(&["rev-parse", "--abbrev-ref", "HEAD"]),
        ),
        ("TIMBALA_BUILD_USER", build_user()),
        (
            "TIMBALA_BUILD_DATE",
            git_in_utc(&[
                "log",
                "-1",
                "--format=%cd",
                "--date=format-local:%Y%m%d-%H:%M:%S",
            ]),
        ),
        ("TIMBALA_BUILD_RUSTC_VERSION", rustc_version()),
    ] {
        println!("cargo:rerun-if-env-changed={name}");
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or(fact)
            .unwrap_or_else(|| "unknown".to_string());
        println!("cargo:rustc-env={name}={value}");
    }
    // Rebuild when HEAD moves (a commit, a checkout), so the revision stays true.
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    run(Command::new("git").args(args))
}

fn git_in_utc(args: &[&str]) -> Option<String> {
    run(Command::new("git").env("TZ", "UTC").args(args))
}

fn rustc_version() -> Option<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    // "rustc 1.95.0 (59807616e 2026-04-14)" -> "rustc1.95.0", like Go's "go1.22.0".
    let out = run(Command::new(rustc).arg("--version"))?;
    out.split_whitespace().nth(1).map(|v| format!("rustc{v}"))
}

fn build_user() -> Option<String> {
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty())?;
    let host = run(&mut Command::new("hostname")).unwrap_or_else(|| "localhost".to_string());
    Some(format!("{user}@{host}"))
}

fn run(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}
