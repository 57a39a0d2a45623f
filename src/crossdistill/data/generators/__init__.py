"""Built-in synthetic data: generated from a config, cached under ``data_dir`` or in memory."""
