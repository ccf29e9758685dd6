"""crack_tf: ResNet50 + ASPP crack classifier for concrete bridge inspection (Keras 3)."""

from setuptools import find_packages, setup

setup(
    name="crack_tf",
    version="0.1.0",
    description="Crack / background classification of concrete image patches: ResNet50 + ASPP in Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["crack_tf", "crack_tf.*"]),
    package_data={"crack_tf": ["serving/*.txt", "serving/*.config", "inspection/report_assets/*"]},
    python_requires=">=3.10",
    # TensorFlow itself comes from the `cpu` or `gpu` extra, so a CPU user never gets the
    # CUDA wheel forced on them; on a machine with only JAX or PyTorch the models,
    # the TF-free loader and the JAX trainer run without any TensorFlow.
    install_requires=[
        "keras>=3.3",
        "numpy",
        "absl-py",
        "pillow",
        "tensorflow-datasets",
        "importlib_resources",  # TFDS builder code needs it
        "matplotlib",  # evaluation report plots
        "scipy",  # temperature fit, pixel metrics, connected-component boxes
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16", "tensorboard"],
        "gpu": ["tensorflow[and-cuda]>=2.16", "tensorboard"],
        # jax[cpu]: the JAX-backend and multi-process data-parallel tests; pytest-xdist: the suite on 2 workers.
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff", "matplotlib", "jax[cpu]"],
        "parity": ["torch==2.13.0", "torchmetrics"],
        # tensorflow-serving-api declares a dependency on the full `tensorflow` wheel;
        # the README installs it with --no-deps so it sits on tensorflow-cpu instead.
        "serving": ["grpcio", "protobuf"],
    },
    entry_points={
        "console_scripts": [
            "crack-tf-train=crack_tf.train:run",
            "crack-tf-evaluate=crack_tf.evaluate:run",
            "crack-tf-heatmap=crack_tf.inspection.heatmap_cli:run",
            "crack-tf-predict=crack_tf.inspection.predict:run",
            "crack-tf-report=crack_tf.inspection.report:run",
            "crack-tf-calibrate=crack_tf.calibrate:run",
            "crack-tf-adapt=crack_tf.adapt:run",
        ]
    },
)
