"""The batched SPD solve the OBS-family methods use, and why it is not torch.linalg.solve."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from reflow.baselines.spd import spd_solve

from reflow.executors.base import torch_threads


def _spd(batch: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(batch, d, d, dtype=torch.float64, generator=g)
    return m @ m.mT + d * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("rhs_shape", [(5, 7), (5, 7, 3)])
def test_spd_solve_solves(rhs_shape) -> None:
    a = _spd(5, 7)
    b = torch.randn(rhs_shape, dtype=torch.float64)
    x = spd_solve(a, b)
    assert x.shape == b.shape
    ax = a @ (x.unsqueeze(-1) if len(rhs_shape) == 2 else x)
    torch.testing.assert_close(ax.reshape(b.shape), b)


def test_spd_solve_falls_back_for_a_member_that_is_not_positive_definite() -> None:
    a = _spd(3, 4)
    a[1] = torch.diag(torch.tensor([2.0, -1.0, 3.0, 0.5], dtype=torch.float64))  # indefinite
    b = torch.randn(3, 4, dtype=torch.float64)
    x = spd_solve(a, b)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[1], b[1] / torch.diagonal(a[1]))
    torch.testing.assert_close((a @ x.unsqueeze(-1)).squeeze(-1), b)


def test_spd_solve_is_right_after_set_num_threads() -> None:
    """pytorch#142815: after set_num_threads(2), batched LU races in MKL's row swaps. Run in a
    child process, because the explicit call changes MKL's threading for the rest of a process."""
    script = textwrap.dedent(
        """
        import torch
        from reflow.baselines.spd import spd_solve
        torch.set_num_threads(2)
        a = (2 * torch.eye(151, dtype=torch.float64)).expand(4, 151, 151).contiguous()
        b = torch.ones(4, 151, dtype=torch.float64)
        for _ in range(200):
            assert torch.allclose(spd_solve(a, b), b / 2, rtol=1e-12, atol=0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_torch_threads_zero_leaves_torch_untouched(monkeypatch) -> None:
    def refuse(n: int) -> None:
        raise AssertionError(f"set_num_threads({n}) called for --threads 0")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    with torch_threads(0):
        pass
