"""The data layer: where records come from (:class:`DataSpec`, declared once), retrieval roles, records -> model
inputs (:class:`SpecimenDataset`), augmentation, and barcodes as the model reads them."""

from .spec import DataSpec, has_role, load_splits, role_records
from .specimens import SpecimenDataset, available_modalities, image_file_records, model_inputs, with_modalities

__all__ = [
    "DataSpec", "SpecimenDataset", "available_modalities", "has_role", "image_file_records", "load_splits",
    "model_inputs", "role_records", "with_modalities",
]  # fmt: skip
