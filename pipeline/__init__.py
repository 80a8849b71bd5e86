"""The DVC stages of `dvc.yaml`, one entry point each (`python -m pipeline.<stage>`); `pipeline/tools/`
holds the commands that are not stages, and `pipeline/python` the interpreter the stages run with."""
