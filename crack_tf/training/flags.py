"""Command-line flags of the trainer, defined once from one table.

Every flag can be set in an absl flagfile (``--flagfile=configs/<name>.cfg``) and then
overridden on the command line after it. :mod:`crack_tf.training.config` turns the parsed
flags into a typed ``TrainConfig`` (its groups come from the table's sections; it imports this
module, never the other way round) and :func:`validate` rejects bad combinations before any data
is read or any model is built.
"""

from __future__ import annotations

from absl import flags

from crack_tf.choices import (
    ADABN_PASSES,
    ASPP_IMPLS,
    BALANCE,
    BEST_MODES,
    DATA_SOURCES,
    FUSIONS,
    JIT,
    LOADERS,
    LR_SCALING,
    MIXSTYLE_STAGES,
    MODELS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SMALL_POLICIES,
    STAGES,
    STRATEGIES,
    TTA_MODES,
)

FLAGS = flags.FLAGS

# Group -> rows of (kind, name, default, help, choices-or-None). The groups are the typed
# sub-configurations of crack_tf.training.config.TrainConfig.
_GROUPS: dict[str, list[tuple]] = {"model": [
    ("enum", "model", "resnet50_aspp", "Model name from crack_tf.models.", MODELS),
    ("enum", "insert_after", "layer1", "Backbone stage after which ASPP is spliced.", STAGES),
    ("list", "rates", ["2", "4", "8"], "ASPP atrous rates, comma separated.", None),
    ("integer", "depth_multiplier", 4, "ASPP depthwise channel multiplier (the paper's 'out').", None),
    ("enum", "fusion", "max", "ASPP branch fusion.", FUSIONS),
    ("enum", "aspp_impl", "auto", "ASPP implementation (same weights, different speed).", ASPP_IMPLS),
    ("string", "weights", "", "Backbone weights: '' (from scratch), 'imagenet' (Keras cache file) or a path.", None),
    ("float", "dropout", 0.0, "Dropout rate before the classifier.", None),
    ("float", "bn_momentum", 0.0, "BatchNorm moving-average momentum; 0 keeps Keras' 0.99.", None),
    ("list", "mixstyle", [], "Backbone stages (conv1, layer1, layer2, layer3) after which MixStyle mixes the "
     "feature statistics of a training batch's samples (Zhou et al. 2021; the identity at inference): styles "
     "between the sources, for sources never trained on. Empty = off.", None),
    ("float", "mixstyle_p", 0.5, "With --mixstyle: probability that a training batch is mixed.", None),
    ("float", "mixstyle_alpha", 0.1, "With --mixstyle: Beta(alpha, alpha) of the mixing weight.", None),
], "data": [
    ("enum", "data_source", "synthetic", "Where images come from.", DATA_SOURCES),
    ("string", "data_dir", "", "Image folder root / TFRecord dir / TFDS manual dir; for synthetic, "
     "where to generate (default ~/.cache/crack_tf/synthetic); for photos, photo+mask folders with "
     "weights: uav75:0.6,uavcrack:0.3,deepcrack:0.1 (relative to --data_root).", None),
    ("string", "data_root", "", "Folder that relative --data_dir / --eval_sources entries are under.", None),
    ("integer", "crops_per_epoch", 4096, "Photos source: random crops per training epoch.", None),
    ("list", "crop_side", ["96", "192"], "Photos source: crop side range in photo pixels (min,max; "
     "log-uniform, capped at the photo's short side), resized to --image_size.", None),
    ("integer", "min_crack_pixels", 40, "Photos source: a crop is crack with at least this many crack pixels "
     "per --val_tile^2 photo pixels (scaled with the crop area), background with none; else redrawn.", None),
    ("float", "crack_fraction", 0.5, "Photos source: share of crack crops.", None),
    ("float", "max_padding", 0.1, "Photos source: crops and tiles with more black padding are not used.", None),
    ("float", "hard_negatives", 0.0, "Photos source: probability that a background crop is a hard one: around a "
     "marked joint pixel (mask 204, UAV75's planking joints) or beside a crack (1 px to half a side away).", None),
    ("float", "saturation", 0.0, "Photos source: max random saturation change (fraction).", None),
    ("float", "blur", 0.0, "Photos source: probability of a Gaussian blur (radius 0.3-1.5 px).", None),
    ("float", "noise", 0.0, "Photos source: max Gaussian noise sigma (0-255 scale).", None),
    ("float", "jpeg", 0.0, "Photos source: probability of a JPEG re-compression (quality 30-90).", None),
    ("float", "gamma", 0.0, "Photos source: random gamma in [1/(1+g), 1+g] (log-uniform), out = 255*(in/255)**gamma.",
     None),
    ("float", "grayscale", 0.0, "Photos source: probability of a grayscale crop (luma in all 3 channels).", None),
    ("float", "hue", 0.0, "Photos source: max random hue rotation (turns of the colour circle, <= 0.5; luma kept).",
     None),
    ("integer", "val_tile", 128, "Photos source: side of the fixed val tiles (grid of each val photo) and of "
     "the --min_crack_pixels rule.", None),
    ("float", "val_fraction", 0.2, "Photos source: share of source images held out as the val fold of a "
     "source without a val/ folder.", None),
    ("string", "eval_sources", "", "Also evaluate the final model on the val tiles of these photo sources "
     "(same syntax as --data_dir; results in run.json metrics.eval_sources_by_source).", None),
    ("integer", "adabn_eval_crops", 0, "With --eval_sources: also score each of those sources at the stored "
     "operating point after AdaBN (BatchNorm statistics re-estimated on this many unlabelled crops of its "
     "train photos; 0 = off): a new site adapted without labels.", None),
    ("enum", "adabn_passes", "cached", "With --adabn_eval_crops: how AdaBN runs its passes: from the latest "
     "kept cut of the graph (cached), op by op from the images (eager) or through one compiled probe model "
     "(compiled); the same statistics (crack_tf.training.adabn, tools/bench_adabn.py).",
     ADABN_PASSES),
    ("list", "adabn_target_weights", ["1"], "With --adabn_eval_crops: the AdaBN target weights w to score, each "
     "in (0, 1]: every BatchNorm statistic becomes (1 - w) x the trained one + w x the target's (1: plain AdaBN; "
     "e.g. 1,0.5 also scores a blend; crack_tf.adapt --target_weight).", None),
    ("integer", "adabn_batch_size", 64, "With --adabn_eval_crops: crops per AdaBN pass (the statistics are pooled "
     "exactly over batches: the size changes speed and memory only).", None),
    ("bool", "save_eval_features", False, "With --eval_sources: also write those tiles' penultimate features "
     "(every test-time view, float16) and the head's weights to <model_dir>/features.npz, for the few-shot "
     "last-layer calibration curve (tools/few_shot_curve.py --fit=last_layer).", None),
    ("integer", "synthetic_train", 600, "Synthetic training tiles (half crack).", None),
    ("integer", "synthetic_val", 200, "Synthetic validation tiles (half crack).", None),
    ("integer", "synthetic_size", 64, "Synthetic tile size in pixels.", None),
    ("string", "train_split", "train", "Training split name.", None),
    ("string", "val_split", "val", "Validation split name ('' to skip validation).", None),
    ("integer", "image_size", 224, "Model input size: random crop (train) / center crop (eval).", None),
    ("enum", "small_policy", "resize", "Tiles smaller than image_size are resized up or padded.", SMALL_POLICIES),
    ("bool", "flips", True, "Random horizontal/vertical flips.", None),
    ("bool", "rot90", True, "Random 90-degree rotations.", None),
    ("float", "brightness", 0.1, "Max random brightness change (fraction of 255).", None),
    ("float", "contrast", 0.1, "Max random contrast change (fraction).", None),
    ("enum", "balance", "none", "Class balancing: loss weights or oversampling.", BALANCE),
    ("enum", "loader", "auto", "Input pipeline: tf.data, NumPy PyDataset, or auto (tf.data if TF imports).",
     LOADERS),
    ("integer", "loader_workers", 0, "NumPy loader threads (or processes); 0 = min(8, CPU count).", None),
    ("bool", "loader_processes", False, "NumPy loader: worker processes instead of threads (no GIL contention).",
     None),
    ("bool", "loader_shared_memory", True, "With --loader_processes, photos source: workers hand batches back "
     "through shared memory (false: pickled through a pipe).", None),
], "optim": [
    ("integer", "batch_size", 32, "GLOBAL batch size (split across replicas).", None),
    ("integer", "epochs", 10, "Training epochs.", None),
    ("integer", "steps_per_epoch", 0, "Steps per epoch; 0 = one pass over the training split.", None),
    ("enum", "optimizer", "sgd", "Optimizer.", OPTIMIZERS),
    ("float", "momentum", 0.9, "SGD momentum.", None),
    ("float", "lr", 0.005, "Base learning rate for a global batch of --lr_reference_batch.", None),
    ("enum", "lr_scaling", "linear", "Scale lr by global_batch / lr_reference_batch (linear) or not.", LR_SCALING),
    ("integer", "lr_reference_batch", 32, "Batch size the base lr is meant for (the paper's 32).", None),
    ("enum", "lr_schedule", "cosine", "Learning-rate decay schedule.", SCHEDULES),
    ("float", "warmup_epochs", 0.0, "Linear warm-up length in epochs (0 = none).", None),
    ("float", "lr_decay_rate", 0.1, "Decay factor of the step / exponential schedules.", None),
    ("float", "lr_decay_epochs", 10.0, "Epochs between step decays / exponential decay period.", None),
    ("float", "weight_decay", 1e-4, "Decoupled weight decay (the paper's 0.2 is implausible).", None),
    ("float", "label_smoothing", 0.0, "Label smoothing of the cross-entropy.", None),
    ("integer", "freeze_backbone_epochs", 0, "Train only ASPP + head for the first N epochs.", None),
    ("float", "threshold", 0.5, "Crack-probability threshold of the R/MA/P/FA metrics during training.", None),
    ("float", "ema_momentum", 0.0, "Exponential moving average of the weights (e.g. 0.99; 0 = off): val, "
     "best.keras and the final model use the average (with --ema_bn_crops the final model only).", None),
    ("integer", "ema_bn_crops", 0, "With --ema_momentum (photos source, one process): the final model's "
     "BatchNorm statistics re-estimated for the averaged weights on the training stream's first this many "
     "crops, as SWA does (0 = off: the statistics of the raw weights, which need not fit the average); "
     "per-epoch val and best.keras then use the raw weights.", None),
    ("string", "threshold_rule", "f1", "Rule picking the operating threshold on val after training (after "
     "temperature scaling), stored with the model: f1 (pooled val), precision@R (best precision with recall >= R), "
     "or source-balanced: <mean|min>_source_<accuracy|balanced_accuracy|f1> over the val sources (no source "
     "dominates by its tile count).", None),
    ("enum", "tta", "none", "Test-time augmentation of the stored operating point (none, flips, d4: mean p over "
     "the 4 flips / 8 flips+rotations); run.json also reports the plain one.", TTA_MODES),
], "run": [
    ("integer", "seed", 42, "Global random seed (weights, data order, augmentation).", None),
    ("string", "model_dir", "runs/default", "Output folder: checkpoints, models, logs, run.json.", None),
    ("bool", "overwrite", False, "Wipe a model_dir that holds a run of a different config.", None),
    ("enum", "mixed_precision", "auto", "Compute precision; auto = bf16 on GPU, float32 on CPU.", PRECISIONS),
    ("enum", "jit_compile", "auto", "XLA compilation of the train step.", JIT),
    ("bool", "deterministic", False, "Deterministic ops and data order (slower): TF op determinism; on JAX, "
     "XLA's deterministic GPU kernels (--xla_gpu_deterministic_ops), so a seed gives one model on a GPU.", None),
    ("enum", "strategy", "auto", "Distribution: auto (all GPUs), mirrored, one_device.", STRATEGIES),
    ("integer", "num_devices", 0, "Devices to use; 0 = all. On a CPU-only TF machine, mirrored with "
     "N > 1 splits the CPU into N logical devices.", None),
    ("integer", "checkpoint_every", 100, "Save a resumable checkpoint every N steps (also each epoch).", None),
    ("string", "best_metric", "val_accuracy", "Metric that selects best.keras.", None),
    ("enum", "best_mode", "max", "Whether a larger or smaller best_metric is better.", BEST_MODES),
    ("integer", "log_every", 20, "Print a progress line every N steps when stdout is not a terminal.", None),
    ("bool", "tensorboard", True, "Write TensorBoard scalars and a sample image grid.", None),
    ("bool", "backend_check", False, "Print backend, devices, strategy and replicas, then exit.", None),
    ("string", "compile_cache_dir", "", "JAX persistent compilation cache ('' = $JAX_COMPILATION_CACHE_DIR or "
     "~/.cache/crack_tf/jax; 'none' = off): a second run of the same model skips most compiling.", None),
    # Multi-process data parallel (JAX backend).
    ("string", "coordinator_address", "", "host:port of process 0 for multi-process JAX training.", None),
    ("integer", "num_processes", 1, "Number of processes (multi-host JAX).", None),
    ("integer", "process_id", 0, "This process' index (multi-host JAX).", None),
]}
_FLAG_TABLE = [row for rows in _GROUPS.values() for row in rows]
GROUP_OF = {row[1]: group for group, rows in _GROUPS.items() for row in rows}
FLAG_NAMES = tuple(row[1] for row in _FLAG_TABLE)

# Augmentations that only the photos source renders (crack_tf.data.crops.render_crop).
PHOTO_AUGMENTATIONS = ("saturation", "blur", "noise", "jpeg", "gamma", "grayscale", "hue")

# Flags that do not change what a run computes; they may differ when resuming.
NON_IDENTITY_FLAGS = frozenset(
    {"overwrite", "log_every", "tensorboard", "backend_check", "checkpoint_every", "loader_workers",
     "coordinator_address", "process_id", "compile_cache_dir", "loader_processes",
     "loader_shared_memory"}
)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> flags.FlagValues:
    """Defines the trainer's flags on ``flag_values`` (absl's global FLAGS by default; idempotent)."""
    for kind, name, default, help_text, choices in _FLAG_TABLE:
        if name in flag_values:
            continue
        if kind == "enum":
            flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=flag_values)
        else:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)
    return flag_values


def validate(cfg) -> None:
    """Raises ValueError naming the flag for any bad value or combination."""
    problems = []
    if cfg.batch_size < 1:
        problems.append("--batch_size must be >= 1")
    if cfg.epochs < 1:
        problems.append("--epochs must be >= 1")
    if cfg.steps_per_epoch < 0:
        problems.append("--steps_per_epoch must be >= 0 (0 = one pass over the data)")
    if cfg.image_size < 16:
        problems.append("--image_size must be >= 16")
    if cfg.lr <= 0:
        problems.append("--lr must be > 0")
    if not 0 <= cfg.dropout < 1:
        problems.append("--dropout must be in [0, 1)")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append("--label_smoothing must be in [0, 1)")
    if cfg.weight_decay < 0:
        problems.append("--weight_decay must be >= 0")
    if not 0 < cfg.threshold < 1:
        problems.append("--threshold must be in (0, 1)")
    if not 0 <= cfg.ema_momentum < 1:
        problems.append("--ema_momentum must be in [0, 1) (0 = no weight averaging)")
    if cfg.ema_bn_crops < 0 or (cfg.ema_bn_crops and (not cfg.ema_momentum or cfg.data_source != "photos"
                                                        or cfg.model == "zhang2016")):
        problems.append(f"--ema_bn_crops={cfg.ema_bn_crops}: must be >= 0; it re-estimates the BatchNorm statistics "
                        "of --ema_momentum's average on training photos (--data_source=photos, a ResNet50 model)")
    from crack_tf.evaluation.stats import check_rule

    try:
        check_rule(cfg.threshold_rule)
    except ValueError as err:
        problems.append(str(err).replace("--pick_threshold / ", ""))
    if cfg.freeze_backbone_epochs < 0 or cfg.freeze_backbone_epochs >= cfg.epochs:
        problems.append("--freeze_backbone_epochs must be in [0, epochs)")
    elif cfg.freeze_backbone_epochs and cfg.model == "zhang2016":
        problems.append("--freeze_backbone_epochs needs a ResNet50 backbone (zhang2016 has none)")
    try:
        rates = [int(r) for r in cfg.rates]
        if not rates or min(rates) < 1:
            raise ValueError
    except ValueError:
        problems.append(f"--rates must be a comma-separated list of integers >= 1, got {cfg.rates}")
    if cfg.mixstyle and (cfg.model == "zhang2016" or not set(cfg.mixstyle) <= set(MIXSTYLE_STAGES)):
        problems.append(f"--mixstyle={','.join(cfg.mixstyle)}: choose ResNet50 stages from {','.join(MIXSTYLE_STAGES)} "
                        "(zhang2016 has none)")
    if not 0 <= cfg.mixstyle_p <= 1 or cfg.mixstyle_alpha <= 0:
        problems.append("--mixstyle_p must be in [0, 1] and --mixstyle_alpha > 0")
    if not 0 <= cfg.bn_momentum < 1:
        problems.append("--bn_momentum must be in [0, 1) (0 = keep the default 0.99)")
    if cfg.depth_multiplier < 1:
        problems.append("--depth_multiplier must be >= 1")
    if cfg.data_source != "synthetic" and not cfg.data_dir:
        problems.append(f"--data_source={cfg.data_source} needs --data_dir")
    try:
        lo, hi = (int(v) for v in cfg.crop_side)
        if not 8 <= lo <= hi:
            raise ValueError
    except ValueError:
        problems.append(f"--crop_side must be min,max photo pixels with 8 <= min <= max, got {cfg.crop_side}")
    if not 0 < cfg.crack_fraction < 1:
        problems.append("--crack_fraction must be in (0, 1)")
    if not 0 <= cfg.hard_negatives <= 1:
        problems.append(f"--hard_negatives={cfg.hard_negatives}: a probability, use [0, 1]")
    elif cfg.hard_negatives and cfg.data_source != "photos":
        problems.append("--hard_negatives: background crops of the photos source only (--data_source=photos)")
    if cfg.crops_per_epoch < 1 or cfg.min_crack_pixels < 1 or cfg.val_tile < 8:
        problems.append("--crops_per_epoch and --min_crack_pixels must be >= 1, --val_tile >= 8")
    if cfg.adabn_eval_crops < 0 or (cfg.adabn_eval_crops and not cfg.eval_sources):
        problems.append("--adabn_eval_crops must be >= 0 and needs --eval_sources (the sources to adapt to)")
    elif cfg.adabn_eval_crops and cfg.model == "zhang2016":
        problems.append("--adabn_eval_crops adapts BatchNorm statistics: zhang2016 has no BatchNorm layer")
    try:
        weights = [float(w) for w in cfg.adabn_target_weights]
        if not weights or len(set(weights)) < len(weights) or not all(0 < w <= 1 for w in weights):
            raise ValueError
    except ValueError:
        problems.append(f"--adabn_target_weights={','.join(cfg.adabn_target_weights)}: give distinct weights in (0, 1]")
    if cfg.adabn_batch_size < 1:
        problems.append(f"--adabn_batch_size={cfg.adabn_batch_size}: must be >= 1")
    if cfg.save_eval_features and not cfg.eval_sources:
        problems.append("--save_eval_features needs --eval_sources (the tiles whose features are written)")
    if not 0 <= cfg.max_padding <= 1 or not 0 < cfg.val_fraction < 1:
        problems.append("--max_padding must be in [0, 1] and --val_fraction in (0, 1)")
    if not all(0 <= getattr(cfg, k) <= 1 for k in ("blur", "jpeg", "grayscale")) or \
            min(cfg.saturation, cfg.noise, cfg.gamma) < 0:
        problems.append("--blur, --jpeg and --grayscale are probabilities in [0, 1]; --saturation, --noise and "
                        "--gamma must be >= 0")
    if not 0 <= cfg.hue <= 0.5:
        problems.append(f"--hue={cfg.hue}: a shift of at most half the colour circle, use [0, 0.5]")
    photo_only = [k for k in PHOTO_AUGMENTATIONS if getattr(cfg, k)]
    if photo_only and cfg.data_source != "photos":
        problems.append(f"--{', --'.join(photo_only)}: augmentations of the photos source only; "
                        f"--data_source={cfg.data_source} has flips, rot90, brightness and contrast")
    if cfg.num_devices < 0:
        problems.append("--num_devices must be >= 0 (0 = all)")
    if cfg.num_processes < 1 or not 0 <= cfg.process_id < cfg.num_processes:
        problems.append("--process_id must be in [0, num_processes)")
    if cfg.num_processes > 1 and not cfg.coordinator_address:
        problems.append("--num_processes > 1 needs --coordinator_address=host:port")
    if cfg.checkpoint_every < 0:
        problems.append("--checkpoint_every must be >= 0")
    if problems:
        raise ValueError("Invalid training configuration:\n  " + "\n  ".join(problems))


def check_replicas(cfg, num_replicas: int) -> None:
    """The global batch must split evenly across replicas."""
    if cfg.batch_size % num_replicas:
        raise ValueError(
            f"--batch_size={cfg.batch_size} is not divisible by the {num_replicas} replicas; "
            f"use a multiple of {num_replicas} (e.g. {num_replicas * max(1, cfg.batch_size // num_replicas)})"
        )
