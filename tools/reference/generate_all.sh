#!/usr/bin/env bash
# Regenerate the reference fixtures with the pinned HF transformers in tools/reference/.venv
# (see tools/reference/README.md):
#   tests/fixtures/text/       make_text_fixtures.py     (names: tiny_text_f32, tiny_mm_bf16, tiny_text_f16)
#   tests/fixtures/matformer/  make_matformer_fixtures.py (name: matformer)
#   tests/fixtures/vision/     make_vision_fixtures.py, make_image_fixtures.py (no names only)
#   tests/fixtures/tokenizer/image_prompts.json  make_processor_goldens.py (no names only)
#   tests/fixtures/audio/      make_audio_fixtures.py (no names only; needs apt espeak-ng ffmpeg flac lame vorbis-tools)
# No names: everything. `--out DIR` writes the text fixtures to DIR and the MatFormer ones to DIR/matformer.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false

out=()
text_names=()
matformer=0
names=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out=(--out "$2"); shift 2 ;;
        --out=*) out=(--out "${1#--out=}"); shift ;;
        matformer) matformer=1; names=1; shift ;;
        *) text_names+=("$1"); names=1; shift ;;
    esac
done
if [[ $names -eq 0 || ${#text_names[@]} -gt 0 ]]; then
    "$py" "$here/make_text_fixtures.py" ${out[@]+"${out[@]}"} ${text_names[@]+"${text_names[@]}"}
fi
if [[ $names -eq 0 ]]; then
    "$py" "$here/make_vision_fixtures.py"
    "$py" "$here/make_image_fixtures.py"
    "$py" "$here/make_processor_goldens.py"
    "$py" "$here/make_audio_fixtures.py"
    "$py" "$here/make_audio_tower_fixtures.py"
fi
if [[ $names -eq 0 || $matformer -eq 1 ]]; then
    mout=()
    [[ ${#out[@]} -gt 0 ]] && mout=(--out "${out[1]}/matformer")
    "$py" "$here/make_matformer_fixtures.py" ${mout[@]+"${mout[@]}"}
fi
