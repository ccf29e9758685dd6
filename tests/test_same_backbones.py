"""tools/same_backbones.py: backbones compared by their sidecars' weight digests (pairs and folders)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "same_backbones.py")
RESULTS = os.path.join(REPO, "docs", "results")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def sidecar(path, digest, loss=0.25, mode="crack"):
    record = {"mode": mode, "seed": 0, "deterministic": True, "seconds": 100.0, "history": {"loss": [0.9, loss]}}
    if digest is not None:
        record["weights_sha256"] = digest
    path.write_text(json.dumps(record))
    return path


def test_a_pair_prints_one_line_and_its_status(tmp_path):
    a = sidecar(tmp_path / "a.json", "abc", mode="synthetic")
    same = run(a, sidecar(tmp_path / "b.json", "abc", mode="synthetic"))
    assert same.returncode == 0
    assert same.stdout.strip() == ("backbone pretrained twice (synthetic, seed 0, deterministic True): "
                                   "weights IDENTICAL; final loss 0.250000 / 0.250000")
    other = run(a, sidecar(tmp_path / "c.json", "abd", loss=0.5))
    assert other.returncode == 1 and "weights DIFFER; final loss 0.250000 / 0.500000" in other.stdout


def test_a_sidecar_without_a_digest_proves_nothing(tmp_path):
    done = run(sidecar(tmp_path / "a.json", None), sidecar(tmp_path / "b.json", None))
    assert done.returncode == 1 and "DIFFER" in done.stdout


def test_folders_are_matched_by_backbone_name(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    sidecar(first / "loso_synth_no_uav75.pretrain.json", "aaa")
    sidecar(second / "loso_synth_no_uav75.weights.h5.json", "aaa")  # the other sidecar name, same backbone
    sidecar(first / "synthetic.pretrain.json", "bbb")
    sidecar(second / "synthetic.pretrain.json", "bbc")
    sidecar(second / "synthetic_repeat.pretrain.json", "bbb")
    (first / "loso_synth_no_uav75.log").write_text("not a sidecar")
    done = run(first, second)
    assert done.returncode == 1, done.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert rows["loso_synth_no_uav75"].endswith("| IDENTICAL |")
    assert rows["synthetic"].endswith("| DIFFER |") and "bbb | bbc" in rows["synthetic"]
    assert "In one folder only (not compared): synthetic_repeat" in done.stdout


@pytest.mark.parametrize("case", ["missing", "file_and_folder", "nothing_common", "not_a_sidecar", "arity"])
def test_refusals_say_what_is_wrong(tmp_path, case):
    folder = tmp_path / "f"
    folder.mkdir()
    a = sidecar(tmp_path / "a.json", "abc")
    args, message = {
        "missing": ((a, tmp_path / "nope.json"), "does not exist"),
        "file_and_folder": ((a, folder), "two sidecars or two folders"),
        "nothing_common": ((folder, tmp_path), "no backbone sidecar"),
        "not_a_sidecar": ((a, tmp_path / "run.json"), "not a tools/pretrain.py sidecar"),
        "arity": ((a,), "usage"),
    }[case]
    (tmp_path / "run.json").write_text(json.dumps({"metrics": {}}))
    done = run(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_committed_backbones_of_two_machines_are_identical():
    """RESULTS 0000000000: the four backbones of seed 0, pretrained again on another H100 machine 2.5 h later."""
    done = run(os.path.join(RESULTS, "h100_2026-12-06f", "pretrain_logs"),
               os.path.join(RESULTS, "h100_2026-12-06g", "pretrain_logs"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("| IDENTICAL |") == 4 and "b3d6ca2c8e91 | b3d6ca2c8e91" in done.stdout
