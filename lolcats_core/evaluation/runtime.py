"""Small helpers shared by the evaluators: device lookup and an eval-mode context."""

from contextlib import contextmanager

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def evaluating(model: torch.nn.Module):
    """`model.eval()` and no autograd inside; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)
