//! Tokenizer loading and error reporting (hand-written tokenizer; the real one is tested in
//! tokenizer_real.rs).

mod common;

use gemma3n_engine::{Error, Tokenizer};

#[test]
fn bos_is_added_only_on_request_and_never_eos() {
    let tok = common::tiny_tokenizer();
    let bos = tok.special().bos;
    let plain = tok.encode("hello", false).unwrap();
    let with_bos = tok.encode("hello", true).unwrap();
    assert_eq!(with_bos[0], bos);
    assert_eq!(&with_bos[1..], &plain[..]);
    assert!(!plain.contains(&tok.special().eos));
    assert_eq!(tok.encode("", true).unwrap(), vec![bos]);
    assert!(tok.encode("", false).unwrap().is_empty());
}

#[test]
fn special_tokens_found_by_name() {
    let tok = common::tiny_tokenizer();
    let s = tok.special();
    assert_eq!((s.pad, s.eos, s.bos, s.unk), (0, 1, 2, Some(3)));
    assert_eq!((s.start_of_turn, s.end_of_turn), (4, 5));
    assert_eq!(s.start_of_audio, None);
    assert_eq!(s.stop_ids(), [1, 5]);
    assert!(tok.is_special(5) && !tok.is_special(300));
    // ids differ from Gemma 3n's, and the report says so
    let mismatches = tok.gemma3n_mismatches();
    assert!(mismatches
        .iter()
        .any(|m| m.starts_with("<start_of_turn>: expected 105, found 4")));
    assert_eq!(tok.text_vocab_size(), tok.vocab_size());
}

#[test]
fn missing_file_names_the_path() {
    let err = Tokenizer::from_file("/no/such/dir/tokenizer.json").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(
        err.to_string().contains("/no/such/dir/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn malformed_json_names_the_path() {
    let dir = common::temp_dir("malformed");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, b"{\"model\": [1, 2").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn a_tokenizer_without_end_of_turn_is_rejected() {
    let json = common::tiny_tokenizer_json().replace("<end_of_turn>", "<eot_renamed>");
    let err = Tokenizer::from_bytes(json.as_bytes(), "renamed.json").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("renamed.json") && msg.contains("<end_of_turn>"),
        "{msg}"
    );
}
