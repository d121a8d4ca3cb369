"""Help examples, shell completion and the man page: all generated from the one parser."""

import shutil
import subprocess

import pytest

from svcdns.cli import build_parser
from svcdns.cli.examples import EXAMPLES, argv_of, subcommands


def test_every_subcommand_has_examples_and_they_parse():
    parser = build_parser()
    paths = [path for path, _ in subcommands(parser)]
    assert "service describe" in paths and "pod list" in paths
    assert [p for p in paths if not 2 <= len(EXAMPLES.get(p, [])) <= 3] == []
    assert sorted(set(EXAMPLES) - set(paths)) == []  # no examples for a command that is gone
    for path, examples in EXAMPLES.items():
        for example in examples:
            argv = argv_of(example)
            assert argv is not None and " ".join(argv).startswith(path), example
            parser.parse_args(argv)  # exits 2 (SystemExit) if an example does not parse


def test_help_text_shows_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pod", "add", "-h"])
    out = capsys.readouterr().out
    assert out.rstrip().endswith("examples:\n  " + "\n  ".join(EXAMPLES["pod add"]))


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash to check the script's syntax")
def test_bash_completion_is_produced_and_bash_accepts_it(svcdns, tmp_path):
    code, out, _ = svcdns("completion", "bash")
    assert code == 0 and "complete" in out and "describe" in out and "--ignore-not-found" in out
    script = tmp_path / "svcdns.bash"
    script.write_text(out)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # loaded into a shell, it completes the subcommands of `svcdns service`
    probe = (f"source {script}; COMP_WORDS=(svcdns service d); COMP_CWORD=2; COMP_LINE='svcdns service d'; "
             "COMP_POINT=${#COMP_LINE}; _shtab_svcdns; printf '%s\\n' \"${COMPREPLY[@]}\"")  # fmt: skip
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert {"describe", "delete"} <= set(proc.stdout.split()), proc.stdout + proc.stderr
    assert svcdns("completion", "zsh")[1].startswith("#compdef svcdns")


def test_man_page_lists_every_subcommand_and_man_renders_it(svcdns, tmp_path):
    code, page, _ = svcdns("man")
    assert code == 0 and page.startswith('.TH SVCDNS "8"')
    for path, _ in subcommands(build_parser()):
        assert f"svcdns {path}" in page.replace("\\-", "-"), path
    if not shutil.which("man"):
        pytest.skip("man is not installed: the page was produced, not rendered")
    (tmp_path / "svcdns.8").write_text(page)
    proc = subprocess.run(["man", "--warnings", "-l", str(tmp_path / "svcdns.8")], capture_output=True, text=True,
                          env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = proc.stdout
    assert "SVCDNS(8)" in text and "COMMAND 'svcdns service describe'" in text
    assert "svcdns service list -l tier=front -o wide" in text  # the examples section
