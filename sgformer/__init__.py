"""SG-Former for timm: models, data, training, tracking, config."""
from . import models  # noqa: F401  (registers the sgformer_* models with timm)

__version__ = "0.1.0"
