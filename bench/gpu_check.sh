#!/usr/bin/env bash
# The GPU check of the performance issue, prepared for a task that is lent a CUDA device.
#
#   1. here (CPU machine, has network to PyPI):   bash bench/gpu_check.sh prepare
#      -> .whl/ (git-ignored): bitsandbytes, trl, rich, platformdirs, click wheels (the device has torch,
#         transformers, peft, accelerate), the SmolLM2 tokenizer and 400 training rows from ../shared/data
#   2. on the device (the `run` tool), one call:
#      run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#      -> prints the decode table, the QLoRA training table, the NF4 fidelity table and `medchat serve` under
#         8 concurrent streams (bench/serve_throughput.py on the TinyLlama-shaped model); logs and JSON under $OUT
# Copy the printed tables, with the GPU's name, into the README's Performance section.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS="bitsandbytes trl platformdirs click rich markdown-it-py mdurl pygments"
SERVE_WHEELS="fastapi uvicorn openai"  # with their dependencies (pip resolves them from .whl on the device)

if [[ "${1:-run}" == "prepare" ]]; then
    PY=.venv/bin/python
    mkdir -p .whl/gpu
    $PY -m pip download -q --no-deps --only-binary :all: -d .whl $WHEELS
    $PY -m pip download -q --only-binary :all: -d .whl/serve $SERVE_WHEELS
    HF_HUB_OFFLINE=1 $PY - <<'EOF'
from pathlib import Path
from transformers import AutoTokenizer
from medchat.core.model import resolve_base
AutoTokenizer.from_pretrained(resolve_base("bundled")).save_pretrained(".whl/gpu/tokenizer")
src = Path("../shared/data/train/medical_meadow_wikidoc_patient_info.jsonl")
lines = src.read_text().splitlines()[:400]
Path(".whl/gpu/train.jsonl").write_text("\n".join(lines) + "\n")
# The NF4 fidelity check rebuilds the shipped run's held-out split from its config, which names these files.
import shutil
for name in ("medical_meadow_wikidoc_patient_info.jsonl", "medquad.jsonl"):
    Path(".whl/gpu/shared/data/train").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path("../shared/data/train") / name, Path(".whl/gpu/shared/data/train") / name)
print("prepared .whl:", sum(f.stat().st_size for f in Path(".whl").rglob("*") if f.is_file()) // 2**20, "MiB")
EOF
    exit 0
fi

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv" || true
$PY -m pip install -q --no-index --find-links .whl --no-deps $WHEELS 2>&1 | tail -3 || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 MEDCHAT_CACHE_DIR=/tmp/medchat-cache
$PY -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bnb', bitsandbytes.__version__)"
$PY -m pip install -q --no-index --find-links .whl/serve $SERVE_WHEELS 2>&1 | tail -3 || true
$PY bench/gpu_check.py --assets .whl/gpu --n 200 2>&1 | tee "$OUT/gpu_check.log"
# gpu_check.py left the TinyLlama-shaped model in /tmp/tinyllama-shaped
$PY bench/serve_throughput.py --base /tmp/tinyllama-shaped --device cuda --max-tokens 128 2>&1 | tee "$OUT/serve_throughput.log"
cp bench/results/*.json "$OUT/" 2>/dev/null || true
# NF4 fidelity on bitsandbytes' CUDA kernels (issue 17): does NF4 keep the fine-tune? Same table as the CPU run.
if [[ ! -d ../shared/data/train ]]; then
    mkdir -p ../shared/data && ln -sfn "$PWD/.whl/gpu/shared/data/train" ../shared/data/train
fi
$PY bench/nf4_fidelity.py --device cuda --n 48 --name nf4_fidelity_cuda 2>&1 | tee "$OUT/nf4_fidelity.log"
cp bench/results/nf4_fidelity_cuda.json "$OUT/" 2>/dev/null || true
