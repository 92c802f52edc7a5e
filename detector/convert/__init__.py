"""Offline conversion of published TensorFlow models into our weights format; inference never imports it.

- :mod:`~detector.convert.variables`: the one mapping from the TF Object Detection API's slim variables to our
  state dict, and its refusals (shared by both file formats);
- :mod:`~detector.convert.tf_graph`: frozen TensorFlow GraphDefs (``detector convert-tf``);
- :mod:`~detector.convert.published`: fetching and converting the built-in models (``detector install-models``).
"""
