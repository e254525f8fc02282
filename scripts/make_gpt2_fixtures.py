"""Reference fixtures for the GPT-2 model, computed with transformers + peft.

Writes fixtures/gpt2/:
  tokenizer/tokenizer.json   the committed vocab.json + merges.txt saved by GPT2TokenizerFast
  tokenizer/reference.json   ids for sample texts (HF's tokenizer)
  tiny-a/                    random GPT-2 (real 50257 vocab, n_embd 16, 2 layers, gelu_new),
                             model.safetensors with `transformer.` keys, fp32
  tiny-b/                    random GPT-2 (n_embd 24, 3 layers, 3 heads, scale_attn_by_inverse_layer_idx,
                             eps 1e-6), pytorch_model.bin without prefix, bf16
  reference-{a,b}.safetensors  logits slices, log-sum-exp, argmax, losses for padded batches
  reference-{a,b}.json       greedy and beam-search continuations from HF generate
  peft-c_attn/               PEFT adapter on c_attn (non-zero B, fan_in_fan_out) for tiny-a,
                             with its logits in reference-a.safetensors

Check that an adapter written by lora-burn loads in PEFT and reproduces our logits:
  python scripts/make_gpt2_fixtures.py --check-adapter DIR
(DIR holds adapter_config.json, adapter_model.safetensors and our_logits.safetensors with
`ids`, `mask` and `logits`, as the Rust test `gpt2_adapter_export` leaves them.)
"""

import argparse
import json
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "fixtures", "gpt2")
TOK = os.path.join(ROOT, "tokenizer")
VOCAB_SLICE = 256  # logits are stored for the first ids only, plus log-sum-exp and argmax

TEXTS = [
    "Hello world, this is GPT-2's tokenizer!",
    "  Leading spaces,\ttabs\nand newlines.",
    "Unicode: naïve café, Ελληνικά, 日本語, emoji 🤖🚀.",
    "name[The Eagle], eatType[coffee shop], food[French]||The Eagle is a French coffee shop.",
    "<|endoftext|> is a special token",
]

CONFIGS = {
    "a": dict(n_embd=16, n_layer=2, n_head=2, n_positions=32, activation_function="gelu_new",
              layer_norm_epsilon=1e-5),
    "b": dict(n_embd=24, n_layer=3, n_head=3, n_positions=48, activation_function="gelu_new",
              layer_norm_epsilon=1e-6, scale_attn_by_inverse_layer_idx=True),
}


def tokenizer():
    # Built from vocab.json + merges.txt (transformers 5 takes them as `vocab`/`merges`).
    return GPT2TokenizerFast(vocab=os.path.join(TOK, "vocab.json"),
                             merges=os.path.join(TOK, "merges.txt"))


def write_tokenizer(tok):
    tok.backend_tokenizer.save(os.path.join(TOK, "tokenizer.json"))
    ref = [{"text": t, "ids": tok(t)["input_ids"]} for t in TEXTS]
    with open(os.path.join(TOK, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)


def batch(tok, side):
    """Two prompts of different lengths, padded on `side` with eos, plus the mask."""
    tok.padding_side = side
    tok.pad_token = tok.eos_token
    enc = tok(["The quick brown fox jumps over", "Hello world"], return_tensors="pt",
              padding=True)
    return enc["input_ids"], enc["attention_mask"]


def summarize(logits):
    return {
        "logits_head": logits[..., :VOCAB_SLICE].contiguous(),
        "lse": torch.logsumexp(logits, dim=-1).contiguous(),
        "argmax": logits.argmax(dim=-1).to(torch.int64).contiguous(),
    }


def lm_loss(model, ids, mask):
    labels = ids.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def write_model(tag, tok):
    torch.manual_seed({"a": 10, "b": 20}[tag])
    cfg = GPT2Config(vocab_size=50257, bos_token_id=50256, eos_token_id=50256, **CONFIGS[tag])
    # Eager attention is the reference semantics: SDPA treats fully masked query rows (left
    # padding) differently, which changes logits at padding positions and so the loss.
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    d = os.path.join(ROOT, f"tiny-{tag}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if tag == "a":
        model.save_pretrained(d)  # model.safetensors, keys with `transformer.`
    else:
        # bf16, no prefix, torch pickle: the other loader path. References use the rounded weights.
        model = model.to(torch.bfloat16).to(torch.float32)
        state = {k[len("transformer."):]: v.to(torch.bfloat16) for k, v in model.state_dict().items()
                 if k.startswith("transformer.")}
        torch.save(state, os.path.join(d, "pytorch_model.bin"))
        cfg.save_pretrained(d)
    out, gens = {}, {}
    for side in ("right", "left"):
        ids, mask = batch(tok, side)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = lm_loss(model, ids, mask)
        out[f"{side}.ids"] = ids.to(torch.int64)
        out[f"{side}.mask"] = mask.to(torch.int64)
        for k, v in summarize(logits).items():
            out[f"{side}.{k}"] = v
        out[f"{side}.loss"] = loss.reshape(1)
    # Label smoothing 0.1 on the right-padded batch, as transformers' loss computes it.
    ids, mask = batch(tok, "right")
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    labels = ids.masked_fill(mask == 0, -100)[:, 1:].reshape(-1)
    out["right.loss_smooth"] = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels, ignore_index=-100,
        label_smoothing=0.1).reshape(1)
    # Generation from left-padded prompts (what batched generation needs).
    ids, mask = batch(tok, "left")
    with torch.no_grad():
        greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                                do_sample=False, pad_token_id=50256)
        single = tok("The quick brown fox", return_tensors="pt")
        beam = model.generate(**single, max_new_tokens=6, num_beams=4, do_sample=False,
                              early_stopping=True, length_penalty=1.0, pad_token_id=50256)
        beam_ngram = model.generate(**single, max_new_tokens=8, num_beams=4, do_sample=False,
                                    no_repeat_ngram_size=2, length_penalty=0.9,
                                    pad_token_id=50256)
    gens["greedy_prompt_ids"] = ids.tolist()
    gens["greedy_prompt_mask"] = mask.tolist()
    gens["greedy"] = greedy[:, ids.shape[1]:].tolist()
    gens["beam_prompt"] = single["input_ids"][0].tolist()
    gens["beam4"] = beam[0, single["input_ids"].shape[1]:].tolist()
    gens["beam4_ngram2_lp09"] = beam_ngram[0, single["input_ids"].shape[1]:].tolist()
    if tag == "a":
        write_peft(model, tok, out)
    save_file(out, os.path.join(ROOT, f"reference-{tag}.safetensors"))
    with open(os.path.join(ROOT, f"reference-{tag}.json"), "w") as f:
        json.dump(gens, f, indent=1)


def write_peft(model, tok, out):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                     init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(11)
    peft_model = get_peft_model(model, cfg).eval()
    d = os.path.join(ROOT, "peft-c_attn")
    shutil.rmtree(d, ignore_errors=True)
    peft_model.save_pretrained(d)
    os.remove(os.path.join(d, "README.md"))
    ids, mask = batch(tok, "right")
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=mask).logits
    for k, v in summarize(logits).items():
        out[f"peft.{k}"] = v
    peft_model.unload()


def check_adapter(d):
    """Loads our adapter into PEFT on tiny-a and compares logits with ours."""
    model = GPT2LMHeadModel.from_pretrained(os.path.join(ROOT, "tiny-a"),
                                            attn_implementation="eager").eval()
    peft_model = PeftModel.from_pretrained(model, d).eval()
    ours = load_file(os.path.join(d, "our_logits.safetensors"))
    with torch.no_grad():
        logits = peft_model(input_ids=ours["ids"].long(), attention_mask=ours["mask"].long()).logits
    diff = (logits[..., :ours["logits"].shape[-1]] - ours["logits"]).abs().max().item()
    print(f"PEFT vs lora-burn logits on {d}: max abs diff {diff:.3e}")
    return 0 if diff <= 1e-4 else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-adapter")
    args = ap.parse_args()
    if args.check_adapter:
        raise SystemExit(check_adapter(args.check_adapter))
    tok = tokenizer()
    write_tokenizer(tok)
    for tag in CONFIGS:
        write_model(tag, tok)
    print("wrote", os.path.normpath(ROOT))


if __name__ == "__main__":
    main()
