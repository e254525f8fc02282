"""PEFT 0.21.2's modules_to_save with several adapters on one model, recorded for lora-burn.

PEFT wraps each module named in modules_to_save in a ModulesToSaveWrapper: the original module plus
one trained copy per adapter that asked for it. The active adapter's copy runs; the original runs
when the active adapter has no copy or adapters are disabled. These fixtures pin that down.

Writes fixtures/peft/saved/ (base model: fixtures/encoder/roberta-a, a RobertaForSequenceClassification
whose head is `classifier`):
  a/   SEQ_CLS LoRA on query, value (r 2, alpha 4, random B); PEFT adds modules_to_save
       ["classifier", "score"] itself. Its classifier copy is the base head plus N(0, 0.3) noise.
  b/   the same kind with r 4, alpha 8, another seed and its own perturbed classifier copy
  c/   LoRA on query, value (r 2, alpha 4, random B times 4) with no task_type and no
       modules_to_save: no classifier copy
  embedding/  RoBERTa MLM (fixtures/encoder/roberta-mlm) LoRA on query, value with modules_to_save
       ["word_embeddings"] and a perturbed copy: the embedding uses the copy, the tied MLM decoder
       the original table
  reference.safetensors
      embedding.logits     PEFT's MLM logits for the batch below with embedding/ loaded
      ids, mask            the batch (2 x 7, bos 0 / eos 2, row 1 padded with 1 from position 5)
      <state>.logits       fp32 [2, 3] logits of one PeftModel holding a, b, c (loaded in that
                           order with is_trainable=True), in each state. The model is a plain
                           PeftModel (a's config loaded with task_type cleared): with a's SEQ_CLS
                           task_type PEFT builds a PeftModelForSequenceClassification, which adds
                           classifier to c's modules_to_save and then fails to load c (KeyError,
                           see seq_cls_load_error). a and b keep their copies either way.
        base               the plain base model, no PEFT
        loaded             right after the three loads (PEFT leaves "a" active)
        a, b, c            after set_adapter(name); c runs the original classifier
        disabled           "b" active, inside disable_adapter()
        ac                 LoRA a and c both active via base_model.set_adapter(["a", "c"]) (the
                           PeftModel refuses a list; see ac_error); classifier copy of a
        deleted            a fresh three-adapter model with "a" active, after delete_adapter("a")
        merged_b           a fresh three-adapter model with "b" active, after merge_and_unload()
  reference.json
      keys                       the sorted tensor names saved in each adapter directory
      seq_cls_load_error         what loading a, b, c into a PeftModelForSequenceClassification raised
      model_class                the PeftModel class the states were recorded on
      active_after_delete        model.active_adapters after delete_adapter("a")
      classifier_active_after_delete   the classifier wrapper's active_adapters then
      ac_error                   what PeftModel.set_adapter(["a", "c"]) raised (null if nothing)
      ac_active_adapters, ac_classifier_active   the tuner's and the classifier wrapper's active
                                 adapters in the ac state
      counts                     get_nb_trainable_parameters() for the states in state_order,
                                 visited in that order on one model (requires_grad depends on history)
      trainable_classifier       the classifier parameters with requires_grad in those states
      trainable_classifier_after_disable_b   ... once disable_adapter() has exited ("b" active)

Run: /work/venv/bin/python scripts/make_peft_saved_fixtures.py
"""

import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
BASE = os.path.join(FIX, "encoder", "roberta-a")
OUT = os.path.join(FIX, "peft", "saved")

NOISE = 0.3  # std of the noise added to each classifier copy
ADAPTERS = {  # name -> (LoraConfig kwargs, seed, factor on lora_B)
    "a": (dict(task_type="SEQ_CLS", r=2, lora_alpha=4), 41, 1.0),
    "b": (dict(task_type="SEQ_CLS", r=4, lora_alpha=8), 42, 1.0),
    # c runs the base head, whose logits are ~0.01: a larger update keeps c's logits clear of base's.
    "c": (dict(r=2, lora_alpha=4), 43, 4.0),
}
STATE_ORDER = ["loaded", "a", "b", "c", "disabled_b"]


def base():
    return AutoModelForSequenceClassification.from_pretrained(BASE, attn_implementation="eager").eval()


def batch():
    g = torch.Generator().manual_seed(17)
    ids = torch.randint(3, base().config.vocab_size, (2, 7), generator=g)
    ids[:, 0] = 0
    ids[0, 6] = 2
    ids[1, 4] = 2
    ids[1, 5:] = 1
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def logits_of(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float().contiguous()


def adapter_dir(name):
    return os.path.join(OUT, name)


def save(peft_model, name):
    d = adapter_dir(name)
    shutil.rmtree(d, ignore_errors=True)
    peft_model.save_pretrained(d)
    os.remove(os.path.join(d, "README.md"))
    return sorted(load_file(os.path.join(d, "adapter_model.safetensors")).keys())


def perturb_copy(peft_model, seed):
    """Add N(0, NOISE) to every parameter of the adapter's classifier copy, if it has one."""
    wrapper = peft_model.base_model.model.classifier
    if not hasattr(wrapper, "modules_to_save"):
        return
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapper.modules_to_save["default"].parameters():
            p.add_(NOISE * torch.randn(p.shape, generator=g))


def make_adapter(name):
    kwargs, seed, b_scale = ADAPTERS[name]
    cfg = LoraConfig(target_modules=["query", "value"], init_lora_weights=False, **kwargs)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base(), cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if ".lora_B." in n:
                p.mul_(b_scale)
    perturb_copy(peft_model, seed + 1000)
    return save(peft_model, name)


def load_three(**kwargs):
    model = PeftModel.from_pretrained(base(), adapter_dir("a"), adapter_name="a", is_trainable=True, **kwargs)
    model.load_adapter(adapter_dir("b"), adapter_name="b", is_trainable=True)
    model.load_adapter(adapter_dir("c"), adapter_name="c", is_trainable=True)
    return model


def seq_cls_load_error():
    """What the plain recipe raises: a's task_type makes a PeftModelForSequenceClassification, whose
    add_adapter puts classifier into every later adapter's modules_to_save, so loading c (no copy saved)
    looks for c's classifier tensors."""
    try:
        load_three()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def three():
    """One PeftModel holding a, b and c, loaded as trainable, "a" active.

    a's config is loaded with task_type cleared so the model is a plain PeftModel: a and b still
    bring their classifier copies (modules_to_save is in their configs), c brings none. For LoRA the
    plain PeftModel's forward is the sequence-classification one's (same logits for a and b)."""
    cfg = PeftConfig.from_pretrained(adapter_dir("a"))
    cfg.task_type = None
    return load_three(config=cfg)


def record(model, state, info):
    trainable, total = model.get_nb_trainable_parameters()
    info["counts"][state] = {"trainable": trainable, "total": total}
    info["trainable_classifier"][state] = [
        n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n
    ]


def states(ids, mask, ref, info):
    model = three()
    record(model, "loaded", info)
    ref["loaded.logits"] = logits_of(model.eval(), ids, mask)
    for name in ("a", "b", "c"):
        model.set_adapter(name)
        record(model, name, info)
        ref[f"{name}.logits"] = logits_of(model.eval(), ids, mask)
    model.set_adapter("b")
    with model.disable_adapter():
        record(model, "disabled_b", info)
        ref["disabled.logits"] = logits_of(model.eval(), ids, mask)
    info["trainable_classifier_after_disable_b"] = [
        n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n
    ]


def both(ids, mask, ref, info):
    """LoRA a and c together: the PeftModel only takes one name, its tuner takes a list."""
    model = three()
    try:
        model.set_adapter(["a", "c"])
        info["ac_error"] = None
    except Exception as e:  # record what PEFT says, then go through the tuner
        info["ac_error"] = f"{type(e).__name__}: {e}"
        model.base_model.set_adapter(["a", "c"])
    info["ac_active_adapters"] = list(model.base_model.active_adapters)
    info["ac_classifier_active"] = list(model.base_model.model.classifier.active_adapters)
    ref["ac.logits"] = logits_of(model.eval(), ids, mask)


def deleted(ids, mask, ref, info):
    model = three()
    model.set_adapter("a")
    model.delete_adapter("a")
    info["active_after_delete"] = list(model.active_adapters)
    info["classifier_active_after_delete"] = list(model.base_model.model.classifier.active_adapters)
    ref["deleted.logits"] = logits_of(model.eval(), ids, mask)


def merged(ids, mask, ref):
    model = three()
    model.set_adapter("b")
    plain = model.merge_and_unload().eval()
    ref["merged_b.logits"] = logits_of(plain, ids, mask)


def embedding_copy(ref):
    """RoBERTa MLM (fixtures/encoder/roberta-mlm) with word_embeddings in modules_to_save: the input
    embedding uses the copy, while the tied MLM decoder keeps the original table (PEFT 0.21.2
    re-ties only modules named embed_tokens / lm_head)."""
    from transformers import AutoModelForMaskedLM

    mlm = lambda: AutoModelForMaskedLM.from_pretrained(os.path.join(FIX, "encoder", "roberta-mlm")).eval()
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                     modules_to_save=["word_embeddings"], init_lora_weights=False)
    torch.manual_seed(44)
    peft_model = get_peft_model(mlm(), cfg)
    g = torch.Generator().manual_seed(1044)
    with torch.no_grad():
        copy = peft_model.base_model.model.roberta.embeddings.word_embeddings.modules_to_save["default"].weight
        copy.add_(NOISE * torch.randn(copy.shape, generator=g))
    keys = save(peft_model, "embedding")
    ids, mask = batch()
    reloaded = PeftModel.from_pretrained(mlm(), adapter_dir("embedding")).eval()
    ref["embedding.logits"] = logits_of(reloaded, ids, mask)
    return keys


def main():
    # PEFT writes target_modules from a set, whose order depends on string hashing.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    os.makedirs(OUT, exist_ok=True)
    info = {"peft_version": "0.21.2", "state_order": STATE_ORDER,
            "keys": {name: make_adapter(name) for name in ADAPTERS},
            "counts": {}, "trainable_classifier": {}, "seq_cls_load_error": seq_cls_load_error(),
            "model_class": "PeftModel"}
    ids, mask = batch()
    ref = {"ids": ids.to(torch.int64), "mask": mask.to(torch.int64), "base.logits": logits_of(base(), ids, mask)}
    states(ids, mask, ref, info)
    both(ids, mask, ref, info)
    deleted(ids, mask, ref, info)
    merged(ids, mask, ref)
    info["keys"]["embedding"] = embedding_copy(ref)
    save_file(ref, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
