"""Self-supervised pretraining and cross-validated fine-tuning for lung-sound clips."""

__version__ = "0.1.0"

from lungsound_ssl.labels import LABELS

__all__ = ["LABELS", "__version__"]
