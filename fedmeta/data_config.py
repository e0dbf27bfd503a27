"""Config sections of where the hospitals come from (``[data]`` and its generators' tables)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedmeta.config_base import Section

__all__ = ["SyntheticConfig", "SyntheticImagesConfig", "MedMNISTConfig", "DataConfig"]


def _ordered(section: Section, *ranges: tuple[str, str]) -> Section:
    """``section`` if each ``(low, high)`` field pair is in order."""
    for low, high in ranges:
        if getattr(section, high) < getattr(section, low):
            raise ValueError(f"{high} must be >= {low}")
    return section


class SyntheticConfig(Section):
    """Parameters of the synthetic multi-hospital generator (see ``fedmeta.data.synthetic``)."""

    hospitals: int = Field(8, ge=2)
    features: int = Field(16, ge=2)
    min_patients: int = Field(80, ge=10)
    max_patients: int = Field(2000, ge=10)
    covariate_shift: float = Field(1.0, ge=0)
    concept_shift: float = Field(1.0, ge=0)
    prevalence_min: float = Field(0.2, gt=0, lt=1)
    prevalence_max: float = Field(0.6, gt=0, lt=1)

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticConfig":
        return _ordered(self, ("min_patients", "max_patients"), ("prevalence_min", "prevalence_max"))


class SyntheticImagesConfig(Section):
    """The synthetic imaging federation (see ``fedmeta.data.synthetic_images``)."""

    hospitals: int = Field(6, ge=2)
    size: int = Field(16, ge=4, description="scans are size x size pixels, one channel")
    min_images: int = Field(60, ge=10)
    max_images: int = Field(300, ge=10)
    acquisition_shift: float = Field(1.0, ge=0, description="how far each site's scanner is from a perfect one")
    concept_shift: float = Field(1.0, ge=0, description="how far each site's label rule turns from the global one")
    prevalence_min: float = Field(0.3, gt=0, lt=1)
    prevalence_max: float = Field(0.6, gt=0, lt=1)

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticImagesConfig":
        return _ordered(self, ("min_images", "max_images"), ("prevalence_min", "prevalence_max"))


class MedMNISTConfig(Section):
    """How one MedMNIST file is partitioned into simulated hospitals (see ``fedmeta.data.medmnist``)."""

    file: str = Field("", description="the .npz in data.dir (default: the only one there)")
    hospitals: int = Field(4, ge=2)
    acquisition_shift: float = Field(1.0, ge=0, description="0: every site sees the images as MedMNIST ships them")
    label_shift: float = Field(0.5, ge=0, le=1, description="0: every site has the file's class proportions")
    quantity_skew: float = Field(0.5, ge=0, lt=1, description="0: every site gets as many images")


class DataConfig(Section):
    """Where the hospitals come from and how each one is split."""

    source: str = "synthetic"
    dir: str = ""
    label: str = "label"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="part of each hospital's train split kept "
                                       "for model selection (per site, stratified); 0 = none")
    validation_draw: int = Field(0, ge=0, description="which validation split: 0 is the one every run uses; "
                                 "tuning averages draws 0..tune.validation_draws-1")
    held_out: list[str] = Field(default_factory=list)
    leave_one_out: bool = False
    excluded: list[str] = Field(default_factory=list, description="hospitals left out of the run entirely (tuning "
                                "for unseen hospitals leaves out the ones it will be evaluated on)")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    synthetic_images: SyntheticImagesConfig = Field(default_factory=SyntheticImagesConfig)
    medmnist: MedMNISTConfig = Field(default_factory=MedMNISTConfig)
