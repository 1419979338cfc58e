"""
Checks of the checks in test_exercises.py, run the way a student runs them: pytest with
DTR_SOLUTION, in a subprocess. On the stubs a student starts from (template.py) every check
fails, saying "not written yet"; on the typical mistakes (mistakes.py) each check listed in
mistakes.EXPECTED fails with the message that names its mistake.

    python -m pytest -q exercises/test_checks.py
"""
import os
import runpy
import subprocess
import sys

import pytest

from conftest import HERE

TEMPLATE, MISTAKES = (os.path.join(HERE, "exercises", name) for name in ("template.py", "mistakes.py"))
OTHER_MISTAKES = [("chunked_linear_attention", "ex2", "EXPECTED_CHUNKED"), ("distill_loss", "ex5", "EXPECTED_DISTILL_LOSS")]

def start_checks(solution, *args):
    """pytest on test_exercises.py with DTR_SOLUTION=solution, started in a subprocess."""
    # whole messages in the short summary; one thread each, as the runs go side by side
    env = dict(os.environ, DTR_SOLUTION=str(solution), COLUMNS="4000", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "--tb=no", "test_exercises.py",
           *args]
    return subprocess.Popen(cmd, env=env, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def outcomes(out):
    """{test id: its line in the short summary, "FAILED test_exercises.py::test_x[id] - message"}."""
    lines = {}
    for line in out.splitlines():
        if line.startswith(("FAILED", "ERROR", "SKIPPED")):
            lines[line.split("::", 1)[1].split(" - ", 1)[0] if "::" in line else line] = line
    return lines

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{file: (outcomes, output)} for the stubs, the mistakes, and each of exercises 2 and 5's other
    mistakes: one file holds one chunked_linear_attention and one distill_loss, so each of those runs
    on a copy of mistakes.py with that name pointing at it. The runs go side by side: two cores, six runs."""
    files, tmp = {"template.py": (TEMPLATE,), "mistakes.py": (MISTAKES,)}, tmp_path_factory.mktemp("mistakes")
    for replaced, exercise, expected in OTHER_MISTAKES:
        for name in runpy.run_path(MISTAKES)[expected]:
            with open(MISTAKES) as f:
                (tmp / f"{name}.py").write_text(f.read() + f"\n{replaced} = {name}\n")
            files[name] = (tmp / f"{name}.py", "-k", exercise)
    started = {name: start_checks(*args) for name, args in files.items()}
    done = {name: p.communicate(timeout=300)[0] for name, p in started.items()}
    return {name: (outcomes(out), out) for name, out in done.items()}

def assert_named(run, expected):
    """Each test in `expected` (each of its parametrised cases) failed with its fragment in the message."""
    lines, out = run
    assert "skipped" not in out.splitlines()[-1], out[-3000:]
    for test, fragment in expected.items():
        hits = [line for name, line in lines.items() if name == test or name.startswith(test + "[")]
        assert hits, f"{test} did not fail:\n{out[-3000:]}"
        assert all(fragment in line for line in hits), f"{test}: expected '{fragment}' in\n" + "\n".join(hits)

def test_the_checks_fail_on_the_stubs(runs):
    lines, out = runs["template.py"]
    assert " passed" not in out.splitlines()[-1] and "skipped" not in out.splitlines()[-1], out[-3000:]
    assert lines and all("not written yet" in line for line in lines.values()), out[-3000:]

def test_the_checks_name_each_typical_mistake(runs):
    mistakes = runpy.run_path(MISTAKES)
    assert_named(runs["mistakes.py"], mistakes["EXPECTED"])
    for _, _, others in OTHER_MISTAKES:
        for name, expected in mistakes[others].items():
            assert_named(runs[name], expected)
