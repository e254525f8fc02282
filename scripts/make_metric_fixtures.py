"""Reference values for lora-train's E2E metrics (corpus BLEU, ROUGE-L) on a small
multi-reference corpus, computed with independent implementations from PyPI:

- BLEU: sacreBLEU's `corpus_bleu` with `tokenize="13a"`, `lowercase=True` and its default
  `smooth_method="exp"` (mteval-v13a's smoothing), one reference stream per reference slot with
  `None` where an MR has fewer references. This is what the E2E challenge's
  `mteval-v13a-sig.pl` computes (case-insensitive, closest reference length).
- ROUGE-L: pycocoevalcap's `PTBTokenizer` (Stanford CoreNLP 3.4.1 jar shipped in the wheel, so
  `java` must be on PATH) and `Rouge`, the same code path as the E2E scripts' `COCOEvalCap`.

Writes fixtures/e2e/metrics.json: the corpus, the expected scores, and each text's tokens under
both tokenizations (so the Rust tests can tell a tokenizer difference from a scoring one).

    pip install sacrebleu==2.6.0 pycocoevalcap==1.2
    python3 scripts/make_metric_fixtures.py [--out fixtures/e2e/metrics.json]
"""

import argparse
import json
import os

import sacrebleu
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

# Hand-written E2E-style MRs, references and system outputs (no external source). Casing,
# punctuation, quotes, brackets, currency, clitics, abbreviations and numbers are deliberate.
CORPUS = [
    {
        "mr": "name[The Vaults], eatType[pub], food[Italian]",
        "refs": ["The Vaults is an Italian pub.", "The Vaults pub serves Italian food."],
        "hyp": "The Vaults is an Italian pub.",
    },
    {
        "mr": "name[Aromi], eatType[coffee shop], area[city centre], priceRange[£20-25]",
        "refs": [
            "Aromi is a coffee shop in the city centre; prices are £20-25.",
            "In the city centre, Aromi (a coffee shop) charges £20-25.",
            "Aromi coffee shop, city centre, costs £20-25 per person.",
        ],
        "hyp": "AROMI is a \"coffee shop\" in the City Centre, it's £20-25.",
    },
    {
        "mr": "name[Blue Spice], eatType[coffee shop], area[riverside], familyFriendly[no]",
        "refs": [
            "Blue Spice is a coffee shop by the riverside. It isn't family-friendly.",
            "Blue Spice -- a coffee shop by the riverside -- doesn't welcome kids.",
            "There's a coffee shop called Blue Spice near the riverside; no children.",
            "Blue Spice, a riverside coffee shop, is not kid friendly!",
        ],
        "hyp": "Blue Spice is a coffee shop near the riverside, it isn't kids-friendly.",
    },
    {
        "mr": "name[Cotto], food[Chinese], priceRange[cheap], near[St. John's]",
        "refs": ["Cotto serves cheap Chinese food near St. John's."],
        "hyp": "Cotto, near St. John's, serves cheap Chinese food.",
    },
    {
        "mr": "name[Zizzi], food[French], customer rating[5 out of 5]",
        "refs": [
            "Zizzi serves French food and is rated 5 out of 5.",
            "Highly-rated (5 out of 5) Zizzi serves French food.",
        ],
        "hyp": "Zizzi serves French food, rated 5 out of 5 by customers!",
    },
    {
        "mr": "name[Green Man], eatType[pub], area[city centre], customer rating[3.5]",
        "refs": [
            "The Green Man is a pub in the city centre with a rating of 3.5.",
            "Green Man, a city-centre pub, is rated 3.5 by its 1,000 customers.",
            "Rated 3.5, the Green Man pub is in the city centre.",
        ],
        "hyp": "Green Man pub is rated 3.5... a city centre pub.",
    },
    {
        "mr": "name[Mr. Wong's], food[Japanese], priceRange[more than £30]",
        "refs": [
            "Mr. Wong's serves Japanese food for more than £30.",
            "Japanese food at Mr. Wong's costs more than £30.",
        ],
        "hyp": "mr. wong's serves japanese food costing more than £30 (high price range).",
    },
    {
        "mr": "name[Loch Fyne], eatType[restaurant], food[English], familyFriendly[yes]",
        "refs": [
            "Loch Fyne is a family-friendly English restaurant.",
            "Loch Fyne, an English restaurant, is 'kid friendly' and cannot be beaten.",
            "You're welcome with kids at Loch Fyne, an English restaurant.",
            "The English restaurant Loch Fyne welcomes families: they've got high chairs.",
        ],
        "hyp": "Loch Fyne is a kid-friendly restaurant serving English food; you can't beat it.",
    },
]


def bleu(corpus):
    slots = max(len(c["refs"]) for c in corpus)
    # One stream per reference slot; None where an MR has fewer references (sacreBLEU skips
    # None, as mteval-v13a-sig.pl skips the empty padding the E2E script writes).
    streams = [[c["refs"][k] if k < len(c["refs"]) else None for c in corpus] for k in range(slots)]
    score = sacrebleu.corpus_bleu(
        [c["hyp"] for c in corpus], streams, tokenize="13a", lowercase=True, smooth_method="exp"
    )
    return {
        "bleu": score.score / 100.0,
        "precisions": [p / 100.0 for p in score.precisions],
        "matches": list(score.counts),
        "totals": list(score.totals),
        "brevity_penalty": score.bp,
        "hyp_len": score.sys_len,
        "ref_len": score.ref_len,
    }


def rouge(corpus):
    # The COCOEvalCap path: PTB-tokenize references and hypotheses, then Rouge.compute_score.
    gts = {i: [{"caption": r} for r in c["refs"]] for i, c in enumerate(corpus)}
    res = {i: [{"caption": c["hyp"]}] for i, c in enumerate(corpus)}
    tok = PTBTokenizer()
    gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
    mean, per = Rouge().compute_score(gts_t, res_t)
    return float(mean), [float(x) for x in per], gts_t, res_t


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures", "e2e", "metrics.json"))
    args = ap.parse_args()

    b = bleu(CORPUS)
    r_mean, r_per, gts_t, res_t = rouge(CORPUS)
    t13a = Tokenizer13a()
    items = []
    for i, c in enumerate(CORPUS):
        texts = [c["hyp"]] + c["refs"]
        ptb = [res_t[i][0]] + gts_t[i]
        items.append(
            {
                **c,
                "rouge_l": r_per[i],
                # Tokens of [hyp, refs...], each a space-joined string.
                "mteval_tokens": [t13a(t.lower()) for t in texts],
                "ptb_tokens": ptb,
            }
        )
    out = {
        "generator": "scripts/make_metric_fixtures.py",
        "versions": {"sacrebleu": sacrebleu.__version__, "pycocoevalcap": "PTBTokenizer + Rouge"},
        "bleu": b,
        "rouge_l": r_mean,
        "items": items,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"BLEU {b['bleu']:.6f}  ROUGE-L {r_mean:.6f}  -> {args.out}")


if __name__ == "__main__":
    main()
