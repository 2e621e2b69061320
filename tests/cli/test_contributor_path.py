"""The decentralized contributor's path, end to end, with the commands the docs show.

A run is built on the embedded default with the README's command-line block (in this process,
through hddmp's main). Two contributors then run the contributor guide's block, each in its own
Python process (hddmp's main(argv) per line, own working folder and environment, nothing shared but
the published run; one process per contributor rather than per command keeps the 2-core budget): alice trains a DDPM expert, bob a flow-matching one, on emoji images the run never
saw. Both land in the run's registry without a Prefect API (the CLI says no event was sent), and the
README's evaluation block then evaluates the run's and the contributors' experts together.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from hddm_cli.main import main
from tests.cli.docs_blocks import named_block

# Minutes of CPU (a published run, two contributors, an evaluation); 12-15 min measured on 2 cores shared
# with other work, so the budget is above the suite default of 15 min.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]
BIN = os.path.dirname(sys.executable)


def run_inprocess(commands: list[str], cwd, env_updates: dict | None = None) -> None:
    """Run docs lines through hddmp's main(argv): `export K=V` lines set the environment."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for line in commands:
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                os.environ[key] = os.path.expandvars(value)
                continue
            argv = shlex.split(os.path.expandvars(line))
            assert argv[0] == "hddmp", line
            assert main(["-q", *argv[1:]]) == 0, line
    finally:
        os.chdir(old)


def render_images(folder, group: str, size: int, skip: int, n: int) -> None:
    """Emoji of one Unicode group the run did not use (its first entries go to the run), as PNGs."""
    from hddm_core.data.embedded import EmojiRenderer, openmoji_codepoints, parse_emoji_test, select_entries

    entries = [e for e in parse_emoji_test() if e.normalized in openmoji_codepoints()]
    renderer = EmojiRenderer("openmoji", size)
    os.makedirs(folder, exist_ok=True)
    written = 0
    for e in select_entries(entries, [group], None)[skip:]:
        image, _ = renderer.render(e)
        if image is None:
            continue
        stem = re.sub(r"[^a-z0-9]+", "_", e.name.lower()).strip("_")
        image.save(os.path.join(folder, f"{stem}.png"))
        with open(os.path.join(folder, f"{stem}.txt"), "w") as f:
            f.write(e.name)
        written += 1
        if written == n:
            return


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    run_inprocess(named_block("readme-cli"), root)  # exports HDDM_ARTIFACT_ROOT (relative to root)
    run = os.path.abspath(os.path.join(root, os.environ["HDDM_ARTIFACT_ROOT"]))
    yield root, run
    os.environ.pop("HDDM_ARTIFACT_ROOT", None)


DRIVER = """
import os, shlex, sys
from hddm_cli.main import main
for line in open(sys.argv[1]).read().splitlines():
    print("$", line, flush=True)
    code = main(shlex.split(os.path.expandvars(line))[1:])
    if code != 0:
        sys.exit(code)
"""


def contributor_script(objective: str, name: str) -> str:
    lines = [c for c in named_block("contributor") if not re.match(r"^(RUN|IMAGES)=", c)]
    assert any("--objective ddpm-eps" in c for c in lines) and any("--name alice-ddpm" in c for c in lines)
    assert all(c.startswith("hddmp ") for c in lines), lines
    return "\n".join(lines).replace("--objective ddpm-eps", f"--objective {objective}").replace("alice-ddpm", name)


def test_two_contributors_land_and_are_evaluated(published_run, tmp_path):
    root, run = published_run
    contributors = {"alice": ("ddpm-eps", "alice-ddpm", "Animals & Nature"), "bob": ("flow-matching", "bob-fm", "Flags")}
    procs = {}
    for who, (objective, name, group) in contributors.items():
        home = tmp_path / who
        render_images(home / "my-images", group, size=48, skip=40, n=8)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HDDM_", "PREFECT_API"))}
        env.update(RUN=run, IMAGES="my-images", PATH=BIN + os.pathsep + env.get("PATH", ""),
                   HOME=str(home), PREFECT_HOME=str(home / ".prefect"), OMP_NUM_THREADS="1")
        script = home / "contribute.txt"
        script.write_text(contributor_script(objective, name))
        procs[who] = subprocess.Popen([sys.executable, "-c", DRIVER, str(script)], cwd=home, env=env,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    outputs = {}
    for who, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        outputs[who] = out
        assert proc.returncode == 0, f"{who}'s contribution failed:\n{out[-4000:]}"

    card = json.loads((tmp_path / "alice" / "my-hddm" / "clustering" / "clustering.json").read_text())
    for who, (objective, name, _) in contributors.items():
        out = outputs[who]
        assert "verdict: OK" in out and "[ok] compatible:clustering_version" in out
        assert "no event sent: no Prefect API is configured" in out
        landed = os.path.join(run, "experts", "registry", name, "expert.json")
        manifest = json.loads(open(landed).read())
        assert manifest["objective"] == objective
        assert manifest["clustering_version"] == card["clustering_version"]
        assert manifest["text_encoder"] == card["text"]["encoder"] and manifest["image_resolution"] == 16
        work = json.loads((tmp_path / who / "my-hddm" / "work" / "contribution.json").read_text())
        assert manifest["cluster_id"] == work["largest"] == work["expert"]["cluster_id"]
        assert (tmp_path / who / "my-hddm" / "work" / "cluster" / "clusters.png").stat().st_size > 1000
    # each contributor trained in its own folder: nothing of one is in the other's
    assert not any("bob" in p for p in os.listdir(tmp_path / "alice" / "my-hddm" / "work" / "experts" / "runs"))

    # the run's operator evaluates (the README's block): both contributions, DDPM and FM together
    run_inprocess(named_block("readme-evaluate"), root)
    reports = [os.path.join(d, "report.md") for d, _, files in os.walk(os.path.join(run, "evaluations"))
               if "_manifest.json" in files]
    assert len(reports) == 1
    manifest = json.loads(open(os.path.join(os.path.dirname(reports[0]), "_manifest.json")).read())
    assert manifest["counts"]["experts"] == 2
    assert any(m.startswith("threshold") for m in manifest["counts"]["modes"])
    assert os.path.getsize(os.path.join(root, "artifacts", "samples.png")) > 1000

    # refusals at submission name the field, the value given and what the run expects
    alice = tmp_path / "alice"
    clustering = alice / "my-hddm" / "clustering"
    expert = json.loads((alice / "my-hddm" / "work" / "contribution.json").read_text())["expert"]["uri"]
    tampered = tmp_path / "tampered"
    shutil.copytree(expert, tampered)
    m = json.loads((tampered / "expert.json").read_text())
    m["clustering_version"] = "centroids-sha256:0123456789abcdef"
    (tampered / "expert.json").write_text(json.dumps(m))
    assert main(["expert", "validate", str(tampered), "--clustering", str(clustering)]) == 1
    assert main(["expert", "submit", str(tampered), "--clustering", str(clustering), "--name", "tampered"]) == 2
    assert not os.path.exists(os.path.join(run, "experts", "registry", "tampered"))


def test_refusal_messages(published_run, tmp_path, capsys):
    """A wrong clustering version and a wrong claimed cluster are refused with one line each."""
    _, run = published_run
    assert main(["-q", "contrib", "fetch", "--run", run, "--out", str(tmp_path / "c")]) == 0
    card = json.loads((tmp_path / "c" / "clustering.json").read_text())
    runs = os.path.join(run, "experts", "runs")
    ddpm = next(os.path.join(runs, d, "expert") for d in sorted(os.listdir(runs)) if "ddpm" in d)
    # the run's own experts declare the run's clustering version (recorded by the prepare stage)
    own = json.loads(open(os.path.join(ddpm, "expert.json")).read())
    assert own["clustering_version"] == card["clustering_version"]
    # an expert declaring none is refused, naming the field, the value given and the run's value
    undeclared = tmp_path / "undeclared"
    shutil.copytree(ddpm, undeclared)
    own["clustering_version"] = None
    (undeclared / "expert.json").write_text(json.dumps(own))
    capsys.readouterr()
    assert main(["-q", "expert", "submit", str(undeclared), "--clustering", str(tmp_path / "c"), "--name", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"hddmp: error: refused: clustering_version is None but the run expects "
                   f"{card['clustering_version']!r}"), err
    assert main(["-q", "expert", "submit", str(undeclared), "--clustering", str(tmp_path / "c"), "--name", "x",
                 "--cluster-id", str(1 - own["cluster_id"])]) == 2
    err = capsys.readouterr().err
    assert "refused: clustering_version" in err and "and 1 more failed check: compatible:cluster_id" in err
