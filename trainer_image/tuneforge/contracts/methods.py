"""``method``: OpenAI's fine-tuning method object, a discriminated union on ``type``.

``{"type": "supervised", "supervised": {"hyperparameters": {...}}}`` and likewise ``dpo``, ``reward_model``
(tuneforge) and ``reinforcement`` (with ``algorithm`` and ``grader``). The job request, the stored job and the
JobSpec all carry this same object; in a JobSpec its hyperparameters are resolved (see
:meth:`_Method.resolved`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from tuneforge.contracts.graders import AnyGrader, Grader, judges_in
from tuneforge.contracts.hyperparameters import (
    Algorithm,
    DpoHyperparameters,
    ReinforcementHyperparameters,
    RewardModelHyperparameters,
    SupervisedHyperparameters,
    _Hyperparameters,
)

MethodType = Literal["supervised", "dpo", "reward_model", "reinforcement"]
METHOD_TYPES: tuple[MethodType, ...] = ("supervised", "dpo", "reward_model", "reinforcement")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SupervisedConfig(_Frozen):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoConfig(_Frozen):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class RewardModelConfig(_Frozen):
    hyperparameters: RewardModelHyperparameters = Field(default_factory=RewardModelHyperparameters)


class ReinforcementConfig(_Frozen):
    algorithm: Algorithm = Field("grpo", description="grpo and rloo are critic-free; ppo trains a value head")
    grader: Grader = Field(..., description="How each completion is scored")
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)

    @model_validator(mode="after")
    def _fits_the_algorithm(self) -> ReinforcementConfig:
        # raised as the hyperparameter's own error, so a 400 names 'method.reinforcement.hyperparameters.<field>'
        problems = self.hyperparameters.check_algorithm(self.algorithm)
        if problems:
            raise ValidationError.from_exception_data("ReinforcementConfig", [
                InitErrorDetails(type=PydanticCustomError("algorithm_mismatch", problem), loc=("hyperparameters", name),
                                 input=getattr(self.hyperparameters, name))
                for name, problem in problems])  # fmt: skip
        return self

    @field_validator("grader")
    @classmethod
    def _no_judges(cls, grader: AnyGrader) -> AnyGrader:
        # training runs apart from the serving engines a judge model needs
        if judges_in(grader):
            raise ValueError(f"{judges_in(grader)[0].type} graders call a served model: they work in evals and "
                             "/v1/fine_tuning/alpha/graders/run, not in reinforcement jobs (use a reward_model "
                             "grader to train against a model's score)")
        return grader


class _Method(_Frozen):
    """What every method object answers, whatever its type."""

    type: MethodType

    @property
    def config(self) -> SupervisedConfig | DpoConfig | RewardModelConfig | ReinforcementConfig:
        config: SupervisedConfig | DpoConfig | RewardModelConfig | ReinforcementConfig = getattr(self, self.type)
        return config

    @property
    def hyperparameters(self) -> _Hyperparameters:
        return self.config.hyperparameters

    @property
    def algorithm(self) -> Algorithm | None:
        return None

    @property
    def grader(self) -> AnyGrader | None:
        return None

    def with_hyperparameters(self, hp: _Hyperparameters) -> AnyMethod:
        config = self.config.model_copy(update={"hyperparameters": hp})
        return self.model_copy(update={self.type: config})  # type: ignore[return-value]

    def resolved(self, *, rows: int, adapter: str) -> AnyMethod:
        """The same method with every service-decidable ``"auto"`` hyperparameter replaced by a number."""
        return self.with_hyperparameters(self.hyperparameters.resolved(rows=rows, adapter=adapter))


class SupervisedMethod(_Method):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedConfig = Field(default_factory=SupervisedConfig)


class DpoMethod(_Method):
    type: Literal["dpo"] = "dpo"
    dpo: DpoConfig = Field(default_factory=DpoConfig)


class RewardModelMethod(_Method):
    type: Literal["reward_model"] = "reward_model"
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)


class ReinforcementMethod(_Method):
    type: Literal["reinforcement"] = "reinforcement"
    reinforcement: ReinforcementConfig

    @property
    def algorithm(self) -> Algorithm:
        return self.reinforcement.algorithm

    @property
    def grader(self) -> AnyGrader:
        return self.reinforcement.grader

    def resolved(self, *, rows: int, adapter: str) -> AnyMethod:
        """As for every method, then the ``auto`` values that depend on the algorithm (and PPO's defaults)."""
        hp = self.reinforcement.hyperparameters.resolved(rows=rows, adapter=adapter)
        assert isinstance(hp, ReinforcementHyperparameters)
        return self.with_hyperparameters(hp.for_algorithm(self.algorithm))


AnyMethod = SupervisedMethod | DpoMethod | RewardModelMethod | ReinforcementMethod
Method = Annotated[AnyMethod, Field(discriminator="type")]
