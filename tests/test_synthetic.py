"""The embedded synthetic set: reproducible tiles, and safe to generate from several processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from crack_tf.data.synthetic import generate_dataset, make_tile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_folder_holds_the_tiles_of_the_seed(tmp_path):
    root = generate_dataset(tmp_path / "s", n_train=6, n_val=5, size=32, seed=4)
    assert len(list((root / "val").glob("*/*.png"))) == 5
    assert len(list((root / "val" / "crack").glob("*.png"))) == 3  # the odd tile goes to crack
    tile = np.asarray(Image.open(root / "train" / "crack" / "train_crack_00002.png"))
    np.testing.assert_array_equal(tile, make_tile(4, "train", 1, 2, 32))
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 4
    assert not list(root.glob(".partial-*"))  # the private scratch folder is gone


def test_readers_never_see_a_half_written_tile_while_another_process_generates(tmp_path):
    """A multi-process run has every worker generate the same folder; one that finished
    reads while another still writes. Each read must decode to a whole tile."""
    root = tmp_path / "s"
    generate_dataset(root, n_train=40, n_val=40, size=64, seed=1)
    writer = textwrap.dedent(
        f"""
        import os
        from crack_tf.data.synthetic import generate_dataset
        for _ in range(6):
            os.remove({str(root / 'synthetic.json')!r})  # force a full rewrite
            generate_dataset({str(root)!r}, n_train=40, n_val=40, size=64, seed=1)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO)
    files = sorted(root.glob("*/*/*.png"))
    reads, failures = 0, []
    while proc.poll() is None:
        for path in files:
            try:
                with Image.open(path) as img:
                    assert img.convert("RGB").size == (64, 64)
                reads += 1
            except (OSError, SyntaxError, ValueError) as err:  # what a torn PNG raises
                failures.append(f"{path.name}: {err}")
    assert proc.returncode == 0
    assert reads >= len(files) and not failures, failures[:5]
