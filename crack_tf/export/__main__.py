"""``python -m crack_tf.export``."""

from crack_tf.export.cli import run

run()
