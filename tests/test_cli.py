"""The command line: every subcommand's help renders, and info runs without a GPU."""
import pytest

from rmsnorm_triton.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["tune", "--help"],
                                  ["bench", "--help"], ["info", "--help"]], ids=" ".join)
def test_help_renders(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: rmsnorm-triton" in capsys.readouterr().out


def test_info_reports_versions_and_mode(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "rmsnorm_triton" in out and "triton" in out and "interpreter mode" in out
