"""benchmarks/train_throughput.py: the profile suite's operator groups and a tiny profiled
step (no timing asserted: the figures are the benchmark's, docs/performance.md#cpu-training-speed-fp32-against-bf16)."""
import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/train_throughput.py")


def test_batch_flops_is_the_model_count(bench):
    """Counted by hand for 2 layers, hidden 4, vocab 10 (embedding 40 of 100 parameters), a
    batch of 2 rows padded to 8, 5 targets: the layers and attention's full square over all
    16 positions (model FLOPs: what a causal kernel skips still counts), the output layer
    over the 5 targets."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(vocab_size=10, hidden_size=4, num_hidden_layers=2)
    assert bench.batch_flops(cfg, 100, 2, 8, 5) == 6 * 60 * 16 + 12 * 2 * 4 * 8 * 16 + 6 * 40 * 5


@pytest.mark.parametrize("op, group", [
    ("aten::mm", "matmul (mm/addmm/bmm)"),
    ("aten::addmm_", "matmul (mm/addmm/bmm)"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention (sdpa kernels; cpu_bmm's ops)"),
    ("aten::copy_", "dtype casts and copies"),
    ("aten::silu_backward", "elementwise (norm, activation, rotary, residual)"),
    ("aten::embedding_dense_backward", "embedding and indexing"),
    ("FusedLinearCrossEntropyBackward", "other"),
])
def test_operator_groups(bench, op, group):
    assert bench.op_group(op) == group
    assert bench.op_group(op, "backward") == group


@pytest.mark.parametrize("op", ["aten::mm", "aten::_softmax", "aten::copy_"])
def test_ops_inside_cpu_attention_are_attention(bench, op):
    """cpu_bmm's products and softmax count as attention (its profiler range), not as matmul."""
    assert bench.op_group(op, "backward", in_attention=True) == bench.ATTENTION_GROUP
    assert bench.op_group(op, "optimizer", in_attention=True) == bench.OPTIMIZER_GROUP


@pytest.mark.parametrize("op", ["aten::addcdiv_", "aten::lerp_", "aten::copy_", "aten::mm"])
def test_ops_of_the_optimizer_phases_are_one_group(bench, op):
    """AdamW on the CPU runs plain elementwise ops: they count as the optimizer by phase."""
    for phase in ("grads to fp32", "optimizer", "masters to bf16"):
        assert bench.op_group(op, phase) == bench.OPTIMIZER_GROUP


@pytest.mark.slow  # trains a step
def test_profile_suite_splits_a_step_without_double_counting(bench, tiny_llama_dir, capsys):
    """One profiled step of the tiny Llama in each precision: every phase is timed, the
    self time of the ops inside the phases fits in the phases' own time (an inclusive time,
    counting nested ops twice, would not), and the products and the optimizer are there."""
    results = bench.main(["--suite", "profile", "--model", str(tiny_llama_dir), "--batch_size", "2",
                          "--grad_accum", "1", "--model_max_length", "64", "--top", "3"])
    out = capsys.readouterr().out
    assert set(results) == {"bf16", "fp32"}
    for precision, r in results.items():
        assert {"forward+loss", "backward", "optimizer"} <= set(r["phases"]), r["phases"]
        assert 0 < r["inside_s"] <= 1.02 * sum(r["phases"].values()) + 1e-3, (r["inside_s"], r["phases"])
        assert r["inside_s"] <= r["total_s"] + 1e-9
        assert r["groups"]["matmul (mm/addmm/bmm)"] > 0 and r["groups"][bench.OPTIMIZER_GROUP] > 0
        assert r["groups"][bench.ATTENTION_GROUP] > 0  # cpu_bmm's range (the trainer's attention on the CPU)
        assert f"{precision} (cpu_bmm): profiled step" in out
    assert "| top operators (self time) | calls | s | share |" in out
