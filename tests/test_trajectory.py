"""The trajectory fit in code space (core/trajectory.py) on codes with known motion: the y rules
(anchored through the visits, the least-squares line) and the x_T rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_ldae.core.model import Codes
from napari_ldae.core.trajectory import fit_trajectory
from napari_ldae.errors import LDAEError

D, LATENT = 12, (3, 4, 4, 4)
OMEGA = 0.01  # radians of x_T's great circle per month


def circle(months, seed: int = 0) -> torch.Tensor:
    """x_T moving at constant angular speed on a great circle: cos(ωt)·u + sin(ωt)·v."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(2, math.prod(LATENT), generator=g, dtype=torch.float64)
    v = v - (v @ u) / (u @ u) * u
    u, v = u / u.norm() * 20.0, v / v.norm() * 20.0
    t = torch.as_tensor(months, dtype=torch.float64)[:, None]
    return (torch.cos(OMEGA * t) * u + torch.sin(OMEGA * t) * v).float().reshape(-1, *LATENT)


def linear_codes(months, seed: int = 0) -> tuple[Codes, torch.Tensor, torch.Tensor]:
    """Codes whose y moves on a line a + b·t; returns (codes, a, b)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(D, generator=g), torch.randn(D, generator=g) * 0.05
    t = torch.as_tensor(months, dtype=torch.float32)[:, None]
    return Codes(a + b * t, circle(months, seed), steps=7), a, b


def test_linear_motion_recovered_exactly():
    months = [18.0, 0.0, 30.0, 6.0]  # any order
    codes, a, b = linear_codes(months)
    traj = fit_trajectory(codes, months, x_T_rule="slerp")
    assert traj.months.tolist() == [0.0, 6.0, 18.0, 30.0]
    torch.testing.assert_close(traj.slope.float(), b, atol=1e-6, rtol=1e-5)
    targets = [-6.0, 3.0, 12.0, 30.0, 48.0, 96.0]
    predicted = traj.codes_at(targets)
    t = torch.tensor(targets)[:, None]
    torch.testing.assert_close(predicted.y, a + b * t, atol=1e-5, rtol=1e-5)
    # slerp between neighbouring visits and continued past the ends stays on the circle
    torch.testing.assert_close(predicted.x_T, circle(targets), atol=1e-4, rtol=1e-4)
    assert predicted.steps == 7
    assert traj.residual < 1e-6 and traj.unexplained < 1e-10
    assert traj.summary()["y_speed_per_year"] == pytest.approx(float(b.norm()) * 12, rel=1e-5)


def noisy_codes(months, seed: int = 1) -> Codes:
    """Linear motion of y plus noise: the visits are off the least-squares line."""
    codes, _, _ = linear_codes(months, seed=seed)
    noise = torch.randn(len(months), D, generator=torch.Generator().manual_seed(2)) * 0.1
    return Codes(codes.y + noise, codes.x_T, steps=7)


def test_least_squares_matches_numpy_and_reports_the_residual():
    months = [0.0, 6.0, 12.0, 24.0, 36.0]
    codes = noisy_codes(months)
    traj = fit_trajectory(codes, months, y_rule="line")
    slope, intercept = np.polyfit(months, codes.y.double().numpy(), 1)
    np.testing.assert_allclose(traj.slope.numpy(), slope, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(traj.y_at([60.0])[0].numpy(), intercept + 60.0 * slope,
                               rtol=1e-5, atol=1e-5)
    fitted = np.polyval(np.stack([slope, intercept]), np.array(months)[:, None])
    rms = float(np.sqrt(np.mean((codes.y.double().numpy() - fitted) ** 2)))
    assert traj.residual == pytest.approx(rms, rel=1e-5)
    assert 0.0 < traj.unexplained < 1.0
    assert not traj.passes_through(0)
    assert traj.summary()["y_rule"] == "line"


def test_anchored_passes_through_every_visit_and_continues_with_the_slope():
    months = [0.0, 6.0, 12.0, 24.0, 36.0]
    codes = noisy_codes(months)
    traj = fit_trajectory(codes, months)
    line = fit_trajectory(codes, months, y_rule="line")
    assert traj.y_rule == "anchored" and traj.summary()["y_rule"] == "anchored"
    at = traj.codes_at(months)
    assert torch.equal(at.y, codes.y) and torch.equal(at.x_T, codes.x_T)  # bit for bit
    assert all(traj.passes_through(i) for i in range(len(months)))
    # the same least-squares slope and fit as the line
    slope, _ = np.polyfit(months, codes.y.double().numpy(), 1)
    np.testing.assert_allclose(traj.slope.numpy(), slope, rtol=1e-6, atol=1e-9)
    assert traj.residual == line.residual and traj.unexplained == line.unexplained
    y = codes.y.double().numpy()
    np.testing.assert_allclose(traj.y_at([48.0, 96.0]).double().numpy(),
                               y[-1] + np.array([[12.0], [60.0]]) * slope, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj.y_at([-12.0])[0].double().numpy(), y[0] - 12.0 * slope,
                               rtol=1e-5, atol=1e-5)
    # between visits the lerp of their y, as interpolation
    np.testing.assert_allclose(traj.y_at([9.0, 30.0]).double().numpy(),
                               [(y[1] + y[2]) / 2, (y[3] + y[4]) / 2], rtol=1e-5, atol=1e-6)
    # its change from the last visit grows with the line's slope; the line's starts off it
    step = (traj.y_at([42.0]) - traj.y_at([36.0])).double()
    torch.testing.assert_close(step[0], 6.0 * traj.slope, rtol=1e-4, atol=1e-6)
    assert float((line.y_at([36.0])[0] - codes.y[-1]).norm()) > 1e-3
    torch.testing.assert_close(traj.x_T_at([48.0]), line.x_T_at([48.0]))  # x_T: same rule


def test_line_rule_is_the_least_squares_line_everywhere():
    months = [0.0, 6.0, 12.0, 24.0, 36.0]
    codes = noisy_codes(months, seed=8)
    traj = fit_trajectory(codes, months, y_rule="line")
    slope, intercept = np.polyfit(months, codes.y.double().numpy(), 1)
    targets = [-6.0, 0.0, 9.0, 36.0, 60.0]
    expected = intercept + np.array(targets)[:, None] * slope
    np.testing.assert_allclose(traj.y_at(targets).double().numpy(), expected, rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(traj.fitted, traj.line_at(months))
    assert not any(traj.passes_through(i) for i in range(len(months)))


@pytest.mark.parametrize("months", [[0.0, 24.0], [0.0, 12.0, 36.0]])
def test_codes_at_a_visit_are_the_visits_when_the_line_passes_through(months):
    codes, _, _ = linear_codes(months, seed=3)
    traj = fit_trajectory(codes, months)
    for i, t in enumerate(months):
        assert traj.passes_through(i)
        at = traj.codes_at([t])
        torch.testing.assert_close(at.y, codes.y[i:i + 1], atol=1e-6, rtol=1e-6)
        assert torch.equal(at.x_T, codes.x_T[i:i + 1])  # the visit's own x_T, bit for bit


def test_hold_rule_interpolates_between_visits_and_holds_the_ends():
    months = [0.0, 12.0, 24.0]
    codes, _, _ = linear_codes(months, seed=6)
    hold = fit_trajectory(codes, months)
    slerp = fit_trajectory(codes, months, x_T_rule="slerp")
    assert hold.x_T_rule == "hold"
    inside = [3.0, 12.0, 20.0]
    torch.testing.assert_close(hold.x_T_at(inside), slerp.x_T_at(inside))
    torch.testing.assert_close(hold.x_T_at(inside), circle(inside, seed=6), atol=1e-4,
                               rtol=1e-4)
    past, before = hold.x_T_at([30.0, 60.0]), hold.x_T_at([-12.0])
    assert all(torch.equal(x, codes.x_T[2]) for x in past)
    assert torch.equal(before[0], codes.x_T[0])
    assert not torch.allclose(slerp.x_T_at([60.0])[0], codes.x_T[2], atol=1e-3)
    torch.testing.assert_close(hold.y_at([60.0]), slerp.y_at([60.0]))  # y follows its line


def test_latest_rule_keeps_the_latest_x_T():
    months = [0.0, 12.0, 24.0]
    codes, _, _ = linear_codes(months, seed=4)
    traj = fit_trajectory(codes, months, x_T_rule="latest")
    x_T = traj.x_T_at([-6.0, 6.0, 24.0, 60.0])
    assert all(torch.equal(x, codes.x_T[2]) for x in x_T)
    assert not torch.allclose(traj.x_T_at([0.0])[0], codes.x_T[0])
    assert traj.summary()["x_T_rule"] == "latest"


def test_list_of_single_codes_and_prediction_flag():
    months = [0.0, 12.0]
    codes, _, _ = linear_codes(months, seed=5)
    traj = fit_trajectory([codes[1], codes[0]], [12.0, 0.0])
    torch.testing.assert_close(traj.y, codes.y)
    assert not traj.is_prediction(12.0) and traj.is_prediction(12.5)
    assert (traj.first, traj.last) == (0.0, 12.0)


@pytest.mark.parametrize("case, message", [
    ("single", "two or more visits"),
    ("duplicate", "two visits are dated month 6"),
    ("count", "one date per visit"),
    ("rule", "unknown x_T rule"),
    ("y_rule", "unknown y rule 'straight'; choose from anchored, line"),
    ("nan", "finite"),
])
def test_bad_input_is_a_clear_error(case, message):
    codes, _, _ = linear_codes([0.0, 6.0, 12.0])
    args = {"single": (codes[0], [0.0]), "duplicate": (codes, [0.0, 6.0, 6.0]),
            "count": (codes, [0.0, 6.0]), "rule": (codes, [0.0, 6.0, 12.0]),
            "y_rule": (codes, [0.0, 6.0, 12.0]), "nan": (codes, [0.0, float("nan"), 12.0])}[case]
    rule = "newest" if case == "rule" else "hold"
    y_rule = "straight" if case == "y_rule" else "anchored"
    with pytest.raises(LDAEError, match=message):
        fit_trajectory(*args, x_T_rule=rule, y_rule=y_rule)
