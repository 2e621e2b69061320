"""Subprocess body for the kill / SIGTERM tests: train the tiny run in RUN_DIR (resuming if possible).

    python -m tests.training.run_tiny RUN_DIR STEPS [--crash STAGE:N] [--slow SECONDS]

--crash STAGE:N kills this process (os._exit, no cleanup, like SIGKILL) the N-th time the
checkpoint writer reaches STAGE (e.g. "partial:model.safetensors", "before-pointer").
--slow sleeps that long per sample read (the data stay identical) so that a run lasts long enough
for the parent to kill it at random moments. Prints "READY" once imported and
"RESULT <status> <step> <loop hash>" on a clean exit.
"""
import os
import sys
import time

import torch

torch.set_num_threads(1)  # bit-identity across processes needs the same reduction order

from hddm_core.training.expert_trainer import train_expert  # noqa: E402
from tests.training.tiny import SeededDataset, factory, loop_hash, tiny_config  # noqa: E402


class SlowDataset(SeededDataset):
    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def __getitem__(self, i):
        time.sleep(self.delay)
        return super().__getitem__(i)


def main(argv):
    run_dir, steps = argv[0], int(argv[1])
    opts = dict(zip(argv[2::2], argv[3::2]))
    hook = None
    if "--crash" in opts:
        stage, count = opts["--crash"].rsplit(":", 1)
        seen = {"n": 0}

        def hook(name):
            if name == stage:
                seen["n"] += 1
                if seen["n"] == int(count):
                    os._exit(137)

    dataset = SlowDataset(float(opts["--slow"])) if "--slow" in opts else SeededDataset()
    print("READY", flush=True)
    result = train_expert(tiny_config(steps=steps), dataset, run_dir, model_factory=factory,
                          export=False, fault_hook=hook)
    print("RESULT", result.train.status, result.train.step, loop_hash(result.loop), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
