"""atesd's cache of models it makes itself (the warm-started embedded model, GGUF conversions): where it is,
and how an entry is published so that a crash never leaves half of one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase


def cache_root() -> Path:
    """Where converted models are kept: ``$ATESD_CACHE`` or ``~/.cache/atesd``."""
    configured = os.environ.get("ATESD_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "atesd"


def save_pretrained_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> Path:
    """Save model and tokenizer to a temporary directory beside `target`, then rename it into place, so a
    crash never leaves a half-written cache entry. If another process published `target` first, theirs is
    kept (it holds the same thing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    try:
        os.replace(temporary, target)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
    return target
