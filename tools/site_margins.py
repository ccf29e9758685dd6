"""Writes a run's ``margins.npz`` for ``tools/few_shot_curve.py`` (leave-one-source-out runs).

  KERAS_BACKEND=jax python tools/site_margins.py --run=runs/loso_deepcrack

For a run trained with ``--data_dir=uav75,uavcrack --eval_sources=deepcrack``: the logit margins
of ``<run>/final.keras`` (``--model``) on the fixed val tiles of the trained sources (``split`` =
"val") and of the left-out ones (``--eval``, default the run's ``--eval_sources``; their val and train
tiles, ``--eval_split``; ``split`` = "eval"), with the test-time augmentation of the model's stored point (``--tta``). Arrays:
``margins`` [V, N] float32, ``labels`` [N] int, ``sources`` [N] str, ``split`` [N] str. Uses the
NumPy loader (no TensorFlow needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def margins_of(model, sources: str, data_root: str, split: str, size: int, small_policy: str, val_tile: int,
               tta: str, batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margins [V, N], labels [N], source names [N] of the fixed ``split`` tiles of photo ``sources``."""
    from crack_tf.data import DataConfig, make_input
    from crack_tf.training.finish import val_margins

    config = DataConfig(source="photos", path=sources, data_root=data_root, image_size=size,
                        small_policy=small_policy, val_tile=val_tile)
    return val_margins(model, make_input(config, split, training=False, global_batch_size=batch, backend="numpy"),
                       tta)


def main_args(argv: list[str]) -> str:
    from crack_tf.predictor import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="Run folder (run.json; final.keras unless --model).")
    parser.add_argument("--model", default=None, help="Model file (default <run>/final.keras).")
    parser.add_argument("--val", default=None, help="Trained sources (default: the run's --data_dir).")
    parser.add_argument("--eval", default=None, help="Left-out sources (default: the run's --eval_sources).")
    parser.add_argument("--eval_split", default="val,train", help="Split(s) of the left-out sources (never "
                        "trained on: all of them can be scored).")
    parser.add_argument("--data_root", default=None, help="Default: the run's --data_root.")
    parser.add_argument("--val_tile", type=int, default=None, help="Default: the run's --val_tile, else 128.")
    parser.add_argument("--tta", default=None, help="Default: the model's stored tta.")
    parser.add_argument("--out", default=None, help="Default <run>/margins.npz.")
    args = parser.parse_args(argv)
    with open(os.path.join(args.run, "run.json"), encoding="utf-8") as f:
        config = json.load(f).get("config") or {}
    val, left_out = args.val or config.get("data_dir"), args.eval or config.get("eval_sources")
    if not val or not left_out:
        raise ValueError("give --val and --eval (the run's config has no data_dir / eval_sources)")
    root = config.get("data_root", "") if args.data_root is None else args.data_root
    predictor = load_model(args.model or os.path.join(args.run, "final.keras"), args.tta)
    if predictor.model is None or not predictor.image_size:
        raise ValueError(f"{predictor.path}: give a .keras model with a fixed input size")
    common = dict(data_root=root, size=predictor.image_size, small_policy=predictor.small_policy,
                  val_tile=args.val_tile or config.get("val_tile") or 128, tta=predictor.tta)
    parts = [(*margins_of(predictor.model, val, split="val", **common), "val")]
    parts += [(*margins_of(predictor.model, left_out, split=s, **common), "eval") for s in args.eval_split.split(",")]
    out = args.out or os.path.join(args.run, "margins.npz")
    np.savez(out, margins=np.concatenate([p[0] for p in parts], 1).astype(np.float32),
             labels=np.concatenate([p[1] for p in parts]).astype(np.int64),
             sources=np.concatenate([p[2] for p in parts]).astype(str),
             split=np.array([p[3] for p in parts for _ in range(len(p[1]))]))
    return out


if __name__ == "__main__":
    from crack_tf.cli import run_tool

    sys.exit(run_tool(main_args, lambda out: f"site_margins: wrote {out}"))
