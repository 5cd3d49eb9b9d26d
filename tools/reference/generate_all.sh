#!/usr/bin/env bash
# Regenerate the text-decoder reference fixtures under tests/fixtures/text/ with the pinned
# HF transformers in tools/reference/.venv (see tools/reference/README.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
"$py" "$here/make_text_fixtures.py" "$@"
