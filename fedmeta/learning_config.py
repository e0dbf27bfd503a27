"""What a run learns and how: the task, the model, the local meta-learning, the server optimizer
and the ``local`` baseline (sections of ``fedmeta.config.ExperimentConfig``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedmeta.config_base import Section as _Section
from fedmeta.config_base import registered as _registered

__all__ = ["TaskConfig", "ModelConfig", "MetaConfig", "ServerConfig", "LocalConfig"]


class TaskConfig(_Section):
    """What is learned from the labels (``fedmeta.tasks``): its loss, metrics and k-shot strata."""

    kind: str = "binary"
    classes: int = Field(0, ge=0, description="multiclass: the number of classes K (labels 0..K-1)")

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        return _registered(kind, "fedmeta.tasks", "TASKS", "task")

    @model_validator(mode="after")
    def _classes(self) -> "TaskConfig":
        if self.kind == "multiclass" and self.classes < 2:
            raise ValueError("classes: a multiclass task needs task.classes >= 2 (labels 0..classes-1)")
        if self.kind == "binary" and self.classes not in (0, 2):
            raise ValueError("classes: a binary task has 2 classes (set task.kind = \"multiclass\" for more)")
        return self


class ModelConfig(_Section):
    """The model (``fedmeta.models``): ``kind`` from the registry (``mlp`` for tables, ``hidden = []``
    being logistic regression; ``convnet`` and ``resnet`` for images), or ``factory =
    "package.module:function"``, the user's own ``nn.Module``."""

    kind: str = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 64], description="mlp: hidden layer sizes")
    width: int = Field(32, ge=2, description="convnet: channels of each block; resnet: of the first stage")
    blocks: int = Field(2, ge=1, description="resnet: basic blocks per stage")
    factory: str = Field("", description="\"package.module:function\" called as function(input_shape, n_outputs, "
                         "seed); setting it selects it")

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        return _registered(kind, "fedmeta.models", "MODELS", "model", ", or set model.factory")

    @field_validator("factory")
    @classmethod
    def _importable_path(cls, factory: str) -> str:
        module, sep, function = factory.partition(":")
        if factory and not (sep and module and function.isidentifier()
                            and all(p.isidentifier() for p in module.split("."))):
            raise ValueError("expected \"package.module:function\"")
        return factory

    @model_validator(mode="after")
    def _positive(self) -> "ModelConfig":
        if any(h <= 0 for h in self.hidden):
            raise ValueError("hidden sizes must be positive")
        return self


class MetaConfig(_Section):
    """Local meta-training on one hospital: episodes, inner loop and local outer steps."""

    algorithm: str = "maml"
    inner_steps: int = Field(5, ge=1)
    inner_lr: float = Field(0.3, gt=0)
    shots: int = Field(5, ge=1, description="support examples per class in an episode")
    query: int = Field(20, ge=1, description="query examples per episode")
    meta_batch: int = Field(8, ge=1, description="episodes per outer step")
    outer_steps: int = Field(5, ge=1, description="local outer steps per round")
    outer_lr: float = Field(0.5, gt=0, description="local outer learning rate")
    episode_chunk: int = Field(0, ge=0, description="episodes differentiated together (memory: a conv net's "
                               "second-order graph is large); 0 = automatic")
    embedding: int = Field(64, ge=1, description="metric-based learners (protonet): the size of the embedding "
                           "the model outputs")
    ditto_lambda: float = Field(0.1, ge=0, description="ditto: pull lambda of each hospital's personal model "
                                "towards the global one")
    prox_mu: float = Field(0.01, ge=0, description="fedprox: weight mu of the proximal term "
                           "mu/2 * ||theta - theta_global||^2 in each hospital's local objective")


class ServerConfig(_Section):
    """The server meta-optimizer applied to the aggregated meta-update."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the meta-update (the global model's)")


class LocalConfig(_Section):
    """The ``local`` baseline: each hospital trains alone on its own data."""

    steps: int = Field(300, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (Adam's weight_decay)")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="Adam's rate over the steps: "
                                                       "constant, or cosine decay to 0")
