"""TFDS builder ``bridge_crack``: ``import crack_tf.data.tfds_bridge_crack`` then ``tfds.load("bridge_crack")``."""

from crack_tf.data.tfds_bridge_crack.bridge_crack_dataset_builder import Builder, tfds_records

__all__ = ["Builder", "tfds_records"]
