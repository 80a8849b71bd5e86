"""SG-Former for timm, and the pipeline that trains, compares and evaluates it.

`import sgformer.models` registers the `sgformer_*` models with timm (its `@register_model`
functions run on import), as in any timm plugin package:

    import timm
    import sgformer.models
    model = timm.create_model('sgformer_s')

`import sgformer` itself imports nothing else, so the light modules start in a fraction of a second
without torch or timm: the schema of params.yaml (`sgformer.config`, also `python -m sgformer.config
check`), atomic writes (`sgformer.io`) and the sample generator (`sgformer.datasets.sample`). They
never import the model; `tests/test_layers.py` keeps the modules' layering.
"""
__version__ = "0.1.0"
