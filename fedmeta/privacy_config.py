"""Config sections of differential privacy: the run's ``[privacy]`` and each simulated hospital's own
policy (``[privacy.hospitals.NAME]``); docs/privacy.md says what each key means."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedmeta.config_base import Section as _Section

__all__ = ["MIN_SIGMA", "MAX_SIGMA", "MAX_TARGET_EPSILON", "HospitalPrivacyConfig", "PrivacyConfig"]

# Below MIN_SIGMA epsilon is in the hundreds and Opacus' PRV accountant runs out of memory; past
# MAX_SIGMA its arithmetic overflows. Neither is a privacy setting anyone means.
MIN_SIGMA, MAX_SIGMA, MAX_TARGET_EPSILON = 0.3, 1e4, 100.0


class HospitalPrivacyConfig(_Section):
    """One hospital's own privacy policy in a simulation (a deployed hospital sets the same in its
    node config: docs/privacy.md). The hospital trains the stricter of its policy and the run."""

    mode: Literal["record", "client", "none"] | None = Field(
        None, description="the privacy the hospital requires (a run in another mode is refused); "
        "none: it also accepts non-private runs; unset: whatever the run asks")
    max_epsilon: float = Field(float("inf"), gt=0, description="its cap over all runs in its ledger")
    delta: float | None = Field(None, gt=0, lt=1, description="the largest delta it accepts")
    accountant: Literal["prv", "rdp"] | None = Field(None, description="its accountant (unset: the run's)")
    min_noise_multiplier: float = Field(0.0, ge=0, le=MAX_SIGMA, description="the least sigma it accepts")


class PrivacyConfig(_Section):
    """Differential privacy of what a hospital sends (see docs/privacy.md).

    ``record``: the unit is one patient record (per-episode clipping of meta-gradients, Poisson
    sampling of records, Gaussian noise by Opacus' DPOptimizer). ``client``: the unit is a hospital
    (its meta-update clipped to ``max_grad_norm`` and noised). Give either ``noise_multiplier`` or
    ``target_epsilon`` (calibrated with Opacus for the planned rounds). ``hospitals`` holds each
    hospital's own policy (names must exist in the data).
    """

    mode: Literal["none", "record", "client"] = "none"
    noise_multiplier: float = Field(0.0, ge=0, description="sigma; 0 = calibrate from target_epsilon; else "
                                    f"{MIN_SIGMA:g} to {MAX_SIGMA:g}")
    target_epsilon: float = Field(0.0, ge=0, le=MAX_TARGET_EPSILON, description="epsilon after all planned rounds")
    delta: float = Field(0.0, ge=0, lt=1, description="0 = min(1e-5, 0.1 / n_train) (record mode), 1e-5 (client); "
                         "at most 1 / n_train (record) or 1 / hospitals (client)")
    max_grad_norm: float = Field(1.0, gt=0, description="clipping norm C")
    sample_rate: float = Field(0.0, ge=0, le=1, description="record sampling rate q; 0 = expected "
                               "meta-batch size / n_train")
    accountant: Literal["prv", "rdp"] = "prv"
    max_epsilon: float = Field(float("inf"), gt=0, description="default per-hospital cap")
    hospitals: dict[str, HospitalPrivacyConfig] = Field(default_factory=dict,
                                                        description="per-hospital policies (simulation)")
    secure_mode: bool = Field(False, description="Opacus secure noise, sampling and noise from OS entropy (not "
                              "reproducible from the seed); a deployed node always uses them")

    @model_validator(mode="after")
    def _noise_or_target(self) -> "PrivacyConfig":
        if self.mode != "none" and (self.noise_multiplier > 0) == (self.target_epsilon > 0):
            raise ValueError("set exactly one of noise_multiplier and target_epsilon (> 0)")
        if self.noise_multiplier and not MIN_SIGMA <= self.noise_multiplier <= MAX_SIGMA:
            raise ValueError(f"noise_multiplier must be 0 or between {MIN_SIGMA:g} and {MAX_SIGMA:g} "
                             f"(got {self.noise_multiplier:g})")
        return self
