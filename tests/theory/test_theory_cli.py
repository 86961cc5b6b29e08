"""``morl theory check`` runs and prints the η-sweep table."""

from typer.testing import CliRunner

from morl.theory.cli import theory_app


def test_check_prints_the_sweep_table():
    result = CliRunner().invoke(
        theory_app, ["check", "--seed", "1", "-M", "2", "-Y", "4", "-X", "3"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    for text in ("Covariance law", "exact ΔJ_m", "pred η·Cov", "(exact−pred)/η²", "1e-01", "1e-05"):
        assert text in result.output
    rows = [line for line in result.output.splitlines() if "1e-05" in line]
    assert len(rows) == 2
    for line in rows:
        cells = [c.strip() for c in line.split("│") if c.strip()]
        assert abs(float(cells[4]) - float(cells[5])) <= 1e-5 + 1e-3 * abs(float(cells[5]))


def test_check_rejects_bad_sizes():
    assert CliRunner().invoke(theory_app, ["check", "--completions", "1"]).exit_code != 0
