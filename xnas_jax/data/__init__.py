"""The data layer: image-classification datasets as arrays, and on-device batches.

One idea per module; importers use the submodules (nothing is re-exported here):

* :mod:`~xnas_jax.data.specs`: the dataset facts (:data:`DATASETS` of
  :class:`DatasetSpec`: classes, shape, splits, sources, whether flips keep
  the class), the how-to-provide hints, default crop padding and cutout,
  :class:`ArrayDataset`, :class:`DatasetError` and :func:`channel_stats`.
* :mod:`~xnas_jax.data.readers`: the readers of each source (embedded digits,
  official CIFAR/MNIST/SVHN files, image folders and zips, tensorflow-datasets,
  tfrecord) and the .npz cache.
* :mod:`~xnas_jax.data.datasets`: :func:`load_dataset`, which picks the
  reader and the cache for a dataset name.
* :mod:`~xnas_jax.data.order`: host-side splits and order (the search's
  weights/architecture halves, subsets, downsampling, epoch permutations,
  batch indices).
* :mod:`~xnas_jax.data.shards`: data shards (which examples each process
  reads), their arrays on the devices (:class:`DeviceShards`) and the
  gathering of a batch there.
* :mod:`~xnas_jax.data.augment`: the augmentation of batches on the device
  (crop, flip, cutout, normalization).
* :mod:`~xnas_jax.data.autoaugment`: AutoAugment's CIFAR-10 policy, on the device.
"""
