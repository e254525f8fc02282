#!/usr/bin/env python3
"""PyTorch + PEFT twin of the README's main job, for a wall-time comparison (issue 15).

The main job is our CLI's one-epoch LoRA fine-tune of all-MiniLM-L6-v2 on Rotten Tomatoes:

    cargo run -p lora-examples --bin encoder-lora -- train --model assets/all-minilm-l6-v2 \
        --data assets/rotten_tomatoes/train.csv --valid assets/rotten_tomatoes/test.csv \
        --out runs/minilm-rt --epochs 1 --max-length 64 --overwrite

This script does the same job with transformers + PEFT on the CPU: held-out accuracy on
test.csv, one epoch of training, held-out accuracy again. It prints one JSON line at the end
(also written to --json PATH):

    wall_s         script start (before importing torch) to the end: imports, model and
                   tokenizer loading, tokenization, both evaluations, training, saving
    import_s       of which importing torch/transformers/peft
    train_s        the training loop only (274 optimizer steps on the full data)
    eval_before_s, eval_after_s   the two held-out evaluations
    fit_s          eval_before_s + train_s + eval_after_s: what our CLI's "done: N steps in X"
                   and its summary's tokens/s cover (our Trainer::fit times the initial
                   evaluation, the epoch, the end-of-epoch evaluation and checkpoint together)
    tokens_per_second       training tokens (unpadded, [CLS]/[SEP] included, as our trainer
                            counts them) / train_s
    tokens_per_second_fit   the same tokens / fit_s, comparable with our progress line and the
                            README's "230-290 tokens/s"
    peak_rss_mib   the process's peak resident memory (ru_maxrss)

Run it (full job, a few minutes on 2 cores):

    /work/venv/bin/python scripts/main_job_torch.py --json runs/main-job-torch.json

Quick check on 64 training and 64 test rows: add `--limit 64`.

Settings, read from the Rust source (ours -> here):

    lr 5e-4                  encoder-lora.rs TrainArgs --lr default
    warmup ratio 0.06        encoder-lora.rs TrainArgs --warmup-ratio; warmup steps =
                             ceil(0.06 * total) (schedule.rs Warmup::Ratio) = 17 of 274
    schedule linear          train_with: ScheduleKind::Linear; lr(step) is HF's
                             get_linear_schedule_with_warmup (schedule.rs), first update at lr 0
    batch size 16            TrainArgs --batch-size; no drop-last: ceil(4379 / 16) = 274 steps
    eval batch size 16       TrainerConfig::eval_batch_size None = batch_size (trainer.rs)
    epochs 1                 the command's --epochs 1 (the CLI default is 3)
    max length 64            the command's --max-length 64 (the CLI default is 512); truncation
                             right, [CLS] and [SEP] included (dataset.rs); batches right-padded
                             with [PAD] to their longest row (tokenizer.json's fixed padding to
                             128 is turned off, tokenizer.rs)
    LoRA r 8, alpha 8        LoraArgs --r, --alpha (scaling alpha/r = 1, no rsLoRA)
    LoRA dropout 0.0         LoraArgs --dropout
    targets query,value      LoraArgs --targets
    init                     A kaiming-uniform(a=sqrt 5), B = 0 (lora-core config.rs, PEFT's
                             init_lora_weights=True)
    head                     BertForSequenceClassification (config.json model_type bert, not
                             roberta): the checkpoint's pooler (loaded, frozen) -> dropout 0.1
                             (hidden_dropout_prob) -> fresh classifier Linear(384, 2), weight
                             N(0, 0.02), bias 0 (init.rs hf_linear); trained as PEFT's
                             modules_to_save ["classifier", "score"] (bert/loader.rs, lora.rs)
    labels                   non-integer labels sorted by name: fresh = 0, rotten = 1
                             (data.rs LabelMap::infer); test.csv uses train's map
    model dropout            hidden and attention dropout 0.1 while training (config.json)
    loss                     mean cross entropy over the batch
    optimizer                AdamW, PyTorch's rule, betas (0.9, 0.999), eps 1e-8, weight decay
                             0.01 except on biases and norm parameters (optim.rs
                             OptimizerConfig::default) -- here: classifier bias undecayed
    grad clipping            global L2 norm 1.0, factor max / (norm + 1e-6) (trainer.rs) --
                             torch.nn.utils.clip_grad_norm_(..., 1.0)
    seed 42                  RunArgs --seed: head/adapter init, data order, dropout
    data order               epoch 0's permutation: SplitMix64 + Fisher-Yates seeded by
                             derive_seed(42, [0x0da7a, 0]) (sampler.rs) -- reproduced exactly
                             here, so both runs see the same batches in the same order
    metric                   accuracy (classification default, train_with), on --valid before
                             training (eval_on_start) and after the epoch, in file order

What cannot match exactly: the random streams of burn and torch differ, so the classifier and
LoRA A initialisation and the dropout masks are different draws from the same distributions
(our CLI also reseeds its dropout per step from (seed, step, micro-batch); here torch's
generator is seeded once). The data order is the same. The kernels differ (burn's flex backend
vs torch's ATen/oneDNN, transformers' default attention implementation), so losses agree only
in distribution. Our CLI also writes checkpoints (optimizer state), metrics.jsonl and
curves.png; here only the adapter is saved, with --out.

Threads: torch.set_num_threads(--threads, default: the CPUs this process may use).
"""
import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

_IMPORT_S = time.perf_counter() - _T0

ASSETS = "assets"
MASK64 = (1 << 64) - 1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=f"{ASSETS}/all-minilm-l6-v2")
    p.add_argument("--train", default=f"{ASSETS}/rotten_tomatoes/train.csv")
    p.add_argument("--valid", default=f"{ASSETS}/rotten_tomatoes/test.csv")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--targets", default="query,value")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--limit", type=int, help="use only the first N training and N test rows")
    p.add_argument("--out", help="save the PEFT adapter (with the classifier) here")
    p.add_argument("--json", help="also write the result JSON to this file")
    return p.parse_args()


# --- data order: lora-train/src/sampler.rs, bit for bit --------------------------------------


def splitmix64(state):
    """One SplitMix64 step: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def derive_seed(seed, parts):
    _, s = splitmix64(seed ^ 0x6C6F72612D627572)  # "lora-bur"
    for p in parts:
        _, s = splitmix64(s ^ ((p * 0x9E3779B97F4A7C15) & MASK64))
    return s


def epoch_order(n, seed, epoch):
    """sampler.rs epoch_order(n, seed, epoch, shuffle = true): Fisher-Yates, no modulo bias."""
    order = list(range(n))
    state = derive_seed(seed, [0x0DA7A, epoch])
    for i in range(n - 1, 0, -1):
        bound = i + 1
        zone = MASK64 - MASK64 % bound
        while True:
            state, v = splitmix64(state)
            if v < zone:
                break
        j = v % bound
        order[i], order[j] = order[j], order[i]
    return order


# --- data -------------------------------------------------------------------------------------


def read_rows(path, text_col, label_col, limit):
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(r[text_col], r[label_col]) for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def label_names(labels):
    """data.rs LabelMap::infer: integers 0..=max stand for themselves, else names sorted."""
    names = sorted(set(labels))
    if all(n.isdigit() for n in names):
        return [str(i) for i in range(max(int(n) for n in names) + 1)]
    return names


def tokenize(tokenizer, rows, names, max_length):
    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length)
    index = {n: i for i, n in enumerate(names)}
    labels = [index[lab] if lab in index else int(lab) for _, lab in rows]
    return [
        (ids, types, y)
        for ids, types, y in zip(enc["input_ids"], enc["token_type_ids"], labels)
    ]


def collate(items, pad_id):
    """Right-pads to the longest row of the batch (dataset.rs collate)."""
    t = max(len(ids) for ids, _, _ in items)
    ids = torch.full((len(items), t), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), t), dtype=torch.long)
    mask = torch.zeros((len(items), t), dtype=torch.long)
    for row, (i, s, _) in enumerate(items):
        ids[row, : len(i)] = torch.tensor(i)
        types[row, : len(s)] = torch.tensor(s)
        mask[row, : len(i)] = 1
    labels = torch.tensor([y for _, _, y in items])
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)


def batches(items, order, size):
    return [[items[i] for i in order[k : k + size]] for k in range(0, len(order), size)]


# --- model, optimizer -------------------------------------------------------------------------


def build_model(args, num_labels):
    torch.manual_seed(args.seed)  # head and adapter initialisation
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=[t.strip() for t in args.targets.split(",")],
    )
    return get_peft_model(model, config)


def param_groups(model, weight_decay):
    """optim.rs: decay everything trainable except biases and normalization parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            plain = name.endswith("bias") or "norm" in name.lower()
            (no_decay if plain else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model, args, total_steps):
    opt = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999), eps=1e-8
    )
    warmup = math.ceil(args.warmup_ratio * total_steps)
    return opt, get_linear_schedule_with_warmup(opt, warmup, total_steps), warmup


# --- train, evaluate --------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(model, items, batch_size, pad_id):
    model.eval()
    correct, loss_sum = 0, 0.0
    for batch in batches(items, list(range(len(items))), batch_size):
        b = collate(batch, pad_id)
        out = model(**b)
        correct += (out.logits.argmax(-1) == b["labels"]).sum().item()
        loss_sum += out.loss.item() * len(batch)
    return correct / len(items), loss_sum / len(items)


def train_step(model, opt, sched, batch, pad_id, max_grad_norm):
    loss = model(**collate(batch, pad_id)).loss
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    lr = opt.param_groups[0]["lr"]  # the rate of this update, as our progress line shows
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item(), lr


def train(model, items, args, pad_id):
    steps_per_epoch = math.ceil(len(items) / args.batch_size)
    total = args.epochs * steps_per_epoch
    opt, sched, warmup = make_optimizer(model, args, total)
    print(f"{total} steps, {warmup} warmup, lr {args.lr}", flush=True)
    model.train()
    step, tokens, losses = 0, 0, []
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        for batch in batches(items, epoch_order(len(items), args.seed, epoch), args.batch_size):
            loss, lr = train_step(model, opt, sched, batch, pad_id, args.max_grad_norm)
            losses.append(loss)
            tokens += sum(len(ids) for ids, _, _ in batch)
            step += 1
            if step % 10 == 0 or step == total:
                el = time.perf_counter() - t0
                print(f"step {step}/{total} loss {losses[-1]:.4f} "
                      f"lr {lr:.2e} {tokens / el:.0f} tok/s", flush=True)
    return step, tokens, time.perf_counter() - t0


def timed(f, *a):
    t0 = time.perf_counter()
    r = f(*a)
    return r, time.perf_counter() - t0


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_rows = read_rows(args.train, args.text_column, args.label_column, args.limit)
    valid_rows = read_rows(args.valid, args.text_column, args.label_column, args.limit)
    names = label_names([lab for _, lab in train_rows])
    train_items = tokenize(tokenizer, train_rows, names, args.max_length)
    valid_items = tokenize(tokenizer, valid_rows, names, args.max_length)
    model = build_model(args, len(names))
    model.print_trainable_parameters()
    pad = tokenizer.pad_token_id
    (acc0, loss0), eval_before_s = timed(evaluate, model, valid_items, args.batch_size, pad)
    print(f"validation before training: accuracy {acc0:.4f}, loss {loss0:.4f}", flush=True)
    steps, tokens, train_s = train(model, train_items, args, pad)
    (acc1, loss1), eval_after_s = timed(evaluate, model, valid_items, args.batch_size, pad)
    print(f"validation after training: accuracy {acc1:.4f}, loss {loss1:.4f}", flush=True)
    print(f"held-out accuracy: {acc0:.4f} before -> {acc1:.4f} after LoRA", flush=True)
    if args.out:
        model.save_pretrained(args.out)
    fit_s = eval_before_s + train_s + eval_after_s
    result = {
        "wall_s": round(time.perf_counter() - _T0, 3),
        "import_s": round(_IMPORT_S, 3),
        "train_s": round(train_s, 3),
        "eval_before_s": round(eval_before_s, 3),
        "eval_after_s": round(eval_after_s, 3),
        "fit_s": round(fit_s, 3),
        "steps": steps,
        "train_rows": len(train_items),
        "valid_rows": len(valid_items),
        "train_tokens": tokens,
        "accuracy_before": round(acc0, 4),
        "accuracy_after": round(acc1, 4),
        "tokens_per_second": round(tokens / train_s, 1),
        "tokens_per_second_fit": round(tokens / fit_s, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
