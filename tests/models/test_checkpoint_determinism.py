"""The same tensors exported twice, in different processes, give the same bytes (and so the same
weights_sha256, file name and landed-event id). safetensors keeps metadata in an unordered map whose
order changes from process to process; save_expert / save_router write the canonical form."""
import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys, tempfile, torch
from hddm_core.checkpoints import save_expert, save_router
from hddm_core.models import build_expert_model, build_router, expert_config, router_config
torch.manual_seed(0)
expert, router = build_expert_model(expert_config("tiny-16")), build_router(router_config("tiny-16", 2))
shas = []
for i in range(3):
    with tempfile.TemporaryDirectory() as tmp:
        save_expert(tmp, "e", expert, {"objective": "flow-matching", "data_hash": "d" * 64, "text_encoder": "x", "latent_space": "pixel"})
        save_router(tmp, "r", router, {"data_hash": "d" * 64, "latent_space": "pixel"})
        shas.append([json.load(open(f"{tmp}/{k}/{k == 'e' and 'expert' or 'router'}.json"))["weights_sha256"]
                     for k in ("e", "r")])
print(json.dumps(shas))
"""


def _shas(seed: str) -> list:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_exported_weights_are_byte_identical_across_processes():
    runs = _shas("1") + _shas("12345")  # 6 exports of each network, in two processes with different hash seeds
    experts, routers = {r[0] for r in runs}, {r[1] for r in runs}
    assert len(experts) == 1 and len(routers) == 1, (experts, routers)
