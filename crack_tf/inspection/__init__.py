"""Inspection of unlabelled tiles and photos with a trained model: maps, boxes, rows, reports.

Library: sliding-window maps and boxes (:mod:`~crack_tf.inspection.heatmap`), fully convolutional
window scores (:mod:`~crack_tf.inspection.dense`), windows cut on the device
(:mod:`~crack_tf.inspection.device_windows`), ``--mode`` and the compile cache
(:mod:`~crack_tf.inspection.photo_scan`), scoring tiles and photos
(:mod:`~crack_tf.inspection.scan`), Grad-CAM (:mod:`~crack_tf.inspection.gradcam`), EXIF GPS and
real-world boxes (:mod:`~crack_tf.inspection.geo`), robust photo reading
(:mod:`~crack_tf.inspection.photo_io`), the report's pages (:mod:`~crack_tf.inspection.report_pages`
+ ``report_assets/``). Commands: :mod:`~crack_tf.inspection.heatmap_cli`,
:mod:`~crack_tf.inspection.predict`, :mod:`~crack_tf.inspection.report`, run as
``python -m crack_tf.heatmap`` / ``crack_tf.predict`` / ``crack_tf.report``.
"""
