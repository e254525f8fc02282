#!/usr/bin/env bash
# gpu-bench.sh: the benchmark on a GPU machine, in one command (issue 15 item 5).
#
# What it does:
#   1. builds `lora-bench` twice: with the default features (flex, ndarray, wgpu) in the normal
#      target dir, as `cargo build -p lora-bench` (the dev profile already builds burn and every
#      other dependency at opt-level 3, so this shares the README's build), and with
#      `--features vulkan` in a separate target dir (<target>/vulkan), because another burn
#      feature set rebuilds burn and must not invalidate the main build;
#   2. runs `lora-bench` on GPT-2 small and RoBERTa-base, training modes full and lora plus the
#      inference comparison, batch 4 x 128 tokens (the README's and docs/benchmarks.md's shapes),
#      warm-up 2 / 5 timed steps (`--size tiny`: tiny models, warm-up 1 / 2 steps), once on
#      `wgpu` (default build) and once on `vulkan` (the vulkan build), each writing JSON and
#      Markdown into the output directory;
#   3. if the Python interpreter imports torch, transformers and peft and torch sees a CUDA GPU:
#      PyTorch + PEFT on CUDA in the same invocation as the wgpu run (`lora-bench --torch PYTHON`
#      with BENCH_TORCH_DEVICE=cuda, which scripts/bench_torch.py honours), so its rows and the
#      "lora/torch+peft" ratios are in the same table; otherwise one line says why it is skipped;
#   4. prints one combined table: a heading per run (with the GPU's name from `vulkaninfo
#      --summary` or `nvidia-smi -L`) and the Markdown tables lora-bench wrote, then the elapsed
#      time per phase. The same text is written to <out>/gpu-bench.md.
#
# What it needs: a GPU with a Vulkan driver (lavapipe works for `--size tiny`), Rust/cargo, and
# optionally a Python with torch (CUDA build), transformers and peft for the PyTorch reference.
# `vulkaninfo` (package vulkan-tools) and `nvidia-smi` are used when present.
#
# How long: the build first (a cold build of burn takes tens of minutes on a few cores; the
# vulkan build compiles burn a second time), then at most 10 minutes: every lora-bench run has a
# timeout (--run-timeout, default 240 s; the wgpu run gets --torch-timeout more when the PyTorch
# reference rides along) and all runs together are capped at --budget (default 600 s). A run that
# times out or fails is reported and the script goes on; it exits 1 if any run did not finish.
#
# Storage-buffer limit: GPT-2 small's token-embedding table is 154 MB (RoBERTa-base's the same),
# above the largest storage buffer some adapters allow (lavapipe and WebGPU's defaults: 128 MiB),
# and lora-bench cannot split it yet (issue 15 item 4). At real size on such an adapter the script
# passes `--vocab 32000` (otherwise real shapes) and says so. It detects that case with
# `vulkaninfo --summary` (every device is llvmpipe/lavapipe); without vulkaninfo give
# `--vocab N` yourself. `--size tiny` uses a 1000-token vocabulary and needs nothing.
#
# Usage:
#   scripts/gpu-bench.sh [--size real|tiny] [--python PATH] [--out DIR] [--vocab N]
#                        [--run-timeout S] [--torch-timeout S] [--budget S] [--no-build]
# Each option can also be set by an environment variable: GPU_BENCH_SIZE, GPU_BENCH_PYTHON,
# GPU_BENCH_OUT, GPU_BENCH_VOCAB, GPU_BENCH_RUN_TIMEOUT, GPU_BENCH_TORCH_TIMEOUT,
# GPU_BENCH_BUDGET; a flag wins over its variable.
#   --size      real (default) or tiny (a quick check of the whole pipeline, e.g. on lavapipe)
#   --python    interpreter for the PyTorch reference (default: python3 if it imports torch;
#               `--python none` skips it)
#   --out       output directory (default runs/gpu-bench, relative to the current directory)
#   --vocab     vocabulary size for both models instead of the real one (see above)
#   --run-timeout, --torch-timeout, --budget   seconds, as in "How long" above
#   --no-build  use the binaries already built by an earlier run of this script
set -euo pipefail

usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

size=${GPU_BENCH_SIZE:-real}
python=${GPU_BENCH_PYTHON:-}
out=${GPU_BENCH_OUT:-runs/gpu-bench}
vocab=${GPU_BENCH_VOCAB:-}
run_timeout=${GPU_BENCH_RUN_TIMEOUT:-240}
torch_timeout=${GPU_BENCH_TORCH_TIMEOUT:-120}
budget=${GPU_BENCH_BUDGET:-600}
build=1

need_value() { # flag, remaining argument count
  if [ "$2" -lt 2 ]; then
    echo "error: $1 needs a value" >&2
    exit 2
  fi
}
while [ $# -gt 0 ]; do
  case $1 in
    --size) need_value "$1" $#; size=$2; shift 2 ;;
    --size=*) size=${1#*=}; shift ;;
    --python) need_value "$1" $#; python=$2; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    --out) need_value "$1" $#; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --vocab) need_value "$1" $#; vocab=$2; shift 2 ;;
    --vocab=*) vocab=${1#*=}; shift ;;
    --run-timeout) need_value "$1" $#; run_timeout=$2; shift 2 ;;
    --run-timeout=*) run_timeout=${1#*=}; shift ;;
    --torch-timeout) need_value "$1" $#; torch_timeout=$2; shift 2 ;;
    --torch-timeout=*) torch_timeout=${1#*=}; shift ;;
    --budget) need_value "$1" $#; budget=$2; shift 2 ;;
    --budget=*) budget=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case $size in
  real) warmup=2; steps=5 ;;
  tiny) warmup=1; steps=2 ;;
  *) echo "error: --size must be real or tiny, not '$size'" >&2; exit 2 ;;
esac
for pair in "vocab:$vocab" "run-timeout:$run_timeout" "torch-timeout:$torch_timeout" "budget:$budget"; do
  value=${pair#*:}
  if [ -n "$value" ] && ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --${pair%%:*} must be a positive integer, not '$value'" >&2
    exit 2
  fi
done
batch=4
seq=128

mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
vulkan_target=$target/vulkan
bin_wgpu=$target/debug/lora-bench
bin_vulkan=$vulkan_target/debug/lora-bench

# wgpu/Vulkan loaders warn (and some drivers misbehave) without a runtime directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d)
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi

say() { printf 'gpu-bench: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Build (not part of the 10-minute budget).
build_start=$SECONDS
if [ "$build" = 1 ]; then
  say "building lora-bench (default features: wgpu) into $target"
  cargo build -p lora-bench
  say "building lora-bench --features vulkan into $vulkan_target"
  CARGO_TARGET_DIR=$vulkan_target cargo build -p lora-bench --features vulkan
fi
build_s=$((SECONDS - build_start))
for bin in "$bin_wgpu" "$bin_vulkan"; do
  if [ ! -x "$bin" ]; then
    echo "error: $bin is missing (run without --no-build)" >&2
    exit 1
  fi
done

# ---------------------------------------------------------------------------------------------
# From here on the budget counts.
start=$SECONDS

# The adapter: its name for the headings, and whether it is lavapipe (storage buffers <= 128 MiB).
gpu_name=""
lavapipe_only=0
have_vulkaninfo=0
if command -v vulkaninfo >/dev/null 2>&1; then
  have_vulkaninfo=1
  summary=$(timeout 60 vulkaninfo --summary 2>/dev/null || true)
  names=$(printf '%s\n' "$summary" | sed -n 's/^[[:space:]]*deviceName[[:space:]]*=[[:space:]]*//p')
  if [ -n "$names" ]; then
    gpu_name=$(printf '%s\n' "$names" | paste -sd ';' - | sed 's/;/; /g')
    if ! printf '%s\n' "$names" | grep -viqE 'llvmpipe|lavapipe'; then
      lavapipe_only=1
    fi
  else
    say "vulkaninfo lists no Vulkan device: the wgpu and vulkan runs will report no adapter"
  fi
fi
if [ -z "$gpu_name" ] && command -v nvidia-smi >/dev/null 2>&1; then
  gpu_name=$(timeout 30 nvidia-smi -L 2>/dev/null | paste -sd ';' - | sed 's/;/; /g' || true)
fi
gpu_name=${gpu_name:-unknown (neither vulkaninfo nor nvidia-smi found)}
say "GPU: $gpu_name"

vocab_note=""
if [ -n "$vocab" ]; then
  vocab_note="vocabulary $vocab (--vocab)"
elif [ "$size" = real ] && [ "$lavapipe_only" = 1 ]; then
  vocab=32000
  vocab_note="vocabulary 32000: the only Vulkan adapter is lavapipe, whose 128 MiB storage-buffer limit the real 154 MB embedding table exceeds (issue 15 item 4)"
elif [ "$size" = real ] && [ "$have_vulkaninfo" = 0 ]; then
  say "vulkaninfo not found: cannot check the storage-buffer limit; on an adapter below 154 MB (lavapipe, WebGPU defaults: 128 MiB) rerun with --vocab 32000"
fi
if [ -n "$vocab_note" ]; then
  say "$vocab_note"
fi

# The PyTorch + PEFT reference: only on CUDA.
torch_py=""
torch_note=""
if [ "$python" = none ]; then
  torch_note="PyTorch + PEFT reference skipped (--python none)"
else
  if [ -z "$python" ]; then
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import torch' >/dev/null 2>&1; then
      python=python3
    else
      torch_note="PyTorch + PEFT reference skipped: python3 does not import torch (give --python PATH)"
    fi
  fi
  if [ -n "$python" ]; then
    probe=$("$python" -c '
import sys
try:
    import torch, transformers, peft  # noqa: F401
except Exception as e:
    print("missing:", e); sys.exit(0)
if torch.cuda.is_available():
    print("cuda:", torch.__version__, "on", torch.cuda.get_device_name(0))
else:
    print("nocuda:", torch.__version__)
' 2>/dev/null || echo "missing: $python does not run")
    case $probe in
      cuda:*) torch_py=$python; torch_note="PyTorch + PEFT reference on CUDA: torch ${probe#cuda: }" ;;
      nocuda:*) torch_note="PyTorch + PEFT reference skipped: torch ${probe#nocuda: } ($python) sees no CUDA GPU" ;;
      *) torch_note="PyTorch + PEFT reference skipped: ${probe#missing: } ($python needs torch, transformers and peft)" ;;
    esac
  fi
fi
say "$torch_note"

# ---------------------------------------------------------------------------------------------
# The runs.
common=(--arch "gpt2,roberta" --mode "full,lora" --batch "$batch" --seq "$seq"
        --warmup "$warmup" --steps "$steps" --size "$size")
if [ -n "$vocab" ]; then
  common+=(--vocab "$vocab")
fi

runs=()      # names, in order
declare -A heading status seconds
failed=0

bench() { # name, heading, per-run timeout, env assignments..., --, binary, args...
  local name=$1 head=$2 limit=$3
  shift 3
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  local left=$((budget - (SECONDS - start)))
  runs+=("$name")
  heading[$name]=$head
  if [ "$left" -lt 30 ]; then
    status[$name]="skipped: only ${left} s of the ${budget} s budget left"
    seconds[$name]=0
    say "$name: ${status[$name]}"
    failed=1
    return
  fi
  if [ "$limit" -gt $((left - 10)) ]; then
    limit=$((left - 10)) # room for timeout's --kill-after
  fi
  local json=$out/$name.json md=$out/$name.md log=$out/$name.log
  rm -f "$json" "$md"
  say "$name: $* (timeout ${limit} s; log $log)"
  local t0=$SECONDS rc
  set +e
  # lora-bench prints its table on stdout (kept in the log; the Markdown file is what is shown)
  # and progress on stderr (shown and logged). timeout signals the whole process group, so the
  # per-measurement child processes and Python go too.
  env ${envs[@]+"${envs[@]}"} timeout --kill-after=10 "$limit" "$@" --json "$json" --markdown "$md" 2>&1 >"$out/$name.stdout" |
    tee "$log" >&2
  rc=${PIPESTATUS[0]}
  set -e
  seconds[$name]=$((SECONDS - t0))
  if [ "$rc" = 0 ]; then
    status[$name]="done"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status[$name]="TIMED OUT after ${limit} s (no table; see $log)"
    failed=1
  else
    status[$name]="FAILED with exit status $rc (see $log)"
    failed=1
  fi
  say "$name: ${status[$name]} in ${seconds[$name]} s"
}

wgpu_args=("${common[@]}" --device wgpu)
wgpu_env=()
wgpu_limit=$run_timeout
wgpu_head="wgpu (default build)"
if [ -n "$torch_py" ]; then
  wgpu_args+=(--torch "$torch_py" --torch-script "$root/scripts/bench_torch.py")
  wgpu_env+=(BENCH_TORCH_DEVICE=cuda)
  wgpu_limit=$((run_timeout + torch_timeout))
  wgpu_head="wgpu (default build) and PyTorch + PEFT on CUDA (rows torch-cuda)"
fi
bench wgpu "$wgpu_head" "$wgpu_limit" ${wgpu_env[@]+"${wgpu_env[@]}"} -- "$bin_wgpu" "${wgpu_args[@]}"
bench vulkan "vulkan (--features vulkan)" "$run_timeout" -- "$bin_vulkan" "${common[@]}" --device vulkan

total_s=$((SECONDS - start))

# ---------------------------------------------------------------------------------------------
# One table.
report=$out/gpu-bench.md
{
  echo "# gpu-bench: GPT-2 small and RoBERTa-base on the GPU"
  echo
  echo "GPU: $gpu_name · size $size · batch $batch × $seq tokens · warm-up $warmup, $steps timed steps · $(date -u '+%Y-%m-%d %H:%M UTC')"
  if [ -n "$vocab_note" ]; then
    echo
    echo "Note: $vocab_note."
  fi
  echo
  echo "$torch_note."
  for name in "${runs[@]}"; do
    echo
    echo "## ${heading[$name]} — GPU: $gpu_name"
    echo
    if [ "${status[$name]}" = "done" ] && [ -s "$out/$name.md" ]; then
      cat "$out/$name.md"
    else
      echo "${status[$name]}"
    fi
  done
  echo
  echo "## Time"
  echo
  echo "| phase | seconds | status |"
  echo "|---|---:|---|"
  echo "| build (not in the budget) | $build_s | $([ "$build" = 1 ] && echo built || echo skipped) |"
  for name in "${runs[@]}"; do
    echo "| ${heading[$name]} | ${seconds[$name]} | ${status[$name]} |"
  done
  echo "| total after the build | $total_s | budget $budget s |"
} >"$report"

echo
cat "$report"
echo
say "wrote $report (JSON, Markdown and logs per run beside it)"
if grep -q '^Not measured:' "$out"/*.md 2>/dev/null; then
  say "some configurations were not measured: see the 'Not measured' lines above"
fi
exit "$failed"
