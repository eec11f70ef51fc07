"""Started by `accelerate launch` in test_multi_gpu.py: a medchat-train run in which every process gets a real
SIGINT at the end of step STEP, as when Ctrl-C reaches a launched process group.

    accelerate launch ... tests/trainer/multi_gpu_interrupt.py BASE DATA NAME STEP
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from trainer.config import load_config
from trainer.train import train


class CtrlCAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    from medchat.app import environment

    environment.start()  # an entry point: MEDCHAT_RUNS_DIR (the test's) as a command would read it
    base, data, name, step = sys.argv[1:5]
    cfg = load_config("cpu-smollm2", overrides={
        "base": base, "data": [data], "target_modules": "q_proj,v_proj", "batch_size": 2, "max_length": 256,
        "system_prompt": "Be careful.", "precision": "fp32", "max_steps": 4, "save_steps": 2, "eval_steps": 2,
        "logging_steps": 1, "guard_index": False})
    result = train(cfg, name=name, progress=False, extra_callbacks=(CtrlCAt(int(step)),))
    sys.exit(0 if result.status == "interrupted" else 1)
