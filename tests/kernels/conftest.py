"""Kernel tests: without a GPU, Triton kernels run on CPU tensors under TRITON_INTERPRET=1.

The variable is read when a kernel is decorated, so it is set here, before any test module
imports the kernel modules.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
