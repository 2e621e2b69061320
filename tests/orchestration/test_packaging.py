"""The orchestration layer as an installed package: flows/, tasks/ and infra/ import as hddm_flows,
hddm_tasks and hddm_infra from any folder; deployments name module paths; nothing edits sys.path."""
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from .conftest import REPO

MAPPED = {"hddm_flows": "flows", "hddm_tasks": "tasks", "hddm_infra": "infra"}
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", "artifacts", ".hddm"}


def _python_files():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


def test_no_sys_path_edits_and_no_imports_of_repository_folders():
    path_edit = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\b|\[[^\]]*\]\s*=|\+=)")
    folder_import = re.compile(r"^\s*(from|import)\s+(" + "|".join(MAPPED.values()) + r")(\.|\s|$)", re.M)
    bad = []
    for path in _python_files():
        text = open(path, encoding="utf-8").read()
        rel = os.path.relpath(path, REPO)
        bad += [f"{rel}: {m.group(0).strip()}" for m in path_edit.finditer(text)]
        bad += [f"{rel}: {m.group(0).strip()}" for m in folder_import.finditer(text)]
    assert bad == []


def test_pyproject_lists_every_package_and_maps_the_orchestration_folders():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["setuptools"]
    assert config["package-dir"] == MAPPED
    on_disk = set()
    for top in ("hddm_core", "hddm_cli", *MAPPED):
        folder = os.path.join(REPO, MAPPED.get(top, top))
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            if "__init__.py" in files or root == os.path.join(REPO, "infra", "k8s"):  # k8s: package data
                rel = os.path.relpath(root, folder)
                on_disk.add(top if rel == "." else top + "." + rel.replace(os.sep, "."))
    assert set(config["packages"]) == on_disk


@pytest.mark.slow
def test_deployments_load_from_the_installed_package_in_any_folder(tmp_path):
    """What a worker does with a flow run: no pull step, the module-path entrypoint imported in its own
    working directory (here an empty folder, without PYTHONPATH): Prefect 3.9 treats an entrypoint without
    a colon as a module path (prefect.flows.load_flow_from_flow_run)."""
    with open(os.path.join(REPO, "prefect.yaml")) as f:
        config = yaml.safe_load(f)
    assert config["pull"] == []
    entrypoints = {d["name"]: d["entrypoint"] for d in config["deployments"]}
    assert all(":" not in e and e.startswith("hddm_flows.") for e in entrypoints.values()), entrypoints
    code = ("import sys\nfrom prefect.flows import load_flow_from_entrypoint\n"
            "print(' '.join(load_flow_from_entrypoint(e, use_placeholder_flow=False).name for e in sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, *entrypoints.values()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == list(entrypoints)


def test_docs_and_code_point_inside_the_repository():
    """What a reader needs lives in docs/ (stack-notes.md, architecture.md), not in files outside it."""
    outside = re.compile("|".join(re.escape(s) for s in ("STACK" + "-NOTES", "ARCHITECTURE" + ".md", "../" + "shared")))
    bad = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".json")) or f in ("Makefile", "run"):
                path = os.path.join(root, f)
                with open(path, encoding="utf-8", errors="replace") as fh:
                    bad += [f"{os.path.relpath(path, REPO)}:{i}" for i, line in enumerate(fh, 1) if outside.search(line)]
    assert bad == []
    for doc in ("stack-notes.md", "architecture.md"):
        assert os.path.getsize(os.path.join(REPO, "docs", doc)) > 1000
