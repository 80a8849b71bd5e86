"""The SG-Former model family for timm. Importing this package registers `sgformer_nano`,
`sgformer_tiny`, `sgformer_s`, `sgformer_m` and `sgformer_b` (the `@register_model` functions of
`sgformer.py` run on import), so `timm.create_model('sgformer_s')` works after `import sgformer.models`."""
from .sgformer import SGFormer, checkpoint_filter_fn, load_official_checkpoint  # noqa: F401
