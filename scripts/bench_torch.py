#!/usr/bin/env python3
"""PyTorch + PEFT reference for lora-bench: the same training steps and inference forwards on
the same shapes (random init), on the CPU (default) or on a CUDA GPU, so both can be compared in
one run on one machine.

Each measurement runs in its own process (this script re-invoked with --child), so its peak
resident memory (ru_maxrss) is its own, as lora-bench does. Writes JSON in lora-bench's schema:
{"setup": {...}, "train": [TrainRun...], "infer": [InferRun...], "failures": [...]}.

Device: --device cpu|cuda, or the environment variable BENCH_TORCH_DEVICE=cpu|cuda when no
--device is given (lora-bench --torch passes no device flag, so that is how a lora-bench run gets
the CUDA reference: scripts/gpu-bench.sh sets it). On cuda the model and batch live on the GPU,
every timed phase is bracketed by torch.cuda.synchronize(), rows are labelled "torch-cuda", and
device_reserved_bytes is torch.cuda.max_memory_allocated() of the run (peak_rss_bytes stays the
process's resident memory). Asking for cuda when torch sees no CUDA device is an error.

Usage (lora-bench calls it with --torch PYTHON):
  python scripts/bench_torch.py --arch gpt2,roberta --mode full,lora --json out.json
  BENCH_TORCH_DEVICE=cuda python scripts/bench_torch.py --size tiny --json out.json
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def peak_rss_bytes():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


DEVICES = ("cpu", "cuda")
DEVICE_ENV = "BENCH_TORCH_DEVICE"


def sync(device):
    """Waits for queued GPU work, so a timer read after it covers that work (no-op on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def label(device):
    return f"torch-{device}"


def build(arch, size, vocab=None):
    from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

    tiny = size == "tiny"
    if arch == "gpt2":
        cfg = GPT2Config()
        if tiny:
            cfg = GPT2Config(vocab_size=1000, n_positions=256, n_embd=64, n_layer=2, n_head=4)
        if vocab:
            cfg.vocab_size = vocab
        return GPT2LMHeadModel(cfg), cfg.vocab_size
    cfg = RobertaConfig(
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        num_labels=2,
    )
    if tiny:
        cfg = RobertaConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=258,
            type_vocab_size=1,
            pad_token_id=1,
            num_labels=2,
        )
    if vocab:
        cfg.vocab_size = vocab
    return RobertaForSequenceClassification(cfg), cfg.vocab_size


# The same sites as lora-bench's --targets (regexes, fully matched against module names).
TARGETS = {
    ("gpt2", "attention"): r".*\.c_attn",
    ("roberta", "attention"): r".*\.(query|value)",
    ("gpt2", "all-linear"): r".*\.(c_attn|c_proj|c_fc)",
    ("roberta", "all-linear"): r"roberta\..*\.(query|key|value|dense)",
}


def add_lora(model, arch, args, init=True):
    from peft import LoraConfig, get_peft_model

    target = TARGETS[(arch, args.targets)]
    if arch == "gpt2":
        cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=target, lora_dropout=0.0,
                         fan_in_fan_out=True, task_type="CAUSAL_LM", init_lora_weights=init)
    else:
        cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=target, lora_dropout=0.0,
                         task_type="SEQ_CLS", init_lora_weights=init)
    return get_peft_model(model, cfg)


def batch(arch, vocab, args):
    import torch

    # Drawn on the CPU generator on every device, so CPU and CUDA runs see the same tokens.
    ids = torch.randint(3, vocab, (args.batch, args.seq))
    labels = torch.randint(0, 2, (args.batch,))
    if args.device != "cpu":
        ids, labels = ids.to(args.device), labels.to(args.device)
    return ids, labels


def loss_of(model, arch, ids, labels):
    if arch == "gpt2":
        return model(input_ids=ids, labels=ids).loss
    return model(input_ids=ids, labels=labels).loss


def run_train(arch, mode, args):
    import torch

    dev = args.device
    if dev == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model, vocab = build(arch, args.size, args.vocab)
    if mode == "lora":
        model = add_lora(model, arch, args)
    if dev != "cpu":
        model = model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids, labels = batch(arch, vocab, args)
    rss_before = current_rss_bytes()
    times, fwd, bwd, upd, losses = [], [], [], [], []
    for i in range(args.warmup + args.steps):
        sync(dev)
        t0 = time.perf_counter()
        loss = loss_of(model, arch, ids, labels)
        value = loss.item()
        sync(dev)
        t1 = time.perf_counter()
        loss.backward()
        sync(dev)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        t3 = time.perf_counter()
        print(f"  torch {arch} {mode} step {i + 1}/{args.warmup + args.steps}: {t3 - t0:.3f} s "
              f"(forward {t1 - t0:.3f}, backward {t2 - t1:.3f}), loss {value:.4f}", file=sys.stderr)
        if i >= args.warmup:
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            upd.append(t3 - t2)
            losses.append(value)
    # On cuda: the GPU allocator's peak over the whole run (model, optimizer state, activations).
    device_bytes = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return {
        "arch": arch,
        "device": label(dev),
        "mode": mode,
        "trainable_params": sum(p.numel() for p in params),
        "step_seconds": times,
        "median_s": statistics.median(times),
        "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd),
        "optimizer_s": statistics.median(upd),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_rss_bytes(),
        "device_reserved_bytes": device_bytes,
    }


def run_infer(arch, args):
    import copy

    import torch

    dev = args.device
    torch.manual_seed(0)
    base, vocab = build(arch, args.size, args.vocab)
    if dev != "cpu":
        base = base.to(dev)
    base.eval()
    # Random B (init_lora_weights=False) so the adapter changes the output, as lora-bench does.
    unmerged = add_lora(copy.deepcopy(base), arch, args, init=False).eval()
    merged = copy.deepcopy(unmerged).merge_and_unload().eval()
    ids, _ = batch(arch, vocab, args)
    out = lambda m: m(input_ids=ids).logits  # noqa: E731
    with torch.no_grad():
        diff = (out(merged) - out(unmerged)).abs().max().item()
        variants = [("base", base), ("unmerged", unmerged), ("merged", merged)]
        times = {k: [] for k, _ in variants}
        for i in range(args.warmup + args.steps):
            for name, m in variants:
                sync(dev)
                t0 = time.perf_counter()
                out(m)
                sync(dev)
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    times[name].append(dt)
    return {
        "arch": arch,
        "device": label(dev),
        "base_s": statistics.median(times["base"]),
        "unmerged_s": statistics.median(times["unmerged"]),
        "merged_s": statistics.median(times["merged"]),
        "merged_max_abs_diff": diff,
    }


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "infer":
        result = run_infer(args.arch, args)
    else:
        result = run_train(args.arch, args.child, args)
    print(json.dumps(result))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="gpt2,roberta")
    p.add_argument("--mode", default="full,lora")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--targets", choices=["attention", "all-linear"], default="attention")
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--size", choices=["real", "tiny"], default="real")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help=f"cpu or cuda (default: ${DEVICE_ENV}, else cpu)")
    p.add_argument("--json", default="torch-bench.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        args.device = os.environ.get(DEVICE_ENV, "").strip() or "cpu"
        if args.device not in DEVICES:
            sys.exit(f"error: {DEVICE_ENV}={args.device!r} is not one of: {', '.join(DEVICES)}")
    if args.child:
        return child(args)

    import peft
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device cuda (or {DEVICE_ENV}=cuda) asked for, but torch {torch.__version__} "
                 f"sees no CUDA device (torch.cuda.is_available() is false; CUDA build: {torch.version.cuda})")

    setup = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": args.threads,
        "targets": args.targets,
        "attention": "transformers default (sdpa)",
    }
    if args.device == "cuda":
        # Only on cuda, so the CPU report keeps exactly its former fields.
        setup.update({
            "device": "cuda",
            "gpu": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "device_reserved_bytes": "torch.cuda.max_memory_allocated() per run",
        })
    report = {"setup": setup, "train": [], "infer": [], "failures": []}
    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--warmup", str(args.warmup),
              "--steps", str(args.steps), "--r", str(args.r), "--alpha", str(args.alpha),
              "--threads", str(args.threads), "--size", args.size, "--targets", args.targets,
              "--device", args.device]
    if args.vocab:
        common += ["--vocab", str(args.vocab)]
    for arch in [a for a in args.arch.split(",") if a]:
        tasks = [] if args.no_train else [m for m in args.mode.split(",") if m]
        if not args.no_infer:
            tasks.append("infer")
        for task in tasks:
            print(f"torch {arch}: {task}", file=sys.stderr)
            proc = subprocess.run([sys.executable, __file__, "--arch", arch, "--child", task, *common],
                                  stdout=subprocess.PIPE, text=True)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                report["failures"].append(f"torch {arch} {task}: exit {proc.returncode}")
                continue
            result = json.loads(lines[-1])
            report["infer" if task == "infer" else "train"].append(result)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
