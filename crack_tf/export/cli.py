"""``python -m crack_tf.export``: the SavedModel export command (library: :mod:`crack_tf.export`)."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from crack_tf.choices import EXPORT_PRECISIONS, SMALL_POLICIES, TTA_MODES
from crack_tf.export import WARMUP_FILE, export_model_file, quiet_tf_logs, verify_export
from crack_tf.serving import DEFAULT_SIGNATURE, IMAGES_SIGNATURE


def main(argv: Sequence[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    quiet_tf_logs()
    if len(argv) > 1:
        print(f"crack_tf.export: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        path, metadata, model = export_model_file(
            FLAGS.model, FLAGS.export_dir, FLAGS.version, FLAGS.image_size, FLAGS.small_policy, FLAGS.tta,
            FLAGS.threshold, FLAGS.precision, FLAGS.overwrite, FLAGS.warmup, FLAGS.serving_name,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"crack_tf.export: {err}", file=sys.stderr)
        return 2
    print(f"exported {FLAGS.model} -> {path} (signatures {DEFAULT_SIGNATURE}, {IMAGES_SIGNATURE}; "
          f"{metadata['image_size']} px, small_policy={metadata['small_policy']}; is_crack at threshold "
          f"{metadata['threshold']:.4g}, temperature {metadata['temperature']:.3g}, tta {metadata['tta']}, "
          f"precision {metadata['precision']})")
    if FLAGS.verify:
        diff = verify_export(model, path, metadata["image_size"], metadata=metadata)
        print(f"verified: SavedModel matches the Keras model (max |dp| = {diff:.1e})")
    if not pathlib.Path(path, "assets.extra", WARMUP_FILE).exists() and FLAGS.warmup:
        print("note: tensorflow-serving-api not installed, no warmup request written")
    return 0


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "Trained .keras file (run.json next to it is read if present).", required=True)
    flags.DEFINE_string("export_dir", "exports/crack_tf", "Model base path; the version folder goes inside.")
    flags.DEFINE_integer("version", None, "Version folder number (default: highest existing + 1).")
    flags.DEFINE_integer("image_size", None, "Eval crop size (default: run.json, else the model input size).")
    flags.DEFINE_enum("small_policy", None, list(SMALL_POLICIES), "Tiles smaller than image_size (default: run.json, else resize).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")
    flags.DEFINE_bool("verify", True, "Reload the export and compare it with the Keras model.")
    flags.DEFINE_bool("warmup", True, "Write assets.extra/tf_serving_warmup_requests (needs tensorflow-serving-api).")
    flags.DEFINE_string("serving_name", "crack_tf", "Model name used in the warmup request.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "Test-time augmentation in the signature (default: "
                      "the one the model's threshold was picked with, else none).")
    flags.DEFINE_float("threshold", None, "is_crack threshold (default: the model's stored one, else 0.5).")
    flags.DEFINE_enum("precision", "float32", list(EXPORT_PRECISIONS),
                      "Compute precision of the signatures. float32 (default) serves on every CPU and GPU; a "
                      "GPU-trained model is saved in bf16, which TF Serving on a CPU without bf16 instructions "
                      "cannot run; bf16; saved = as in the .keras file.")


def run() -> None:
    from crack_tf import cli

    _define_flags()
    cli.run(main)
