"""Commands beside the pipeline (not DVC stages): `import_official` (an official checkpoint as an
export folder), `significance` (significance maps of any images) and `replay_tracking` (tracking
that waited through an MLflow outage). Run each with `python -m pipeline.tools.<name>`."""
