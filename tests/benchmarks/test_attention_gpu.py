"""benchmarks/attention_gpu.py and attention_decode_gpu.py on CPU: argument parsing, the tables
and figures of `plot` from a fake result, and the captured decode step against the module's own."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import attention_decode_gpu as decode  # noqa: E402
import attention_gpu  # noqa: E402


def test_run_arguments():
    a = attention_gpu.parser().parse_args(["run", "--out", "o", "--parts", "decode_8b", "--batches-8b", "8,16"])
    assert (a.cmd, a.out, a.parts, a.batches_8b, a.history, a.max_len) == ("run", "o", "decode_8b", "8,16", 4096,
                                                                          131072)
    a = attention_gpu.parser().parse_args(["plot", "r.json"])
    assert (a.cmd, a.json, a.docs) == ("plot", "r.json", "docs")
    with pytest.raises(SystemExit, match="unknown parts"):
        attention_gpu.main(["run", "--parts", "attention,decoding"])


def fake_result(new_rows: bool) -> dict:
    """A result as `run` writes it: every row, some out of memory; without new_rows, a file
    from before the gated rows (no fla gla, no 8B decode, no commands)."""
    names = ["ours", "sdpa_flash", "fla_chunk", "fla_chunk_normalized"]
    if new_rows:
        names += ["ours_gate", "ours_sinks_gate", "fla_gla", "fla_simple_gla"]
    att = {str(T): {n: [0.1 * (i + 1) * T / 1024, 0.5, 0.3 * (i + 1) * T / 1024, 1.5] for i, n in enumerate(names)}
           for T in (1024, 2048, 4096)}
    att["4096"]["sdpa_flash"] = [None, None, None, None]
    res = {"env": {"device": "NVIDIA H200", "torch": "2.13.0"}, "attention": att,
           "decode": {"1": {"1024": [0.02, 0.01], "4096": [0.02, None]},
                      "64": {"1024": [0.13, 0.1], "4096": [0.13, 0.4]}}}
    if new_rows:
        row = {"history": 4096, "state_gib": 48.0, "attention_ms": 60.0, "attention_tokens_per_s": 17066.7,
               "kernel_ms": 30.0, "kernel_tokens_per_s": 34133.3}
        res["decode_8b"] = {"ours": {"1024": row, "2048": row},
                            "ours_sinks_gate": {"1024": row, "2048": {"history": 4096, "oom": True}}}
        res["commands"] = {"attention": "python benchmarks/attention_gpu.py run --out /x --parts attention"}
    return res


@pytest.mark.parametrize("new_rows", [True, False])
def test_plot_writes_tables_and_figures(tmp_path, capsys, new_rows):
    path = tmp_path / "attention_gpu.json"
    path.write_text(json.dumps(fake_result(new_rows)))
    (tmp_path / "figures").mkdir()
    attention_gpu.main(["plot", str(path), "--docs", str(tmp_path)])
    out = capsys.readouterr().out
    assert (tmp_path / "figures/kernels_attention.png").stat().st_size > 0
    assert (tmp_path / "figures/kernels_decode.png").stat().st_size > 0
    tables = [t for t in out.split("\n\n") if t.strip()]
    captions, bodies = tables[::2], tables[1::2]
    assert len(captions) == len(bodies) == (5 if new_rows else 3)
    assert all("NVIDIA H200" in c and "`python benchmarks/attention_gpu.py run" in c for c in captions)
    for body in bodies:  # every row has the header's number of cells
        widths = {line.count("|") for line in body.splitlines()}
        assert len(widths) == 1, body
    assert "| 4k | 0.400 / 1.200 | OOM / OOM |" in out  # ours, then SDPA out of memory
    assert "| hybrid (ours, w=64) fwd / fwd+bwd ms |" in out
    if new_rows:
        assert "`python benchmarks/attention_gpu.py run --out /x --parts attention`" in out
        assert "hybrid + 4 sinks + gate (ours) fwd / fwd+bwd ms" in out and "fla chunk_gla fwd" in out
        # ours + gate / fla chunk_gla: (5 / 7) fwd and fwd+bwd
        assert "| 1k | 0.500 / 1.500 | 0.600 / 1.800 | 0.700 / 2.100 | 0.800 / 2.400 | 0.71 / 0.71 |" in out
        assert "after a 4096-token history" in out and "| ours+gate / fla gla |" in out
        assert "| hybrid + 4 sinks + gate (ours) | 2048 | OOM | OOM | OOM | OOM | OOM |" in out
        assert "| hybrid (ours, w=64) | 1024 | 60.00 | 17,067 | 30.00 | 34,133 | 48.0 |" in out
    else:
        assert "gate (ours)" not in out and "8B" not in out


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, intermediate_size=128, vocab_size=128)


@pytest.mark.parametrize("config", list(decode.CONFIGS))
def test_layer_step_is_the_module_decode_step(config):
    """The benchmark's step (device position, capturable) gives the outputs and the states of
    `LolcatsAttention` decoding with a cache, after a real prefill tiled to the batch."""
    torch.manual_seed(0)
    layers, rotary = decode.build_layers(TINY, decode.CONFIGS[config], torch.float32, "cpu", window=4, feature_dim=4)
    caches = []
    for _ in range(2):
        torch.manual_seed(1)
        caches.append(decode.prefilled_cache(layers, rotary, rows=2, history=10, batch=6))
    ref, ours = ([decode.hybrid_cache_layer(c, i) for i in range(len(layers))] for c in caches)
    assert ref[0].S.shape[0] == 6 and ref[0].seen == 10 and bool(ref[0].win_valid.all())
    if config == "ours_sinks_gate":
        assert bool(ref[0].sinks.sink_valid.all()) and ref[0].win_decay.abs().max() > 1e-3
    pos = torch.full((1,), 10)
    valid = torch.ones(6, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(5):  # past the window: keys leave it into the state
            x = torch.randn(6, 1, TINY["hidden_size"])
            cos, sin = rotary(x, pos[None])
            for attn, state in zip(layers, ours):
                expected, _ = attn(x, (cos, sin), past_key_values=caches[0])
                torch.testing.assert_close(decode.layer_step(attn, state, x, cos, sin, pos, valid), expected)
            pos += 1
    for a, b in zip(ref, ours):
        for ta, tb in zip(a.state_tensors(), b.state_tensors()):
            torch.testing.assert_close(ta, tb)


def test_candidates_call_the_ops_as_they_are_declared(monkeypatch):
    """Each row calls its op with fla's declared signatures and layouts ((B, T, H, K); chunk_gla's
    g per feature, chunk_simple_gla's per head, both our log gate) and ours with the gate and sinks."""
    from lolcats_kernels import hybrid_attention_chunked

    # the package's `hybrid_attention` attribute is the function: import the module by name
    triton_function = importlib.import_module("lolcats_kernels.hybrid_attention.triton_function")

    x = attention_gpu.attention_inputs(128, dev="cpu")  # longer than the window: the state is used
    calls = {}

    def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True,
                          cu_seqlens=None):
        calls.setdefault("linear", []).append(normalize)
        assert q.shape == k.shape == v.shape == (1, 128, 32, 128) and scale == 1.0
        return v, None

    def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
                  cu_seqlens=None, cu_seqlens_cpu=None):
        assert q.shape == k.shape == g.shape and g.dtype == torch.float32 and scale == 1.0
        torch.testing.assert_close(g[..., 5], x["log_gate"].transpose(1, 2))
        calls["gla"] = True
        return v, None

    def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                         state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
        assert g.shape == q.shape[:3] and bool((g <= 0).all()) and scale == 1.0
        torch.testing.assert_close(g, x["log_gate"].transpose(1, 2))
        calls["simple_gla"] = True
        return v, None

    ops = {"chunk_linear_attn": chunk_linear_attn, "chunk_gla": chunk_gla, "chunk_simple_gla": chunk_simple_gla}
    rows = attention_gpu.fla_candidates(x, ops)
    assert list(rows) == ["fla_chunk", "fla_chunk_normalized", "fla_gla", "fla_simple_gla"]
    for fn in rows.values():
        fn()
    assert calls == {"linear": [False, True], "gla": True, "simple_gla": True}
    assert list(attention_gpu.fla_candidates(x, {"chunk_gla": chunk_gla})) == ["fla_gla"]

    monkeypatch.setattr(triton_function, "hybrid_attention_triton", hybrid_attention_chunked)
    outs = {name: fn() for name, fn in attention_gpu.our_candidates(x).items()}
    assert list(outs) == ["ours", "ours_w256", "ours_gate", "ours_sinks_gate"]
    assert not torch.equal(outs["ours"], outs["ours_gate"]) and not torch.equal(outs["ours_gate"],
                                                                               outs["ours_sinks_gate"])
    assert not torch.equal(outs["ours"], outs["ours_w256"])  # the window reaches 256 keys back
