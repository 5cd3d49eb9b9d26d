//! The official `openai` Python client (PyPI, in the venv `tools/setup_tests.sh` makes)
//! against `gemma3n serve` on the tiny fixture: models, chat and text completions (streamed
//! and not), usage, logprobs, and the typed errors (404, 400, 422, 401)
//! (tests/openai/client_test.py).

mod common;

use common::*;

#[test]
fn the_official_openai_client_works_against_the_server() {
    let python = repo_root().join(".cache/openai-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tools/setup_tests.sh` first (README, Set up)",
        python.display()
    );
    let s = start_dir(
        model_with_tokenizer("tiny_text_f32"),
        &["--api-key", "k-123"],
    );
    let base = format!("http://{}/v1", s.addr);
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("tests/openai/client_test.py"))
        .args([base.as_str(), "k-123", "gemma-3n"])
        .output()
        .expect("run python");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "client_test.py failed:\n{so}\n{se}");
    assert!(so.contains("all checks passed"), "{so}\n{se}");
}
