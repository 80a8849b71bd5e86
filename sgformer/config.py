"""The schema of `params.yaml`: every parameter of the pipeline is declared here, once.

Stages load the file with `load_params(path)`; a malformed file stops with one message that
names the file, the dotted key and the reason.

    python -m sgformer.config check [params.yaml]     # validate and print the resolved config
"""
import sys
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A user error in params.yaml, already phrased for the user."""


class Variant(BaseModel):
    """One trainable model configuration; later stages loop over `variants`."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    model: str = Field(description="timm model name, e.g. 'sgformer_s' (registered by `import sgformer`).")
    img_size: Annotated[int, Field(gt=0, multiple_of=32, description='Training resolution (square side, multiple of 32).')] = 224
    num_classes: Annotated[int, Field(ge=0, description='Classifier outputs (0: no classifier).')] = 1000
    drop_path_rate: Annotated[float, Field(ge=0, lt=1, description='Stochastic depth at the deepest block.')] = 0.1

    @field_validator('model')
    @classmethod
    def _known_model(cls, name: str) -> str:
        import timm
        import sgformer  # noqa: F401  (registers the sgformer_* models)
        if name not in timm.list_models():
            raise ValueError(f"unknown model {name!r}; known SG-Former models: {timm.list_models('sgformer_*')}")
        return name

    def model_kwargs(self) -> dict:
        """Keyword arguments for `timm.create_model(self.model, **kwargs)`."""
        return dict(img_size=self.img_size, num_classes=self.num_classes, drop_path_rate=self.drop_path_rate)


class Params(BaseModel):
    """The root of params.yaml."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    variants: dict[str, Variant] = Field(min_length=1, description='Name -> model variant.')


def _dotted(loc: tuple) -> str:
    return '.'.join(str(part) for part in loc) or '<root>'


def load_params(path: str | Path = 'params.yaml') -> Params:
    """Read and validate a params file.

    Raises:
        ConfigError: the file is missing, is not YAML, or breaks the schema; the message names
            the file, each bad dotted key and why.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'{path}: file not found') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML: {e}') from None
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        lines = [f"{path}: {_dotted(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError('\n'.join(lines)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != 'check':
        print('usage: python -m sgformer.config check [params.yaml]', file=sys.stderr)
        return 2
    try:
        params = load_params(argv[1] if len(argv) > 1 else 'params.yaml')
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(yaml.safe_dump(params.model_dump(), sort_keys=False), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
