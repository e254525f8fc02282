"""PEFT 0.21.2 adapter files of the kinds lora-burn must load, with PEFT's logits for each.

Writes fixtures/peft/ (base model: fixtures/gpt2/tiny-a; adapter: fixtures/gpt2/peft-c_attn):
  c_attn-bin/          the c_attn adapter saved with safe_serialization=False (adapter_model.bin)
  c_attn-fp16/         the same adapter after peft_model.half(): fp16 factors in safetensors
  c_attn-bf16/         ... bf16 factors
  wte-tied-false/      LoRA on wte and c_attn (random B), ensure_weight_tying=False (PEFT's default)
  wte-tied-true/       the same factors, ensure_weight_tying=True. PEFT 0.21.2 only ties modules
                       named embed_tokens/lm_head, so for GPT-2's wte the flag changes nothing: the
                       tied LM head keeps the base table until the adapter is merged
  files-reference.safetensors
      ids, mask                      the batch every logit below is for
      <dir>.logits                   PEFT's logits (first 512 ids) with that adapter on fp32 tiny-a
      wte-tied-false.merged.logits   after PEFT's merge_and_unload (the tied head sees the update)
  weighted-x/, weighted-y/   two adapters on tiny-a (x: c_attn r 2; y: c_attn, c_fc and wte r 2)
  weighted-reference.safetensors
      <kind>.<module>.lora_A / .lora_B   the factors add_weighted_adapter(["x", "y"], [0.7, -0.4])
                                         wrote (linear sites), for kind linear, cat, svd (rank 2),
                                         svd3 (svd_rank 3)
      <kind>.logits                      logits with only that combined adapter active
  init-{pissa,olora}/  base-changing initialisations on fixtures/encoder/roberta-a (query, value; r 2):
      initial/           the adapter right after initialisation, saved with init_lora_weights=true
                         (PEFT's recipe for path_initial_model_for_weight_conversion)
      trained/           the adapter after a deterministic update of its factors, as PEFT saves it
                         (init_lora_weights still pissa/olora: it only works on the residual base)
      converted/         the same, saved with path_initial_model_for_weight_conversion: a plain
                         rank-4 LoRA for the unmodified base
  init-reference.safetensors
      <kind>.<module>.residual   the base weight PEFT left ([out, in])
      <kind>.<module>.lora_A/B   the initial factors
      <kind>.logits              the trained model's logits (residual base + trained adapter)
      ids, mask                  their batch
  files-reference.json  the keys PEFT saved in each directory

Run: /work/venv/bin/python scripts/make_peft_file_fixtures.py

The round trip back (PEFT saved -> lora-burn loaded -> lora-burn saved -> PEFT loads):
  python scripts/make_peft_file_fixtures.py --check DIR
loads every adapter the Rust tests leave in DIR (target/tmp/peft-round-trip: one directory per
kind, each with our_logits.safetensors and base.txt naming its fixture model) into PEFT and
compares PEFT's logits with ours.
"""

import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
BASE = os.path.join(FIX, "gpt2", "tiny-a")
ADAPTER = os.path.join(FIX, "gpt2", "peft-c_attn")
OUT = os.path.join(FIX, "peft")


def base():
    return GPT2LMHeadModel.from_pretrained(BASE, attn_implementation="eager").eval()


def batch():
    g = torch.Generator().manual_seed(5)
    vocab = base().config.vocab_size
    ids = torch.randint(0, vocab, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


VOCAB_SLICE = 512  # logits kept for the first ids only: the fixture stays small


def logits_of(model, ids, mask):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return logits[..., :VOCAB_SLICE].contiguous()


def save(peft_model, name, **kwargs):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    peft_model.save_pretrained(d, **kwargs)
    os.remove(os.path.join(d, "README.md"))
    for f in ("adapter_model.safetensors", "adapter_model.bin"):
        p = os.path.join(d, f)
        if os.path.exists(p):
            keys = load_file(p).keys() if f.endswith("safetensors") else torch.load(p).keys()
            return sorted(keys)
    raise RuntimeError(f"nothing saved in {d}")


def reload_logits(name, ids, mask):
    """PEFT's own load of the directory just written, on a fresh fp32 base."""
    model = PeftModel.from_pretrained(base(), os.path.join(OUT, name)).eval()
    return logits_of(model, ids, mask)


def file_kinds(ids, mask, ref, keys):
    peft_model = PeftModel.from_pretrained(base(), ADAPTER).eval()
    keys["c_attn-bin"] = save(peft_model, "c_attn-bin", safe_serialization=False)
    ref["c_attn-bin.logits"] = reload_logits("c_attn-bin", ids, mask)
    for name, dtype in (("c_attn-fp16", torch.float16), ("c_attn-bf16", torch.bfloat16)):
        half = PeftModel.from_pretrained(base(), ADAPTER).to(dtype).eval()
        keys[name] = save(half, name)
        ref[f"{name}.logits"] = reload_logits(name, ids, mask)


def tied(ids, mask, ref, keys):
    for flag in (False, True):
        name = f"wte-tied-{str(flag).lower()}"
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["wte", "c_attn"], fan_in_fan_out=True,
                         init_lora_weights=False, ensure_weight_tying=flag, task_type="CAUSAL_LM")
        torch.manual_seed(23)
        peft_model = get_peft_model(base(), cfg).eval()
        with torch.no_grad():
            # init_lora_weights=False draws both embedding factors from N(0, 1): an update ~100×
            # the table. Shrink it so the logits stay at the base model's scale.
            for n, p in peft_model.named_parameters():
                if "lora_embedding" in n:
                    p.mul_(0.1)
        keys[name] = save(peft_model, name)
        ref[f"{name}.logits"] = logits_of(peft_model, ids, mask)
        assert torch.allclose(reload_logits(name, ids, mask), ref[f"{name}.logits"], atol=1e-6)
        if flag:
            assert torch.equal(ref[f"{name}.logits"], ref["wte-tied-false.logits"])
        else:
            merged = peft_model.merge_and_unload().eval()
            ref[f"{name}.merged.logits"] = logits_of(merged, ids, mask)


WEIGHTS = [0.7, -0.4]
COMBINATIONS = {"linear": {"combination_type": "linear"}, "cat": {"combination_type": "cat"},
                "svd": {"combination_type": "svd"}, "svd3": {"combination_type": "svd", "svd_rank": 3}}


def weighted(ids, mask):
    configs = {
        "x": LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                        init_lora_weights=False),
        "y": LoraConfig(r=2, lora_alpha=8, target_modules=["c_attn", "c_fc", "wte"], fan_in_fan_out=True,
                        init_lora_weights=False),
    }
    torch.manual_seed(31)
    pm = get_peft_model(base(), configs["x"], adapter_name="x").eval()
    pm.add_adapter("y", configs["y"])
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_embedding" in n:
                p.mul_(0.1)  # see tied(): keep the update at the table's scale
    for name in configs:
        d = os.path.join(OUT, f"weighted-{name}")
        shutil.rmtree(d, ignore_errors=True)
        pm.save_pretrained(d, selected_adapters=[name])
        # save_pretrained puts non-default adapters in a subdirectory named after them.
        sub = os.path.join(d, name)
        if os.path.isdir(sub):
            for f in os.listdir(sub):
                shutil.move(os.path.join(sub, f), os.path.join(d, f))
            os.rmdir(sub)
        os.remove(os.path.join(d, "README.md"))
    ref = {}
    for kind, kwargs in COMBINATIONS.items():
        pm.add_weighted_adapter(["x", "y"], WEIGHTS, kind, **kwargs)
        pm.set_adapter(kind)
        ref[f"{kind}.logits"] = logits_of(pm, ids, mask)
        for n, p in pm.named_parameters():
            # The embedding's factors (vocab-sized) are covered by the logits only.
            if f".{kind}" in n and "lora_" in n and "wte" not in n:
                module = n.removeprefix("base_model.model.").split(".lora_")[0]
                leaf = "lora_A" if ".lora_A." in n or "lora_embedding_A" in n else "lora_B"
                ref[f"{kind}.{module}.{leaf}"] = p.detach().float().contiguous()
    return ref


def init_variants():
    from transformers import RobertaForSequenceClassification

    enc = os.path.join(FIX, "encoder", "roberta-a")
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(3, 100, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ref = {"ids": ids, "mask": mask}
    for kind in ("pissa", "olora"):
        model = RobertaForSequenceClassification.from_pretrained(enc).eval()
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=kind)
        pm = get_peft_model(model, cfg).eval()
        root = os.path.join(OUT, f"init-{kind}")
        shutil.rmtree(root, ignore_errors=True)
        for n, m in pm.base_model.model.named_modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
                ref[f"{kind}.{n}.residual"] = m.base_layer.weight.detach().clone()
                ref[f"{kind}.{n}.lora_A"] = m.lora_A["default"].weight.detach().clone()
                ref[f"{kind}.{n}.lora_B"] = m.lora_B["default"].weight.detach().clone()
        pm.peft_config["default"].init_lora_weights = True
        pm.save_pretrained(os.path.join(root, "initial"))
        pm.peft_config["default"].init_lora_weights = kind
        g = torch.Generator().manual_seed(13)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        with torch.no_grad():
            ref[f"{kind}.logits"] = pm(input_ids=ids, attention_mask=mask).logits.float().contiguous()
        pm.save_pretrained(os.path.join(root, "trained"))
        pm.save_pretrained(os.path.join(root, "converted"),
                           path_initial_model_for_weight_conversion=os.path.join(root, "initial"))
        for d in ("initial", "trained", "converted"):
            readme = os.path.join(root, d, "README.md")
            if os.path.exists(readme):
                os.remove(readme)
    return ref


def main():
    # PEFT writes target_modules from a set, whose order depends on string hashing.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    os.makedirs(OUT, exist_ok=True)
    ids, mask = batch()
    ref = {"ids": ids.to(torch.int64), "mask": mask.to(torch.int64)}
    keys = {}
    file_kinds(ids, mask, ref, keys)
    tied(ids, mask, ref, keys)
    save_file(ref, os.path.join(OUT, "files-reference.safetensors"))
    save_file(weighted(ids, mask), os.path.join(OUT, "weighted-reference.safetensors"))
    save_file(init_variants(), os.path.join(OUT, "init-reference.safetensors"))
    with open(os.path.join(OUT, "files-reference.json"), "w") as f:
        json.dump({"peft_version": "0.21.2", "keys": keys}, f, indent=1, sort_keys=True)
        f.write("\n")


def check(root):
    from transformers import AutoModelForSequenceClassification

    worst = 0.0
    for kind in sorted(os.listdir(root)):
        d = os.path.join(root, kind)
        with open(os.path.join(d, "base.txt")) as f:
            fixture = f.read().strip()
        cls = GPT2LMHeadModel if fixture.startswith("gpt2") else AutoModelForSequenceClassification
        model = cls.from_pretrained(os.path.join(FIX, fixture)).eval()
        peft_model = PeftModel.from_pretrained(model, d).eval()
        ours = load_file(os.path.join(d, "our_logits.safetensors"))
        with torch.no_grad():
            logits = peft_model(input_ids=ours["ids"].long(), attention_mask=ours["mask"].long()).logits
        width = ours["logits"].shape[-1]
        diff = (logits[..., :width] - ours["logits"]).abs().max().item()
        worst = max(worst, diff)
        print(f"{kind}: PEFT vs lora-burn logits, max abs diff {diff:.3e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    main()
