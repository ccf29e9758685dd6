"""Every list of choices, defined once (flags, configs and checks import them from here)."""

from __future__ import annotations

CLASS_NAMES = ("background", "crack")  # label 0, label 1: crack is the positive class
MODELS = ("resnet50", "resnet50_aspp", "zhang2016")
STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # where the ASPP module can be spliced
MIXSTYLE_STAGES = STAGES[:-1]  # where MixStyle can follow (not the last: its statistics feed the classifier)
FUSIONS = ("max", "sum", "concat")  # ASPP branch fusion
ASPP_IMPLS = ("auto", "separable", "dense", "dense_s2b", "separable_s2b", "taps")
DATA_SOURCES = ("synthetic", "folder", "tfrecord", "tfds", "photos")  # the trainer's --data_source
INPUT_SOURCES = ("folder", "tfrecord", "tfds", "photos")  # DataConfig.source (synthetic is a folder)
SMALL_POLICIES = ("resize", "pad")
BALANCE = ("none", "class_weight", "oversample")
VALIDATE = ("header", "full")
LOADERS = ("auto", "tf", "numpy")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine")
LR_SCALING = ("linear", "none")
PRECISIONS = ("auto", "float32", "bf16", "fp16")
DTYPE_POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # Keras policy names
INFERENCE_PRECISIONS = ("auto", "float32", "bf16")  # --precision of the inspection commands
EXPORT_PRECISIONS = ("float32", "bf16", "saved")  # --precision of crack_tf.export
JIT = ("auto", "true", "false")
STRATEGIES = ("auto", "mirrored", "one_device")
BEST_MODES = ("max", "min")
TTA_MODES = ("none", "flips", "d4")  # test-time augmentation: mean p over the views
ADABN_PASSES = ("eager", "compiled", "cached")  # how AdaBN runs its passes (crack_tf.training.adabn)
