//! The incremental detokenizer against `Tokenizer::decode` on a hand-written byte-fallback
//! tokenizer (no download needed). The real tokenizer is exercised in tokenizer_real.rs.

mod common;

use gemma3n_engine::{TokenStream, Tokenizer};

fn stream_pieces(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut s = TokenStream::new(tok, skip_special);
    let mut pieces: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    pieces.push(s.flush().unwrap());
    pieces
}

const TEXTS: &[&str] = &[
    "hello world",
    " hello  world ",
    "€",
    "price: 5€, or 5 €!",
    "Grüße aus München",
    "日本語のテキスト",
    "emoji 😀 family 👨‍👩‍👧‍👦 flag 🇩🇪 skin 👍🏽",
    "مرحبا नमस्ते Привет",
    "line\n\n  indented\tand tabbed\n",
    "<start_of_turn>user\nhello<end_of_turn>\n",
    "",
];

#[test]
fn concatenated_pieces_equal_decode() {
    let tok = common::tiny_tokenizer();
    for text in TEXTS {
        let ids = tok.encode(text, true).unwrap();
        for skip in [false, true] {
            let joined: String = stream_pieces(tok, &ids, skip).concat();
            assert_eq!(
                joined,
                tok.decode(&ids, skip).unwrap(),
                "{text:?} skip={skip}"
            );
        }
        // The tiny tokenizer round-trips.
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(stream_pieces(tok, &ids, false).concat(), *text);
    }
}

#[test]
fn a_multibyte_character_appears_only_when_complete() {
    let tok = common::tiny_tokenizer();
    let ids = tok.encode("a€b", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
    assert_eq!(pieces, ["a", "<0xE2>", "<0x82>", "<0xAC>", "b"]);
    let mut s = TokenStream::new(tok, false);
    let out: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    assert_eq!(out, ["a", "", "", "€", "b"]);
    assert_eq!(s.flush().unwrap(), "");

    // A four-byte emoji right after a three-byte character (one run of byte pieces).
    let ids = tok.encode("€😀", false).unwrap();
    assert_eq!(ids.len(), 7);
    let mut s = TokenStream::new(tok, false);
    let out: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    assert_eq!(out, ["", "", "€", "", "", "", "😀"]);
}

#[test]
fn spaces_come_out_as_the_decoder_writes_them() {
    let tok = common::tiny_tokenizer();
    let ids = tok.encode(" hello world", false).unwrap();
    let mut s = TokenStream::new(tok, false);
    let out: Vec<String> = ids.iter().map(|&id| s.push(id).unwrap()).collect();
    assert_eq!(out.concat(), " hello world");
    assert_eq!(out, [" hello", " world"]);
}

#[test]
fn truncated_sequences_flush_as_decode_does() {
    let tok = common::tiny_tokenizer();
    let e2 = tok.token_to_id("<0xE2>").unwrap();
    let x82 = tok.token_to_id("<0x82>").unwrap();
    let a = tok.token_to_id("a").unwrap();
    for ids in [vec![a, e2, x82], vec![e2], vec![e2, x82, a]] {
        let joined = stream_pieces(tok, &ids, false).concat();
        assert_eq!(joined, tok.decode(&ids, false).unwrap(), "{ids:?}");
    }
    // The stream is reusable after a flush.
    let mut s = TokenStream::new(tok, false);
    s.push(e2).unwrap();
    assert_eq!(s.flush().unwrap(), "\u{fffd}");
    assert_eq!(s.push(a).unwrap(), "a");
}

#[test]
fn random_character_sequences() {
    // Deterministic pseudo-random strings over ASCII, 2-, 3- and 4-byte characters, joiners
    // and special tokens.
    let tok = common::tiny_tokenizer();
    let alphabet: Vec<&str> = vec![
        "a",
        "z",
        " ",
        "  ",
        "\n",
        "hello",
        "ü",
        "ß",
        "€",
        "中",
        "語",
        "😀",
        "🇩",
        "🇪",
        "\u{200d}",
        "\u{fe0f}",
        "<end_of_turn>",
        "<bos>",
        "\u{7f}",
    ];
    let mut state = 12345u64;
    for _ in 0..200 {
        let mut text = String::new();
        for _ in 0..(state % 24) {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(alphabet[(state >> 33) as usize % alphabet.len()]);
        }
        state = state.wrapping_add(7);
        let ids = tok.encode(&text, false).unwrap();
        for skip in [false, true] {
            let pieces = stream_pieces(tok, &ids, skip);
            assert_eq!(pieces.concat(), tok.decode(&ids, skip).unwrap(), "{text:?}");
            assert!(
                pieces.iter().all(|p| !p.contains('\u{fffd}')),
                "{text:?}: {pieces:?}"
            );
        }
    }
}
