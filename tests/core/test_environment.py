"""The install is what the project's own files say: pins, and no shadowed standard library."""
import dataclasses
import importlib.metadata as md
import sysconfig


def test_stdlib_dataclasses_not_shadowed_by_the_backport():
    # img2dataset pulls in the 2018 `dataclasses` backport, which breaks Prefect's server.
    assert dataclasses.__file__.startswith(sysconfig.get_paths()["stdlib"]), dataclasses.__file__
    assert "slots" in dataclasses.dataclass.__code__.co_varnames or hasattr(dataclasses, "KW_ONLY")


def test_torch_pair_is_the_one_that_imports():
    import torch
    import torchvision

    assert md.version("torch") == "2.14.1" and md.version("torchvision") == "0.29.1"
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
