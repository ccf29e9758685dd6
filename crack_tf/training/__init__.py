"""The trainer's library: flags and typed config, the run's build and loop, callbacks, checkpoints,
finish, run folder, optimizer, devices, AdaBN (the command is :mod:`crack_tf.train`)."""
