"""Training and evaluation on COCO-format data; the service never imports it.

- :mod:`~detector.training.coco`: reading and checking COCO annotation files and their images;
- :mod:`~detector.training.pipeline`: augmented training samples and evaluation inputs;
- :mod:`~detector.training.loss`: TF's matcher, sigmoid loss with hard negatives, smooth L1;
- :mod:`~detector.training.config`, :mod:`~detector.training.initialization`, :mod:`~detector.training.checkpoint`,
  :mod:`~detector.training.train`: a run's settings, its starting weights, exact resumption, and the loop;
- :mod:`~detector.training.evaluate`: COCO mAP with pycocotools;
- :mod:`~detector.training.distributed`: running under ``torchrun``;
- :mod:`~detector.training.synthetic`: the deterministic synthetic shapes data set.
"""
