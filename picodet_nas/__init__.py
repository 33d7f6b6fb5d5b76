"""picodet-nas: hardware-aware one-shot architecture search for PP-PicoDet detectors."""

__version__ = "0.1.0"
