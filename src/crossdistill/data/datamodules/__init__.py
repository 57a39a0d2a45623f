"""One LightningDataModule per modality pair, all subclassing ``base.PairedDataModule``."""
