"""Data, split by role.

* ``readers/``: on-disk formats (VoxCeleb-style faces + voices, caption folders, CIFAR-100);
* ``generators/``: built-in synthetic data (written in a reader's layout, or in memory);
* ``datamodules/``: one LightningDataModule per modality pair, each a
  :class:`~crossdistill.data.datamodules.base.PairedDataModule` (the contract the rest of
  the framework reads the data through);
* ``degrade.py``: quality degradations and noise shared by the datamodules.
"""
