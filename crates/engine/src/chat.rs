//! Chat prompts: the checkpoint's own Jinja chat template rendered with minijinja in an
//! environment that behaves like the one HF transformers gives templates (`trim_blocks`,
//! `lstrip_blocks`, loop controls, `raise_exception`, Python string methods, Python's `trim`
//! and `tojson`), the tokenization of a rendered prompt with exactly one `<bos>` (spec §5.4),
//! and a [`Conversation`] that tells a multi-turn chat which tokens are new each turn.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

const TEMPLATE_NAME: &str = "chat_template";

/// The image placeholder a chat template writes for each image item.
pub const IMAGE_PLACEHOLDER: &str = "<image_soft_token>";

/// Replaces every `<image_soft_token>` of `text` by the block the model sees for one image:
/// `"\n\n<start_of_image>"`, `tokens` placeholders, `"<end_of_image>\n\n"` (the HF
/// processor's expansion, spec/multimodal.md §5).
pub fn expand_image_placeholders(text: &str, tokens: usize) -> String {
    let block = format!(
        "\n\n<start_of_image>{}<end_of_image>\n\n",
        IMAGE_PLACEHOLDER.repeat(tokens)
    );
    text.replace(IMAGE_PLACEHOLDER, &block)
}

/// The audio placeholder a chat template writes for each audio item.
pub const AUDIO_PLACEHOLDER: &str = "<audio_soft_token>";

/// Replaces every `<audio_soft_token>` of `text` by the block the model sees for one clip:
/// `"\n\n<start_of_audio>"`, `tokens` placeholders, `"<end_of_audio>\n\n"` (the HF
/// processor's expansion, spec/multimodal.md §5; Gemma 3n always uses 188 per clip).
pub fn expand_audio_placeholders(text: &str, tokens: usize) -> String {
    let block = format!(
        "\n\n<start_of_audio>{}<end_of_audio>\n\n",
        AUDIO_PLACEHOLDER.repeat(tokens)
    );
    text.replace(AUDIO_PLACEHOLDER, &block)
}

/// Expands the image placeholders (when `image_tokens > 0`) and the audio placeholders (when
/// `audio_tokens > 0`) of a rendered prompt, as HF's processor does in one left-to-right pass.
/// Two passes give the same string: each block starts and ends with `"\n\n"` and neither
/// placeholder holds a newline, so no occurrence can straddle a block's edge, and a block
/// holds only its own kind of placeholder, so the second pass finds exactly the placeholders
/// of its kind that the template wrote.
fn expand_media_placeholders(text: String, image_tokens: usize, audio_tokens: usize) -> String {
    let text = if image_tokens > 0 {
        expand_image_placeholders(&text, image_tokens)
    } else {
        text
    };
    if audio_tokens > 0 {
        expand_audio_placeholders(&text, audio_tokens)
    } else {
        text
    }
}

/// One item of a list-valued message content, as chat templates see it:
/// `{"type": "text", "text": ...}`, `{"type": "image", ...}`, `{"type": "audio", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentPart {
    Text {
        text: String,
    },
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    Audio {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
}

/// A message's content: a plain string or a list of items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl From<&str> for MessageContent {
    fn from(s: &str) -> Self {
        MessageContent::Text(s.to_string())
    }
}

impl From<String> for MessageContent {
    fn from(s: String) -> Self {
        MessageContent::Text(s)
    }
}

impl From<Vec<ContentPart>> for MessageContent {
    fn from(parts: Vec<ContentPart>) -> Self {
        MessageContent::Parts(parts)
    }
}

/// One chat message. `role` is free text (`system`, `user`, `assistant`); the template
/// decides what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: MessageContent,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<MessageContent>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<MessageContent>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<MessageContent>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<MessageContent>) -> Self {
        Self::new("assistant", content)
    }
}

/// A rendered and tokenized prompt. `ids` starts with exactly one `<bos>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles a template from its source; `origin` names it in error messages. The special
    /// token strings default to `<bos>` / `<eos>` (see [`ChatTemplate::with_special_tokens`]).
    pub fn from_source(source: impl Into<String>, origin: impl Into<String>) -> Result<Self> {
        let origin = origin.into();
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(py_methods);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("trim", py_trim);
        env.add_filter("tojson", py_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| Error::Template {
                origin: origin.clone(),
                msg: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            source,
            origin,
            bos_token: "<bos>".into(),
            eos_token: "<eos>".into(),
        })
    }

    /// Reads a `chat_template.jinja` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_source(source, path.display().to_string())
    }

    /// Reads the `chat_template` field of a `tokenizer_config.json`: a string, or a list of
    /// `{name, template}` of which the one named `default` is taken. `bos_token` and
    /// `eos_token` are taken from the same file when present.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_tokenizer_config_named(path, "default")
    }

    /// As [`ChatTemplate::from_tokenizer_config`], choosing the template called `name` when the
    /// field is a list (a plain string field is used whatever `name` is).
    pub fn from_tokenizer_config_named(path: impl AsRef<Path>, name: &str) -> Result<Self> {
        let path = path.as_ref();
        let config = read_json(path)?;
        let field = config
            .get("chat_template")
            .ok_or_else(|| Error::malformed(path, "no field `chat_template`"))?;
        let source = match field {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => {
                let mut names = Vec::new();
                let mut found = None;
                for (i, item) in items.iter().enumerate() {
                    let item_name = item.get("name").and_then(|v| v.as_str());
                    let template = item.get("template").and_then(|v| v.as_str());
                    let (Some(item_name), Some(template)) = (item_name, template) else {
                        return Err(Error::malformed(
                            path,
                            format!("`chat_template[{i}]` is not an object with string fields `name` and `template`"),
                        ));
                    };
                    names.push(item_name.to_string());
                    if item_name == name {
                        found = Some(template.to_string());
                    }
                }
                found.ok_or_else(|| {
                    Error::malformed(
                        path,
                        format!(
                            "`chat_template` has no template named {name:?} (it has {names:?})"
                        ),
                    )
                })?
            }
            _ => {
                return Err(Error::malformed(
                    path,
                    "`chat_template` must be a string or a list of {name, template}",
                ))
            }
        };
        let origin = format!("{} (chat_template {name:?})", path.display());
        let template = Self::from_source(source, origin)?;
        template.with_special_tokens_from_config(&config, path)
    }

    /// Finds the template of a checkpoint directory: `chat_template.jinja` if present, else the
    /// `chat_template` field of `tokenizer_config.json`. Special token strings come from
    /// `tokenizer_config.json` when it exists.
    pub fn from_checkpoint_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let jinja = dir.join("chat_template.jinja");
        let config_path = dir.join("tokenizer_config.json");
        if jinja.is_file() {
            let template = Self::from_file(&jinja)?;
            if config_path.is_file() {
                let config = read_json(&config_path)?;
                return template.with_special_tokens_from_config(&config, &config_path);
            }
            return Ok(template);
        }
        if config_path.is_file() {
            return Self::from_tokenizer_config(&config_path);
        }
        Err(Error::malformed(
            dir,
            "no chat template: neither chat_template.jinja nor tokenizer_config.json exists",
        ))
    }

    /// Sets the strings given to the template as `bos_token` and `eos_token`.
    pub fn with_special_tokens(mut self, bos: impl Into<String>, eos: impl Into<String>) -> Self {
        self.bos_token = bos.into();
        self.eos_token = eos.into();
        self
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (HF `apply_chat_template(tokenize=False)`).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, Value::UNDEFINED)
    }

    /// Renders with extra template variables (a map, e.g. `{"tools": [...]}`); the standard
    /// variables `messages`, `bos_token`, `eos_token`, `add_generation_prompt` take precedence.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: Value,
    ) -> Result<String> {
        let base = minijinja::context! {
            messages => Value::from_serialize(messages),
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            add_generation_prompt => add_generation_prompt,
        };
        let ctx = if extra.is_undefined() {
            base
        } else {
            minijinja::context! { ..base, ..extra }
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.error(&e))?;
        template.render(ctx).map_err(|e| self.error(&e))
    }

    /// Renders and tokenizes a prompt. The text is encoded WITHOUT adding a `<bos>` (the
    /// template writes its own, spec §5.4), and the result is checked to start with exactly one
    /// `<bos>`: a rendering starting with two is an error; one starting with none (a template
    /// that does not write `bos_token`) gets `<bos>` prepended to both text and ids, since
    /// Gemma needs it.
    pub fn render_and_tokenize(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Prompt> {
        self.render_and_tokenize_with_media(tokenizer, messages, add_generation_prompt, 0, 0)
    }

    /// [`ChatTemplate::render_and_tokenize`] for messages with images and audio clips: every
    /// `<image_soft_token>` the template writes (one per image item) is expanded to the
    /// image's block of `image_tokens` placeholders, and every `<audio_soft_token>` (one per
    /// audio item) to the clip's block of `audio_tokens` placeholders (spec/multimodal.md §5),
    /// before tokenization. A count of 0 leaves that kind of placeholder as the template
    /// wrote it.
    pub fn render_and_tokenize_with_media(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        image_tokens: usize,
        audio_tokens: usize,
    ) -> Result<Prompt> {
        let (prompt, _) = self.render_tokenize_offsets(
            tokenizer,
            messages,
            add_generation_prompt,
            image_tokens,
            audio_tokens,
        )?;
        Ok(prompt)
    }

    /// [`ChatTemplate::render_and_tokenize_with_media`] without audio expansion.
    pub fn render_and_tokenize_with_images(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        image_tokens: usize,
    ) -> Result<Prompt> {
        self.render_and_tokenize_with_media(
            tokenizer,
            messages,
            add_generation_prompt,
            image_tokens,
            0,
        )
    }

    fn render_tokenize_offsets(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        image_tokens: usize,
        audio_tokens: usize,
    ) -> Result<(Prompt, Vec<(usize, usize)>)> {
        let text = self.render(messages, add_generation_prompt)?;
        let mut text = expand_media_placeholders(text, image_tokens, audio_tokens);
        let (mut ids, mut offsets) = tokenizer.encode_with_offsets(&text)?;
        let bos = tokenizer.special().bos;
        let leading_bos = ids.iter().take_while(|&&id| id == bos).count();
        if leading_bos > 1 {
            return Err(Error::Template {
                origin: self.origin.clone(),
                msg: format!(
                    "the rendered prompt starts with {leading_bos} <bos> tokens (id {bos}); \
                     it must hold exactly one"
                ),
            });
        }
        if leading_bos == 0 {
            let bos_text = tokenizer.id_to_token(bos).unwrap_or_default();
            let shift = bos_text.len();
            text.insert_str(0, &bos_text);
            ids.insert(0, bos);
            for o in &mut offsets {
                *o = (o.0 + shift, o.1 + shift);
            }
            offsets.insert(0, (0, shift));
        }
        Ok((Prompt { text, ids }, offsets))
    }

    fn with_special_tokens_from_config(
        mut self,
        config: &serde_json::Value,
        path: &Path,
    ) -> Result<Self> {
        for (key, slot) in [
            ("bos_token", &mut self.bos_token),
            ("eos_token", &mut self.eos_token),
        ] {
            match config.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => *slot = s.clone(),
                Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                    Some(s) => *slot = s.to_string(),
                    None => {
                        return Err(Error::malformed(
                            path,
                            format!(
                                "`{key}` must be a string or an object with a string `content`"
                            ),
                        ))
                    }
                },
            }
        }
        Ok(self)
    }

    fn error(&self, e: &minijinja::Error) -> Error {
        Error::Template {
            origin: self.origin.clone(),
            msg: describe(e),
        }
    }
}

/// What to feed the model for a new turn of a [`Conversation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnInput {
    /// How many of the tokens already in the KV cache stay valid: truncate the cache to this
    /// length, then prefill `ids`. Equal to the whole cache in the normal case.
    pub keep: usize,
    /// The text of `ids` (the tail of the rendered conversation).
    pub text: String,
    /// The ids to prefill (never empty).
    pub ids: Vec<u32>,
    /// The whole conversation, rendered and tokenized; `prompt.ids[..keep]` is the kept cache
    /// and `prompt.ids[keep..] == ids`.
    pub prompt: Prompt,
}

/// A multi-turn chat whose KV cache is kept across turns.
///
/// Each turn the whole conversation is rendered and tokenized again, and compared with the ids
/// in the cache: with a template such as Gemma's, where the rendering of a conversation is a
/// prefix of the rendering of its continuation, only the new turn's tokens are prefilled. When
/// the two differ (the model's reply was trimmed by the template, or sampled a tokenization
/// that re-encoding does not reproduce) the cache is kept up to the first difference.
///
/// Image and audio items are left as the template's single placeholders unless the
/// conversation is given the block sizes with [`Conversation::with_media_tokens`]; every turn
/// then expands every placeholder of the whole history the same way, so earlier turns keep
/// their ids.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    messages: Vec<ChatMessage>,
    cached_ids: Vec<u32>,
    image_tokens: usize,
    audio_tokens: usize,
}

impl Conversation {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// A conversation starting with a system message.
    pub fn with_system(content: impl Into<MessageContent>) -> Self {
        Conversation {
            messages: vec![ChatMessage::system(content)],
            ..Self::default()
        }
    }

    /// Sets how many placeholders an image item and an audio item expand to in every turn's
    /// prompt (as [`ChatTemplate::render_and_tokenize_with_media`]; 0, the default, leaves
    /// that kind unexpanded).
    pub fn with_media_tokens(mut self, image_tokens: usize, audio_tokens: usize) -> Self {
        self.image_tokens = image_tokens;
        self.audio_tokens = audio_tokens;
        self
    }

    /// The messages so far.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The ids the conversation believes are in the model's KV cache.
    pub fn cached_ids(&self) -> &[u32] {
        &self.cached_ids
    }

    /// Forgets the cache (the next turn prefills everything).
    pub fn clear_cache(&mut self) {
        self.cached_ids.clear();
    }

    /// Adds a user message and returns what to prefill before generating the reply (the
    /// rendering ends with the generation prompt). On error the message is not added.
    pub fn add_user(
        &mut self,
        template: &ChatTemplate,
        tokenizer: &Tokenizer,
        content: impl Into<MessageContent>,
    ) -> Result<TurnInput> {
        self.messages.push(ChatMessage::user(content));
        let rendered = template.render_tokenize_offsets(
            tokenizer,
            &self.messages,
            true,
            self.image_tokens,
            self.audio_tokens,
        );
        let (prompt, offsets) = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        let common = self
            .cached_ids
            .iter()
            .zip(&prompt.ids)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token must be prefilled to get the logits of the next one.
        let keep = common.min(prompt.ids.len().saturating_sub(1));
        let start = offsets.get(keep).map_or(prompt.text.len(), |o| o.0);
        let text = prompt.text.get(start..).unwrap_or_default().to_string();
        let ids = prompt.ids[keep..].to_vec();
        self.cached_ids = prompt.ids.clone();
        Ok(TurnInput {
            keep,
            text,
            ids,
            prompt,
        })
    }

    /// Records the model's reply. `text` is the reply as it should appear in the history (the
    /// decoded generation, without the stop token); `fed_ids` are the generated ids that went
    /// through the model after the prompt, i.e. that are now in the KV cache (usually every
    /// generated id except the final stop token, which is sampled but not fed).
    pub fn add_assistant(&mut self, text: impl Into<String>, fed_ids: &[u32]) {
        self.messages.push(ChatMessage::assistant(text.into()));
        self.cached_ids.extend_from_slice(fed_ids);
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::malformed(path, format!("malformed JSON: {e}")))
}

/// A minijinja error with its chain of causes.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Python methods on template values (`.strip()`, `.startswith()`, `.items()` ...), from
/// minijinja-contrib's pycompat, with `strip`/`lstrip`/`rstrip` without arguments using
/// Python's whitespace set.
fn py_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let (Some(s), true) = (value.as_str(), args.is_empty()) {
        match method {
            "strip" => return Ok(Value::from(s.trim_matches(is_py_space))),
            "lstrip" => return Ok(Value::from(s.trim_start_matches(is_py_space))),
            "rstrip" => return Ok(Value::from(s.trim_end_matches(is_py_space))),
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `raise_exception(message)`, which HF gives templates to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `str.isspace` set (Rust's `char::is_whitespace` lacks U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Jinja2's `trim` filter: Python's `str.strip(chars)`.
fn py_trim(value: &str, chars: Option<&str>) -> String {
    match chars {
        Some(chars) => value.trim_matches(|c| chars.contains(c)).to_string(),
        None => value.trim_matches(is_py_space).to_string(),
    }
}

/// HF's `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, with Python's default separators
/// (`", "` / `": "`, and `","` between items when indenting).
fn py_tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v)?)),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    /// Writes a template value as JSON, maps in their insertion order (Python dict order).
    fn write(
        &self,
        v: &Value,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        use minijinja::value::ValueKind as K;
        match v.kind() {
            K::Undefined | K::None => out.push_str("null"),
            K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            K::Number => {
                let n = serde_json::to_value(v).map_err(|e| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: bad number")
                        .with_source(e)
                })?;
                out.push_str(&n.to_string());
            }
            K::String => self.write_str(v.as_str().unwrap_or_default(), out),
            K::Seq | K::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push(']');
            }
            K::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    match key.as_str() {
                        Some(k) => self.write_str(k, out),
                        None => self.write_str(&key.to_string(), out),
                    }
                    out.push_str(&self.key_sep);
                    self.write(&v.get_item(key)?, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push('}');
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a {} value", v.kind()),
                ))
            }
        }
        Ok(())
    }

    fn write_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemma_template() -> ChatTemplate {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizer/chat_template.jinja");
        ChatTemplate::from_file(path).unwrap()
    }

    fn audio_block(n: usize) -> String {
        format!(
            "\n\n<start_of_audio>{}<end_of_audio>\n\n",
            "<audio_soft_token>".repeat(n)
        )
    }

    fn image_block(n: usize) -> String {
        format!(
            "\n\n<start_of_image>{}<end_of_image>\n\n",
            "<image_soft_token>".repeat(n)
        )
    }

    #[test]
    fn audio_placeholders_expand_to_one_block_each() {
        assert_eq!(AUDIO_PLACEHOLDER, "<audio_soft_token>");
        let text = "a<audio_soft_token>b<audio_soft_token>";
        let out = expand_audio_placeholders(text, 3);
        assert_eq!(out, format!("a{}b{}", audio_block(3), audio_block(3)));
        assert_eq!(out.matches(AUDIO_PLACEHOLDER).count(), 6);
        assert_eq!(out.matches("<start_of_audio>").count(), 2);
        assert_eq!(out.matches("<end_of_audio>").count(), 2);
        // Image placeholders and text without placeholders are left alone.
        assert_eq!(
            expand_audio_placeholders("x<image_soft_token>y", 188),
            "x<image_soft_token>y"
        );
        assert_eq!(expand_audio_placeholders("plain", 188), "plain");
        // The Gemma 3n block: 188 placeholders between the markers.
        let one = expand_audio_placeholders(AUDIO_PLACEHOLDER, 188);
        assert_eq!(one.matches(AUDIO_PLACEHOLDER).count(), 188);
        assert!(one.starts_with("\n\n<start_of_audio><audio_soft_token>"));
        assert!(one.ends_with("<audio_soft_token><end_of_audio>\n\n"));
    }

    #[test]
    fn image_expansion_leaves_audio_placeholders_alone() {
        let text = "<image_soft_token><audio_soft_token>";
        assert_eq!(
            expand_image_placeholders(text, 2),
            format!("{}<audio_soft_token>", image_block(2))
        );
    }

    #[test]
    fn mixed_image_and_audio_items_expand_in_place() {
        let msgs = [
            ChatMessage::system("Be brief."),
            ChatMessage::user(vec![
                ContentPart::Text {
                    text: "Look:".into(),
                },
                ContentPart::Image { url: None },
                ContentPart::Audio { url: None },
                ContentPart::Text {
                    text: "and listen:".into(),
                },
                ContentPart::Audio { url: None },
                ContentPart::Image { url: None },
            ]),
        ];
        let rendered = gemma_template().render(&msgs, true).unwrap();
        assert_eq!(
            rendered,
            "<bos><start_of_turn>user\nBe brief.\n\nLook:<image_soft_token><audio_soft_token>\
             and listen:<audio_soft_token><image_soft_token><end_of_turn>\n<start_of_turn>model\n"
        );
        let (ib, ab) = (image_block(256), audio_block(188));
        let want = format!(
            "<bos><start_of_turn>user\nBe brief.\n\nLook:{ib}{ab}and listen:{ab}{ib}\
             <end_of_turn>\n<start_of_turn>model\n"
        );
        let both = expand_media_placeholders(rendered.clone(), 256, 188);
        assert_eq!(both, want);
        assert_eq!(both.matches(IMAGE_PLACEHOLDER).count(), 2 * 256);
        assert_eq!(both.matches(AUDIO_PLACEHOLDER).count(), 2 * 188);
        assert_eq!(both.matches("<start_of_image>").count(), 2);
        assert_eq!(both.matches("<start_of_audio>").count(), 2);
        // The order of the two passes does not matter.
        assert_eq!(
            expand_image_placeholders(&expand_audio_placeholders(&rendered, 188), 256),
            want
        );
        // A zero count leaves that kind as written.
        let audio_only = expand_media_placeholders(rendered.clone(), 0, 188);
        assert_eq!(audio_only.matches(IMAGE_PLACEHOLDER).count(), 2);
        assert_eq!(audio_only.matches(AUDIO_PLACEHOLDER).count(), 2 * 188);
        let image_only = expand_media_placeholders(rendered.clone(), 256, 0);
        assert_eq!(image_only.matches(IMAGE_PLACEHOLDER).count(), 2 * 256);
        assert_eq!(image_only.matches(AUDIO_PLACEHOLDER).count(), 2);
        assert_eq!(expand_media_placeholders(rendered.clone(), 0, 0), rendered);
    }
}
