"""BIOSCAN-CLIP as Hugging Face remote code: configuration, model, processors.

Importing the package registers the classes with the Auto classes, so installed users need no
``trust_remote_code``; saved folders carry the same code for users without the package.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

from .configuration_bioscanclip import BioscanClipConfig
from .constants_bioscanclip import TAXONOMIC_RANKS
from .errors_bioscanclip import BioscanImageError, BioscanInputError
from .image_processing_bioscanclip import BioscanClipImageProcessor, load_image_safely
from .modeling_bioscanclip import (
    BioscanClipModel,
    BioscanClipOutput,
    contrastive_loss,
    contrastive_targets,
    gather_with_local_grad,
    taxonomic_targets,
)
from .processing_bioscanclip import BioscanClipProcessor, taxonomy_to_text
from .tokenization_dna import BioscanDnaTokenizer, normalize_barcode

__all__ = [
    "TAXONOMIC_RANKS",
    "BioscanClipConfig",
    "BioscanClipImageProcessor",
    "BioscanClipModel",
    "BioscanClipOutput",
    "BioscanClipProcessor",
    "BioscanDnaTokenizer",
    "BioscanImageError",
    "BioscanInputError",
    "contrastive_loss",
    "contrastive_targets",
    "gather_with_local_grad",
    "load_image_safely",
    "normalize_barcode",
    "register_auto_classes",
    "taxonomic_targets",
    "taxonomy_to_text",
]


def register_auto_classes() -> None:
    """Registers the classes with the Auto classes, locally and (``auto_map``) in folders saved from now on."""
    AutoConfig.register(BioscanClipConfig.model_type, BioscanClipConfig, exist_ok=True)
    AutoModel.register(BioscanClipConfig, BioscanClipModel, exist_ok=True)
    AutoImageProcessor.register(BioscanClipConfig, slow_image_processor_class=BioscanClipImageProcessor, exist_ok=True)
    AutoProcessor.register(BioscanClipConfig, BioscanClipProcessor, exist_ok=True)
    # Lets AutoTokenizer resolve the class named in dna_tokenizer/tokenizer_config.json without remote code. The
    # root text tokenizer names its own class (BertTokenizer), which takes precedence over this mapping.
    AutoTokenizer.register(BioscanClipConfig, tokenizer_class=BioscanDnaTokenizer, exist_ok=True)
    BioscanClipConfig.register_for_auto_class()
    BioscanClipModel.register_for_auto_class("AutoModel")
    BioscanClipImageProcessor.register_for_auto_class("AutoImageProcessor")
    BioscanDnaTokenizer.register_for_auto_class("AutoTokenizer")
    BioscanClipProcessor.register_for_auto_class("AutoProcessor")


register_auto_classes()
