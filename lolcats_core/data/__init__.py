"""Linearizing data: ShareGPT chats, plain text and passkey samples, packed and fingerprinted."""

from .config import DataConfig, check_fits
from .errors import DataError
from .fingerprint import data_fingerprint, hash_path, tokenizer_fingerprint
from .loader import make_dataloader
from .packing import pack
from .passkey import TRAIN_TEMPLATE, PasskeyGenerator, PasskeySample, PasskeyTemplate
from .prepare import MANIFEST, PreparedData, dataset_dir, load_prepared, prepare_dataset
from .sources import IGNORE_INDEX, read_sharegpt, read_text_files, tokenize_conversations, tokenize_texts

__all__ = [
    "IGNORE_INDEX",
    "MANIFEST",
    "TRAIN_TEMPLATE",
    "DataConfig",
    "DataError",
    "PasskeyGenerator",
    "PasskeySample",
    "PasskeyTemplate",
    "PreparedData",
    "check_fits",
    "data_fingerprint",
    "dataset_dir",
    "hash_path",
    "load_prepared",
    "make_dataloader",
    "pack",
    "prepare_dataset",
    "read_sharegpt",
    "read_text_files",
    "tokenize_conversations",
    "tokenize_texts",
    "tokenizer_fingerprint",
]
