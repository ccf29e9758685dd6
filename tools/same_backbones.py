"""Whether pretrained backbones are the same weights, from tools/pretrain.py's sidecars (``weights_sha256``).

Two sidecars (one line, the form ``tools/gpu_jobs/common.sh``'s BACKBONE_REPEAT check prints), or two
folders of them (``*.pretrain.json`` as the GPU jobs copy them into ``pretrain_logs/``, or
``*.weights.h5.json``), matched by file name, one table row a backbone::

    python tools/same_backbones.py runs/pretrain/synthetic.weights.h5.json runs/pretrain/synthetic_repeat.weights.h5.json
    python tools/same_backbones.py docs/results/h100_2026-12-06f/pretrain_logs docs/results/h100_2026-12-06g/pretrain_logs

Exit status: 0 when every pair is identical, 1 when one differs (or lacks a digest), 2 when there is
nothing to compare (a missing file, folders without a common sidecar).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SIDECAR_SUFFIXES = (".pretrain.json", ".weights.h5.json")


def load_sidecar(path: Path) -> dict:
    """One pretraining sidecar; ValueError saying why when it is not one."""
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(sidecar, dict) or "history" not in sidecar:
        raise ValueError(f"{path} is not a tools/pretrain.py sidecar (no 'history')")
    return sidecar


def same_weights(a: dict, b: dict) -> bool:
    """Identical weights: both digests present and equal (a sidecar without one proves nothing)."""
    return a.get("weights_sha256") is not None and a.get("weights_sha256") == b.get("weights_sha256")


def final_loss(sidecar: dict) -> float:
    return float(sidecar["history"]["loss"][-1])


def pair_line(a: dict, b: dict) -> str:
    """The one-line verdict on two sidecars of one backbone."""
    verdict = "IDENTICAL" if same_weights(a, b) else "DIFFER"
    return (f"backbone pretrained twice ({a.get('mode')}, seed {a.get('seed')}, deterministic {a.get('deterministic')}): "
            f"weights {verdict}; final loss {final_loss(a):.6f} / {final_loss(b):.6f}")


def sidecars(folder: Path) -> dict[str, Path]:
    """The folder's sidecars by backbone name (the file name without its sidecar suffix)."""
    found = {}
    for path in sorted(folder.iterdir()):
        for suffix in SIDECAR_SUFFIXES:
            if path.name.endswith(suffix):
                found[path.name[: -len(suffix)]] = path
    return found


def folder_table(first: Path, second: Path) -> tuple[list[str], bool]:
    """Markdown rows for the backbones both folders hold, and whether every one is identical."""
    a, b = sidecars(first), sidecars(second)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"no backbone sidecar ({', '.join(SIDECAR_SUFFIXES)}) in both {first} and {second}")
    rows = [f"| backbone | sha256 ({first}) | sha256 ({second}) | final loss | seconds | weights |",
            "|---|---|---|---|---|---|"]
    all_same = True
    for name in common:
        x, y = load_sidecar(a[name]), load_sidecar(b[name])
        same = same_weights(x, y)
        all_same &= same
        rows.append(f"| {name} | {str(x.get('weights_sha256'))[:12]} | {str(y.get('weights_sha256'))[:12]} | "
                    f"{final_loss(x):.6f} / {final_loss(y):.6f} | {x.get('seconds', 0):.0f} / {y.get('seconds', 0):.0f} | "
                    f"{'IDENTICAL' if same else 'DIFFER'} |")
    only = sorted(set(a) ^ set(b))
    if only:
        rows.append(f"\nIn one folder only (not compared): {', '.join(only)}")
    return rows, all_same


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="same_backbones.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("first", type=Path, help="a sidecar, or a folder of them")
    parser.add_argument("second", type=Path, help="the other sidecar, or folder")
    args = parser.parse_args(argv)  # exits 2 with the usage on a wrong count
    for path in (args.first, args.second):
        if not path.exists():
            parser.error(f"{path} does not exist")
    if args.first.is_dir() != args.second.is_dir():
        parser.error("give two sidecars or two folders, not one of each")
    try:
        if args.first.is_dir():
            rows, all_same = folder_table(args.first, args.second)
            print("\n".join(rows))
        else:
            a, b = load_sidecar(args.first), load_sidecar(args.second)
            all_same = same_weights(a, b)
            print(pair_line(a, b))
    except ValueError as err:
        parser.error(str(err))
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
