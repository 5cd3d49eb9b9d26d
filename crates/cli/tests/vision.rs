//! `gemma3n logits --image` and `run --image` end to end: image files through our
//! preprocessing, the vision tower and the text decoder, against HF transformers (its image
//! processor and model) on the tiny vision fixture (tools/reference/make_vision_fixtures.py).

mod common;

use common::*;

fn tiny_dir() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/vision/tiny_vision")
}

fn image(name: &str) -> String {
    repo_root()
        .join("tests/fixtures/vision/images")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn logits_with_two_images_match_hf() {
    let g = read_safetensors(&tiny_dir().join("golden.safetensors"));
    let ids: Vec<String> = g["cli_input_ids"]
        .i64s()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let reference = g["cli_logits"].f32s();
    let out = TempDir::new("vision-logits");
    let f = out.join("logits.safetensors");
    gemma3n_raw(
        &[
            "logits",
            "--model",
            tiny_dir().to_str().unwrap(),
            "--ids",
            &ids.join(","),
            "--image",
            &image("coffee_97x61.bmp"),
            "--image",
            &image("camera_grey_512x512.png"),
            "--out",
            f.to_str().unwrap(),
        ],
        None,
    )
    .expect_ok("logits --image");
    let ours = read_safetensors(&f)["logits"].f32s();
    // Our resampler is PIL's; HF's processor resizes with torchvision, which differs by one
    // 8-bit level in a small share of pixels (spec §1.1), so the bound is looser than the
    // 1e-4 of the tower on identical pixels (crates/model/tests/vision.rs).
    let rel = max_rel_diff(&ours, &reference);
    eprintln!("logits --image: max|ours-ref|/max|ref| = {rel:e}");
    assert!(rel <= 5e-4, "max|ours-ref|/max|ref| = {rel:e}");
}

#[test]
fn image_errors_come_before_model_work() {
    let out = TempDir::new("vision-bad");
    let bad = out.join("bad.png");
    std::fs::write(&bad, b"not an image at all").unwrap();
    // A bad image fails even with a model path that does not exist: it is read first.
    let r = gemma3n_raw(
        &[
            "logits",
            "--model",
            "/nonexistent/model",
            "--ids",
            "2,3",
            "--image",
            bad.to_str().unwrap(),
            "--out",
            out.join("x.safetensors").to_str().unwrap(),
        ],
        None,
    );
    r.expect_clean_failure("bad image", &["bad.png"]);
    // A text-only checkpoint cannot take images.
    let r = gemma3n_raw(
        &[
            "logits",
            "--model",
            fixture_dir("tiny_text_f32").to_str().unwrap(),
            "--ids",
            "2,3",
            "--image",
            &image("coffee_97x61.bmp"),
            "--out",
            out.join("x.safetensors").to_str().unwrap(),
        ],
        None,
    );
    r.expect_clean_failure("text-only model", &["vision"]);
}
