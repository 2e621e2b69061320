"""bf16 autocast on CPU, DataLoader workers (same order as in-process loading), and initialisation
from a saved (e.g. converted ImageNet DiT) expert checkpoint."""
import math

import torch

from hddm_core.checkpoints import save_expert
from hddm_core.models import build_expert_model, expert_config
from hddm_core.training.config import ExpertTrainConfig
from hddm_core.training.expert_trainer import build_loop
from tests.training.tiny import SeededDataset, factory, loop_hash, tiny_config


def test_bf16_autocast_trains_and_keeps_fp32_master_weights(tmp_path):
    loop = build_loop(tiny_config(steps=3, precision="bf16"), SeededDataset(), str(tmp_path / "bf16"),
                      model_factory=factory)
    result = loop.run()
    assert result.status == "completed" and all(map(math.isfinite, result.losses))
    assert {p.dtype for p in loop.model.parameters()} == {torch.float32}
    assert {t.dtype for t in loop.ema.shadow.values()} == {torch.float32}


def test_workers_do_not_change_the_sample_order(tmp_path):
    a = build_loop(tiny_config(steps=5), SeededDataset(), str(tmp_path / "w0"), model_factory=factory)
    a.run()
    b = build_loop(tiny_config(steps=5, num_workers=1), SeededDataset(), str(tmp_path / "w1"), model_factory=factory)
    b.run()
    assert loop_hash(a) == loop_hash(b)


class Pix16(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 16, 16, generator=g), torch.randn(4, 384, generator=g), torch.ones(4, dtype=torch.bool)


def test_init_from_saved_expert_checkpoint(tmp_path):
    torch.manual_seed(123)
    source = build_expert_model(expert_config("tiny-16"))
    uri = save_expert(str(tmp_path / "src"), "converted", source, {"objective": "ddpm-eps", "time_input": "discrete-999", "latent_space": "pixel",
                                                                 "data_hash": "", "text_encoder": "test"})
    cfg = ExpertTrainConfig(architecture="tiny-16", latent_size=16, steps=2, batch_size=4, progress=False,
                            loss_plot=False, objective="ddpm-eps", init=uri)
    loop = build_loop(cfg, Pix16(), str(tmp_path / "run"))
    for (name, p), q in zip(loop.model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(p, q), name
    scratch = build_loop(cfg.replace(init="scratch"), Pix16(), str(tmp_path / "run2"))
    assert not torch.equal(next(iter(scratch.model.parameters())), next(iter(loop.model.parameters())))
