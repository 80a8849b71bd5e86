"""Datasets on disk: the generated sample, ImageNet-layout folders and the FFCV betons written from them."""
