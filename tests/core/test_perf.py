"""MFU of the update (lsp_exp/core/perf.py) against hand-computed values."""
import pytest

from lsp_exp.core.perf import mfu, peak_flops, update_flops


def test_update_flops_are_6n_per_token_or_4n_under_lora():
    assert update_flops(1_000, 10, lora=False) == 60_000
    assert update_flops(1_000, 10, lora=True) == 40_000


def test_mfu_against_the_gpu_peak():
    # 1B parameters, 1000 tokens in 1 s on an H100: 6e12 / 989e12.
    assert mfu(10**9, 1000, 1.0, peak_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(6e12 / 989e12)
    assert mfu(10**9, 1000, 0.5, 989e12, lora=True) == pytest.approx(8e12 / 989e12)
    assert peak_flops("NVIDIA GH200 480GB") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("a CPU") is None
