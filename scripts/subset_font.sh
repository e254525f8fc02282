#!/usr/bin/env bash
# Regenerates lora-train/assets/DejaVuSans-subset.ttf (the font curves.png is drawn with) from
# Debian's fonts-dejavu-core with fonttools (PyPI). Run once; the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
[ -f "$src" ] || { apt-get install -y -qq fonts-dejavu-core >/dev/null; }
command -v pyftsubset >/dev/null || pip install -q fonttools
# Latin-1, dashes and quotes, arrows, minus, <= >=, infinity, Greek lower case.
pyftsubset "$src" \
  --unicodes="U+0020-007E,U+00A0-00FF,U+2010-2027,U+2190-2193,U+2212,U+2264,U+2265,U+221E,U+03B1-03C9" \
  --layout-features='*' --output-file=lora-train/assets/DejaVuSans-subset.ttf
