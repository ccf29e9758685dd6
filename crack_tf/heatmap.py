# ``python -m crack_tf.heatmap``: the command of crack_tf.inspection.heatmap_cli under its usual name. Its
# docstring is imported too: absl prints the __main__ module's docstring as the usage text.
from crack_tf.inspection.heatmap_cli import __doc__, main, run  # noqa: F401

if __name__ == "__main__":
    run()
