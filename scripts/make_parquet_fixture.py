"""A small SST-2-shaped Parquet file for the `hub` feature's Parquet-to-JSONL test:
fixtures/hub/sst2-sample.parquet (Snappy, as the hub's Parquet conversion writes it) and the
rows it holds as fixtures/hub/sst2-sample.jsonl. Sentences are hand-written.

    pip install pyarrow
    python3 scripts/make_parquet_fixture.py
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    (0, "a gorgeous , witty , seductive movie . ", 1),
    (1, "the plot is nothing but boilerplate clichés from start to finish , ", 0),
    (2, "it 's \"charming\" and often affecting", 1),
    (3, "unflinchingly bleak and desperate ", 0),
    (4, "quiet , introspective and entertaining \u2014 ¡olé!", 1),
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "..", "fixtures", "hub")
    os.makedirs(out, exist_ok=True)
    table = pa.table(
        {
            "idx": pa.array([r[0] for r in ROWS], pa.int32()),
            "sentence": pa.array([r[1] for r in ROWS], pa.string()),
            "label": pa.array([r[2] for r in ROWS], pa.int64()),
        }
    )
    pq.write_table(table, os.path.join(out, "sst2-sample.parquet"), compression="snappy")
    with open(os.path.join(out, "sst2-sample.jsonl"), "w", encoding="utf-8") as f:
        for idx, sentence, label in ROWS:
            f.write(json.dumps({"idx": idx, "sentence": sentence, "label": label}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
