"""crack_tf: crack / background classification of concrete image patches.

ResNet50 with an ASPP module of dilated depthwise-separable convolutions, in Keras 3.
"""

__version__ = "0.1.0"
CLASS_NAMES = ("background", "crack")  # label 0, label 1: crack is the positive class
