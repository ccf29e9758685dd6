"""``python -m tests.step_delay_train <trainer flags>``: crack_tf.train, each step slowed down by
``CRACK_TF_STEP_DELAY`` seconds, so a kill -9 test can land between two checkpoints."""

from __future__ import annotations

import os
import time

import keras

from crack_tf import train


class StepDelay(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


_fit = keras.Model.fit


def _slow_fit(self, *args, callbacks=None, **kwargs):
    delay = StepDelay(float(os.environ.get("CRACK_TF_STEP_DELAY", "0")))
    return _fit(self, *args, callbacks=[*(callbacks or []), delay], **kwargs)


if __name__ == "__main__":
    keras.Model.fit = _slow_fit
    train.run()
