"""Reference fixtures for a model written with burn-nn only, computed with torch + peft.

Writes fixtures/plain/:
  model.safetensors      PlainNet's state dict (torch names and layouts), metadata format=pt
  peft-lora/             PEFT adapter: r=4, alpha=8 on tok_emb, fc_in, fc_out
  peft-dora/             PEFT adapter: DoRA, r=4, alpha=8 on fc_in, fc_out
  peft-params/           PEFT adapter: target_parameters mixer.weight (2-D) and experts.weight
                         (3-D expert stack), r=2, alpha=4
  peft-rslora/           PEFT adapter: rsLoRA, r=4, alpha=8 on fc_in
  reference.safetensors  `ids`, `loss_weights` R, `base.z`, and per adapter NAME (lora, dora,
                         params, rslora): `NAME.z` (unmerged), `NAME.merged_z`, and
                         `NAME.grad.KEY`, the gradient of sum(z * R) for every KEY of the
                         adapter file, in the file's layout
Every adapter tensor is non-zero (seeded random values, not PEFT's zero-B init).
The script also checks its own explicit formulas (LoRA, DoRA, target_parameters deltas)
against PEFT's outputs, gradients and merged weights, so the Rust side can rely on them.

Run: python scripts/make_plain_fixtures.py   (torch, peft, safetensors from PyPI)

Check that an adapter written by lora-burn loads in PEFT and reproduces our output:
  python scripts/make_plain_fixtures.py --check DIR
(DIR holds adapter_config.json, adapter_model.safetensors and expected.safetensors with `z`
for the fixed ids.)
"""

import argparse
import json
import math
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "plain")
IDS = torch.tensor([[1, 4, 7, 10, 0], [3, 3, 9, 2, 6]])
PREFIX = "base_model.model."

ADAPTERS = {
    "lora": dict(r=4, lora_alpha=8, target_modules=["tok_emb", "fc_in", "fc_out"]),
    "dora": dict(r=4, lora_alpha=8, target_modules=["fc_in", "fc_out"], use_dora=True),
    # PEFT needs target_modules to be set (or None); [] says "no modules, only the parameters".
    "params": dict(r=2, lora_alpha=4, target_modules=[],
                   target_parameters=["mixer.weight", "experts.weight"]),
    "rslora": dict(r=4, lora_alpha=8, target_modules=["fc_in"], use_rslora=True),
}


# PEFT's target_parameters only take effect when the owning module is *called* (it
# parametrizes the weight for the duration of the call), so Mixer and Experts have forwards.
class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 6) * 0.3)

    def forward(self, o):
        return F.linear(o, self.weight)


class Experts(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 5, 3) * 0.3)

    def forward(self, y):
        return sum(y @ self.weight[k] for k in range(self.weight.shape[0]))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in = nn.Linear(8, 16)
        self.fc_out = nn.Linear(16, 6)


class PlainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(11, 8)
        self.mlp = Mlp()
        self.mixer = Mixer()
        self.experts = Experts()

    def forward(self, ids):
        e = self.tok_emb(ids)                          # [b, s, 8]
        h = F.gelu(self.mlp.fc_in(e))                  # exact (erf) gelu
        o = self.mlp.fc_out(h)                         # [b, s, 6]
        return self.experts(self.mixer(o))             # [b, s, 5] -> [b, s, 3]


def base_model():
    model = PlainNet()
    model.load_state_dict(load_file(os.path.join(ROOT, "model.safetensors")))
    return model.eval()


def param_delta(a, b, shape, scaling):
    """The delta PEFT adds to a targeted raw parameter, from the file's lora_A / lora_B.

    2-D [P0, P1]: A [r, P1], B [P0, r], delta = s * B @ A.
    3-D [E, P1, P2]: A [E*r, P2] with expert-major rows (row e*r + k), B [P1, r*E] with
    expert-minor columns (column k*E + e); delta[e] = s * B_e @ A_e, shape [E, P1, P2].
    """
    if len(shape) == 2:
        return scaling * b @ a
    experts = shape[0]
    rank = a.shape[0] // experts
    a_e = a.reshape(experts, rank, a.shape[1])
    b_e = b.reshape(b.shape[0], rank, experts).permute(2, 0, 1)
    return scaling * b_e @ a_e


def explicit_forward(sd, t, cfg, ids):
    """PlainNet with adapter tensors `t` (file keys) applied by hand, to pin down PEFT's math."""
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    def lora(name):
        return t.get(f"{PREFIX}{name}.lora_A.weight"), t.get(f"{PREFIX}{name}.lora_B.weight")

    def linear(name, x):
        w, bias = sd[f"{name}.weight"], sd[f"{name}.bias"]
        a, b = lora(name)
        if a is None:
            return F.linear(x, w, bias)
        out = F.linear(x, w) + s * F.linear(F.linear(x, a), b)
        mag = t.get(f"{PREFIX}{name}.lora_magnitude_vector")
        if mag is not None:
            # DoRA: per output row, magnitude / ||W + s B A||_2 over the input dim; the norm is
            # a constant for autograd, and the bias is added after the rescale.
            norm = (w + s * b @ a).norm(dim=1).detach()
            out = (mag / norm) * out
        return out + bias

    e = F.embedding(ids, sd["tok_emb.weight"])
    a = t.get(f"{PREFIX}tok_emb.lora_embedding_A")
    if a is not None:
        e = e + s * F.embedding(ids, a.T) @ t[f"{PREFIX}tok_emb.lora_embedding_B"].T
    o = linear("mlp.fc_out", F.gelu(linear("mlp.fc_in", e)))
    w = {}
    for name in ("mixer", "experts"):
        w[name] = sd[f"{name}.weight"]
        a, b = lora(name)
        if a is not None:
            w[name] = w[name] + param_delta(a, b, w[name].shape, s)
    y = F.linear(o, w["mixer"])
    return sum(y @ w["experts"][k] for k in range(w["experts"].shape[0]))


def write_adapter(name, cfg, seed, sd, weights, out):
    d = os.path.join(ROOT, f"peft-{name}")
    shutil.rmtree(d, ignore_errors=True)
    model = get_peft_model(base_model(), LoraConfig(init_lora_weights=False, **cfg))
    # Stand-in for training: seeded values everywhere; DoRA magnitudes are moved off the
    # weight norms PEFT initializes them to, so the rescale is not a no-op.
    torch.manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_magnitude_vector" in key:
                p.mul_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(d)
    os.remove(os.path.join(d, "README.md"))  # a model card, not needed to load
    # PEFT saves target_modules from a set, in hash order; sort it so reruns give equal files.
    path = os.path.join(d, "adapter_config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["target_modules"] = sorted(saved["target_modules"])
    with open(path, "w") as f:
        f.write(json.dumps(saved, indent=2, sort_keys=True))
    tensors = load_file(os.path.join(d, "adapter_model.safetensors"))
    assert all(v.abs().min() > 0 for v in tensors.values()), name

    z = model(IDS)
    (z * weights).sum().backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    # The same renaming save_pretrained applies, so grads line up with the file's keys.
    grads = get_peft_model_state_dict(model, state_dict=grads)
    assert grads.keys() == tensors.keys(), (name, grads.keys(), tensors.keys())

    # Our explicit formulas must reproduce PEFT's output and gradients.
    t = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    z_ours = explicit_forward(sd, t, cfg, IDS)
    torch.testing.assert_close(z_ours, z, atol=1e-5, rtol=1e-5)
    (z_ours * weights).sum().backward()
    for k in t:
        torch.testing.assert_close(t[k].grad, grads[k], atol=1e-5, rtol=1e-4)

    with torch.no_grad():
        merged = model.merge_and_unload()
        merged_z = merged(IDS)
    torch.testing.assert_close(merged_z, z, atol=1e-5, rtol=0)
    if "target_parameters" in cfg:
        r, alpha = cfg["r"], cfg["lora_alpha"]
        for p in ("mixer", "experts"):
            a, b = tensors[f"{PREFIX}{p}.lora_A.weight"], tensors[f"{PREFIX}{p}.lora_B.weight"]
            want = sd[f"{p}.weight"] + param_delta(a, b, sd[f"{p}.weight"].shape, alpha / r)
            torch.testing.assert_close(merged.state_dict()[f"{p}.weight"], want)

    out[f"{name}.z"] = z.detach()
    out[f"{name}.merged_z"] = merged_z
    for k, g in grads.items():
        out[f"{name}.grad.{k}"] = g.contiguous()
    print(f"{name}: {len(tensors)} tensors, max |z - base.z| = "
          f"{(z - out['base.z']).abs().max().item():.3f}")


def check(d):
    """Loads an adapter written by lora-burn into PEFT and compares its output with ours."""
    model = base_model()
    with torch.no_grad():
        base_z = model(IDS)
        peft_z = PeftModel.from_pretrained(model, d).eval()(IDS)
    ours = load_file(os.path.join(d, "expected.safetensors"))["z"]
    diff = (peft_z - ours).abs().max().item()
    moved = (peft_z - base_z).abs().max().item()
    print(f"PEFT vs lora-burn on {d}: max abs diff {diff:.3e} (adapter moves z by {moved:.3e})")
    if moved < 1e-3:
        print("the adapter does not change the output, so the check proves nothing")
        return 1
    return 0 if diff <= 1e-4 else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", metavar="DIR")
    args = ap.parse_args()
    if args.check:
        return check(args.check)

    os.makedirs(ROOT, exist_ok=True)
    torch.manual_seed(0)
    sd = {k: v.detach().contiguous() for k, v in PlainNet().state_dict().items()}
    save_file(sd, os.path.join(ROOT, "model.safetensors"), metadata={"format": "pt"})
    torch.manual_seed(1)
    weights = torch.randn(2, 5, 3)
    with torch.no_grad():
        out = {"ids": IDS.to(torch.int64), "loss_weights": weights, "base.z": base_model()(IDS)}
    torch.testing.assert_close(out["base.z"], explicit_forward(sd, {}, ADAPTERS["lora"], IDS))
    for i, (name, cfg) in enumerate(ADAPTERS.items()):
        write_adapter(name, cfg, 100 + i, sd, weights, out)
    save_file(out, os.path.join(ROOT, "reference.safetensors"))
    print("wrote", os.path.normpath(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
