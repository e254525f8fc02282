"""Reference fixtures for lora-core, computed with torch + peft.

Writes fixtures/core/:
  linear.safetensors     nn.Linear + LoRA (non-zero A and B): input, output, grads of A and B,
                         for plain scaling and for rsLoRA
  embedding.safetensors  nn.Embedding + LoRA: ids, output, grads
  tiny/                  a small custom module tree: base weights (torch names), a PEFT adapter
                         directory written by save_pretrained (non-zero B, trained head and
                         biases), and PEFT's logits (adapter, merged, base)
  targeting.json         which modules PEFT adapts (with rank and scaling) for a table of configs

Run: python scripts/make_core_fixtures.py   (torch, peft, safetensors from PyPI)
"""

import json
import os
import shutil
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "core")


def linear_case(use_rslora):
    torch.manual_seed(1)
    base = nn.Linear(6, 5)
    cfg = LoraConfig(r=3, lora_alpha=6, target_modules=["lin"], init_lora_weights=False,
                     use_rslora=use_rslora)
    model = get_peft_model(nn.ModuleDict({"lin": base}), cfg)
    layer = model.base_model.model["lin"]
    x = torch.randn(2, 4, 6)
    y = layer(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    a = layer.lora_A["default"].weight
    b = layer.lora_B["default"].weight
    return {
        "weight": base.weight.detach().clone(),
        "bias": base.bias.detach().clone(),
        "lora_A": a.detach().clone(),
        "lora_B": b.detach().clone(),
        "x": x,
        "y": y.detach(),
        "upstream": upstream,
        "grad_A": a.grad.clone(),
        "grad_B": b.grad.clone(),
    }


def write_linear():
    out = {}
    for tag, rs in (("plain", False), ("rslora", True)):
        for k, v in linear_case(rs).items():
            out[f"{tag}.{k}"] = v.contiguous()
    save_file(out, os.path.join(ROOT, "linear.safetensors"))


def write_embedding():
    torch.manual_seed(2)
    base = nn.Embedding(10, 4)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["emb"], init_lora_weights=False)
    model = get_peft_model(nn.ModuleDict({"emb": base}), cfg)
    layer = model.base_model.model["emb"]
    ids = torch.tensor([[1, 3, 3, 9], [0, 2, 5, 1]])
    y = layer(ids)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    a = layer.lora_embedding_A["default"]
    b = layer.lora_embedding_B["default"]
    save_file({
        "weight": base.weight.detach().clone(),
        "lora_embedding_A": a.detach().clone(),
        "lora_embedding_B": b.detach().clone(),
        "ids": ids.to(torch.int64),
        "y": y.detach(),
        "upstream": upstream,
        "grad_A": a.grad.clone(),
        "grad_B": b.grad.clone(),
    }, os.path.join(ROOT, "embedding.safetensors"))


class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, h):
        a = self.q(h) + self.v(h)
        return self.norm(h + self.out(F.gelu(self.fc(a))))


class Encoder(nn.Module):
    def __init__(self, d, n):
        super().__init__()
        self.layers = nn.ModuleList([Layer(d) for _ in range(n)])


class Tiny(nn.Module):
    """The module tree the Rust test rebuilds: emb -> encoder.layers.N -> mean -> head."""

    def __init__(self, vocab=20, d=8, n=2, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.encoder = Encoder(d, n)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        h = self.emb(ids)
        for layer in self.encoder.layers:
            h = layer(h)
        return self.head(h.mean(dim=1))


def write_tiny():
    d = os.path.join(ROOT, "tiny")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(3)
    model = Tiny().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(d, "base_model.safetensors"))
    ids = torch.tensor([[1, 4, 7, 19, 0], [3, 3, 8, 2, 11]])
    with torch.no_grad():
        base_logits = model(ids)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v", "emb"], lora_dropout=0.1,
                     bias="lora_only", modules_to_save=["head"])
    peft_model = get_peft_model(model, cfg)
    # Stand-in for training: every trainable tensor moves away from its initial value.
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    peft_model.eval()
    with torch.no_grad():
        logits = peft_model(ids)
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    os.remove(os.path.join(d, "adapter", "README.md"))  # a model card, not needed to load
    with torch.no_grad():
        merged = peft_model.merge_and_unload()(ids)
    save_file({"ids": ids.to(torch.int64), "logits": logits, "merged_logits": merged,
               "base_logits": base_logits}, os.path.join(d, "reference.safetensors"))
    print("tiny: max |merged - unmerged| =", (merged - logits).abs().max().item())


TARGETING = [
    {"target_modules": ["q", "v"]},
    {"target_modules": r"encoder\.layers\.\d+\.(q|fc)"},
    {"target_modules": ["q", "v"], "layers_to_transform": [1]},
    {"target_modules": ["q", "v", "fc"], "layers_to_transform": 0, "layers_pattern": "layers"},
    {"target_modules": ["q", "v", "fc"], "rank_pattern": {"fc": 2},
     "alpha_pattern": {"layers.1.v": 16}},
    {"target_modules": ["encoder.layers.0.q", "v"], "layers_to_transform": [1]},
    {"target_modules": ["q", "out"], "exclude_modules": ["encoder.layers.1.q"]},
    {"target_modules": ["q", "emb", "head"], "use_rslora": True, "r": 4, "lora_alpha": 8},
    {"target_modules": r".*\.(out|v)", "exclude_modules": r".*1\.out"},
]


def write_targeting():
    cases = []
    for extra in TARGETING:
        kw = {"r": 8, "lora_alpha": 16}
        kw.update(extra)
        torch.manual_seed(0)
        model = get_peft_model(Tiny(), LoraConfig(**kw))
        adapted = {}
        for name, m in model.base_model.model.named_modules():
            if isinstance(m, LoraLayer):
                adapted[name] = {"r": m.r["default"], "scaling": m.scaling["default"]}
        cases.append({"config": dict(kw, peft_type="LORA"), "adapted": adapted})
    with open(os.path.join(ROOT, "targeting.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)


def write_report():
    """PEFT's get_nb_trainable_parameters for q/v LoRA + a saved head."""
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"],
                                              modules_to_save=["head"]))
    trainable, total = model.get_nb_trainable_parameters()
    head = sum(p.numel() for p in Tiny().head.parameters())
    with open(os.path.join(ROOT, "report.json"), "w") as f:
        # PEFT counts the saved module twice (its frozen original and the trained copy).
        json.dump({"trainable": trainable, "all": total, "duplicated_module_params": head}, f)


def main():
    os.makedirs(ROOT, exist_ok=True)
    write_report()
    write_linear()
    write_embedding()
    write_tiny()
    write_targeting()
    print("wrote", os.path.normpath(ROOT))


if __name__ == "__main__":
    sys.exit(main())
