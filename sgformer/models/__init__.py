from .sgformer import SGFormer, checkpoint_filter_fn, load_official_checkpoint  # noqa: F401
