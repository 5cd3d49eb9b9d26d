//! Chat template rendering against HF's apply_chat_template output (goldens.json, produced by
//! tools/reference/make_tokenizer_goldens.py), tokenization with one <bos>, template loading,
//! and the multi-turn prefix property of `Conversation`.

mod common;

use gemma3n_engine::{ChatMessage, ChatTemplate, ContentPart, Conversation, Error};

// ---- the HF-compatible Jinja environment

fn render_src(src: &str, messages: &[ChatMessage]) -> gemma3n_engine::Result<String> {
    ChatTemplate::from_source(src, "test")?.render(messages, false)
}

#[test]
fn python_string_methods_and_filters() {
    let msgs = [ChatMessage::user("  Hello World \x1f")];
    let out = render_src(
        "{{ messages[0].content.strip().upper() }}|{{ messages[0].content | trim }}|\
         {{ messages[0].content.startswith('  He') }}|{{ messages[0].content.split()[1] }}",
        &msgs,
    )
    .unwrap();
    // Python's strip() removes U+001F (unit separator) too.
    assert_eq!(out, "HELLO WORLD|Hello World|True|World");
}

#[test]
fn loop_variables_and_controls() {
    let msgs = [
        ChatMessage::user("a"),
        ChatMessage::assistant("b"),
        ChatMessage::user("c"),
    ];
    let out = render_src(
        "{% for m in messages %}{% if loop.last %}{% break %}{% endif %}\
         {{ loop.index0 }}{{ loop.first }}{{ m.role[0] }};{% endfor %}",
        &msgs,
    )
    .unwrap();
    assert_eq!(out, "0Trueu;1Falsea;");
}

#[test]
fn trim_and_lstrip_blocks_as_in_hf() {
    // HF renders with trim_blocks and lstrip_blocks: the newline after a block tag and the
    // indentation before one are removed.
    let src = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    let out = render_src(src, &[ChatMessage::user("x"), ChatMessage::user("y")]).unwrap();
    assert_eq!(out, "[x]\n[y]\n");
}

#[test]
fn raise_exception_is_an_error_with_the_message() {
    let err = render_src("{{ raise_exception('bad roles here') }}", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad roles here"), "{msg}");
    assert!(msg.contains("test"), "{msg}");
}

#[test]
fn syntax_errors_name_the_origin() {
    let err = ChatTemplate::from_source("{% for %}", "my/chat_template.jinja").unwrap_err();
    assert!(err.to_string().contains("my/chat_template.jinja"), "{err}");
}

#[test]
fn tojson_matches_python_json_dumps() {
    // Expected strings written from Python: json.dumps(x, ensure_ascii=False[, indent=2]).
    let t = ChatTemplate::from_source(
        "{% set tools = [{'name': 'f', 'args': {'a<b': 'ü\\n', 'n': [1, 2.5, none, true]}}] %}\
         {{ tools | tojson }}#{{ tools | tojson(indent=2) }}",
        "t",
    )
    .unwrap();
    let out = t.render(&[], false).unwrap();
    let expected_flat = r#"[{"name": "f", "args": {"a<b": "ü\n", "n": [1, 2.5, null, true]}}]"#;
    let expected_indent = "[\n  {\n    \"name\": \"f\",\n    \"args\": {\n      \"a<b\": \"ü\\n\",\n      \"n\": [\n        1,\n        2.5,\n        null,\n        true\n      ]\n    }\n  }\n]";
    assert_eq!(out, format!("{expected_flat}#{expected_indent}"));
}

#[test]
fn message_content_serializes_like_hf_messages() {
    let m = ChatMessage::user(vec![
        ContentPart::Image { url: None },
        ContentPart::Text { text: "hi".into() },
        ContentPart::Audio {
            url: Some("a.wav".into()),
        },
    ]);
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "hi"}, {"type": "audio", "url": "a.wav"}]})
    );
}

// ---- the Gemma 3n template, tokenization and conversations

fn gemma_template() -> ChatTemplate {
    ChatTemplate::from_file(common::fixtures().join("chat_template.jinja")).unwrap()
}

fn goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixtures().join("goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn renders_like_hf_apply_chat_template() {
    let t = gemma_template();
    let g = goldens();
    let convs = g["conversations"].as_array().unwrap();
    assert!(convs.len() >= 6);
    for conv in convs {
        let name = conv["name"].as_str().unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(conv["messages"].clone()).unwrap();
        let add = conv["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&messages, add);
        match (conv.get("rendered"), conv.get("error")) {
            (Some(want), _) => assert_eq!(got.unwrap(), want.as_str().unwrap(), "{name}"),
            (None, Some(err)) => {
                let msg = got.unwrap_err().to_string();
                assert!(msg.contains(err.as_str().unwrap()), "{name}: {msg}");
            }
            _ => panic!("{name}: golden has neither `rendered` nor `error`"),
        }
    }
}

#[test]
fn the_fixture_template_is_the_published_size() {
    // spec/text.md §7: the published chat_template.jinja is 1633 bytes.
    assert_eq!(gemma_template().source().len(), 1633);
}

#[test]
fn spec_example_renders_exactly() {
    // The example of spec/text.md §7.
    let msgs = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("Hello!"),
        ChatMessage::assistant("Hi there."),
        ChatMessage::user("What is 2+2?"),
    ];
    assert_eq!(
        gemma_template().render(&msgs, true).unwrap(),
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello!<end_of_turn>\n\
         <start_of_turn>model\nHi there.<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?\
         <end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn tokenized_prompts_hold_exactly_one_bos() {
    let tok = common::tiny_tokenizer();
    let bos = tok.special().bos;
    let msgs = [ChatMessage::user("hello")];
    let p = gemma_template()
        .render_and_tokenize(tok, &msgs, true)
        .unwrap();
    assert_eq!(p.ids[0], bos);
    assert_eq!(p.ids.iter().filter(|&&i| i == bos).count(), 1);
    assert_eq!(p.ids, tok.encode(&p.text, false).unwrap());

    // A template writing two <bos> is refused.
    let twice = ChatTemplate::from_source("{{ bos_token }}{{ bos_token }}hi", "twice").unwrap();
    let err = twice.render_and_tokenize(tok, &msgs, false).unwrap_err();
    assert!(
        err.to_string().contains("twice") && err.to_string().contains("<bos>"),
        "{err}"
    );

    // A template writing none gets one.
    let none = ChatTemplate::from_source("{{ messages[0].content }}", "none").unwrap();
    let p = none.render_and_tokenize(tok, &msgs, false).unwrap();
    assert_eq!(p.text, "<bos>hello");
    assert_eq!(p.ids, tok.encode("hello", true).unwrap());
}

#[test]
fn list_content_with_media_items() {
    let msgs = [ChatMessage::user(vec![
        ContentPart::Image { url: None },
        ContentPart::Text {
            text: "  what is this? ".into(),
        },
        ContentPart::Audio { url: None },
    ])];
    assert_eq!(
        gemma_template().render(&msgs, false).unwrap(),
        "<bos><start_of_turn>user\n<image_soft_token>what is this?<audio_soft_token><end_of_turn>\n"
    );
}

/// Simulates one generated reply: the model emits `reply` then <end_of_turn>, which is sampled
/// but not fed back, so the cache holds the reply's ids.
fn reply(conv: &mut Conversation, reply: &str) -> Vec<u32> {
    let tok = common::tiny_tokenizer();
    let ids = tok.encode(reply, false).unwrap();
    conv.add_assistant(reply, &ids);
    ids
}

#[test]
fn conversation_prefills_only_new_tokens() {
    let tok = common::tiny_tokenizer();
    let t = gemma_template();
    let mut conv = Conversation::with_system("be brief");

    let first = conv.add_user(&t, tok, "hello").unwrap();
    assert_eq!(first.keep, 0);
    assert_eq!(first.ids, first.prompt.ids);
    assert_eq!(
        first.text,
        "<bos><start_of_turn>user\nbe brief\n\nhello<end_of_turn>\n<start_of_turn>model\n"
    );

    reply(&mut conv, "hello world");
    let cached = conv.cached_ids().to_vec();
    let second = conv.add_user(&t, tok, "again").unwrap();
    // Everything in the cache stays; only the new turn is prefilled.
    assert_eq!(second.keep, cached.len());
    assert_eq!(
        second.text,
        "<end_of_turn>\n<start_of_turn>user\nagain<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(second.ids, tok.encode(&second.text, false).unwrap());
    let mut whole = cached.clone();
    whole.extend_from_slice(&second.ids);
    assert_eq!(whole, second.prompt.ids);
    // ... and that is the tokenization of the whole conversation, rendered from scratch.
    let fresh = t.render_and_tokenize(tok, conv.messages(), true).unwrap();
    assert_eq!(fresh, second.prompt);

    // Text-level prefix property of the template: the rendering of a conversation ending with
    // the generation prompt, followed by the reply, is a prefix of the next rendering.
    let msgs = conv.messages();
    let before = format!("{}hello world", t.render(&msgs[..2], true).unwrap());
    assert!(t.render(msgs, true).unwrap().starts_with(&before));
    assert!(t.render(msgs, false).unwrap().starts_with(&before));
}

#[test]
fn conversation_keeps_the_cache_up_to_the_first_difference() {
    let tok = common::tiny_tokenizer();
    let t = gemma_template();
    let mut conv = Conversation::new();
    conv.add_user(&t, tok, "hello").unwrap();
    let prompt_len = conv.cached_ids().len();
    // The reply ends with spaces the template trims away when re-rendering.
    reply(&mut conv, "world  ");
    let cached = conv.cached_ids().to_vec();
    let next = conv.add_user(&t, tok, "more").unwrap();
    assert!(
        next.keep < cached.len() && next.keep >= prompt_len,
        "{}",
        next.keep
    );
    assert_eq!(next.prompt.ids[..next.keep], cached[..next.keep]);
    assert_ne!(next.prompt.ids[next.keep], cached[next.keep]);
    assert_eq!(next.ids, next.prompt.ids[next.keep..]);
    assert!(next.text.starts_with("<end_of_turn>"), "{:?}", next.text);

    // A forgotten cache means a full prefill.
    conv.clear_cache();
    reply(&mut conv, "ok");
    let full = conv.add_user(&t, tok, "last").unwrap();
    assert_eq!(full.keep, 0);
}

#[test]
fn a_rejected_turn_leaves_the_conversation_unchanged() {
    let tok = common::tiny_tokenizer();
    let t = gemma_template();
    let mut conv = Conversation::new();
    conv.add_user(&t, tok, "hello").unwrap();
    let n = conv.messages().len();
    let cached = conv.cached_ids().to_vec();
    // user after user: the template raises
    let err = conv.add_user(&t, tok, "again").unwrap_err();
    assert!(err.to_string().contains("alternate"), "{err}");
    assert_eq!(conv.messages().len(), n);
    assert_eq!(conv.cached_ids(), &cached[..]);
}

#[test]
fn templates_from_tokenizer_config_and_checkpoint_dirs() {
    let dir = common::temp_dir("templates");
    let cfg = dir.join("tokenizer_config.json");
    let msgs = [ChatMessage::user("x")];

    std::fs::write(
        &cfg,
        r#"{"chat_template": "{{ bos_token }}[{{ messages[0].content }}]{{ eos_token }}",
            "bos_token": {"content": "<B>"}, "eos_token": "<E>"}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_tokenizer_config(&cfg).unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), "<B>[x]<E>");

    std::fs::write(
        &cfg,
        r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                              {"name": "default", "template": "D{{ messages|length }}"}]}"#,
    )
    .unwrap();
    assert_eq!(
        ChatTemplate::from_tokenizer_config(&cfg)
            .unwrap()
            .render(&msgs, false)
            .unwrap(),
        "D1"
    );
    let named = ChatTemplate::from_tokenizer_config_named(&cfg, "tool_use").unwrap();
    assert_eq!(named.render(&msgs, false).unwrap(), "T");
    let err = ChatTemplate::from_tokenizer_config_named(&cfg, "nope").unwrap_err();
    assert!(
        err.to_string().contains("tool_use") && err.to_string().contains(cfg.to_str().unwrap())
    );

    // chat_template.jinja wins over the config field; special tokens still come from the config.
    std::fs::write(&cfg, r#"{"chat_template": "config", "bos_token": "<B>"}"#).unwrap();
    std::fs::write(dir.join("chat_template.jinja"), "file {{ bos_token }}").unwrap();
    let t = ChatTemplate::from_checkpoint_dir(&dir).unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), "file <B>");

    // Errors name the file and the field.
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::fs::write(&cfg, r#"{"chat_template": 3}"#).unwrap();
    let err = ChatTemplate::from_checkpoint_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }));
    assert!(
        err.to_string().contains("chat_template")
            && err.to_string().contains(cfg.to_str().unwrap())
    );
    std::fs::write(&cfg, r#"{"chat_template": "#).unwrap();
    assert!(ChatTemplate::from_tokenizer_config(&cfg)
        .unwrap_err()
        .to_string()
        .contains("malformed JSON"));
    std::fs::remove_file(&cfg).unwrap();
    let err = ChatTemplate::from_checkpoint_dir(&dir).unwrap_err();
    assert!(err.to_string().contains(dir.to_str().unwrap()), "{err}");
    let err = ChatTemplate::from_file(dir.join("missing.jinja")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing.jinja"));
    std::fs::remove_dir_all(&dir).unwrap();
}
