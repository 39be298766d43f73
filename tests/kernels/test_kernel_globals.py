"""Compiled Triton refuses module globals inside `@triton.jit` functions unless they are
`tl.constexpr` (the interpreter the CPU tests run under does not check): every global a kernel
reads must be a module, a jit function or a constexpr."""

import ast
import importlib
import inspect
import types

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
interpreter = pytest.importorskip("triton.runtime.interpreter")  # not imported by `import triton` on a GPU

MODULES = ["triton_fwd", "triton_bwd", "triton_state", "triton_varlen"]


JIT = (triton.runtime.jit.JITFunction, interpreter.InterpretedFunction)


def _kernels():
    mods = [importlib.import_module(f"lolcats_kernels.hybrid_attention.{m}") for m in MODULES]
    mods.append(importlib.import_module("lolcats_kernels.hybrid_decode.triton_step"))
    for mod in mods:
        for name, obj in vars(mod).items():
            if isinstance(obj, JIT):
                yield mod, name, obj


def _allowed(value) -> bool:
    return isinstance(value, (types.ModuleType, tl.constexpr, *JIT))


@pytest.mark.parametrize("mod,name,kernel", list(_kernels()), ids=lambda x: getattr(x, "__name__", str(x)))
def test_kernels_read_only_constexpr_globals(mod, name, kernel):
    tree = ast.parse(inspect.getsource(kernel.fn))
    local = {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    local |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    reads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bad = sorted(g for g in reads - local if g in vars(mod) and not _allowed(vars(mod)[g]))
    assert not bad, f"{mod.__name__}.{name} reads non-constexpr globals {bad}"
