"""AdaBN for a new site: ``python -m crack_tf.adapt --model=M --photos=<folders> --out=M2``.

  python -m crack_tf.adapt --model=runs/crackmix_pretrained/final.keras \\
      --photos=flights/site_b/ --out=runs/crackmix_pretrained/final_site_b.keras
  python -m crack_tf.adapt --model=M --source=deepcrack --data_root=../shared/data --out=M2   # train split

Re-estimates every BatchNormalization layer's moving mean / variance on ``--crops`` random crops
(side log-uniform in ``--crop_side`` photo pixels, resized to the model's input size) of
unlabelled photos of the target site (``crack_tf.training.adabn``; ``--target_weight`` < 1 blends
them with the model's own); all other weights are kept.
``--photos``: image files or folders (``--recursive`` for sub-folders; unreadable files are
skipped by name). ``--source``: photo sources in ``--data_dir`` syntax, their ``--split`` photos
only (masks unused; a source without ``val/`` gives its train fold, never the val fold).
``--out`` is a new ``.keras`` file with the model's crack_tf metadata (operating point, input
size, ...) kept, and the adaptation appended to its ``adabn`` list (method, passes, target weight, photos, SHA-256 of
the photo files, crops, seed, date). The stored threshold was picked before adaptation.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

from crack_tf.training.adabn import METHODS, PASSES

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file to adapt.", required=True)
    flags.DEFINE_list("photos", [], "Unlabelled photos of the target site: image files or folders.")
    flags.DEFINE_string("source", "", "Or: photo sources (--data_dir syntax) whose --split photos to use.")
    flags.DEFINE_string("data_root", "", "Folder that relative --source entries are under.")
    flags.DEFINE_string("split", "train", "Split of --source.")
    flags.DEFINE_string("out", None, "Adapted model (.keras), a new file.", required=True)
    flags.DEFINE_integer("crops", 1024, "Random crops of the photos to measure the statistics on.")
    flags.DEFINE_list("crop_side", ["96", "192"], "Crop side range in photo pixels (min,max; log-uniform).")
    flags.DEFINE_integer("image_size", 0, "Crop size fed to the model (0 = the model's stored / input size).")
    flags.DEFINE_integer("seed", 0, "Seed of the crops.")
    flags.DEFINE_integer("batch_size", 64, "Crops per forward pass.")
    flags.DEFINE_enum("method", "exact", list(METHODS), "exact: layer by layer at inference (one pass per "
                      "BatchNorm layer); batch: one pass with batch statistics (classic AdaBN, ~30x cheaper).")
    flags.DEFINE_enum("passes", "cached", list(PASSES), "cached: exact's passes start from the latest kept "
                      "cut of the graph; eager: op by op from the images, stopped at the layer measured; compiled: "
                      "full passes through one compiled probe model (crack_tf.training.adabn).")
    flags.DEFINE_bool("recursive", False, "Also read the sub-folders of --photos folders.")
    flags.DEFINE_float("target_weight", 1.0, "In (0, 1]: each layer's statistics become (1 - w) x its own plus w x "
                       "the target's (1: the target's alone, plain AdaBN; smaller keeps more of the training sources).")


def adapt_file(model_path: str, out: str, photos: list[str] | None = None, source: str = "", data_root: str = "",
               split: str = "train", crops: int = 1024, crop_side: tuple[int, int] = (96, 192), image_size: int = 0,
               seed: int = 0, batch_size: int = 64, method: str = "exact", recursive: bool = False,
               passes: str = "cached", target_weight: float = 1.0) -> dict:
    """Adapts the ``.keras`` file ``model_path`` and writes ``out``; returns the adaptation record."""
    import keras

    import crack_tf.models  # noqa: F401  (registers the custom layers)
    from crack_tf.data.unlabelled import from_sources, random_crops, read_folders
    from crack_tf.model_meta import read_metadata, write_metadata
    from crack_tf.training.adabn import adapt_batchnorm, adaptation_record

    if not out.endswith(".keras"):
        raise ValueError(f"--out={out} must end in .keras")
    if os.path.abspath(out) == os.path.abspath(model_path):
        raise ValueError("--out must be a new file, not --model itself")
    if bool(photos) == bool(source):
        raise ValueError("give the target photos with exactly one of --photos=<folders> or --source=<photo sources>")
    lo, hi = crop_side
    if not 0.0 < target_weight <= 1.0:
        raise ValueError(f"--target_weight={target_weight}: must be in (0, 1] (1 = the target's statistics alone)")
    if not 8 <= lo <= hi or crops < 1 or batch_size < 1:
        raise ValueError(f"--crop_side={lo},{hi} needs 8 <= min <= max; --crops and --batch_size must be >= 1")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"--model={model_path}: no such file")
    started = time.time()
    if photos:
        found = read_folders(photos, recursive)
        for path, reason in found.skipped:
            print(f"skipped: {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)
    else:
        found = from_sources(source, data_root, split)
    meta = read_metadata(model_path)
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # noqa: BLE001  (re-raised with the path named)
        raise ValueError(f"{model_path}: cannot load this .keras file ({type(e).__name__}: {e})") from e
    size = image_size or meta.get("image_size") or model.input_shape[1]
    if not size:
        raise ValueError(f"{model_path} has no fixed input size: pass --image_size")
    images = random_crops(found.images, crops, int(size), (lo, hi), seed)
    print(f"adapt: {len(images)} crops of {len(found.images)} photos at {size} px "
          f"({len(found.skipped)} skipped)", flush=True)
    adapt_batchnorm(model, images, batch_size, method, log=lambda line: print(line, flush=True), passes=passes,
                    target_weight=target_weight)
    record = adaptation_record(found, crops, (lo, hi), int(size), seed, method,
                               ",".join(photos) if photos else f"{source} ({split})", model, passes, target_weight)
    record["from_model"] = os.path.abspath(model_path)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".adapt-{os.getpid()}.keras")
    try:
        model.save(tmp)
        write_metadata(tmp, {**meta, "adabn": [*meta.get("adabn", []), record]})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"summary: {record['bn_layers']} BatchNormalization layers adapted ({method}, {passes} passes) on {len(images)} crops of "
          f"{record['photos']} photos in {time.time() - started:.0f}s -> {out}", flush=True)
    return record


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}: pass the target photos with --photos=a,b")
    try:
        crop_side = tuple(int(v) for v in FLAGS.crop_side)
    except ValueError:
        raise ValueError(f"--crop_side={','.join(FLAGS.crop_side)}: use min,max photo pixels") from None
    if len(crop_side) != 2:
        raise ValueError(f"--crop_side={','.join(FLAGS.crop_side)}: use min,max photo pixels")
    adapt_file(FLAGS.model, FLAGS.out, FLAGS.photos, FLAGS.source, FLAGS.data_root, FLAGS.split, FLAGS.crops,
               crop_side, FLAGS.image_size, FLAGS.seed, FLAGS.batch_size, FLAGS.method, FLAGS.recursive, FLAGS.passes,
               FLAGS.target_weight)
    return 0


def run() -> None:
    """Console-script entry point."""
    from crack_tf import cli

    cli.entry_point(define_flags, main)()


if __name__ == "__main__":
    run()
