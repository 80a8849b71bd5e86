"""An export folder as an MLflow LoggedModel of the PyTorch flavour, and its registration.

`mlflow.pytorch.log_model` writes the model (pickled: tracing with torch.export, MLflow's default,
takes 20+ s for the nano model on a CPU), with a signature inferred from one example's logits;
`mlflow.register_model` makes the model version. Ours: the pinned requirements (MLflow would spend
a minute inferring them) and the look-ups that keep a retried or replayed session from logging or
registering the same model twice.
"""
import logging

__all__ = ['find_logged_model', 'log_export', 'register_model']


def find_logged_model(client, experiment_id: str, run_id: str, name: str) -> str | None:
    """The id of the READY model named `name` that run `run_id` logged, or None."""
    from mlflow.entities import LoggedModelStatus
    models = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    return next((m.model_id for m in models if m.status == LoggedModelStatus.READY), None)


def log_export(export: str, *, name: str, step: int, tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Log an export folder's main (EMA) weights into run `run_id` as model `name`, linked to the
    run's metrics at `step`.

    Args:
        export: the export folder (export.py's layout).
        name: the model's name (the run's).
        step: the training step whose metrics the model is linked to.
        tracking_uri: the MLflow of the run.
        experiment_id: the run's experiment, where MLflow puts a LoggedModel.
        run_id: the run that logs the model.

    Returns:
        The LoggedModel's id (`models:/<id>` loads it).
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from ..export import load_export
    model, card = load_export(export, 'ema')  # model.safetensors: the EMA, or the raw weights without one
    example = _input_example(card['model_kwargs']['img_size'])
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    pickle_warning = logging.getLogger('mlflow.pytorch')
    level = pickle_warning.level
    pickle_warning.setLevel(logging.ERROR)  # chosen knowingly: the model unpickles only with sgformer
    try:
        info = mlflow.pytorch.log_model(model, name=name, run_id=run_id, step=step,
                                        signature=infer_signature(example, logits), input_example=example,
                                        pip_requirements=_requirements(), serialization_format='pickle')
    finally:
        pickle_warning.setLevel(level)
    return info.model_id


def register_model(client, tracking_uri: str, model_id: str, name: str) -> None:
    """Register `models:/<model_id>` under `name`, unless a version of it is there already."""
    import mlflow
    uri = f'models:/{model_id}'
    if not any(v.source == uri for v in client.search_model_versions(f"name = '{name}'")):
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.register_model(uri, name, await_registration_for=0)


def _input_example(img_size: int):
    """One normalised image of multiples of 0.5 in [-2, 2]: short in the model's JSON example."""
    import torch
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(-4, 5, (1, 3, img_size, img_size), generator=generator) / 2).numpy()


def _requirements() -> list[str]:
    """Pinned, so MLflow does not spend a minute inferring them (the model unpickles with sgformer)."""
    from importlib.metadata import PackageNotFoundError, version
    import timm
    import torch
    pins = [f"torch=={torch.__version__.split('+')[0]}", f'timm=={timm.__version__}']
    try:
        return pins + [f"sgformer=={version('sgformer')}"]
    except PackageNotFoundError:
        return pins
