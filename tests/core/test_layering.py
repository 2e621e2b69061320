"""hddm_core is plain PyTorch/NumPy: it never imports Prefect or the orchestration layer (hddm_flows,
hddm_tasks, hddm_infra: the folders flows/, tasks/, infra/)."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "prefect_dask", "hddm_flows", "hddm_tasks", "hddm_infra", "flows", "tasks"}


def test_hddm_core_source_never_imports_orchestration():
    offenders = []
    for path in (ROOT / "hddm_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


@pytest.mark.slow
def test_importing_every_hddm_core_module_loads_no_prefect():
    code = (
        "import importlib, pkgutil, sys, hddm_core\n"
        "for m in pkgutil.walk_packages(hddm_core.__path__, 'hddm_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in {'prefect', 'hddm_flows', 'hddm_tasks', 'hddm_infra'})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
