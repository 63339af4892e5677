//! `epm-agent demo` as a user runs it: it exits 0 on its own after
//! `--duration-s`, and its summary shows presses stored, every one of them
//! delivered, and the same IEL at the backend as in the agent's store, also
//! when the backend refuses some requests (`--flaky`).

use std::process::{Command, Output};

/// Runs the demo with `extra` arguments and fails unless it exits 0.
fn run_demo(extra: &[&str]) -> String {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["demo", "--duration-s", "6"])
        .args(extra)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("cannot start the epm-agent binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo {extra:?} exited with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    stdout
}

/// The first word after `label` on the summary line that starts with it.
fn summary_value<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .rev()
        .filter_map(|line| line.trim_start().strip_prefix(label))
        .find_map(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no summary line `{label}` in:\n{stdout}"))
}

fn number(stdout: &str, label: &str) -> u64 {
    let value = summary_value(stdout, label);
    value
        .parse()
        .unwrap_or_else(|_| panic!("`{label}` is not a number: {value:?} in:\n{stdout}"))
}

/// Presses were stored, all were delivered, the backend's IEL is the
/// agent's, and the live view showed presses and uploads.
fn check_summary(stdout: &str) {
    let stored = number(stdout, "presses stored:");
    let delivered = number(stdout, "delivered:");
    assert!(stored > 0, "no press stored in 6 s:\n{stdout}");
    assert_eq!(delivered, stored, "not every press delivered:\n{stdout}");
    let agent_iel = summary_value(stdout, "IEL at the agent:");
    let backend_iel = summary_value(stdout, "IEL at the backend:");
    assert_ne!(agent_iel, "n/a", "no answered press:\n{stdout}");
    assert_eq!(agent_iel, backend_iel, "{stdout}");
    assert!(
        stdout.contains("every press counted exactly once"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" stored 1 "),
        "no live press line:\n{stdout}"
    );
    assert!(stdout.contains("200 OK"), "no live upload line:\n{stdout}");
}

#[test]
fn the_demo_stores_uploads_and_agrees_with_its_backend() {
    let stdout = run_demo(&[]);
    check_summary(&stdout);
    assert!(stdout.contains("connected on"), "no device line:\n{stdout}");
    // Elsewhere the demo falls back to the in-process simulator.
    if cfg!(unix) {
        assert!(
            stdout.contains("ProLAN-202 keypad 202A0F31, firmware 1.4"),
            "the keypad did not identify itself:\n{stdout}"
        );
    }
}

#[test]
fn a_flaky_backend_counts_every_press_once() {
    let stdout = run_demo(&["--flaky"]);
    check_summary(&stdout);
}
